// The time of a training step split by phase, for `ncsrec bench`. Off by default, when a mark
// costs one branch. On, every mark first waits for the device (so that a phase's time is its
// own work, not the queue of an earlier one) and adds the time since the previous mark to its
// phase; the waits slow a GPU step down, so the bench times its headline steps with the clock
// off and measures the split in extra steps.
#pragma once

#include <array>
#include <chrono>

#include "core/tensor.h"

namespace ncsrec {

enum class StepPhase : int {
  Input,              // embedding lookups, pooling, the interaction; the input's upload
  DenseForward,       // shared block and towers
  Losses,             // logits down, losses and dL/dlogit, dL/dlogit up
  DenseBackward,      // towers and shared block
  EmbeddingBackward,  // the input gradient down, the interaction's backward, the tables' gradients
  AllReduce,          // the sums over ranks (losses, dense gradient, layer statistics)
  DenseOptimizer,     // clipping and the dense update
  SparseOptimizer,    // the embedding rows' update
  Count
};
constexpr int kStepPhases = static_cast<int>(StepPhase::Count);
const char* step_phase_name(StepPhase phase);

class PhaseClock {
 public:
  // Starts counting, with `device` waited for at every mark; all phases back to 0.
  void enable(Device device);
  void disable() { enabled_ = false; }
  bool enabled() const { return enabled_; }
  // The beginning of a step: the next mark's phase starts here.
  void start();
  // The work since the previous mark (or start) belongs to `phase`.
  void mark(StepPhase phase);
  // Seconds per phase since enable().
  const std::array<double, kStepPhases>& seconds() const { return seconds_; }

 private:
  using Clock = std::chrono::steady_clock;
  bool enabled_ = false;
  Device device_ = Device::CPU;
  Clock::time_point last_;
  std::array<double, kStepPhases> seconds_{};
};

}  // namespace ncsrec

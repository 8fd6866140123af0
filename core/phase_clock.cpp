#include "core/phase_clock.h"

#include "core/dispatch.h"

namespace ncsrec {

const char* step_phase_name(StepPhase phase) {
  switch (phase) {
    case StepPhase::Input: return "input (lookups, pooling, interaction, upload)";
    case StepPhase::DenseForward: return "dense forward";
    case StepPhase::Losses: return "losses";
    case StepPhase::DenseBackward: return "dense backward";
    case StepPhase::EmbeddingBackward: return "input backward (interaction, table gradients)";
    case StepPhase::AllReduce: return "all-reduce";
    case StepPhase::DenseOptimizer: return "dense optimizer (clipping, update)";
    case StepPhase::SparseOptimizer: return "sparse optimizer (embedding rows)";
    case StepPhase::Count: break;
  }
  return "?";
}

void PhaseClock::enable(Device device) {
  enabled_ = true;
  device_ = device;
  seconds_.fill(0.0);
  last_ = Clock::now();
}

void PhaseClock::start() {
  if (!enabled_) return;
  if (device_ != Device::CPU) ops_for(device_).synchronize();
  last_ = Clock::now();
}

void PhaseClock::mark(StepPhase phase) {
  if (!enabled_) return;
  if (device_ != Device::CPU) ops_for(device_).synchronize();
  const Clock::time_point now = Clock::now();
  seconds_[static_cast<size_t>(phase)] += std::chrono::duration<double>(now - last_).count();
  last_ = now;
}

}  // namespace ncsrec

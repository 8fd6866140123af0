// Dense optimizers: one loop over the contiguous parameter buffer and its gradient buffer.
// Per-parameter state (Adam moments, Adagrad accumulators) lives in buffers of the same layout,
// named for checkpoints as optim/<param>/<slot>.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace ncsrec {

struct OptimizerConfig {
  std::string type = "adam";  // sgd | adam | adagrad
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // adam
  double initial_accumulator = 0.0;               // adagrad
  double adagrad_eps = 1e-10;
};

// Update masks give exact per-task semantics (PAPERS.md §8): a step of task t moves no weight
// outside t's mask, whatever the optimizer. `update_mask` holds one byte per element of the
// buffer (null = all ones). Where it is 0 the value and every state slot stay bit-identical;
// where it is 1 the usual update happens. So moments are "masked": an element's Adam m and v
// (or Adagrad accumulator) advance only on the steps that update it, while Adam's bias
// correction keeps using the global `step` (the count of steps of this optimizer, not of the
// element), as one Adam shared by alternating tasks does in the paper's code. The alternative,
// per-task moment buffers, is one optimizer per task over the same values, each stepped with
// its own task's mask and its own step count; shared weights then see both tasks' updates.
class DenseOptimizer {
 public:
  virtual ~DenseOptimizer() = default;
  // values -= update(grads) where update_mask is 1; `step` counts from 1 (Adam bias correction).
  virtual void step(Tensor& values, const Tensor& grads, int64_t step, const uint8_t* update_mask) = 0;
  // Updates every element.
  void step(Tensor& values, const Tensor& grads, int64_t step) { this->step(values, grads, step, nullptr); }
  // Named state buffers (same layout as values): {"m", "v"} for Adam, {"accumulator"} for Adagrad.
  virtual std::vector<std::pair<std::string, Tensor*>> state() = 0;
};

// Creates the optimizer for a buffer of `numel` elements of `dtype` on `device`.
std::unique_ptr<DenseOptimizer> make_dense_optimizer(const OptimizerConfig& config, int64_t numel, DType dtype,
                                                     Device device);

}  // namespace ncsrec

// Dense optimizers: one loop over the contiguous parameter buffer and its gradient buffer.
// Per-parameter state (Adam moments, Adagrad accumulators) lives in buffers of the same layout,
// named for checkpoints as optim/<param>/<slot>.
#pragma once

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

class DenseOptimizer {
 public:
  virtual ~DenseOptimizer() = default;
  // values -= update(grads); `step` counts from 1 (Adam bias correction).
  virtual void step(Tensor& values, const Tensor& grads, int64_t step) = 0;
  // Named state buffers (same layout as values): {"m", "v"} for Adam, {"accumulator"} for Adagrad.
  virtual std::vector<std::pair<std::string, Tensor*>> state() = 0;
};

// Creates the optimizer for a buffer of `numel` elements of `dtype` on `device`.
std::unique_ptr<DenseOptimizer> make_dense_optimizer(const OptimizerConfig& config, int64_t numel, DType dtype,
                                                     Device device);

}  // namespace ncsrec

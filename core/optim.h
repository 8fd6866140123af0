// Dense optimizers: one loop over the contiguous parameter buffer and its gradient buffer.
// Per-parameter state (Adam moments, Adagrad accumulators) lives in buffers of the same layout,
// named for checkpoints as optim/<param>/<slot>. Also here: weight decay (inside the
// optimizers) and gradient clipping by global norm (a function the training step calls between
// the all-reduce and the update).
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
  // Dense optimizers only, and only where the decay mask is 1 (set_decay_mask). SGD and Adagrad:
  // L2, the gradient becomes g + wd·w before the update. Adam: decoupled (AdamW), the update
  // becomes w -= lr·(m̂ / (sqrt(v̂) + eps) + wd·w); the decay is not in the moments and it
  // follows the scheduled lr. The sparse (embedding) optimizers refuse a non-zero value.
  double weight_decay = 0.0;
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
//
// Weight decay is part of the update: an element whose update mask is 0 is not decayed either.
class DenseOptimizer {
 public:
  virtual ~DenseOptimizer() = default;
  // values -= update(grads) where update_mask is 1; `step` counts from 1 (Adam bias correction).
  virtual void step(Tensor& values, const Tensor& grads, int64_t step, const uint8_t* update_mask) = 0;
  // Updates every element.
  void step(Tensor& values, const Tensor& grads, int64_t step) { this->step(values, grads, step, nullptr); }
  // Named state buffers (same layout as values): {"m", "v"} for Adam, {"accumulator"} for Adagrad.
  virtual std::vector<std::pair<std::string, Tensor*>> state() = 0;

  // The rate of the following steps; starts at the config's lr, base_lr() (a schedule sets
  // base_lr() · factor before every step).
  void set_lr(double lr);
  double lr() const { return lr_; }
  double base_lr() const { return base_lr_; }
  // Where weight decay applies: one byte per element, 1 = decay; empty (the default) = every
  // element. The trainer passes ParamStore::decay_mask() (kernels, not biases or norms). An
  // optimizer on a device keeps a device copy.
  void set_decay_mask(const std::vector<uint8_t>& mask);
  Device device() const { return device_; }

 protected:
  DenseOptimizer(const OptimizerConfig& config, int64_t numel, Device device);
  // Whether this step decays anything (weight_decay > 0 and a mask that is not all zeros).
  bool decays() const { return weight_decay_ > 0 && !decay_nowhere_; }
  // The decay mask for the kernels, in the optimizer's device memory: null = every element.
  const uint8_t* decay_mask() const;
  // The checks every step makes of its buffers (sizes, element type, device).
  void check_step(const Tensor& values, const Tensor& grads, DType dtype) const;

  int64_t numel_;
  Device device_;
  double base_lr_, lr_;
  double weight_decay_;

 private:
  std::vector<uint8_t> decay_mask_;  // empty = every element
  Tensor decay_mask_device_;         // its copy when the optimizer is on a device
  bool decay_nowhere_ = false;
};

// Creates the optimizer for a buffer of `numel` elements of `dtype` on `device`.
std::unique_ptr<DenseOptimizer> make_dense_optimizer(const OptimizerConfig& config, int64_t numel, DType dtype,
                                                     Device device);

// Gradient clipping by global norm: the L2 norm of `grads` (f32 or f64, on any device) over the
// elements where `mask` (one byte per element, in the gradient's memory) is 1 (null = all),
// summed in double in an order fixed by the buffer's size alone (OpTable::masked_sum_squares), so
// the result does not depend on the thread count. If it exceeds `max_norm` > 0 the whole buffer
// is scaled by max_norm / norm (elements outside the mask too: the update does not read them).
// max_norm 0 only measures. A non-finite norm is returned and nothing is scaled. Returns the
// norm before clipping.
double clip_grad_norm(Tensor& grads, double max_norm, const uint8_t* mask);

}  // namespace ncsrec

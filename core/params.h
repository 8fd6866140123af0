// Parameters as named views of one contiguous buffer, and their gradients as views of a second.
//
// Layers declare their parameters while the model is built (`add`), then the store is
// `finalize`d once: it allocates the value and gradient buffers and points every Param's
// `value` and `grad` at its slice. The optimizer is then one loop over one buffer and an
// all-reduce is one call per bucket. Initial values are a pure function of (seed, name), so a
// parameter's start does not depend on the order in which layers were built.
#pragma once

#include <deque>
#include <map>
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace ncsrec {

enum class Init : uint8_t {
  Zeros,
  Ones,
  Uniform,       // U(-scale, scale)
  Normal,        // N(0, scale^2)
  XavierUniform  // U(-a, a), a = sqrt(6 / (fan_in + fan_out)), from a 2-D shape [fan_in, fan_out]
};

struct Param {
  std::string name;  // stable dotted name: "shared.0.weight", "tower.cvr.1.bias"
  Shape shape;
  Init init = Init::Zeros;
  double scale = 0.0;
  int64_t offset = 0;  // in elements, within the store's buffers
  // Trained by the optimizer. False for state kept with the weights but set by the forward pass
  // (BatchNorm's running statistics): the optimizer never moves it and it has no gradient.
  bool trainable = true;
  // Weight decay applies (optimizer `weight_decay`): by default to matrices, not to biases,
  // normalisation scales, loss weights or mask scores.
  bool decay = false;
  // The task that owns the parameter (its tower, its gate, its experts), -1 when shared by all:
  // a step of another task leaves it and its optimizer state alone.
  int task = -1;
  Tensor value;        // valid after finalize()
  Tensor grad;         // valid after finalize()
};

class ParamStore {
 public:
  // Declares a parameter; the returned pointer stays valid for the store's lifetime.
  // `decay` starts true for 2-D shapes (kernels) and false otherwise; callers may change it.
  Param* add(const std::string& name, Shape shape, Init init, double scale = 0.0);
  // Declares non-trainable state kept with the parameters (saved in checkpoints, never updated
  // by the optimizer): `trainable` false, `decay` false.
  Param* add_state(const std::string& name, Shape shape, Init init, double scale = 0.0);
  // Allocates both buffers on the device, initialises values from (seed, name), zeroes grads.
  void finalize(DType dtype, Device device, uint64_t seed);
  bool finalized() const { return finalized_; }

  Param* find(const std::string& name);
  const std::deque<Param>& params() const { return params_; }
  std::deque<Param>& params() { return params_; }
  int64_t numel() const { return total_; }
  Tensor& values() { return values_; }
  Tensor& grads() { return grads_; }
  void zero_grad() { grads_.zero_(); }
  // One byte per element: 1 where the parameter is trainable. Null when every parameter is
  // (then an optimizer runs its unmasked loop). Valid after finalize().
  const uint8_t* trainable_mask() const { return trainable_mask_.empty() ? nullptr : trainable_mask_.data(); }
  // The same in the buffers' device memory (the host mask for a CPU store).
  const uint8_t* trainable_mask_on_device() const {
    return trainable_mask_device_.defined() ? static_cast<const uint8_t*>(trainable_mask_device_.raw()) : trainable_mask();
  }
  // One byte per element: 1 where weight decay applies. Built at finalize().
  const std::vector<uint8_t>& decay_mask() const { return decay_mask_; }

 private:
  std::deque<Param> params_;
  std::map<std::string, Param*> by_name_;
  int64_t total_ = 0;
  bool finalized_ = false;
  Tensor values_, grads_;
  std::vector<uint8_t> trainable_mask_, decay_mask_;
  Tensor trainable_mask_device_;  // a device store's copy of trainable_mask_
};

// Fills `out` (host, f32 or f64, n elements) with the initial values for a parameter.
void init_values(Tensor& out, Init init, double scale, const Shape& shape, uint64_t seed);

}  // namespace ncsrec

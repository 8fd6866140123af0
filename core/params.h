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
  Tensor value;        // valid after finalize()
  Tensor grad;         // valid after finalize()
};

class ParamStore {
 public:
  // Declares a parameter; the returned pointer stays valid for the store's lifetime.
  Param* add(const std::string& name, Shape shape, Init init, double scale = 0.0);
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

 private:
  std::deque<Param> params_;
  std::map<std::string, Param*> by_name_;
  int64_t total_ = 0;
  bool finalized_ = false;
  Tensor values_, grads_;
};

// Fills `out` (host, f32 or f64, n elements) with the initial values for a parameter.
void init_values(Tensor& out, Init init, double scale, const Shape& shape, uint64_t seed);

}  // namespace ncsrec

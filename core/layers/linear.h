// Linear and MLP layers with explicit forward/backward.
//
// Shapes: x [B, in], W [in, out] (row-major, so y = x·W + b is one GEMM), b [out], y [B, out].
// A layer owns its output and input-gradient buffers, sized at first use and grown only when
// a larger batch arrives, and caches what backward needs (its input, its activations).
// Gradient contract: dW and db accumulate (+=) into the store's gradient buffer; dx is written.
#pragma once

#include <string>
#include <vector>

#include "core/params.h"
#include "core/tensor.h"

namespace ncsrec {

enum class Activation : uint8_t { None, ReLU };

// Returns a [rows, cols] view of `buffer`, (re)allocating it when it is too small or of
// another dtype/device. Contents are unspecified. Returned by value: `buffer` keeps its full
// capacity, so a smaller batch followed by a larger one does not reallocate. A host buffer
// (device CPU) that `staging_for` (a device) copies to or from is allocated page-locked where
// that device's backend offers it (Tensor::empty_pinned).
Tensor ensure_buffer(Tensor& buffer, int64_t rows, int64_t cols, DType dtype, Device device,
                     Device staging_for = Device::CPU);

// The gradient of one tensor summed over its consumers: the first contribution is copied into
// `sum` (a view of `buffer`), later ones are added. reset() at the start of each backward;
// `any` says whether a contribution arrived since.
struct GradientSum {
  Tensor buffer, sum;
  bool any = false;
  void reset() { any = false; }
  void add(const Tensor& g);
  // The first contribution taken as it is, without a copy: `sum` shares g's storage, so a later
  // add or a write into `sum` writes into g. For a g whose producer hands it over (it does not
  // read it again before its next backward).
  void adopt(const Tensor& g);
};

class Linear {
 public:
  // Parameters `<name>.weight` [in, out] (Xavier uniform) and `<name>.bias` [out] (zeros).
  Linear(ParamStore& store, const std::string& name, int64_t in, int64_t out, Activation act = Activation::None,
         bool bias = true);
  // y = act(x·W + b). The returned tensor is this layer's buffer, valid until the next forward.
  const Tensor& forward(const Tensor& x);
  // Given dy = dL/dy [B, out]: accumulates dW, db; returns dL/dx [B, in] (this layer's buffer)
  // when `need_dx`, else an undefined tensor.
  const Tensor& backward(const Tensor& dy, bool need_dx = true);

  int64_t in() const { return in_; }
  int64_t out() const { return out_; }
  Param* weight() const { return weight_; }
  Param* bias() const { return bias_; }

 private:
  int64_t in_, out_;
  Activation act_;
  Param* weight_ = nullptr;
  Param* bias_ = nullptr;
  Tensor x_;                    // cached input (a reference to the caller's tensor)
  Tensor y_buf_, y_, dpre_buf_, dpre_, dx_buf_, dx_, none_;
};

// A stack of Linear layers, ReLU between them; `<prefix>.<i>.weight` / `.bias`.
// `final_activation` applies ReLU after the last layer too.
class MLP {
 public:
  MLP(ParamStore& store, const std::string& prefix, int64_t in, const std::vector<int64_t>& sizes,
      bool final_activation);
  const Tensor& forward(const Tensor& x);
  const Tensor& backward(const Tensor& dy, bool need_dx = true);
  int64_t in() const { return in_; }
  int64_t out() const;
  size_t depth() const { return layers_.size(); }
  Linear& layer(size_t i) { return layers_[i]; }

 private:
  int64_t in_;
  std::vector<Linear> layers_;
};

}  // namespace ncsrec

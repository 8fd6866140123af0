// Linear and MLP: the reference dense layers, written as a few ops:: calls so that the same
// code runs on CPU and on CUDA through the dispatch table.
//
// Not here: masked (task-shared) linear layers, gates, fused kernels. This file is the plain
// layer every other dense layer is checked against.
#include "core/layers/linear.h"

#include <algorithm>

#include "core/error.h"
#include "core/ops.h"

namespace ncsrec {

Tensor ensure_buffer(Tensor& buffer, int64_t rows, int64_t cols, DType dtype, Device device, Device staging_for) {
  NCSREC_CHECK(rows >= 0 && cols >= 0, "buffer of negative shape [" << rows << ", " << cols << "]");
  const bool fits = buffer.defined() && buffer.dtype() == dtype && buffer.device() == device &&
                    buffer.ndim() == 2 && buffer.dim(1) == cols && buffer.dim(0) >= rows;
  if (!fits) {
    // Grow to the larger of the old and new row counts, so alternating batch sizes settle.
    int64_t capacity = rows;
    if (buffer.defined() && buffer.dtype() == dtype && buffer.device() == device && buffer.ndim() == 2 &&
        buffer.dim(1) == cols)
      capacity = std::max(capacity, buffer.dim(0));
    buffer = device == Device::CPU && staging_for != Device::CPU ? Tensor::empty_pinned({capacity, cols}, dtype, staging_for)
                                                                 : Tensor::empty({capacity, cols}, dtype, device);
  }
  return buffer.dim(0) == rows ? buffer : buffer.slice_rows(0, rows);
}

void GradientSum::adopt(const Tensor& g) {
  NCSREC_CHECK(!any, "a gradient sum adopts only its first contribution");
  sum = g;
  any = true;
}

void GradientSum::add(const Tensor& g) {
  if (!any) {
    sum = ensure_buffer(buffer, g.dim(0), g.dim(1), g.dtype(), g.device());
    sum.copy_from(g);
  } else {
    ops::axpy(sum, 1.0, g);
  }
  any = true;
}

Linear::Linear(ParamStore& store, const std::string& name, int64_t in, int64_t out, Activation act, bool bias)
    : in_(in), out_(out), act_(act) {
  NCSREC_CHECK(in > 0 && out > 0, "linear layer " << name << " needs positive sizes, got " << in << " -> " << out);
  weight_ = store.add(name + ".weight", {in, out}, Init::XavierUniform);
  if (bias) bias_ = store.add(name + ".bias", {out}, Init::Zeros);
}

const Tensor& Linear::forward(const Tensor& x) {  // x [B, in] -> y [B, out]
  const Tensor& W = weight_->value;
  NCSREC_CHECK(W.defined(), "linear forward before the parameter store was finalised");
  NCSREC_CHECK(x.ndim() == 2 && x.dim(1) == in_, "linear expects [B, " << in_ << "], got " << x.describe());
  NCSREC_CHECK(x.dtype() == W.dtype() && x.device() == W.device(),
               "linear input " << x.describe() << " does not match its weight " << W.describe());
  const int64_t B = x.dim(0);
  y_ = ensure_buffer(y_buf_, B, out_, x.dtype(), x.device());
  ops::linear_forward(y_, x, W, bias_ ? &bias_->value : nullptr, act_ == Activation::ReLU);
  x_ = x;  // shares storage: the caller keeps x unchanged until backward
  return y_;
}

const Tensor& Linear::backward(const Tensor& dy, bool need_dx) {  // dy [B, out] -> dx [B, in]
  NCSREC_CHECK(x_.defined(), "linear backward before forward");
  const int64_t B = x_.dim(0);
  NCSREC_CHECK(dy.ndim() == 2 && dy.dim(0) == B && dy.dim(1) == out_,
               "linear backward expects dy [" << B << ", " << out_ << "], got " << dy.describe());
  const Tensor* dpre = &dy;
  if (act_ == Activation::ReLU) {
    // dpre = dy * (y > 0): y > 0 exactly where the pre-activation was > 0.
    dpre_ = ensure_buffer(dpre_buf_, B, out_, dy.dtype(), dy.device());
    ops::relu_backward(dpre_, dy, y_);
    dpre = &dpre_;
  }
  ops::gemm(weight_->grad, x_, true, *dpre, false, 1.0, 1.0);  // dW += xᵀ·dpre
  if (bias_) ops::bias_grad(bias_->grad, *dpre);             // db += colsum(dpre)
  if (!need_dx) return none_;
  dx_ = ensure_buffer(dx_buf_, B, in_, dy.dtype(), dy.device());
  ops::gemm(dx_, *dpre, false, weight_->value, true, 1.0, 0.0);  // dx = dpre·Wᵀ
  return dx_;
}

MLP::MLP(ParamStore& store, const std::string& prefix, int64_t in, const std::vector<int64_t>& sizes,
         bool final_activation)
    : in_(in) {
  if (sizes.empty()) throw UserError("MLP " + prefix + " needs at least one layer size");
  layers_.reserve(sizes.size());
  int64_t width = in;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] <= 0)
      throw UserError(NCSREC_STR_("MLP " << prefix << ": layer " << i << " has size " << sizes[i]
                                         << "; sizes must be positive"));
    const bool last = i + 1 == sizes.size();
    const Activation act = (!last || final_activation) ? Activation::ReLU : Activation::None;
    layers_.emplace_back(store, prefix + "." + std::to_string(i), width, sizes[i], act);
    width = sizes[i];
  }
}

int64_t MLP::out() const { return layers_.back().out(); }

const Tensor& MLP::forward(const Tensor& x) {
  const Tensor* h = &x;
  for (Linear& layer : layers_) h = &layer.forward(*h);
  return *h;
}

const Tensor& MLP::backward(const Tensor& dy, bool need_dx) {
  const Tensor* g = &dy;
  for (size_t i = layers_.size(); i-- > 0;) g = &layers_[i].backward(*g, i > 0 || need_dx);
  return *g;
}

}  // namespace ncsrec

// BatchNorm and LayerNorm: shape checks and buffers here, the loops in the device's ops
// (core/ops.h batch_norm_*, layer_norm_*; the CPU's in core/cpu_training_ops.cpp).
#include "core/layers/norm.h"

#include "core/error.h"
#include "core/layers/linear.h"
#include "core/ops.h"

namespace ncsrec {
namespace {

// x must be [B, features] with the parameters' dtype, where the parameters are.
void check_input(const Tensor& x, const Param* gamma, int64_t features, const std::string& name, const char* what) {
  NCSREC_CHECK(gamma->value.defined(), what << " " << name << " used before the parameter store was finalised");
  NCSREC_CHECK(x.ndim() == 2 && x.dim(1) == features && x.dtype() == gamma->value.dtype() &&
                   x.device() == gamma->value.device(),
               what << " " << name << " expects [B, " << features << "] of " << dtype_name(gamma->value.dtype())
                    << " on " << device_name(gamma->value.device()) << ", got " << x.describe());
}

}  // namespace

// ---- BatchNorm ---------------------------------------------------------------------------

BatchNorm::BatchNorm(ParamStore& store, const std::string& name, int64_t features, double momentum, double eps)
    : name_(name), features_(features), momentum_(momentum), eps_(eps) {
  NCSREC_CHECK(features > 0, "batch norm " << name << " needs a positive width, got " << features);
  NCSREC_CHECK(momentum >= 0 && momentum <= 1 && eps > 0,
               "batch norm " << name << ": momentum " << momentum << " or eps " << eps << " out of range");
  gamma_ = store.add(name + ".gamma", {features}, Init::Ones);
  beta_ = store.add(name + ".beta", {features}, Init::Zeros);
  running_mean_ = store.add_state(name + ".running_mean", {features}, Init::Zeros);
  running_var_ = store.add_state(name + ".running_var", {features}, Init::Ones);
}

const Tensor& BatchNorm::forward(const Tensor& x, bool training) {
  check_input(x, gamma_, features_, name_, "batch norm");
  const int64_t B = x.dim(0);
  if (training && B < 2)
    throw UserError(NCSREC_STR_("batch norm " << name_ << ": training needs batch statistics from 2 or more rows, "
                                              << "got a batch of " << B << " (use a larger batch size)"));
  y_ = ensure_buffer(y_buf_, B, features_, x.dtype(), x.device());
  if (training) xhat_ = ensure_buffer(xhat_buf_, B, features_, x.dtype(), x.device());
  mean_ = ensure_buffer(mean_buf_, 1, features_, DType::F64, x.device());
  inv_std_ = ensure_buffer(inv_std_buf_, 1, features_, DType::F64, x.device());
  ops::batch_norm_forward(x, gamma_->value, beta_->value, running_mean_->value, running_var_->value, momentum_, eps_,
                          training, mean_, inv_std_, training ? &xhat_ : nullptr, y_);
  trained_ = training;
  return y_;
}

const Tensor& BatchNorm::backward(const Tensor& dy) {
  NCSREC_CHECK(trained_, "batch norm " << name_ << " backward needs a training forward first");
  NCSREC_CHECK(dy.shape() == y_.shape() && dy.dtype() == y_.dtype() && dy.device() == y_.device(),
               "batch norm " << name_ << " backward expects dy " << y_.describe() << ", got " << dy.describe());
  dx_ = ensure_buffer(dx_buf_, dy.dim(0), features_, dy.dtype(), dy.device());
  sums_ = ensure_buffer(sums_buf_, 1, 2 * features_, DType::F64, dy.device());
  ops::batch_norm_backward(dy, xhat_, gamma_->value, inv_std_, sums_, gamma_->grad, beta_->grad, dx_);
  return dx_;
}

// ---- LayerNorm ---------------------------------------------------------------------------

LayerNorm::LayerNorm(ParamStore& store, const std::string& name, int64_t features, double eps)
    : name_(name), features_(features), eps_(eps) {
  NCSREC_CHECK(features > 0 && eps > 0, "layer norm " << name << ": width " << features << ", eps " << eps);
  gamma_ = store.add(name + ".gamma", {features}, Init::Ones);
  beta_ = store.add(name + ".beta", {features}, Init::Zeros);
}

const Tensor& LayerNorm::forward(const Tensor& x) {
  check_input(x, gamma_, features_, name_, "layer norm");
  const int64_t B = x.dim(0);
  y_ = ensure_buffer(y_buf_, B, features_, x.dtype(), x.device());
  xhat_ = ensure_buffer(xhat_buf_, B, features_, x.dtype(), x.device());
  inv_std_ = ensure_buffer(inv_std_buf_, B, 1, DType::F64, x.device());
  ops::layer_norm_forward(x, gamma_->value, beta_->value, eps_, inv_std_, xhat_, y_);
  return y_;
}

const Tensor& LayerNorm::backward(const Tensor& dy) {
  NCSREC_CHECK(y_.defined(), "layer norm " << name_ << " backward before forward");
  NCSREC_CHECK(dy.shape() == y_.shape() && dy.dtype() == y_.dtype() && dy.device() == y_.device(),
               "layer norm " << name_ << " backward expects dy " << y_.describe() << ", got " << dy.describe());
  dx_ = ensure_buffer(dx_buf_, dy.dim(0), features_, dy.dtype(), dy.device());
  sums_ = ensure_buffer(sums_buf_, 1, 2 * features_, DType::F64, dy.device());
  ops::layer_norm_backward(dy, xhat_, gamma_->value, inv_std_, sums_, gamma_->grad, beta_->grad, dx_);
  return dx_;
}

}  // namespace ncsrec

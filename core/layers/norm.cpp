// BatchNorm and LayerNorm: plain loops over [B, C] with OpenMP. Row-wise work is split by rows;
// column statistics are split by column blocks, each column summed over the rows in order, so
// no reduction ever depends on the thread count.
#include "core/layers/norm.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/layers/linear.h"

namespace ncsrec {
namespace {

constexpr int64_t kParallelMin = 1 << 14;  // below this, threads cost more than they save
constexpr int64_t kColumnBlock = 32;

// out[c] = Σ_r f(r, c), each column summed in row order. Threads split the columns, never the
// rows, so the sums are the same bits for any thread count.
template <class F>
void column_sums(std::vector<double>& out, int64_t rows, int64_t cols, const F& f) {
  const int64_t blocks = (cols + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t c0 = block * kColumnBlock, c1 = std::min(cols, c0 + kColumnBlock);
    double* o = out.data();
    for (int64_t c = c0; c < c1; ++c) o[c] = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = c0; c < c1; ++c) o[c] += f(r, c);
  }
}

// x must be [B, features] on the CPU with the parameters' dtype.
void check_input(const Tensor& x, const Param* gamma, int64_t features, const std::string& name, const char* what) {
  NCSREC_CHECK(gamma->value.defined(), what << " " << name << " used before the parameter store was finalised");
  NCSREC_USER_CHECK(x.device() == Device::CPU,
                    what << " " << name << " is not implemented on the " << device_name(x.device())
                         << " backend; use device: cpu for this model");
  NCSREC_CHECK(x.ndim() == 2 && x.dim(1) == features && x.dtype() == gamma->value.dtype(),
               what << " " << name << " expects [B, " << features << "] of " << dtype_name(gamma->value.dtype())
                    << ", got " << x.describe());
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
  const auto C = static_cast<size_t>(features);
  mean_.resize(C);
  inv_std_.resize(C);
  sum_dy_.resize(C);
  sum_dy_xhat_.resize(C);
}

template <class T>
void BatchNorm::forward_t(const Tensor& x, bool training) {
  const int64_t B = x.dim(0), C = features_;
  const T* xv = x.data<T>();
  T* rm = running_mean_->value.data<T>();
  T* rv = running_var_->value.data<T>();
  if (training) {
    column_sums(mean_, B, C, [&](int64_t r, int64_t c) { return static_cast<double>(xv[r * C + c]); });
    for (int64_t c = 0; c < C; ++c) mean_[c] /= static_cast<double>(B);
    // Two passes (mean, then squared deviations): no cancellation for large means.
    std::vector<double>& var = inv_std_;  // holds the sums of squares until it becomes 1/σ
    column_sums(var, B, C, [&](int64_t r, int64_t c) {
      const double d = xv[r * C + c] - mean_[c];
      return d * d;
    });
    const double bessel = static_cast<double>(B) / static_cast<double>(B - 1);
    for (int64_t c = 0; c < C; ++c) {
      const double biased = var[c] / static_cast<double>(B);
      rm[c] = static_cast<T>(momentum_ * rm[c] + (1 - momentum_) * mean_[c]);
      rv[c] = static_cast<T>(momentum_ * rv[c] + (1 - momentum_) * biased * bessel);
      inv_std_[c] = 1.0 / std::sqrt(biased + eps_);
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      mean_[c] = rm[c];
      inv_std_[c] = 1.0 / std::sqrt(static_cast<double>(rv[c]) + eps_);
    }
  }
  const T* g = gamma_->value.data<T>();
  const T* b = beta_->value.data<T>();
  T* y = y_.data<T>();
  T* xh = training ? xhat_.data<T>() : nullptr;
#pragma omp parallel for schedule(static) if (B * C >= kParallelMin)
  for (int64_t r = 0; r < B; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const double h = (xv[r * C + c] - mean_[c]) * inv_std_[c];
      if (xh) xh[r * C + c] = static_cast<T>(h);
      y[r * C + c] = static_cast<T>(g[c] * h + b[c]);
    }
}

const Tensor& BatchNorm::forward(const Tensor& x, bool training) {
  check_input(x, gamma_, features_, name_, "batch norm");
  const int64_t B = x.dim(0);
  if (training && B < 2)
    throw UserError(NCSREC_STR_("batch norm " << name_ << ": training needs batch statistics from 2 or more rows, "
                                              << "got a batch of " << B << " (use a larger batch size)"));
  y_ = ensure_buffer(y_buf_, B, features_, x.dtype(), x.device());
  if (training) xhat_ = ensure_buffer(xhat_buf_, B, features_, x.dtype(), x.device());
  if (x.dtype() == DType::F32) forward_t<float>(x, training);
  else forward_t<double>(x, training);
  trained_ = training;
  return y_;
}

template <class T>
void BatchNorm::backward_t(const Tensor& dy) {
  // With x̂ = (x − μ)/σ over the batch: dx = γ/(Bσ) · (B·dy − Σ_r dy − x̂ · Σ_r dy·x̂).
  const int64_t B = dy.dim(0), C = features_;
  const T* g = dy.data<T>();
  const T* xh = xhat_.data<T>();
  column_sums(sum_dy_, B, C, [&](int64_t r, int64_t c) { return static_cast<double>(g[r * C + c]); });
  column_sums(sum_dy_xhat_, B, C,
              [&](int64_t r, int64_t c) { return static_cast<double>(g[r * C + c]) * xh[r * C + c]; });
  T* dgamma = gamma_->grad.data<T>();
  T* dbeta = beta_->grad.data<T>();
  const T* gamma = gamma_->value.data<T>();
  for (int64_t c = 0; c < C; ++c) {
    dgamma[c] += static_cast<T>(sum_dy_xhat_[c]);
    dbeta[c] += static_cast<T>(sum_dy_[c]);
  }
  T* dx = dx_.data<T>();
  const double n = static_cast<double>(B);
#pragma omp parallel for schedule(static) if (B * C >= kParallelMin)
  for (int64_t r = 0; r < B; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = r * C + c;
      dx[i] = static_cast<T>(gamma[c] * inv_std_[c] / n * (n * g[i] - sum_dy_[c] - xh[i] * sum_dy_xhat_[c]));
    }
}

const Tensor& BatchNorm::backward(const Tensor& dy) {
  NCSREC_CHECK(trained_, "batch norm " << name_ << " backward needs a training forward first");
  NCSREC_CHECK(dy.shape() == y_.shape() && dy.dtype() == y_.dtype() && dy.device() == y_.device(),
               "batch norm " << name_ << " backward expects dy " << y_.describe() << ", got " << dy.describe());
  dx_ = ensure_buffer(dx_buf_, dy.dim(0), features_, dy.dtype(), dy.device());
  if (dy.dtype() == DType::F32) backward_t<float>(dy);
  else backward_t<double>(dy);
  return dx_;
}

// ---- LayerNorm ---------------------------------------------------------------------------

LayerNorm::LayerNorm(ParamStore& store, const std::string& name, int64_t features, double eps)
    : name_(name), features_(features), eps_(eps) {
  NCSREC_CHECK(features > 0 && eps > 0, "layer norm " << name << ": width " << features << ", eps " << eps);
  gamma_ = store.add(name + ".gamma", {features}, Init::Ones);
  beta_ = store.add(name + ".beta", {features}, Init::Zeros);
  sum_dy_.resize(static_cast<size_t>(features));
  sum_dy_xhat_.resize(static_cast<size_t>(features));
}

template <class T>
void LayerNorm::forward_t(const Tensor& x) {
  const int64_t B = x.dim(0), C = features_;
  const T* xv = x.data<T>();
  const T* g = gamma_->value.data<T>();
  const T* b = beta_->value.data<T>();
  T* xh = xhat_.data<T>();
  T* y = y_.data<T>();
  double* inv_std = inv_std_.data();
#pragma omp parallel for schedule(static) if (B * C >= kParallelMin)
  for (int64_t r = 0; r < B; ++r) {
    const T* xr = xv + r * C;
    double mean = 0, var = 0;
    for (int64_t c = 0; c < C; ++c) mean += xr[c];
    mean /= static_cast<double>(C);
    for (int64_t c = 0; c < C; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    const double inv = 1.0 / std::sqrt(var / static_cast<double>(C) + eps_);
    inv_std[r] = inv;
    for (int64_t c = 0; c < C; ++c) {
      const double h = (xr[c] - mean) * inv;
      xh[r * C + c] = static_cast<T>(h);
      y[r * C + c] = static_cast<T>(g[c] * h + b[c]);
    }
  }
}

const Tensor& LayerNorm::forward(const Tensor& x) {
  check_input(x, gamma_, features_, name_, "layer norm");
  const int64_t B = x.dim(0);
  y_ = ensure_buffer(y_buf_, B, features_, x.dtype(), x.device());
  xhat_ = ensure_buffer(xhat_buf_, B, features_, x.dtype(), x.device());
  if (static_cast<int64_t>(inv_std_.size()) < B) inv_std_.resize(static_cast<size_t>(B));
  if (x.dtype() == DType::F32) forward_t<float>(x);
  else forward_t<double>(x);
  return y_;
}

template <class T>
void LayerNorm::backward_t(const Tensor& dy) {
  // Per row, with ĝ = γ ⊙ dy: dx = 1/(Cσ) · (C·ĝ − Σ_c ĝ − x̂ · Σ_c ĝ·x̂).
  const int64_t B = dy.dim(0), C = features_;
  const T* g = dy.data<T>();
  const T* xh = xhat_.data<T>();
  const T* gamma = gamma_->value.data<T>();
  column_sums(sum_dy_, B, C, [&](int64_t r, int64_t c) { return static_cast<double>(g[r * C + c]); });
  column_sums(sum_dy_xhat_, B, C,
              [&](int64_t r, int64_t c) { return static_cast<double>(g[r * C + c]) * xh[r * C + c]; });
  T* dgamma = gamma_->grad.data<T>();
  T* dbeta = beta_->grad.data<T>();
  for (int64_t c = 0; c < C; ++c) {
    dgamma[c] += static_cast<T>(sum_dy_xhat_[c]);
    dbeta[c] += static_cast<T>(sum_dy_[c]);
  }
  T* dx = dx_.data<T>();
  const double n = static_cast<double>(C);
#pragma omp parallel for schedule(static) if (B * C >= kParallelMin)
  for (int64_t r = 0; r < B; ++r) {
    const int64_t row = r * C;
    double sum_g = 0, sum_g_xhat = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double gh = static_cast<double>(gamma[c]) * g[row + c];
      sum_g += gh;
      sum_g_xhat += gh * xh[row + c];
    }
    const double scale = inv_std_[static_cast<size_t>(r)] / n;
    for (int64_t c = 0; c < C; ++c) {
      const double gh = static_cast<double>(gamma[c]) * g[row + c];
      dx[row + c] = static_cast<T>(scale * (n * gh - sum_g - xh[row + c] * sum_g_xhat));
    }
  }
}

const Tensor& LayerNorm::backward(const Tensor& dy) {
  NCSREC_CHECK(y_.defined(), "layer norm " << name_ << " backward before forward");
  NCSREC_CHECK(dy.shape() == y_.shape() && dy.dtype() == y_.dtype() && dy.device() == y_.device(),
               "layer norm " << name_ << " backward expects dy " << y_.describe() << ", got " << dy.describe());
  dx_ = ensure_buffer(dx_buf_, dy.dim(0), features_, dy.dtype(), dy.device());
  if (dy.dtype() == DType::F32) backward_t<float>(dy);
  else backward_t<double>(dy);
  return dx_;
}

}  // namespace ncsrec

#include "models/three_tower.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/ops.h"

namespace ncsrec {

namespace {

// A list of input columns as runs of consecutive columns: (first input column, length), in order.
std::vector<std::pair<int64_t, int64_t>> runs_of(const std::vector<int64_t>& cols) {
  std::vector<std::pair<int64_t, int64_t>> runs;
  for (const int64_t c : cols)
    if (!runs.empty() && runs.back().first + runs.back().second == c) ++runs.back().second;
    else runs.emplace_back(c, 1);
  return runs;
}

// out[:, j] = x[:, cols[j]], run by run, where x is.
void gather_cols(Tensor& out, const Tensor& x, const std::vector<std::pair<int64_t, int64_t>>& runs) {
  int64_t at = 0;
  for (const auto& [begin, n] : runs) {
    out.copy_column_block(at, x, begin, n);
    at += n;
  }
}

// dx[:, cols[j]] += d[:, j], run by run.
void scatter_add_cols(Tensor& dx, const Tensor& d, const std::vector<std::pair<int64_t, int64_t>>& runs) {
  int64_t at = 0;
  for (const auto& [begin, n] : runs) {
    ops::add_columns(dx, begin, d, at, n);
    at += n;
  }
}

}  // namespace

ThreeTower::ThreeTower(ParamStore& store, std::vector<int64_t> user_cols, std::vector<int64_t> item_cols,
                       const std::vector<int64_t>& user_sizes, const std::vector<int64_t>& item_sizes, bool gate,
                       const std::vector<int64_t>& gate_sizes, const std::vector<std::string>& tasks,
                       const LayerOptions& layers)
    : user_cols_(std::move(user_cols)), item_cols_(std::move(item_cols)) {
  NCSREC_CHECK(!user_cols_.empty() && !item_cols_.empty(), "three_tower: both sides need input columns");
  NCSREC_CHECK(!user_sizes.empty() && !item_sizes.empty() && user_sizes.back() == item_sizes.back(),
               "three_tower: the user and item towers must end in the same width");
  NCSREC_CHECK(!tasks.empty(), "three_tower: at least one task");
  user_runs_ = runs_of(user_cols_);
  item_runs_ = runs_of(item_cols_);
  dim_ = user_sizes.back();
  user_ = std::make_unique<FeedForward>(store, "user_tower", static_cast<int64_t>(user_cols_.size()), user_sizes, false,
                                        layers);
  for (const auto& t : tasks) {
    bias_.push_back(store.add("logit_bias." + t, {1}, Init::Zeros));
    bias_.back()->decay = false;
  }
  for (const auto& t : tasks)
    item_.push_back(std::make_unique<FeedForward>(store, "item_tower." + t, static_cast<int64_t>(item_cols_.size()),
                                                  item_sizes, false, layers));
  if (gate && tasks.size() > 1) {
    std::vector<int64_t> sizes = gate_sizes;
    sizes.push_back(static_cast<int64_t>(tasks.size()));
    gate_ = std::make_unique<FeedForward>(store, "user_gate", static_cast<int64_t>(user_cols_.size()), sizes, false,
                                          layers);
  }
  v_.resize(tasks.size());
  logit_bufs_.resize(tasks.size());
  logits_.resize(tasks.size());
}

ThreeTower::~ThreeTower() = default;

void ThreeTower::forward(const Tensor& x, const Pass& pass) {
  dtype_ = x.dtype();
  in_ = x.dim(1);
  const Device device = x.device();
  const int64_t B = x.dim(0);
  const size_t T = item_.size();
  xu_ = ensure_buffer(xu_buf_, B, static_cast<int64_t>(user_cols_.size()), dtype_, device);
  xi_ = ensure_buffer(xi_buf_, B, static_cast<int64_t>(item_cols_.size()), dtype_, device);
  gather_cols(xu_, x, user_runs_);
  gather_cols(xi_, x, item_runs_);
  u_ = &user_->forward(xu_, pass);
  for (size_t t = 0; t < T; ++t) v_[t] = &item_[t]->forward(xi_, pass);
  weights_ = ensure_buffer(weights_buf_, B, static_cast<int64_t>(T), dtype_, device);
  mixed_ = ensure_buffer(mixed_buf_, B, 1, dtype_, device);
  for (size_t t = 0; t < T; ++t) logits_[t] = ensure_buffer(logit_bufs_[t], B, 1, dtype_, device);
  if (gate_) {
    ops::softmax_rows(weights_, gate_->forward(xu_, pass));
  } else {  // w_t = 1/T, rounded in the model's dtype
    weights_.zero_();
    const double share = dtype_ == DType::F32 ? static_cast<double>(1.0f / static_cast<float>(T)) : 1.0 / static_cast<double>(T);
    ops::add_scalar(weights_, share);
  }
  std::vector<const Tensor*> v(v_.begin(), v_.end()), bias;
  std::vector<Tensor*> logits;
  for (size_t t = 0; t < T; ++t) {
    bias.push_back(&bias_[t]->value);
    logits.push_back(&logits_[t]);
  }
  ops::three_tower_forward(*u_, v, bias, weights_, logits, mixed_);
}

namespace {
// A tensor's values on the host (a copy when it is on a device).
Tensor host_copy(const Tensor& t) { return t.device() == Device::CPU ? t : t.to(Device::CPU); }
}  // namespace

void ThreeTower::user_side(Tensor& out) const {
  const int64_t B = u_->dim(0), T = static_cast<int64_t>(item_.size()), n = serving_dim();
  out = ensure_buffer(out, B, n, dtype_, Device::CPU);
  const Tensor u_host = host_copy(*u_), w_host = host_copy(weights_);
  std::vector<Tensor> b_host;
  for (const Param* b : bias_) b_host.push_back(host_copy(b->value));
  auto run = [&](auto zero) {
    using V = decltype(zero);
    const V* u = u_host.data<V>();
    const V* w = w_host.data<V>();
    V* o = out.data<V>();
    for (int64_t r = 0; r < B; ++r) {
      V bias = 0;
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t j = 0; j < dim_; ++j) o[r * n + t * dim_ + j] = w[r * T + t] * u[r * dim_ + j];
        bias += w[r * T + t] * b_host[static_cast<size_t>(t)].data<V>()[0];
      }
      o[r * n + T * dim_] = bias;
    }
  };
  if (dtype_ == DType::F32) run(0.0f);
  else run(0.0);
}

void ThreeTower::item_side(Tensor& out) const {
  const int64_t B = u_->dim(0), T = static_cast<int64_t>(item_.size()), n = serving_dim();
  out = ensure_buffer(out, B, n, dtype_, Device::CPU);
  std::vector<Tensor> v_host;
  for (const Tensor* v : v_) v_host.push_back(host_copy(*v));
  auto run = [&](auto zero) {
    using V = decltype(zero);
    V* o = out.data<V>();
    for (int64_t r = 0; r < B; ++r) {
      for (int64_t t = 0; t < T; ++t) {
        const V* v = v_host[static_cast<size_t>(t)].data<V>() + r * dim_;
        std::copy(v, v + dim_, o + r * n + t * dim_);
      }
      o[r * n + T * dim_] = V(1);
    }
  };
  if (dtype_ == DType::F32) run(0.0f);
  else run(0.0);
}

const Tensor& ThreeTower::backward(const std::vector<const Tensor*>& dlogit, const Tensor* dmixed) {
  const int64_t B = u_->dim(0);
  const size_t T = item_.size();
  const Device device = u_->device();
  NCSREC_CHECK(dlogit.size() == T, "three_tower: one logit gradient slot per task");
  Tensor du = ensure_buffer(du_buf_, B, dim_, dtype_, device);
  Tensor dg = ensure_buffer(dg_buf_, B, static_cast<int64_t>(T), dtype_, device);
  dx_ = ensure_buffer(dx_buf_, B, in_, dtype_, device);
  dx_.zero_();
  dv_bufs_.resize(T);
  dl_bufs_.resize(T);
  std::vector<Tensor> dv(T), dl(T);
  for (size_t t = 0; t < T; ++t) {
    dv[t] = ensure_buffer(dv_bufs_[t], B, dim_, dtype_, device);
    dl[t] = ensure_buffer(dl_bufs_[t], B, 1, dtype_, device);  // dL/dl_t in total: its loss and its share of S
  }
  std::vector<const Tensor*> v(v_.begin(), v_.end()), logits;
  std::vector<Tensor*> dlp, dvp;
  for (size_t t = 0; t < T; ++t) {
    logits.push_back(&logits_[t]);
    dlp.push_back(&dl[t]);
    dvp.push_back(&dv[t]);
  }
  ops::three_tower_backward(dlogit, dmixed, *u_, v, logits, weights_, dlp, dg, du, dvp);
  for (size_t t = 0; t < T; ++t) ops::bias_grad(bias_[t]->grad, dl[t]);  // db_t += Σ_r dl_t
  for (size_t t = 0; t < T; ++t) scatter_add_cols(dx_, item_[t]->backward(dv[t], true), item_runs_);
  scatter_add_cols(dx_, user_->backward(du, true), user_runs_);
  if (gate_) scatter_add_cols(dx_, gate_->backward(dg, true), user_runs_);
  return dx_;
}

int64_t ThreeTower::multiply_adds_per_row() const {
  int64_t n = user_->multiply_adds_per_row() + (gate_ ? gate_->multiply_adds_per_row() : 0);
  for (const auto& t : item_) n += t->multiply_adds_per_row() + dim_;
  return n;
}

}  // namespace ncsrec

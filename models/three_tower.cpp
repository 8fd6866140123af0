#include "models/three_tower.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/ops.h"

namespace ncsrec {

namespace {

template <class T>
void gather_cols(Tensor& out, const Tensor& x, const std::vector<int64_t>& cols) {
  const int64_t B = x.dim(0), in = x.dim(1), n = static_cast<int64_t>(cols.size());
  const T* src = x.data<T>();
  T* dst = out.data<T>();
  for (int64_t r = 0; r < B; ++r)
    for (int64_t j = 0; j < n; ++j) dst[r * n + j] = src[r * in + cols[static_cast<size_t>(j)]];
}

template <class T>
void scatter_add_cols(Tensor& dx, const Tensor& d, const std::vector<int64_t>& cols) {
  const int64_t B = dx.dim(0), in = dx.dim(1), n = static_cast<int64_t>(cols.size());
  const T* src = d.data<T>();
  T* dst = dx.data<T>();
  for (int64_t r = 0; r < B; ++r)
    for (int64_t j = 0; j < n; ++j) dst[r * in + cols[static_cast<size_t>(j)]] += src[r * n + j];
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
  const int64_t B = x.dim(0);
  const size_t T = item_.size();
  xu_ = ensure_buffer(xu_buf_, B, static_cast<int64_t>(user_cols_.size()), dtype_, Device::CPU);
  xi_ = ensure_buffer(xi_buf_, B, static_cast<int64_t>(item_cols_.size()), dtype_, Device::CPU);
  if (dtype_ == DType::F32) {
    gather_cols<float>(xu_, x, user_cols_);
    gather_cols<float>(xi_, x, item_cols_);
  } else {
    gather_cols<double>(xu_, x, user_cols_);
    gather_cols<double>(xi_, x, item_cols_);
  }
  u_ = &user_->forward(xu_, pass);
  for (size_t t = 0; t < T; ++t) v_[t] = &item_[t]->forward(xi_, pass);
  weights_ = ensure_buffer(weights_buf_, B, static_cast<int64_t>(T), dtype_, Device::CPU);
  mixed_ = ensure_buffer(mixed_buf_, B, 1, dtype_, Device::CPU);
  for (size_t t = 0; t < T; ++t) logits_[t] = ensure_buffer(logit_bufs_[t], B, 1, dtype_, Device::CPU);
  if (gate_) ops::softmax_rows(weights_, gate_->forward(xu_, pass));
  auto run = [&](auto zero) {
    using V = decltype(zero);
    const V* u = u_->data<V>();
    V* w = weights_.data<V>();
    V* s = mixed_.data<V>();
    if (!gate_) std::fill(w, w + B * static_cast<int64_t>(T), V(1) / static_cast<V>(T));
    for (int64_t r = 0; r < B; ++r) {
      V mix = 0;
      for (size_t t = 0; t < T; ++t) {
        const V* v = v_[t]->data<V>() + r * dim_;
        V l = bias_[t]->value.data<V>()[0];
        for (int64_t j = 0; j < dim_; ++j) l += u[r * dim_ + j] * v[j];
        logits_[t].data<V>()[r] = l;
        mix += w[r * static_cast<int64_t>(T) + static_cast<int64_t>(t)] * l;
      }
      s[r] = mix;
    }
  };
  if (dtype_ == DType::F32) run(0.0f);
  else run(0.0);
}

void ThreeTower::user_side(Tensor& out) const {
  const int64_t B = u_->dim(0), T = static_cast<int64_t>(item_.size()), n = serving_dim();
  out = ensure_buffer(out, B, n, dtype_, Device::CPU);
  auto run = [&](auto zero) {
    using V = decltype(zero);
    const V* u = u_->data<V>();
    const V* w = weights_.data<V>();
    V* o = out.data<V>();
    for (int64_t r = 0; r < B; ++r) {
      V bias = 0;
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t j = 0; j < dim_; ++j) o[r * n + t * dim_ + j] = w[r * T + t] * u[r * dim_ + j];
        bias += w[r * T + t] * bias_[static_cast<size_t>(t)]->value.data<V>()[0];
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
  auto run = [&](auto zero) {
    using V = decltype(zero);
    V* o = out.data<V>();
    for (int64_t r = 0; r < B; ++r) {
      for (int64_t t = 0; t < T; ++t) {
        const V* v = v_[static_cast<size_t>(t)]->data<V>() + r * dim_;
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
  NCSREC_CHECK(dlogit.size() == T, "three_tower: one logit gradient slot per task");
  Tensor du = ensure_buffer(du_buf_, B, dim_, dtype_, Device::CPU);
  Tensor dg = ensure_buffer(dg_buf_, B, static_cast<int64_t>(T), dtype_, Device::CPU);
  dx_ = ensure_buffer(dx_buf_, B, in_, dtype_, Device::CPU);
  std::memset(dx_.raw(), 0, dx_.nbytes());
  dv_bufs_.resize(T);
  std::vector<Tensor> dv(T);
  for (size_t t = 0; t < T; ++t) dv[t] = ensure_buffer(dv_bufs_[t], B, dim_, dtype_, Device::CPU);
  auto run = [&](auto zero) {
    using V = decltype(zero);
    const V* u = u_->data<V>();
    const V* w = weights_.data<V>();
    V* du_p = du.data<V>();
    std::fill(du_p, du_p + B * dim_, V(0));
    // dL/dl_t in total: its own loss, and its share of the mixed score.
    std::vector<V> dl(static_cast<size_t>(B) * T);
    for (int64_t r = 0; r < B; ++r) {
      const V ds = dmixed ? dmixed->data<V>()[r] : V(0);
      V dot = 0;  // Σ_s w_s·dL/dw_s, for the softmax backward
      for (size_t t = 0; t < T; ++t) {
        const V wt = w[r * static_cast<int64_t>(T) + static_cast<int64_t>(t)];
        dl[static_cast<size_t>(r) * T + t] = (dlogit[t] ? dlogit[t]->data<V>()[r] : V(0)) + ds * wt;
        dot += wt * ds * logits_[t].data<V>()[r];
      }
      for (size_t t = 0; t < T; ++t) {
        const V wt = w[r * static_cast<int64_t>(T) + static_cast<int64_t>(t)];
        dg.data<V>()[r * static_cast<int64_t>(T) + static_cast<int64_t>(t)] = wt * (ds * logits_[t].data<V>()[r] - dot);
      }
    }
    for (size_t t = 0; t < T; ++t) {
      const V* v = v_[t]->data<V>();
      V* d = dv[t].data<V>();
      for (int64_t r = 0; r < B; ++r) {
        const V g = dl[static_cast<size_t>(r) * T + t];
        for (int64_t j = 0; j < dim_; ++j) {
          d[r * dim_ + j] = g * u[r * dim_ + j];
          du_p[r * dim_ + j] += g * v[r * dim_ + j];
        }
      }
    }
    for (size_t t = 0; t < T; ++t) {
      V db = 0;
      for (int64_t r = 0; r < B; ++r) db += dl[static_cast<size_t>(r) * T + t];
      bias_[t]->grad.data<V>()[0] += db;
    }
    for (size_t t = 0; t < T; ++t) scatter_add_cols<V>(dx_, item_[t]->backward(dv[t], true), item_cols_);
    scatter_add_cols<V>(dx_, user_->backward(du, true), user_cols_);
    if (gate_) scatter_add_cols<V>(dx_, gate_->backward(dg, true), user_cols_);
  };
  if (dtype_ == DType::F32) run(0.0f);
  else run(0.0);
  return dx_;
}

int64_t ThreeTower::multiply_adds_per_row() const {
  int64_t n = user_->multiply_adds_per_row() + (gate_ ? gate_->multiply_adds_per_row() : 0);
  for (const auto& t : item_) n += t->multiply_adds_per_row() + dim_;
  return n;
}

}  // namespace ncsrec

// The DMMP student (PAPERS.md §5): a user tower, one item tower per task and a user-preference
// gate, over column subsets of the model's input vector.
//
//   u   = f_u(x[:, user columns])              [B, d]
//   v_t = f_t(x[:, item columns])              [B, d]   one item tower per task
//   l_t = u · v_t + b_t                        task t's logit (b_t a learned scalar)
//   w   = softmax(f_g(x[:, user columns]))     [B, T]   the gate (w_t = 1/T without it)
//   S   = Σ_t w_t · l_t                        the mixed score
//
// S is an inner product of the serving form: the user side [w_1·u; …; w_T·u; Σ_t w_t·b_t]
// against the item side [v_1; …; v_T; 1], so one nearest-neighbour index over the item side
// retrieves by S. (The last term is the same for every item of a query: it sets the scale of
// σ(S), not the ranking.)
// Parameters: `user_tower.<i>.*`, `item_tower.<task>.<i>.*`, `user_gate.<i>.*`, `logit_bias.<task>`.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/layers/linear.h"
#include "core/params.h"
#include "models/feed_forward.h"

namespace ncsrec {

class ThreeTower {
 public:
  // `user_cols`, `item_cols`: the input columns each side reads. Tower MLPs are hidden layers
  // (with `layers`' norm and dropout) and a linear output layer of the last size.
  ThreeTower(ParamStore& store, std::vector<int64_t> user_cols, std::vector<int64_t> item_cols,
             const std::vector<int64_t>& user_sizes, const std::vector<int64_t>& item_sizes, bool gate,
             const std::vector<int64_t>& gate_sizes, const std::vector<std::string>& tasks, const LayerOptions& layers);
  ~ThreeTower();
  ThreeTower(const ThreeTower&) = delete;
  ThreeTower& operator=(const ThreeTower&) = delete;

  size_t tasks() const { return item_.size(); }
  int64_t dim() const { return dim_; }
  int64_t serving_dim() const { return static_cast<int64_t>(item_.size()) * dim_ + 1; }

  // Everything above for the rows of x [B, in].
  void forward(const Tensor& x, const Pass& pass);
  const Tensor& logit(size_t task) const { return logits_[task]; }  // [B, 1]
  const Tensor& mixed() const { return mixed_; }                    // [B, 1]
  const Tensor& gate_weights() const { return weights_; }           // [B, T]
  const Tensor& user_vector() const { return *u_; }                 // [B, d]
  const Tensor& item_vector(size_t task) const { return *v_[task]; }

  // The serving form of the last forward: [B, T·d + 1] rows [w_1·u; …; w_T·u; Σ w_t·b_t] and
  // [v_1; …; v_T; 1].
  void user_side(Tensor& out) const;
  void item_side(Tensor& out) const;

  // dlogit[t]: dL/dl_t [B, 1] or null; dmixed: dL/dS [B, 1] or null. Parameter gradients
  // accumulate; returns dL/dx [B, in] (this object's buffer), zero outside the read columns.
  const Tensor& backward(const std::vector<const Tensor*>& dlogit, const Tensor* dmixed);

  int64_t multiply_adds_per_row() const;

 private:
  std::vector<int64_t> user_cols_, item_cols_;
  std::vector<std::pair<int64_t, int64_t>> user_runs_, item_runs_;  // the columns as (first, length) runs
  int64_t dim_ = 0;
  std::unique_ptr<FeedForward> user_, gate_;
  std::vector<std::unique_ptr<FeedForward>> item_;
  std::vector<Param*> bias_;  // per task
  DType dtype_ = DType::F32;
  int64_t in_ = 0;
  Tensor xu_buf_, xu_, xi_buf_, xi_;
  const Tensor* u_ = nullptr;
  std::vector<const Tensor*> v_;
  std::vector<Tensor> logit_bufs_, logits_;
  Tensor mixed_buf_, mixed_, weights_buf_, weights_;
  Tensor du_buf_, dg_buf_, dx_buf_, dx_;
  std::vector<Tensor> dv_bufs_, dl_bufs_;
};

}  // namespace ncsrec

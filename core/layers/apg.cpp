// ApgLinear (see apg.h): the big products (x·U, g·V and their backward, the factor products
// of over-parameterisation) are ops::gemm calls; the per-row K×K product with the generated
// S_i and its backward are ops::apg_rows_* (each row's sums in a fixed order, so the result
// does not depend on the thread count), the generated bias's columns ops::add_columns and
// Tensor::copy_column_block. Every op runs on the parameters' device.
//
// Not here: the hypernetwork's own maths (it is an MLP of linear.h).
#include "core/layers/apg.h"

#include "core/error.h"
#include "core/ops.h"

namespace ncsrec {
namespace {

// Validates sizes and options before anything is added to the store, so a bad config leaves
// the store untouched.
ApgOptions checked(const std::string& name, int64_t in, int64_t out, int64_t condition_dim, const ApgOptions& o) {
  NCSREC_USER_CHECK(in > 0 && out > 0 && condition_dim > 0,
                    "APG layer " << name << " needs positive sizes, got in " << in << ", out " << out
                                 << ", condition_dim " << condition_dim);
  NCSREC_USER_CHECK(o.rank > 0, "APG layer " << name << ": rank must be positive, got " << o.rank);
  NCSREC_USER_CHECK(o.overparam == 0 || o.overparam >= o.rank,
                    "APG layer " << name << ": overparam must be 0 (off) or at least the rank " << o.rank << ", got "
                                 << o.overparam);
  NCSREC_USER_CHECK(!o.self_condition || condition_dim == in,
                    "APG layer " << name << ": a self-wise condition is the layer's input, so condition_dim must be "
                                 << in << ", got " << condition_dim);
  for (size_t i = 0; i < o.hyper_hidden.size(); ++i)
    NCSREC_USER_CHECK(o.hyper_hidden[i] > 0, "APG layer " << name << ": hypernetwork hidden layer " << i
                                                          << " has size " << o.hyper_hidden[i]
                                                          << "; sizes must be positive");
  return o;
}

std::vector<int64_t> hyper_sizes(const ApgOptions& o, int64_t out) {
  std::vector<int64_t> sizes = o.hyper_hidden;
  sizes.push_back(o.rank * o.rank + (o.generate_bias ? out : 0));
  return sizes;
}

}  // namespace

ApgLinear::ApgLinear(ParamStore& store, const std::string& name, int64_t in, int64_t out, int64_t condition_dim,
                     const ApgOptions& options, Activation act)
    : in_(in),
      out_(out),
      rank_(options.rank),
      condition_dim_(condition_dim),
      options_(checked(name, in, out, condition_dim, options)),
      act_(act),
      hyper_(store, name + ".hyper", condition_dim, hyper_sizes(options_, out), /*final_activation=*/false) {
  const int64_t K = rank_, P = options_.overparam;
  if (P == 0) {
    u_ = store.add(name + ".U", {in, K}, Init::XavierUniform);
    v_ = store.add(name + ".V", {K, out}, Init::XavierUniform);
    params_ = {u_, v_};
  } else {
    u_l_ = store.add(name + ".U_l", {in, P}, Init::XavierUniform);
    u_r_ = store.add(name + ".U_r", {P, K}, Init::XavierUniform);
    v_l_ = store.add(name + ".V_l", {K, P}, Init::XavierUniform);
    v_r_ = store.add(name + ".V_r", {P, out}, Init::XavierUniform);
    params_ = {u_l_, u_r_, v_l_, v_r_};
  }
  if (!options_.generate_bias) {
    bias_ = store.add(name + ".bias", {out}, Init::Zeros);
    params_.push_back(bias_);
  }
  for (size_t i = 0; i < hyper_.depth(); ++i) {
    hyper_params_.push_back(hyper_.layer(i).weight());
    hyper_params_.push_back(hyper_.layer(i).bias());
  }
  params_.insert(params_.end(), hyper_params_.begin(), hyper_params_.end());
}

const Tensor& ApgLinear::forward(const Tensor& x) {
  NCSREC_CHECK(options_.self_condition, "APG forward(x) without a condition needs a self-wise layer "
                                        "(options.self_condition); this layer takes forward(x, z)");
  return forward(x, x);
}

const Tensor& ApgLinear::forward(const Tensor& x, const Tensor& z) {  // x [B, in], z [B, cond] -> y [B, out]
  const Param* first = params_.front();
  NCSREC_CHECK(first->value.defined(), "APG forward before the parameter store was finalised");
  const DType dtype = first->value.dtype();
  NCSREC_CHECK(x.ndim() == 2 && x.dim(1) == in_, "APG layer expects x [B, " << in_ << "], got " << x.describe());
  NCSREC_CHECK(z.ndim() == 2 && z.dim(1) == condition_dim_,
               "APG layer expects the condition z [B, " << condition_dim_ << "], got " << z.describe());
  NCSREC_CHECK(z.dim(0) == x.dim(0), "APG condition " << z.describe() << " has another batch than x " << x.describe());
  NCSREC_CHECK(x.dtype() == dtype && z.dtype() == dtype && x.device() == first->value.device() &&
                   z.device() == x.device(),
               "APG inputs x " << x.describe() << ", z " << z.describe() << " do not match the parameters "
                               << first->value.describe());
  if (options_.self_condition)
    NCSREC_CHECK(z.raw() == x.raw() && z.shape() == x.shape(),
                 "a self-wise APG layer conditions on its own input: pass z = x (or call forward(x))");
  const int64_t B = x.dim(0), K = rank_;
  const Device device = x.device();

  if (options_.overparam > 0) {  // U = U_l·U_r, V = V_l·V_r with the factors' current values
    u_full_ = ensure_buffer(u_full_, in_, K, dtype, device);
    v_full_ = ensure_buffer(v_full_, K, out_, dtype, device);
    ops::gemm(u_full_, u_l_->value, false, u_r_->value, false, 1.0, 0.0);
    ops::gemm(v_full_, v_l_->value, false, v_r_->value, false, 1.0, 0.0);
  }
  h_ = ensure_buffer(h_buf_, B, K, dtype, device);
  ops::gemm(h_, x, false, u_matrix(), false, 1.0, 0.0);  // h = x·U
  s_ = hyper_.forward(z);                                // s = G(z) [B, K² (+ out)]
  g_ = ensure_buffer(g_buf_, B, K, dtype, device);
  ops::apg_rows_forward(g_, h_, s_);  // g_i = h_i·S_i
  y_ = ensure_buffer(y_buf_, B, out_, dtype, device);
  ops::gemm(y_, g_, false, v_matrix(), false, 1.0, 0.0);  // y = g·V
  if (bias_) ops::bias_add(y_, bias_->value);
  else ops::add_columns(y_, 0, s_, K * K, out_);  // b_i = s[i, K²:K²+out]
  if (act_ == Activation::ReLU) ops::relu_forward(y_, y_);
  x_ = x;  // both shared with the caller: unchanged until backward
  z_ = z;
  return y_;
}

const Tensor& ApgLinear::backward(const Tensor& dy, bool need_dx, bool need_dz) {  // dy [B, out]
  NCSREC_CHECK(x_.defined(), "APG backward before forward");
  const int64_t B = x_.dim(0), K = rank_;
  NCSREC_CHECK(dy.ndim() == 2 && dy.dim(0) == B && dy.dim(1) == out_,
               "APG backward expects dy [" << B << ", " << out_ << "], got " << dy.describe());
  NCSREC_CHECK(dy.dtype() == y_.dtype() && dy.device() == y_.device(),
               "APG backward: dy " << dy.describe() << " does not match the output " << y_.describe());
  const DType dtype = dy.dtype();
  const Device device = dy.device();
  const bool self = options_.self_condition;
  dz_ = Tensor();

  const Tensor* dpre = &dy;
  if (act_ == Activation::ReLU) {
    // dpre = dy * (y > 0): y > 0 exactly where the pre-activation was > 0.
    dpre_ = ensure_buffer(dpre_buf_, B, out_, dtype, device);
    ops::relu_backward(dpre_, dy, y_);
    dpre = &dpre_;
  }

  // V: dV = gᵀ·dpre; with overparam, dV_l += dV·V_rᵀ and dV_r += V_lᵀ·dV.
  if (v_) {
    ops::gemm(v_->grad, g_, true, *dpre, false, 1.0, 1.0);
  } else {
    dv_full_ = ensure_buffer(dv_full_, K, out_, dtype, device);
    ops::gemm(dv_full_, g_, true, *dpre, false, 1.0, 0.0);
    ops::gemm(v_l_->grad, dv_full_, false, v_r_->value, true, 1.0, 1.0);
    ops::gemm(v_r_->grad, v_l_->value, true, dv_full_, false, 1.0, 1.0);
  }
  if (bias_) ops::bias_grad(bias_->grad, *dpre);  // db += colsum(dpre)

  dg_ = ensure_buffer(dg_buf_, B, K, dtype, device);
  ops::gemm(dg_, *dpre, false, v_matrix(), true, 1.0, 0.0);  // dg = dpre·Vᵀ
  const int64_t s_cols = s_.dim(1);
  ds_ = ensure_buffer(ds_buf_, B, s_cols, dtype, device);
  dh_ = ensure_buffer(dh_buf_, B, K, dtype, device);
  ops::apg_rows_backward(ds_, dh_, h_, s_, dg_);  // dS_i = h_iᵀ·dg_i, dh_i = S_i·dg_i
  if (!bias_) ds_.copy_column_block(K * K, *dpre, 0, out_);  // the generated bias's gradient

  // U: dU = xᵀ·dh; with overparam, dU_l += dU·U_rᵀ and dU_r += U_lᵀ·dU.
  if (u_) {
    ops::gemm(u_->grad, x_, true, dh_, false, 1.0, 1.0);
  } else {
    du_full_ = ensure_buffer(du_full_, in_, K, dtype, device);
    ops::gemm(du_full_, x_, true, dh_, false, 1.0, 0.0);
    ops::gemm(u_l_->grad, du_full_, false, u_r_->value, true, 1.0, 1.0);
    ops::gemm(u_r_->grad, u_l_->value, true, du_full_, false, 1.0, 1.0);
  }

  // The hypernetwork accumulates its own parameter gradients; its input gradient is dz.
  const bool hyper_dx = self ? need_dx : need_dz;
  const Tensor& dz = hyper_.backward(ds_, hyper_dx);
  if (!self && need_dz) dz_ = dz;
  if (!need_dx) return none_;
  dx_ = ensure_buffer(dx_buf_, B, in_, dtype, device);
  ops::gemm(dx_, dh_, false, u_matrix(), true, 1.0, 0.0);  // dx = dh·Uᵀ
  if (self) ops::axpy(dx_, 1.0, dz);                       // z = x: both paths reach x
  return dx_;
}

void ApgLinear::fold_into(ApgLinear& folded) const {
  const ApgOptions& f = folded.options_;
  NCSREC_CHECK(f.overparam == 0, "APG fold target must have overparam 0, got " << f.overparam);
  NCSREC_CHECK(folded.in_ == in_ && folded.out_ == out_ && folded.condition_dim_ == condition_dim_ &&
                   f.rank == options_.rank && f.hyper_hidden == options_.hyper_hidden &&
                   f.generate_bias == options_.generate_bias && f.self_condition == options_.self_condition &&
                   folded.act_ == act_,
               "APG fold target differs in shape or options from the layer: in " << folded.in_ << " vs " << in_
                   << ", out " << folded.out_ << " vs " << out_ << ", condition_dim " << folded.condition_dim_
                   << " vs " << condition_dim_ << ", rank " << f.rank << " vs " << options_.rank);
  const Tensor& mine = params_.front()->value;
  const Tensor& theirs = folded.u_->value;
  NCSREC_CHECK(mine.defined() && theirs.defined(), "APG fold needs both parameter stores finalised");
  NCSREC_CHECK(mine.dtype() == theirs.dtype(),
               "APG fold between dtypes " << dtype_name(mine.dtype()) << " and " << dtype_name(theirs.dtype()));
  if (u_) {
    folded.u_->value.copy_from(u_->value);
    folded.v_->value.copy_from(v_->value);
  } else {
    // Multiplied out on this layer's device, then copied (the stores may live on different devices).
    Tensor u = Tensor::empty({in_, rank_}, mine.dtype(), mine.device());
    Tensor v = Tensor::empty({rank_, out_}, mine.dtype(), mine.device());
    ops::gemm(u, u_l_->value, false, u_r_->value, false, 1.0, 0.0);
    ops::gemm(v, v_l_->value, false, v_r_->value, false, 1.0, 0.0);
    folded.u_->value.copy_from(u);
    folded.v_->value.copy_from(v);
  }
  if (bias_) folded.bias_->value.copy_from(bias_->value);
  for (size_t i = 0; i < hyper_params_.size(); ++i) folded.hyper_params_[i]->value.copy_from(hyper_params_[i]->value);
}

int64_t ApgLinear::multiply_adds_per_row() const {
  int64_t n = in_ * rank_ + rank_ * rank_ + rank_ * out_;
  for (size_t i = 0; i < hyper_params_.size(); i += 2) n += shape_numel(hyper_params_[i]->shape);
  return n;
}

int64_t ApgLinear::parameter_count() const {
  int64_t n = in_ * rank_ + rank_ * out_ + (bias_ ? out_ : 0);
  for (const Param* p : hyper_params_) n += shape_numel(p->shape);
  return n;
}

}  // namespace ncsrec

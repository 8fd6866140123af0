// APG: Adaptive Parameter Generation (NeurIPS 2022, PAPERS.md §4), a drop-in for a hidden
// Linear whose weight is generated per instance from a condition z:
//
//   y_i = act(((x_i·U) · S_i) · V + b_i),   S_i = reshape(G(z_i)) ∈ R^{K×K} (row-major),
//
// with U [in, K] and V [K, out] shared static parameters (low rank plus decomposed forward:
// W_i = U S_i V is never materialised) and G a hypernetwork MLP on z. Per row the cost is
// O(in·K + K² + K·out) plus the hypernetwork's, instead of O(in·out).
//
// Shapes: x [B, in], z [B, condition_dim], h = x·U [B, K], s = G(z) [B, K² (+ out)],
// g_i = h_i·S_i [B, K], y = g·V + b [B, out].
//
// Options:
// - rank K; hypernetwork `<name>.hyper` = MLP(condition_dim → hyper_hidden… → K² (+ out)),
//   ReLU between its layers, no final activation (the MLP class of linear.h).
// - overparam P (0 = off, else P ≥ K): U = U_l·U_r and V = V_l·V_r are trained as factors
//   (`<name>.U_l` [in, P], `.U_r` [P, K], `.V_l` [K, P], `.V_r` [P, out]) and materialised
//   into layer buffers at every forward; fold_into() multiplies them out for serving, so the
//   factors cost nothing at inference. Without it: `<name>.U` [in, K], `<name>.V` [K, out].
// - generate_bias: b_i is the last `out` outputs of G(z_i) and there is no static bias;
//   otherwise `<name>.bias` [out] (zeros).
// - self_condition: z is the layer's own input (the paper's self-wise condition, FuxiCTR's
//   default). It is a constructor-time flag rather than a guess from `&z == &x`, because the
//   gradient routing depends on it: with it, forward takes x alone (forward(x), or
//   forward(x, z) with z the very same tensor: same storage and shape, checked), and
//   backward's dx already includes the hypernetwork path (dx = dx_direct + dz); dz() stays
//   undefined. Without it (group-wise / mix-wise: z is e.g. chosen feature embeddings),
//   backward returns dx for x only and dz is read from dz(). (A group-wise layer given z = x
//   is legal; adding dz into dx is then the caller's job.)
//
// Initialisation: every kernel (U, V or the four factors, and each hypernetwork layer) is
// Xavier uniform, biases are zeros. So S starts as a Xavier-scaled linear map of the hidden
// ReLU features (entries of order 0.1–1 for inputs of order 1), the product of two Xavier
// factors has a variance within a small factor of a directly Xavier-initialised U, and
// nothing is special-cased: the hypernetwork layers are plain Linear layers of the MLP.
//
// Gradient contract (as Linear): every parameter gradient accumulates (+=); dx and dz are
// written (=). x and z are cached by reference: the caller keeps them unchanged until backward.
//
// Runs on any device with the ops it uses (core/ops.h: gemm, apg_rows_*, add_columns; and
// Tensor::copy_column_block, the MLP's). Not here: mix-wise concatenation of several
// conditions (the caller concatenates and passes one z), parameter sharing across layers.
#pragma once

#include <string>
#include <vector>

#include "core/layers/linear.h"
#include "core/params.h"
#include "core/tensor.h"

namespace ncsrec {

struct ApgOptions {
  int64_t rank = 8;                         // K
  int64_t overparam = 0;                    // P; 0 = off, else P ≥ K
  std::vector<int64_t> hyper_hidden = {64};  // hidden widths of the hypernetwork
  bool generate_bias = false;               // b_i from the hypernetwork instead of a static bias
  bool self_condition = false;              // z = x (self-wise); requires condition_dim == in
};

class ApgLinear {
 public:
  // Declares the parameters listed above. Bad sizes or options (rank ≤ 0, 0 < overparam <
  // rank, overparam < 0, self_condition with condition_dim ≠ in, a non-positive hidden width)
  // are UserErrors naming the layer.
  ApgLinear(ParamStore& store, const std::string& name, int64_t in, int64_t out, int64_t condition_dim,
            const ApgOptions& options, Activation act = Activation::None);

  // y = act(((x·U) ⊙row S(z))·V + b), x [B, in], z [B, condition_dim]. Returns this layer's
  // buffer, valid until the next forward. With self_condition, z must be x itself.
  const Tensor& forward(const Tensor& x, const Tensor& z);
  // Self-wise forward: forward(x, x). Only for a layer built with self_condition.
  const Tensor& forward(const Tensor& x);
  // Given dy = dL/dy [B, out]: accumulates the gradients of U, V (or their factors), the bias
  // and the hypernetwork; returns dL/dx [B, in] (this layer's buffer) when `need_dx`, else an
  // undefined tensor. Group-wise: dL/dz is computed when `need_dz` and read with dz().
  // Self-wise: `need_dz` is ignored; the returned dx is the total gradient through both paths.
  const Tensor& backward(const Tensor& dy, bool need_dx = true, bool need_dz = true);
  // dL/dz [B, condition_dim] of the last backward (the hypernetwork's input-gradient buffer),
  // valid until the next backward; undefined when self-wise or when need_dz was false.
  const Tensor& dz() const { return dz_; }

  // Copies this layer's serving parameters into `folded`: a layer of the same in, out,
  // condition_dim, rank, hyper_hidden, generate_bias, self_condition and activation but
  // overparam = 0, in another (finalised) store of the same dtype. U = U_l·U_r and V = V_l·V_r
  // are multiplied out; the bias and the hypernetwork are copied. Without overparam: a copy.
  void fold_into(ApgLinear& folded) const;

  // Multiply-adds per instance at serving (folded): in·K + K² + K·out + Σ hypernetwork in·out.
  int64_t multiply_adds_per_row() const;
  // Parameters at serving (folded): in·K + K·out + (static bias: out) + the hypernetwork's.
  int64_t parameter_count() const;

  int64_t in() const { return in_; }
  int64_t out() const { return out_; }
  int64_t rank() const { return rank_; }
  int64_t condition_dim() const { return condition_dim_; }
  const ApgOptions& options() const { return options_; }
  Activation activation() const { return act_; }
  bool self_condition() const { return options_.self_condition; }
  // Every parameter this layer declared, in declaration order (U/V or U_l, U_r, V_l, V_r; the
  // static bias if any; then the hypernetwork's weight, bias per layer).
  const std::vector<Param*>& parameters() const { return params_; }
  MLP& hypernetwork() { return hyper_; }

 private:
  int64_t in_, out_, rank_, condition_dim_;
  ApgOptions options_;
  Activation act_;
  Param* u_ = nullptr;    // [in, K]    (overparam off)
  Param* v_ = nullptr;    // [K, out]   (overparam off)
  Param* u_l_ = nullptr;  // [in, P]    (overparam on)
  Param* u_r_ = nullptr;  // [P, K]
  Param* v_l_ = nullptr;  // [K, P]
  Param* v_r_ = nullptr;  // [P, out]
  Param* bias_ = nullptr;  // [out]     (generate_bias off)
  std::vector<Param*> hyper_params_;  // weight, bias per hypernetwork layer
  std::vector<Param*> params_;
  MLP hyper_;

  Tensor x_, z_, s_;       // cached input, condition (references) and hypernetwork output
  Tensor u_full_, v_full_;  // overparam: U = U_l·U_r [in, K], V = V_l·V_r [K, out] of the last forward
  Tensor du_full_, dv_full_;  // overparam: dU, dV before the chain rule into the factors
  Tensor h_buf_, h_, g_buf_, g_, y_buf_, y_;
  Tensor dpre_buf_, dpre_, dg_buf_, dg_, dh_buf_, dh_, ds_buf_, ds_, dx_buf_, dx_, dz_, none_;

  const Tensor& u_matrix() const { return u_ ? u_->value : u_full_; }
  const Tensor& v_matrix() const { return v_ ? v_->value : v_full_; }
};

}  // namespace ncsrec

// Tensor-level ops: shape and dtype checks, then one call into the dispatch table of the
// tensors' device. Layers call these, never the kernels directly.
#pragma once

#include <vector>

#include "core/dispatch.h"
#include "core/tensor.h"

namespace ncsrec::ops {

// C = alpha * op(A) * op(B) + beta * C, all 2-D.
void gemm(Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b, double alpha = 1.0,
          double beta = 0.0);
// A linear layer's forward: y = act(x·W + b) (b may be null; ReLU when `relu`), fused on a
// device (cuBLASLt epilogue, at matmul_precision()), the three ops in turn on the CPU.
void linear_forward(Tensor& y, const Tensor& x, const Tensor& W, const Tensor* b, bool relu);
// y[r, :] += b
void bias_add(Tensor& y, const Tensor& b);
// db += column sums of dy
void bias_grad(Tensor& db, const Tensor& dy);
void relu_forward(Tensor& y, const Tensor& x);
void relu_backward(Tensor& dx, const Tensor& dy, const Tensor& y);
void sigmoid(Tensor& y, const Tensor& x);
void softmax_rows(Tensor& y, const Tensor& x);
void axpy(Tensor& y, double a, const Tensor& x);
void scale(Tensor& x, double a);
double sum(const Tensor& x);
double sum_squares(const Tensor& x);

// MMoE/PLE gate mixture (see OpTable::gate_mixture_forward): logits [B, E], E experts of
// [B, D] -> probs [B, E] (row softmax), out [B, D] = Σ_e probs[:, e] · experts[e].
void gate_mixture_forward(Tensor& out, Tensor& probs, const Tensor& logits, const std::vector<const Tensor*>& experts);
// dlogits [B, E] is written; dexperts[e] [B, D] ACCUMULATES probs[:, e] · dout (an expert feeds
// several gates); a null dexperts[e] skips that expert.
void gate_mixture_backward(Tensor& dlogits, const std::vector<Tensor*>& dexperts, const Tensor& dout,
                           const Tensor& probs, const std::vector<const Tensor*>& experts);

// Normalisation layers (OpTable::batch_norm_*, layer_norm_*) over x [B, C]: gamma, beta, the
// running statistics, dgamma, dbeta [C] of x's dtype; mean, inv_std ([C] for BatchNorm, [B] for
// LayerNorm) and sums [2C] f64; every tensor on x's device. xhat may be null for BatchNorm's
// evaluation forward.
void batch_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& running_mean,
                        Tensor& running_var, double momentum, double eps, bool training, Tensor& mean, Tensor& inv_std,
                        Tensor* xhat, Tensor& y);
void batch_norm_backward(const Tensor& dy, const Tensor& xhat, const Tensor& gamma, const Tensor& inv_std, Tensor& sums,
                         Tensor& dgamma, Tensor& dbeta, Tensor& dx);
void layer_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps, Tensor& inv_std,
                        Tensor& xhat, Tensor& y);
void layer_norm_backward(const Tensor& dy, const Tensor& xhat, const Tensor& gamma, const Tensor& inv_std, Tensor& sums,
                         Tensor& dgamma, Tensor& dbeta, Tensor& dx);

// APG's per-row products (OpTable::apg_rows_*): h, g, dg, dh [B, K]; s, ds [B, s_cols] with
// s_cols >= K²; all of one dtype and device.
void apg_rows_forward(Tensor& g, const Tensor& h, const Tensor& s);
void apg_rows_backward(Tensor& ds, Tensor& dh, const Tensor& h, const Tensor& s, const Tensor& dg);
// The three-tower head (OpTable::three_tower_*): u, v_t, du, dv_t [B, d]; w, dg [B, T]; bias_t
// one element; logits_t, mixed, dlogit_t, dmixed, dl_t B elements. dlogit_t and dmixed may be
// null (no gradient from there).
void three_tower_forward(const Tensor& u, const std::vector<const Tensor*>& v, const std::vector<const Tensor*>& bias,
                         const Tensor& w, const std::vector<Tensor*>& logits, Tensor& mixed);
void three_tower_backward(const std::vector<const Tensor*>& dlogit, const Tensor* dmixed, const Tensor& u,
                          const std::vector<const Tensor*>& v, const std::vector<const Tensor*>& logits, const Tensor& w,
                          const std::vector<Tensor*>& dl, Tensor& dg, Tensor& du, const std::vector<Tensor*>& dv);

// A column block added between 2-D tensors of the same rows, dtype and device:
// y[:, y_col + j] += x[:, x_col + j], j < cols (a written copy is Tensor::copy_column_block).
void add_columns(Tensor& y, int64_t y_col, const Tensor& x, int64_t x_col, int64_t cols);

// y += a ⊙ b (OpTable::multiply_accumulate) and x += s (OpTable::add_scalar), elementwise; one
// dtype and device, a and b of y's size.
void multiply_accumulate(Tensor& y, const Tensor& a, const Tensor& b);
void add_scalar(Tensor& x, double s);

// Dropout (OpTable::dropout): out = in with the elements (key, i) drops zeroed and the others
// scaled by 1 / (1 − rate); the same shape, dtype and device (may be one tensor).
void dropout(Tensor& out, const Tensor& in, double rate, uint64_t key);

// Loss heads with their gradients fused (OpTable::sigmoid_bce …, on the logits' device):
// logits, prob and grad hold n elements of one dtype; labels and weights are f32 tensors of n
// elements on the same device (weights null: all 1). prob and grad are written; the return is
// Σ w·l / normalizer (0 for a normalizer of 0).
double sigmoid_bce(const Tensor& logits, const Tensor& labels, const Tensor* weights, double normalizer, Tensor& prob,
                   Tensor& grad);
double focal_loss(const Tensor& logits, const Tensor& labels, const Tensor* weights, double alpha, double gamma,
                  double normalizer, Tensor& prob, Tensor& grad);
double sigmoid_mse(const Tensor& logits, const Tensor& labels, const Tensor* weights, double normalizer, Tensor& prob,
                   Tensor& grad);
// The ESMM head (OpTable::esmm_loss): returns {CTR loss, CTCVR loss}.
struct EsmmLosses {
  double ctr = 0, ctcvr = 0;
};
EsmmLosses esmm_loss(const Tensor& logit_ctr, const Tensor& logit_cvr, const Tensor& click, const Tensor& ctcvr,
                     const Tensor* weights, double normalizer, double ctcvr_weight, Tensor& p_ctr, Tensor& p_cvr,
                     Tensor& p_ctcvr, Tensor& grad_ctr, Tensor& grad_cvr);

// The masked multi-task linear layer's fused route (OpTable::masked_linear_*): one call serves
// every task in the lists, task t through its mask's packed bits `bits[t]` (in W's memory: the
// host bytes on the CPU, a device copy on a device). x_t, dx_t [B, in]; y_t, dy_t [B, out];
// W, dW [in, out]; b [out] or null. y_t and dx_t are written, dW accumulates in task order.
// `fused_masked_linear_available` says whether the device's backend has the three entries.
bool fused_masked_linear_available(Device device);
void masked_linear_forward(const std::vector<Tensor*>& y, const std::vector<const Tensor*>& x, const Tensor& W,
                           const std::vector<const uint8_t*>& bits, const Tensor* b, bool relu);
void masked_linear_input_grad(const std::vector<Tensor*>& dx, const std::vector<const Tensor*>& dy, const Tensor& W,
                              const std::vector<const uint8_t*>& bits);
void masked_linear_weight_grad(Tensor& dW, const std::vector<const Tensor*>& x, const std::vector<const Tensor*>& dy,
                               const std::vector<const uint8_t*>& bits);

}  // namespace ncsrec::ops

// The op dispatch table: one table of raw-pointer kernels per device (llm.c style).
//
// core/ registers the CPU kernels at start-up (core/cpu_kernels.cpp). cuda/ registers its
// kernels into the CUDA slot when it is linked and a GPU is present (cuda/device.cu); core
// never includes a CUDA header. Kernels take raw pointers, sizes and the element type; shape
// checks happen one level up, in core/ops.h. Every array is contiguous and row-major. A
// backend may leave an entry null (not implemented there yet); core/ops.h then throws an
// error naming the op and the device instead of calling it.
//
// Gradient contract (said once, kept everywhere): parameter-gradient kernels accumulate
// (`+=`), input-gradient kernels write (`=`).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace ncsrec {

enum class CopyKind : uint8_t { HostToHost, HostToDevice, DeviceToHost, DeviceToDevice };

// The arithmetic of a matrix product on a device: FP32; TF32 tensor cores (10-bit mantissas in
// the products, FP32 accumulation: error about 2e-3 of the operands' magnitudes); or BF16 tensor
// cores (the FP32 operands rounded to 8-bit mantissas inside the product, FP32 accumulation:
// about 8e-3). Inputs, outputs, weights and their optimizer stay FP32 in every case (the FP32
// "master weights"), and BF16 has FP32's exponent range, so no loss scaling is needed.
enum MatmulPrecision : int { kMatmulFp32 = 0, kMatmulTf32 = 1, kMatmulBf16 = 2 };

// The names of the precisions in MatmulPrecision order: "fp32", "tf32", "bf16" (run.matmul,
// bench --matmul).
const std::vector<std::string>& matmul_precision_names();
// A name to its precision; ConfigError for anything else.
MatmulPrecision parse_matmul_precision(const std::string& name);

struct OpTable {
  // memory
  void* (*alloc)(size_t bytes) = nullptr;
  void (*free)(void* ptr) = nullptr;
  void (*copy)(void* dst, const void* src, size_t bytes, CopyKind kind) = nullptr;
  void (*memset_zero)(void* ptr, size_t bytes) = nullptr;
  // `rows` rows of `width` bytes: row r from src + r·src_pitch to dst + r·dst_pitch (a block of
  // leading columns of a row-major array). Null: copied row by row through `copy`.
  void (*copy_2d)(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t rows,
                  CopyKind kind) = nullptr;
  void (*synchronize)() = nullptr;
  // Page-locked host memory for the buffers this device copies from and to (faster copies);
  // null where the backend has none. host_alloc may return null: ordinary host memory then.
  void* (*host_alloc)(size_t bytes) = nullptr;
  void (*host_free)(void* ptr) = nullptr;

  // C[M,N] = alpha * op(A) * op(B) + beta * C; op(A) is [M,K], op(B) is [K,N]; row-major.
  void (*gemm)(DType dtype, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
               const void* A, const void* B, double beta, void* C) = nullptr;
  // Linear layer forward, fused where the backend can: C[M,N] = act(op(A)·op(B) + bias), bias
  // [N] (null: none), act ReLU when `relu`, C written. `precision` (MatmulPrecision): FP32, or on
  // the CUDA backend TF32 or BF16 tensor cores (f32 inputs and outputs; the CPU ignores it).
  void (*gemm_bias_act)(DType dtype, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const void* A,
                        const void* B, const void* bias, bool relu, int precision, void* C) = nullptr;
  // y[r,c] += b[c] for r < rows
  void (*bias_add)(DType dtype, void* y, const void* b, int64_t rows, int64_t cols) = nullptr;
  // db[c] += sum_r dy[r,c]   (a parameter gradient: accumulates)
  void (*bias_grad)(DType dtype, void* db, const void* dy, int64_t rows, int64_t cols) = nullptr;
  // y = max(x, 0); may run in place
  void (*relu_forward)(DType dtype, void* y, const void* x, int64_t n) = nullptr;
  // dx = dy * (y > 0); may run in place (dx == dy)
  void (*relu_backward)(DType dtype, void* dx, const void* dy, const void* y, int64_t n) = nullptr;
  // y = 1 / (1 + exp(-x))
  void (*sigmoid)(DType dtype, void* y, const void* x, int64_t n) = nullptr;
  // row-wise softmax of x[rows, cols] into y
  void (*softmax_rows)(DType dtype, void* y, const void* x, int64_t rows, int64_t cols) = nullptr;
  // y += a * x
  void (*axpy)(DType dtype, int64_t n, double a, const void* x, void* y) = nullptr;
  // x *= a
  void (*scale)(DType dtype, int64_t n, double a, void* x) = nullptr;
  // sum of x (computed in double)
  double (*sum)(DType dtype, const void* x, int64_t n) = nullptr;
  // sum of x*x (computed in double)
  double (*sum_squares)(DType dtype, const void* x, int64_t n) = nullptr;
  // Σ x_i² over the i where mask[i] != 0 (null: every i), in double, summed in an order that
  // depends on n only (not on the thread count): the gradient's norm for clipping.
  double (*masked_sum_squares)(DType dtype, const void* x, const uint8_t* mask, int64_t n) = nullptr;

  // MMoE/PLE gate: softmax over experts, then the probability-weighted mixture, as one op.
  // `experts` / `dexperts` are HOST arrays of num_experts pointers to [rows, dim] buffers.
  // probs[b,e] = softmax(logits[b,:])_e (max-subtracted); out[b,d] = Σ_e probs[b,e]·experts[e][b,d]
  void (*gate_mixture_forward)(DType dtype, void* out, void* probs, const void* logits, const void* const* experts,
                               int64_t rows, int64_t num_experts, int64_t dim) = nullptr;
  // dexperts[e][b,d] += probs[b,e]·dout[b,d]  (ACCUMULATES: one expert feeds several gates;
  //                                             a null dexperts[e] skips that expert)
  // dlogits[b,e] = probs[b,e]·(s_e − Σ_e' probs[b,e']·s_e'), s_e = Σ_d dout[b,d]·experts[e][b,d]  (written)
  void (*gate_mixture_backward)(DType dtype, void* dlogits, void* const* dexperts, const void* dout,
                                const void* probs, const void* const* experts, int64_t rows, int64_t num_experts,
                                int64_t dim) = nullptr;

  // Loss heads with their gradients fused (core/layers/losses.h; the per-element math is
  // core/layers/loss_math.h on every backend): prob[i] = σ(logits[i]), grad[i] = w_i·dl_i/dx_i /
  // normalizer (written); returns Σ_i w_i·l_i / normalizer (0 for a normalizer of 0). labels and
  // weights are f32 (weights may be null: all 1); on a device backend every array is device memory.
  double (*sigmoid_bce)(DType dtype, const void* logits, const float* labels, const float* weights, int64_t n,
                        double normalizer, void* prob, void* grad) = nullptr;
  double (*focal_loss)(DType dtype, const void* logits, const float* labels, const float* weights, int64_t n,
                       double alpha, double gamma, double normalizer, void* prob, void* grad) = nullptr;
  double (*sigmoid_mse)(DType dtype, const void* logits, const float* labels, const float* weights, int64_t n,
                        double normalizer, void* prob, void* grad) = nullptr;

  // The ESMM head (core/layers/losses.h esmm_forward_backward): writes the three probabilities
  // and dL/da, dL/db; losses[0], losses[1] (HOST memory) receive the CTR and CTCVR losses.
  void (*esmm_loss)(DType dtype, const void* logit_ctr, const void* logit_cvr, const float* click,
                    const float* ctcvr_label, const float* weights, int64_t n, double normalizer, double ctcvr_weight,
                    void* p_ctr, void* p_cvr, void* p_ctcvr, void* grad_ctr, void* grad_cvr, double* losses) = nullptr;

  // DLRM pairwise interaction (core/layers/interaction.h) of F fields of width d, row by row of
  // row-major arrays with the given strides: out[b, out_col + i·F + j] = e_i · e_j with e_f =
  // x[b, emb_col + f·d, … + d) (written); backward dx[b, emb_col + i·d + k] += Σ_j (g_ij + g_ji)·e_j[k]
  // (accumulates) with g = dout[b, out_col …]. out/x and dx/dout may be one buffer (disjoint columns).
  void (*pairwise_dot_forward)(DType dtype, void* out, int64_t out_stride, int64_t out_col, const void* x,
                               int64_t x_stride, int64_t emb_col, int64_t rows, int64_t fields, int64_t dim) = nullptr;
  void (*pairwise_dot_backward)(DType dtype, void* dx, int64_t dx_stride, int64_t emb_col, const void* dout,
                                int64_t dout_stride, int64_t out_col, const void* x, int64_t x_stride, int64_t rows,
                                int64_t fields, int64_t dim) = nullptr;

  // Binary masks (core/masks.h) over n elements, `bits` packed little-endian (element i is bit
  // i % 8 of byte i / 8): out = w ⊙ M (written); grad += dw ⊙ M (accumulates; exactly nothing is
  // added outside M).
  void (*apply_mask)(DType dtype, void* out, const void* w, const uint8_t* bits, int64_t n) = nullptr;
  void (*add_masked)(DType dtype, void* grad, const void* dw, const uint8_t* bits, int64_t n) = nullptr;

  // The masked multi-task linear layer (core/layers/masked_linear.h) as one product for
  // `tasks` tasks: a pass over the shared weight W [in, out] applies each task's mask M_t
  // (bits as above) on the fly, so W ⊙ M_t is never written out. The per-task arguments are
  // HOST arrays of `tasks` pointers; the arrays they point to are [rows, in] (x_t, dx_t) or
  // [rows, out] (y_t, dy_t). The layer runs them where its route for the shape is "fused";
  // the plain route is apply_mask and one product per task.
  //   forward:      y_t = act(x_t·(W ⊙ M_t) + bias)                (written; bias null: none)
  //   input grad:   dx_t = dy_t·(W ⊙ M_t)ᵀ                          (written)
  //   weight grad:  dW += (x_0ᵀ·dy_0) ⊙ M_0, then task 1, …        (accumulates, in task order;
  //                 exactly nothing is added outside a task's mask)
  void (*masked_linear_forward)(DType dtype, int tasks, int64_t rows, int64_t in, int64_t out, const void* const* x,
                                const void* w, const uint8_t* const* bits, const void* bias, bool relu,
                                void* const* y) = nullptr;
  void (*masked_linear_input_grad)(DType dtype, int tasks, int64_t rows, int64_t in, int64_t out,
                                   const void* const* dy, const void* w, const uint8_t* const* bits,
                                   void* const* dx) = nullptr;
  void (*masked_linear_weight_grad)(DType dtype, int tasks, int64_t rows, int64_t in, int64_t out,
                                    const void* const* x, const void* const* dy, const uint8_t* const* bits,
                                    void* dw) = nullptr;

  // Normalisation layers (core/layers/norm.h) over x [rows, cols], statistics in double (the
  // double arrays live where x does). Every sum runs in a fixed order (a column over its rows in
  // row order, a row over its columns in column order), so results do not depend on threads.
  // BatchNorm forward: training: mean[c] and inv_std[c] = 1/sqrt(biased var + eps) from the
  // batch (rows >= 2), running_mean ← m·running_mean + (1 − m)·mean and running_var likewise
  // with the unbiased variance; evaluation: from the running statistics. y = γ·x̂ + β (written),
  // x̂ = (x − mean)·inv_std into xhat when it is non-null.
  void (*batch_norm_forward)(DType dtype, const void* x, int64_t rows, int64_t cols, const void* gamma,
                             const void* beta, void* running_mean, void* running_var, double momentum, double eps,
                             bool training, double* mean, double* inv_std, void* xhat, void* y) = nullptr;
  // BatchNorm backward after a training forward: with S = Σ_r dy, P = Σ_r dy·x̂ per column
  // (`sums`: 2·cols doubles of scratch), dgamma += P, dbeta += S (accumulate), dx = γ·inv_std/rows
  // ·(rows·dy − S − x̂·P) (written).
  void (*batch_norm_backward)(DType dtype, const void* dy, const void* xhat, int64_t rows, int64_t cols,
                              const void* gamma, const double* inv_std, double* sums, void* dgamma, void* dbeta,
                              void* dx) = nullptr;
  // LayerNorm forward: each row by its own mean and biased variance; inv_std[r] (double) and
  // x̂ written, y = γ·x̂ + β.
  void (*layer_norm_forward)(DType dtype, const void* x, int64_t rows, int64_t cols, const void* gamma,
                             const void* beta, double eps, double* inv_std, void* xhat, void* y) = nullptr;
  // LayerNorm backward: dgamma += Σ_r dy·x̂, dbeta += Σ_r dy (`sums`: 2·cols doubles of scratch);
  // per row, with ĝ = γ·dy: dx = inv_std/cols·(cols·ĝ − Σ_c ĝ − x̂·Σ_c ĝ·x̂) (written).
  void (*layer_norm_backward)(DType dtype, const void* dy, const void* xhat, int64_t rows, int64_t cols,
                              const void* gamma, const double* inv_std, double* sums, void* dgamma, void* dbeta,
                              void* dx) = nullptr;

  // APG (core/layers/apg.h), per row i of B: g_i = h_i·S_i with S_i = s[i, 0:K²] row-major
  // (h, g [B, K]; s [B, s_cols]), each g_i[c] summed over a in order (written); backward
  // ds[i, a·K + c] = h_i[a]·dg_i[c] (written, columns K²… of ds untouched) and dh_i[a] =
  // Σ_c S_i[a, c]·dg_i[c] in c order (written).
  void (*apg_rows_forward)(DType dtype, void* g, const void* h, const void* s, int64_t B, int64_t K,
                           int64_t s_cols) = nullptr;
  void (*apg_rows_backward)(DType dtype, void* ds, void* dh, const void* h, const void* s, const void* dg, int64_t B,
                            int64_t K, int64_t s_cols) = nullptr;
  // The three-tower head (models/three_tower.h) over B rows of T tasks (HOST arrays of T
  // pointers, T <= 64) and d-wide vectors u [B, d], v_t [B, d]; w [B, T]; the rest [B] each.
  //   forward:  l_t[r] = b_t + Σ_j u[r, j]·v_t[r, j] (b_t one element; from b_t, j in order);
  //             S[r] = Σ_t w[r, t]·l_t[r] (t in order). Written.
  //   backward: with s = dS[r] (0 where dmixed is null) and g_t = dlogit_t[r] (0 where null):
  //             dl_t[r] = g_t + s·w[r, t]; dg[r, t] = w[r, t]·(s·l_t[r] − Σ_u (w[r, u]·s)·l_u[r]);
  //             dv_t[r, :] = dl_t[r]·u[r, :]; du[r, :] = Σ_t dl_t[r]·v_t[r, :] (t in order). Written.
  void (*three_tower_forward)(DType dtype, const void* u, const void* const* v, const void* const* bias, const void* w,
                              int64_t B, int T, int64_t d, void* const* logits, void* mixed) = nullptr;
  void (*three_tower_backward)(DType dtype, const void* const* dlogit, const void* dmixed, const void* u,
                               const void* const* v, const void* const* logits, const void* w, int64_t B, int T,
                               int64_t d, void* const* dl, void* dg, void* du, void* const* dv) = nullptr;

  // A block of columns added into another array's: y[r, y_col + j] += x[r, x_col + j] for r <
  // rows, j < cols (row strides y_stride, x_stride; accumulates).
  void (*add_columns)(DType dtype, void* y, int64_t y_stride, int64_t y_col, const void* x, int64_t x_stride,
                      int64_t x_col, int64_t rows, int64_t cols) = nullptr;

  // Elementwise, for learned masks (core/layers/masked_linear.h): y[i] += a[i]·b[i] (the
  // straight-through score gradient dS += dW ⊙ W) and x[i] += a (the sparsity penalty's shift).
  void (*multiply_accumulate)(DType dtype, void* y, const void* a, const void* b, int64_t n) = nullptr;
  void (*add_scalar)(DType dtype, void* x, int64_t n, double a) = nullptr;

  // Dropout (core/layers/dropout.h): out[i] = in[i]·(1 / (1 − rate)) where
  // to_unit(hash_combine(key, i)) >= rate (core/random.h), else 0; a function of (key, i) alone,
  // so every backend and thread count drops the same elements. May run in place.
  void (*dropout)(DType dtype, void* out, const void* in, int64_t n, double rate, uint64_t key) = nullptr;

  // Dense optimizer steps over n contiguous elements (core/optim.h has the formulas). `update`
  // (one byte per element, 1 = step it) may be null: every element. With wd > 0 the elements
  // where `decay` is 1 (null: all) also decay: SGD and Adagrad as L2 in the gradient, Adam as
  // AdamW (w -= lr·wd·w from the value before the step). Adam's c1, c2 are 1 − β^t.
  void (*sgd_step)(DType dtype, void* w, const void* g, const uint8_t* update, const uint8_t* decay, int64_t n,
                   double lr, double wd) = nullptr;
  void (*adam_step)(DType dtype, void* w, const void* g, void* m, void* v, const uint8_t* update,
                    const uint8_t* decay, int64_t n, double lr, double beta1, double beta2, double eps, double c1,
                    double c2, double wd) = nullptr;
  void (*adagrad_step)(DType dtype, void* w, const void* g, void* acc, const uint8_t* update, const uint8_t* decay,
                       int64_t n, double lr, double eps, double wd) = nullptr;

  // Exact ROC AUC of f32 scores against labels (> 0.5: positive), ties counted half, weighted
  // when `weights` is non-null (core/metrics/metrics.h auc_exact); NaN when a class is empty.
  double (*auc)(const float* scores, const float* labels, const float* weights, int64_t n) = nullptr;
};

// The arithmetic of the matrix products on a device (run.matmul), for the whole process:
// FP32 (the default), TF32 or BF16. The CPU computes in FP32 whatever it says.
void set_matmul_precision(MatmulPrecision precision);
MatmulPrecision matmul_precision();

// The table for a device. Throws a clear error if the device has no backend registered.
const OpTable& ops_for(Device device);
// True when a backend is registered for the device.
bool device_available(Device device);
// Called by a backend library (cuda/) to install its kernels.
void register_ops(Device device, const OpTable& table);

}  // namespace ncsrec

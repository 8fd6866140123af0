// CUDA twins of the training entries of the dispatch table (cuda/train_ops.h): the MMoE/PLE
// gate (softmax + expert mixture, forward and backward), the fused loss heads (and the ESMM head),
// the DLRM pairwise interaction, the mask kernels and the dense optimizer steps.
//
// The loss heads run core/layers/loss_math.h's per-element functions, the same code as the CPU;
// their sums are taken in double through the table's deterministic `sum`. The gate keeps the
// CPU's order inside a row (a row per block: softmax by one thread, the mixture per element in
// expert order); only its backward's dot products are block reductions (in double). Everything
// runs on the default stream.
#include "cuda/train_ops.h"

#include <cuda_runtime.h>

#include <mutex>

#include "core/error.h"
#include "core/layers/loss_math.h"
#include "core/random.h"
#include "cuda/check.h"
#include "cuda/common.cuh"

namespace ncsrec {
namespace {

using namespace cuda_detail;

#define GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

// ---- gate: softmax + expert mixture ---------------------------------------------------------

// Expert pointers travel by value in the kernel's parameters (up to 64 experts a gate).
constexpr int64_t kMaxExperts = 64;
struct ConstPointers {
  const void* p[kMaxExperts];
};
struct Pointers {
  void* p[kMaxExperts];
};

template <class T>
__global__ void gate_forward_kernel(T* out, T* probs, const T* logits, ConstPointers experts, int64_t rows, int64_t E,
                                    int64_t D) {
  __shared__ T p[kMaxExperts];
  for (int64_t b = blockIdx.x; b < rows; b += gridDim.x) {
    if (threadIdx.x == 0) {  // the CPU's order: max, exp and sum, divide
      const T* l = logits + b * E;
      T m = l[0];
      for (int64_t e = 1; e < E; ++e) m = l[e] > m ? l[e] : m;
      T s = 0;
      for (int64_t e = 0; e < E; ++e) s += (p[e] = exp(l[e] - m));
      for (int64_t e = 0; e < E; ++e) probs[b * E + e] = (p[e] /= s);
    }
    __syncthreads();
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      T o = 0;
      for (int64_t e = 0; e < E; ++e) o += p[e] * static_cast<const T*>(experts.p[e])[b * D + d];
      out[b * D + d] = o;
    }
    __syncthreads();  // p is rewritten for the next row
  }
}

template <class T>
__global__ void gate_backward_kernel(T* dlogits, Pointers dexperts, const T* dout, const T* probs, ConstPointers experts,
                                     int64_t rows, int64_t E, int64_t D) {
  __shared__ double reduce[kThreads];
  __shared__ double s[kMaxExperts];
  for (int64_t b = blockIdx.x; b < rows; b += gridDim.x) {
    const T* g = dout + b * D;
    // s_e = dout · expert_e, per expert a block reduction in double.
    for (int64_t e = 0; e < E; ++e) {
      const T* x = static_cast<const T*>(experts.p[e]) + b * D;
      double partial = 0;
      for (int64_t d = threadIdx.x; d < D; d += blockDim.x) partial += static_cast<double>(g[d]) * static_cast<double>(x[d]);
      const double total = block_sum(partial, reduce);
      if (threadIdx.x == 0) s[e] = total;
    }
    __syncthreads();
    if (threadIdx.x == 0) {  // dl_e = p_e (s_e − Σ p·s)
      double mean_s = 0;
      for (int64_t e = 0; e < E; ++e) mean_s += static_cast<double>(probs[b * E + e]) * s[e];
      for (int64_t e = 0; e < E; ++e) dlogits[b * E + e] = static_cast<T>(static_cast<double>(probs[b * E + e]) * (s[e] - mean_s));
    }
    for (int64_t e = 0; e < E; ++e) {
      if (!dexperts.p[e]) continue;
      T* dx = static_cast<T*>(dexperts.p[e]) + b * D;
      const T pe = probs[b * E + e];
      for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dx[d] += pe * g[d];
    }
    __syncthreads();  // s is rewritten for the next row
  }
}

void check_experts(int64_t E) {
  NCSREC_CHECK(E >= 1 && E <= kMaxExperts, "CUDA gate: " << E << " experts; the kernel takes 1 to " << kMaxExperts);
}

void cuda_gate_mixture_forward(DType d, void* out, void* probs, const void* logits, const void* const* experts,
                               int64_t rows, int64_t E, int64_t D) {
  if (rows == 0) return;
  check_experts(E);
  ConstPointers x{};
  for (int64_t e = 0; e < E; ++e) x.p[e] = experts[e];
  const int g = static_cast<int>(std::min<int64_t>(rows, 65535));
  NCSREC_CUDA_FLOAT_DISPATCH(
      d,
      (gate_forward_kernel<float><<<g, kThreads>>>(static_cast<float*>(out), static_cast<float*>(probs),
                                                   static_cast<const float*>(logits), x, rows, E, D)),
      (gate_forward_kernel<double><<<g, kThreads>>>(static_cast<double*>(out), static_cast<double*>(probs),
                                                    static_cast<const double*>(logits), x, rows, E, D)));
  NCSREC_CUDA_LAUNCH_CHECK();
}

void cuda_gate_mixture_backward(DType d, void* dlogits, void* const* dexperts, const void* dout, const void* probs,
                                const void* const* experts, int64_t rows, int64_t E, int64_t D) {
  if (rows == 0) return;
  check_experts(E);
  ConstPointers x{};
  Pointers dx{};
  for (int64_t e = 0; e < E; ++e) {
    x.p[e] = experts[e];
    dx.p[e] = dexperts[e];
  }
  const int g = static_cast<int>(std::min<int64_t>(rows, 65535));
  NCSREC_CUDA_FLOAT_DISPATCH(
      d,
      (gate_backward_kernel<float><<<g, kThreads>>>(static_cast<float*>(dlogits), dx, static_cast<const float*>(dout),
                                                    static_cast<const float*>(probs), x, rows, E, D)),
      (gate_backward_kernel<double><<<g, kThreads>>>(static_cast<double*>(dlogits), dx,
                                                     static_cast<const double*>(dout), static_cast<const double*>(probs),
                                                     x, rows, E, D)));
  NCSREC_CUDA_LAUNCH_CHECK();
}

// ---- loss heads -----------------------------------------------------------------------------

// A device scratch of doubles for the per-element weighted losses, grown to the largest batch.
std::mutex g_loss_mutex;  // guards g_loss_scratch
DeviceVector<double> g_loss_scratch;

double* loss_scratch(int64_t n) { return g_loss_scratch.reserve(n); }

enum class Head { Bce, Focal, Mse };

template <class T, Head kHead>
__global__ void loss_kernel(const T* logits, const float* labels, const float* weights, int64_t n, T scale, T alpha,
                            T gamma, T* prob, T* grad, double* weighted) {
  GRID_STRIDE(i, n) {
    const T w = weights ? static_cast<T>(weights[i]) : T(1);
    const T y = static_cast<T>(labels[i]);
    T p, dl, l;
    if constexpr (kHead == Head::Bce) l = loss_math::bce(logits[i], y, &p, &dl);
    else if constexpr (kHead == Head::Focal) l = loss_math::focal(logits[i], y, alpha, gamma, &p, &dl);
    else l = loss_math::sigmoid_mse(logits[i], y, &p, &dl);
    prob[i] = p;
    grad[i] = w * dl * scale;
    weighted[i] = static_cast<double>(w) * static_cast<double>(l);
  }
}

template <Head kHead>
double run_loss(DType d, const void* logits, const float* labels, const float* weights, int64_t n, double alpha,
                double gamma, double normalizer, void* prob, void* grad) {
  if (n == 0) return 0.0;
  std::lock_guard<std::mutex> lock(g_loss_mutex);
  double* weighted = loss_scratch(n);
  const double scale = normalizer != 0 ? 1.0 / normalizer : 0.0;
  const int g = blocks_for(n);
  NCSREC_CUDA_FLOAT_DISPATCH(
      d,
      (loss_kernel<float, kHead><<<g, kThreads>>>(static_cast<const float*>(logits), labels, weights, n,
                                                  static_cast<float>(scale), static_cast<float>(alpha),
                                                  static_cast<float>(gamma), static_cast<float*>(prob),
                                                  static_cast<float*>(grad), weighted)),
      (loss_kernel<double, kHead><<<g, kThreads>>>(static_cast<const double*>(logits), labels, weights, n, scale, alpha,
                                                   gamma, static_cast<double*>(prob), static_cast<double*>(grad),
                                                   weighted)));
  NCSREC_CUDA_LAUNCH_CHECK();
  if (normalizer == 0) return 0.0;
  return ops_for(Device::CUDA).sum(DType::F64, weighted, n) / normalizer;
}

double cuda_sigmoid_bce(DType d, const void* logits, const float* labels, const float* weights, int64_t n,
                        double normalizer, void* prob, void* grad) {
  return run_loss<Head::Bce>(d, logits, labels, weights, n, 0, 0, normalizer, prob, grad);
}
double cuda_focal_loss(DType d, const void* logits, const float* labels, const float* weights, int64_t n, double alpha,
                       double gamma, double normalizer, void* prob, void* grad) {
  return run_loss<Head::Focal>(d, logits, labels, weights, n, alpha, gamma, normalizer, prob, grad);
}
double cuda_sigmoid_mse(DType d, const void* logits, const float* labels, const float* weights, int64_t n,
                        double normalizer, void* prob, void* grad) {
  return run_loss<Head::Mse>(d, logits, labels, weights, n, 0, 0, normalizer, prob, grad);
}

template <class T>
__global__ void esmm_kernel(const T* a, const T* b, const float* click, const float* ctcvr, const float* weights,
                            int64_t n, T scale, T cw, T* p_ctr, T* p_cvr, T* p_ctcvr, T* g_ctr, T* g_cvr,
                            double* weighted) {
  GRID_STRIDE(i, n) {
    const T w = weights ? static_cast<T>(weights[i]) : T(1);
    const loss_math::EsmmElement<T> e =
        loss_math::esmm(a[i], b[i], static_cast<T>(click[i]), static_cast<T>(ctcvr[i]), cw);
    p_ctr[i] = e.p_ctr;
    p_cvr[i] = e.p_cvr;
    p_ctcvr[i] = e.p_ctcvr;
    g_ctr[i] = w * scale * e.d_ctr;
    g_cvr[i] = w * scale * e.d_cvr;
    weighted[i] = static_cast<double>(w) * static_cast<double>(e.l_ctr);
    weighted[n + i] = static_cast<double>(w) * static_cast<double>(e.l_ctcvr);
  }
}

void cuda_esmm_loss(DType d, const void* a, const void* b, const float* click, const float* ctcvr, const float* weights,
                    int64_t n, double normalizer, double cw, void* p_ctr, void* p_cvr, void* p_ctcvr, void* g_ctr,
                    void* g_cvr, double* losses) {
  losses[0] = losses[1] = 0.0;
  if (n == 0) return;
  std::lock_guard<std::mutex> lock(g_loss_mutex);
  double* weighted = loss_scratch(2 * n);
  const double scale = normalizer != 0 ? 1.0 / normalizer : 0.0;
  const int g = blocks_for(n);
  NCSREC_CUDA_FLOAT_DISPATCH(
      d,
      (esmm_kernel<float><<<g, kThreads>>>(static_cast<const float*>(a), static_cast<const float*>(b), click, ctcvr,
                                           weights, n, static_cast<float>(scale), static_cast<float>(cw),
                                           static_cast<float*>(p_ctr), static_cast<float*>(p_cvr),
                                           static_cast<float*>(p_ctcvr), static_cast<float*>(g_ctr),
                                           static_cast<float*>(g_cvr), weighted)),
      (esmm_kernel<double><<<g, kThreads>>>(static_cast<const double*>(a), static_cast<const double*>(b), click, ctcvr,
                                            weights, n, scale, cw, static_cast<double*>(p_ctr),
                                            static_cast<double*>(p_cvr), static_cast<double*>(p_ctcvr),
                                            static_cast<double*>(g_ctr), static_cast<double*>(g_cvr), weighted)));
  NCSREC_CUDA_LAUNCH_CHECK();
  if (normalizer == 0) return;
  const OpTable& ops = ops_for(Device::CUDA);
  losses[0] = ops.sum(DType::F64, weighted, n) / normalizer;
  losses[1] = ops.sum(DType::F64, weighted + n, n) / normalizer;
}

// ---- interaction ----------------------------------------------------------------------------

// One thread per (row, i, j): the dot product in k order, as the CPU (which writes the (i, j)
// and (j, i) entries from one sum: the same products in the same order).
template <class T>
__global__ void dot_forward_kernel(T* out, int64_t out_stride, int64_t out_col, const T* x, int64_t x_stride,
                                   int64_t emb_col, int64_t B, int64_t F, int64_t d) {
  GRID_STRIDE(e, B * F * F) {
    const int64_t b = e / (F * F), i = (e / F) % F, j = e % F;
    const T* x_row = x + b * x_stride + emb_col;
    const T* ei = x_row + (i <= j ? i : j) * d;  // the CPU's sum runs over the smaller index's field first
    const T* ej = x_row + (i <= j ? j : i) * d;
    T s = 0;
    for (int64_t k = 0; k < d; ++k) s += ei[k] * ej[k];
    out[b * out_stride + out_col + i * F + j] = s;
  }
}

// One thread per (row, field i, element k): de_i[k] += Σ_j (g_ij + g_ji) e_j[k] in j order.
template <class T>
__global__ void dot_backward_kernel(T* dx, int64_t dx_stride, int64_t emb_col, const T* dout, int64_t dout_stride,
                                    int64_t out_col, const T* x, int64_t x_stride, int64_t B, int64_t F, int64_t d) {
  GRID_STRIDE(e, B * F * d) {
    const int64_t b = e / (F * d), i = (e / d) % F, k = e % d;
    const T* x_row = x + b * x_stride + emb_col;
    const T* g = dout + b * dout_stride + out_col;
    T acc = dx[b * dx_stride + emb_col + i * d + k];
    for (int64_t j = 0; j < F; ++j) acc += (g[i * F + j] + g[j * F + i]) * x_row[j * d + k];
    dx[b * dx_stride + emb_col + i * d + k] = acc;
  }
}

void cuda_pairwise_dot_forward(DType dt, void* out, int64_t out_stride, int64_t out_col, const void* x, int64_t x_stride,
                               int64_t emb_col, int64_t B, int64_t F, int64_t d) {
  if (B * F == 0) return;
  const int g = blocks_for(B * F * F);
  NCSREC_CUDA_FLOAT_DISPATCH(dt,
                             (dot_forward_kernel<float><<<g, kThreads>>>(static_cast<float*>(out), out_stride, out_col,
                                                                         static_cast<const float*>(x), x_stride,
                                                                         emb_col, B, F, d)),
                             (dot_forward_kernel<double><<<g, kThreads>>>(static_cast<double*>(out), out_stride, out_col,
                                                                          static_cast<const double*>(x), x_stride,
                                                                          emb_col, B, F, d)));
  NCSREC_CUDA_LAUNCH_CHECK();
}

void cuda_pairwise_dot_backward(DType dt, void* dx, int64_t dx_stride, int64_t emb_col, const void* dout,
                                int64_t dout_stride, int64_t out_col, const void* x, int64_t x_stride, int64_t B,
                                int64_t F, int64_t d) {
  if (B * F * d == 0) return;
  const int g = blocks_for(B * F * d);
  NCSREC_CUDA_FLOAT_DISPATCH(dt,
                             (dot_backward_kernel<float><<<g, kThreads>>>(
                                 static_cast<float*>(dx), dx_stride, emb_col, static_cast<const float*>(dout),
                                 dout_stride, out_col, static_cast<const float*>(x), x_stride, B, F, d)),
                             (dot_backward_kernel<double><<<g, kThreads>>>(
                                 static_cast<double*>(dx), dx_stride, emb_col, static_cast<const double*>(dout),
                                 dout_stride, out_col, static_cast<const double*>(x), x_stride, B, F, d)));
  NCSREC_CUDA_LAUNCH_CHECK();
}

// ---- masks ----------------------------------------------------------------------------------

template <class T, bool kAccumulate>
__global__ void mask_kernel(T* dst, const T* src, const uint8_t* bits, int64_t n) {
  GRID_STRIDE(i, n) {
    const bool on = (bits[i >> 3] >> (i & 7)) & 1u;
    if constexpr (kAccumulate) {
      if (on) dst[i] += src[i];
    } else {
      dst[i] = on ? src[i] : T(0);
    }
  }
}

void cuda_apply_mask(DType d, void* out, const void* w, const uint8_t* bits, int64_t n) {
  if (n == 0) return;
  NCSREC_CUDA_FLOAT_DISPATCH(d,
                             (mask_kernel<float, false><<<blocks_for(n), kThreads>>>(
                                 static_cast<float*>(out), static_cast<const float*>(w), bits, n)),
                             (mask_kernel<double, false><<<blocks_for(n), kThreads>>>(
                                 static_cast<double*>(out), static_cast<const double*>(w), bits, n)));
  NCSREC_CUDA_LAUNCH_CHECK();
}
void cuda_add_masked(DType d, void* grad, const void* dw, const uint8_t* bits, int64_t n) {
  if (n == 0) return;
  NCSREC_CUDA_FLOAT_DISPATCH(d,
                             (mask_kernel<float, true><<<blocks_for(n), kThreads>>>(
                                 static_cast<float*>(grad), static_cast<const float*>(dw), bits, n)),
                             (mask_kernel<double, true><<<blocks_for(n), kThreads>>>(
                                 static_cast<double*>(grad), static_cast<const double*>(dw), bits, n)));
  NCSREC_CUDA_LAUNCH_CHECK();
}

// ---- normalisation layers (the arithmetic of core/cpu_training_ops.cpp, in double) -----------
// One thread per column for the column statistics (each summed over its rows in row order, as the
// CPU), one per row for LayerNorm's row statistics; every double product and sum through the _rn
// intrinsics (never contracted into a fused multiply-add), so the statistics round as the CPU's.

template <class T>
__global__ void bn_stats_kernel(const T* x, int64_t B, int64_t C, T* rm, T* rv, double momentum, double eps,
                                bool training, double* mean, double* inv_std) {
  GRID_STRIDE(c, C) {
    if (!training) {
      mean[c] = static_cast<double>(rm[c]);
      inv_std[c] = 1.0 / sqrt(__dadd_rn(static_cast<double>(rv[c]), eps));
      continue;
    }
    double s = 0;
    for (int64_t r = 0; r < B; ++r) s = __dadd_rn(s, static_cast<double>(x[r * C + c]));
    const double m = s / static_cast<double>(B);
    double v = 0;
    for (int64_t r = 0; r < B; ++r) {
      const double d = __dsub_rn(static_cast<double>(x[r * C + c]), m);
      v = __dadd_rn(v, __dmul_rn(d, d));
    }
    const double bessel = static_cast<double>(B) / static_cast<double>(B - 1);
    const double biased = v / static_cast<double>(B);
    rm[c] = static_cast<T>(__dadd_rn(__dmul_rn(momentum, static_cast<double>(rm[c])), __dmul_rn(1 - momentum, m)));
    rv[c] = static_cast<T>(__dadd_rn(__dmul_rn(momentum, static_cast<double>(rv[c])),
                                     __dmul_rn(__dmul_rn(1 - momentum, biased), bessel)));
    mean[c] = m;
    inv_std[c] = 1.0 / sqrt(__dadd_rn(biased, eps));
  }
}

// BatchNorm's y = γ·x̂ + β with x̂ = (x − mean)·inv_std, the statistics per column.
template <class T>
__global__ void bn_apply_kernel(const T* x, int64_t B, int64_t C, const double* mean, const double* inv_std,
                                const T* g, const T* b, T* xh, T* y) {
  GRID_STRIDE(i, B * C) {
    const int64_t c = i % C;
    const double h = __dmul_rn(__dsub_rn(static_cast<double>(x[i]), mean[c]), inv_std[c]);
    if (xh) xh[i] = static_cast<T>(h);
    y[i] = static_cast<T>(__dadd_rn(__dmul_rn(static_cast<double>(g[c]), h), static_cast<double>(b[c])));
  }
}

template <class T>
__global__ void ln_forward_kernel(const T* x, int64_t B, int64_t C, const T* g, const T* b, double eps,
                                  double* inv_std, T* xh, T* y) {
  GRID_STRIDE(r, B) {
    const T* xr = x + r * C;
    double mean = 0, var = 0;
    for (int64_t c = 0; c < C; ++c) mean = __dadd_rn(mean, static_cast<double>(xr[c]));
    mean = mean / static_cast<double>(C);
    for (int64_t c = 0; c < C; ++c) {
      const double d = __dsub_rn(static_cast<double>(xr[c]), mean);
      var = __dadd_rn(var, __dmul_rn(d, d));
    }
    const double inv = 1.0 / sqrt(__dadd_rn(var / static_cast<double>(C), eps));
    inv_std[r] = inv;
    for (int64_t c = 0; c < C; ++c) {
      const double h = __dmul_rn(__dsub_rn(static_cast<double>(xr[c]), mean), inv);
      xh[r * C + c] = static_cast<T>(h);
      y[r * C + c] = static_cast<T>(__dadd_rn(__dmul_rn(static_cast<double>(g[c]), h), static_cast<double>(b[c])));
    }
  }
}

// S = Σ_r dy, P = Σ_r dy·x̂ per column (row order) into sums[c], sums[C + c]; dgamma += P, dbeta += S.
template <class T>
__global__ void norm_column_sums_kernel(const T* dy, const T* xh, int64_t B, int64_t C, double* sums, T* dgamma,
                                        T* dbeta) {
  GRID_STRIDE(c, C) {
    double s = 0, p = 0;
    for (int64_t r = 0; r < B; ++r) {
      const double g = static_cast<double>(dy[r * C + c]);
      s = __dadd_rn(s, g);
      p = __dadd_rn(p, __dmul_rn(g, static_cast<double>(xh[r * C + c])));
    }
    sums[c] = s;
    sums[C + c] = p;
    dgamma[c] = dgamma[c] + static_cast<T>(p);
    dbeta[c] = dbeta[c] + static_cast<T>(s);
  }
}

// BatchNorm: dx = γ·inv_std/B·(B·dy − S − x̂·P).
template <class T>
__global__ void bn_dx_kernel(const T* dy, const T* xh, int64_t B, int64_t C, const T* gamma, const double* inv_std,
                             const double* sums, T* dx) {
  const double n = static_cast<double>(B);
  GRID_STRIDE(i, B * C) {
    const int64_t c = i % C;
    const double a = __dmul_rn(static_cast<double>(gamma[c]), inv_std[c]) / n;
    const double t = __dsub_rn(__dsub_rn(__dmul_rn(n, static_cast<double>(dy[i])), sums[c]),
                               __dmul_rn(static_cast<double>(xh[i]), sums[C + c]));
    dx[i] = static_cast<T>(__dmul_rn(a, t));
  }
}

// LayerNorm: per row, with ĝ = γ·dy: dx = inv_std/C·(C·ĝ − Σ ĝ − x̂·Σ ĝ·x̂).
template <class T>
__global__ void ln_dx_kernel(const T* dy, const T* xh, int64_t B, int64_t C, const T* gamma, const double* inv_std,
                             T* dx) {
  const double n = static_cast<double>(C);
  GRID_STRIDE(r, B) {
    const int64_t row = r * C;
    double sum_g = 0, sum_g_xhat = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double gh = __dmul_rn(static_cast<double>(gamma[c]), static_cast<double>(dy[row + c]));
      sum_g = __dadd_rn(sum_g, gh);
      sum_g_xhat = __dadd_rn(sum_g_xhat, __dmul_rn(gh, static_cast<double>(xh[row + c])));
    }
    const double scale = inv_std[r] / n;
    for (int64_t c = 0; c < C; ++c) {
      const double gh = __dmul_rn(static_cast<double>(gamma[c]), static_cast<double>(dy[row + c]));
      const double t = __dsub_rn(__dsub_rn(__dmul_rn(n, gh), sum_g), __dmul_rn(static_cast<double>(xh[row + c]), sum_g_xhat));
      dx[row + c] = static_cast<T>(__dmul_rn(scale, t));
    }
  }
}

template <class T>
void batch_norm_forward_t(const void* x, int64_t B, int64_t C, const void* gamma, const void* beta, void* rm, void* rv,
                          double momentum, double eps, bool training, double* mean, double* inv_std, void* xhat,
                          void* y) {
  bn_stats_kernel<T><<<blocks_for(C), kThreads>>>(static_cast<const T*>(x), B, C, static_cast<T*>(rm),
                                                  static_cast<T*>(rv), momentum, eps, training, mean, inv_std);
  NCSREC_CUDA_LAUNCH_CHECK();
  if (B * C == 0) return;
  bn_apply_kernel<T><<<blocks_for(B * C), kThreads>>>(static_cast<const T*>(x), B, C, mean, inv_std,
                                                      static_cast<const T*>(gamma), static_cast<const T*>(beta),
                                                      static_cast<T*>(xhat), static_cast<T*>(y));
  NCSREC_CUDA_LAUNCH_CHECK();
}
void cuda_batch_norm_forward(DType d, const void* x, int64_t rows, int64_t cols, const void* gamma, const void* beta,
                             void* rm, void* rv, double momentum, double eps, bool training, double* mean,
                             double* inv_std, void* xhat, void* y) {
  if (cols == 0) return;
  if (d == DType::F32)
    batch_norm_forward_t<float>(x, rows, cols, gamma, beta, rm, rv, momentum, eps, training, mean, inv_std, xhat, y);
  else
    batch_norm_forward_t<double>(x, rows, cols, gamma, beta, rm, rv, momentum, eps, training, mean, inv_std, xhat, y);
}

template <class T>
void norm_backward_t(bool layer, const void* dy, const void* xhat, int64_t B, int64_t C, const void* gamma,
                     const double* inv_std, double* sums, void* dgamma, void* dbeta, void* dx) {
  norm_column_sums_kernel<T><<<blocks_for(C), kThreads>>>(static_cast<const T*>(dy), static_cast<const T*>(xhat), B, C,
                                                          sums, static_cast<T*>(dgamma), static_cast<T*>(dbeta));
  NCSREC_CUDA_LAUNCH_CHECK();
  if (B == 0) return;
  if (layer)
    ln_dx_kernel<T><<<blocks_for(B), kThreads>>>(static_cast<const T*>(dy), static_cast<const T*>(xhat), B, C,
                                                 static_cast<const T*>(gamma), inv_std, static_cast<T*>(dx));
  else
    bn_dx_kernel<T><<<blocks_for(B * C), kThreads>>>(static_cast<const T*>(dy), static_cast<const T*>(xhat), B, C,
                                                     static_cast<const T*>(gamma), inv_std, sums, static_cast<T*>(dx));
  NCSREC_CUDA_LAUNCH_CHECK();
}
void cuda_batch_norm_backward(DType d, const void* dy, const void* xhat, int64_t rows, int64_t cols, const void* gamma,
                              const double* inv_std, double* sums, void* dgamma, void* dbeta, void* dx) {
  if (cols == 0) return;
  if (d == DType::F32) norm_backward_t<float>(false, dy, xhat, rows, cols, gamma, inv_std, sums, dgamma, dbeta, dx);
  else norm_backward_t<double>(false, dy, xhat, rows, cols, gamma, inv_std, sums, dgamma, dbeta, dx);
}
void cuda_layer_norm_forward(DType d, const void* x, int64_t rows, int64_t cols, const void* gamma, const void* beta,
                             double eps, double* inv_std, void* xhat, void* y) {
  if (rows == 0 || cols == 0) return;
  NCSREC_CUDA_FLOAT_DISPATCH(
      d,
      (ln_forward_kernel<float><<<blocks_for(rows), kThreads>>>(
          static_cast<const float*>(x), rows, cols, static_cast<const float*>(gamma), static_cast<const float*>(beta),
          eps, inv_std, static_cast<float*>(xhat), static_cast<float*>(y))),
      (ln_forward_kernel<double><<<blocks_for(rows), kThreads>>>(
          static_cast<const double*>(x), rows, cols, static_cast<const double*>(gamma),
          static_cast<const double*>(beta), eps, inv_std, static_cast<double*>(xhat), static_cast<double*>(y))));
  NCSREC_CUDA_LAUNCH_CHECK();
}
void cuda_layer_norm_backward(DType d, const void* dy, const void* xhat, int64_t rows, int64_t cols, const void* gamma,
                              const double* inv_std, double* sums, void* dgamma, void* dbeta, void* dx) {
  if (cols == 0) return;
  if (d == DType::F32) norm_backward_t<float>(true, dy, xhat, rows, cols, gamma, inv_std, sums, dgamma, dbeta, dx);
  else norm_backward_t<double>(true, dy, xhat, rows, cols, gamma, inv_std, sums, dgamma, dbeta, dx);
}

// ---- APG's per-row products and column blocks (the arithmetic of core/cpu_training_ops.cpp) ---

__device__ inline float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ inline double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ inline float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ inline double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// One thread per (row, c): g_i[c] = Σ_a h_i[a]·S_i[a, c] in a order.
template <class T>
__global__ void apg_rows_forward_kernel(T* g, const T* h, const T* s, int64_t B, int64_t K, int64_t s_cols) {
  GRID_STRIDE(e, B * K) {
    const int64_t i = e / K, c = e % K;
    T acc = 0;
    for (int64_t a = 0; a < K; ++a) acc = add_rn(acc, mul_rn(h[i * K + a], s[i * s_cols + a * K + c]));
    g[e] = acc;
  }
}

// One thread per (row, a): ds_i[a, c] = h_i[a]·dg_i[c]; dh_i[a] = Σ_c S_i[a, c]·dg_i[c] in c order.
template <class T>
__global__ void apg_rows_backward_kernel(T* ds, T* dh, const T* h, const T* s, const T* dg, int64_t B, int64_t K,
                                         int64_t s_cols) {
  GRID_STRIDE(e, B * K) {
    const int64_t i = e / K, a = e % K;
    const T ha = h[e];
    T acc = 0;
    for (int64_t c = 0; c < K; ++c) {
      const T d = dg[i * K + c];
      ds[i * s_cols + a * K + c] = mul_rn(ha, d);
      acc = add_rn(acc, mul_rn(s[i * s_cols + a * K + c], d));
    }
    dh[e] = acc;
  }
}

template <class T>
__global__ void add_columns_kernel(T* y, int64_t ys, int64_t yc, const T* x, int64_t xs, int64_t xc, int64_t rows,
                                   int64_t cols) {
  GRID_STRIDE(e, rows * cols) {
    const int64_t r = e / cols, j = e % cols;
    y[r * ys + yc + j] = add_rn(y[r * ys + yc + j], x[r * xs + xc + j]);
  }
}

void cuda_apg_rows_forward(DType d, void* g, const void* h, const void* s, int64_t B, int64_t K, int64_t s_cols) {
  if (B * K == 0) return;
  NCSREC_CUDA_FLOAT_DISPATCH(d,
                             (apg_rows_forward_kernel<float><<<blocks_for(B * K), kThreads>>>(
                                 static_cast<float*>(g), static_cast<const float*>(h), static_cast<const float*>(s), B,
                                 K, s_cols)),
                             (apg_rows_forward_kernel<double><<<blocks_for(B * K), kThreads>>>(
                                 static_cast<double*>(g), static_cast<const double*>(h), static_cast<const double*>(s),
                                 B, K, s_cols)));
  NCSREC_CUDA_LAUNCH_CHECK();
}
void cuda_apg_rows_backward(DType d, void* ds, void* dh, const void* h, const void* s, const void* dg, int64_t B,
                            int64_t K, int64_t s_cols) {
  if (B * K == 0) return;
  NCSREC_CUDA_FLOAT_DISPATCH(d,
                             (apg_rows_backward_kernel<float><<<blocks_for(B * K), kThreads>>>(
                                 static_cast<float*>(ds), static_cast<float*>(dh), static_cast<const float*>(h),
                                 static_cast<const float*>(s), static_cast<const float*>(dg), B, K, s_cols)),
                             (apg_rows_backward_kernel<double><<<blocks_for(B * K), kThreads>>>(
                                 static_cast<double*>(ds), static_cast<double*>(dh), static_cast<const double*>(h),
                                 static_cast<const double*>(s), static_cast<const double*>(dg), B, K, s_cols)));
  NCSREC_CUDA_LAUNCH_CHECK();
}
void cuda_add_columns(DType d, void* y, int64_t ys, int64_t yc, const void* x, int64_t xs, int64_t xc, int64_t rows,
                      int64_t cols) {
  if (rows * cols == 0) return;
  NCSREC_CUDA_FLOAT_DISPATCH(d,
                             (add_columns_kernel<float><<<blocks_for(rows * cols), kThreads>>>(
                                 static_cast<float*>(y), ys, yc, static_cast<const float*>(x), xs, xc, rows, cols)),
                             (add_columns_kernel<double><<<blocks_for(rows * cols), kThreads>>>(
                                 static_cast<double*>(y), ys, yc, static_cast<const double*>(x), xs, xc, rows, cols)));
  NCSREC_CUDA_LAUNCH_CHECK();
}

// ---- the three-tower head (the arithmetic of core/cpu_training_ops.cpp, one thread a row) ------

template <class T>
__global__ void three_tower_forward_kernel(const T* u, ConstPointers v, ConstPointers bias, const T* w, int64_t B,
                                           int nt, int64_t d, Pointers logits, T* s) {
  GRID_STRIDE(r, B) {
    T mix = 0;
    for (int t = 0; t < nt; ++t) {
      const T* vt = static_cast<const T*>(v.p[t]) + r * d;
      T l = static_cast<const T*>(bias.p[t])[0];
      for (int64_t j = 0; j < d; ++j) l = add_rn(l, mul_rn(u[r * d + j], vt[j]));
      static_cast<T*>(logits.p[t])[r] = l;
      mix = add_rn(mix, mul_rn(w[r * nt + t], l));
    }
    s[r] = mix;
  }
}

template <class T>
__global__ void three_tower_backward_kernel(ConstPointers dlogit, const T* dmixed, const T* u, ConstPointers v,
                                            ConstPointers logits, const T* w, int64_t B, int nt, int64_t d,
                                            Pointers dl, T* dg, T* du, Pointers dv) {
  GRID_STRIDE(r, B) {
    const T ds = dmixed ? dmixed[r] : T(0);
    T dot = 0;
    for (int t = 0; t < nt; ++t) {
      const T wt = w[r * nt + t];
      const T g = dlogit.p[t] ? static_cast<const T*>(dlogit.p[t])[r] : T(0);
      static_cast<T*>(dl.p[t])[r] = add_rn(g, mul_rn(ds, wt));
      dot = add_rn(dot, mul_rn(mul_rn(wt, ds), static_cast<const T*>(logits.p[t])[r]));
    }
    for (int t = 0; t < nt; ++t) {
      const T wt = w[r * nt + t];
      dg[r * nt + t] = mul_rn(wt, ds * static_cast<const T*>(logits.p[t])[r] - dot);
    }
    for (int64_t j = 0; j < d; ++j) du[r * d + j] = 0;
    for (int t = 0; t < nt; ++t) {
      const T g = static_cast<const T*>(dl.p[t])[r];
      const T* vt = static_cast<const T*>(v.p[t]) + r * d;
      T* dvt = static_cast<T*>(dv.p[t]) + r * d;
      for (int64_t j = 0; j < d; ++j) {
        dvt[j] = mul_rn(g, u[r * d + j]);
        du[r * d + j] = add_rn(du[r * d + j], mul_rn(g, vt[j]));
      }
    }
  }
}

void check_tasks(int nt) {
  NCSREC_CHECK(nt >= 1 && nt <= kMaxExperts, "CUDA three-tower head: " << nt << " tasks; the kernel takes 1 to " << kMaxExperts);
}

void cuda_three_tower_forward(DType dt, const void* u, const void* const* v, const void* const* bias, const void* w,
                              int64_t B, int nt, int64_t d, void* const* logits, void* mixed) {
  check_tasks(nt);
  if (B == 0) return;
  ConstPointers vp{}, bp{};
  Pointers lp{};
  for (int t = 0; t < nt; ++t) {
    vp.p[t] = v[t];
    bp.p[t] = bias[t];
    lp.p[t] = logits[t];
  }
  NCSREC_CUDA_FLOAT_DISPATCH(dt,
                             (three_tower_forward_kernel<float><<<blocks_for(B), kThreads>>>(
                                 static_cast<const float*>(u), vp, bp, static_cast<const float*>(w), B, nt, d, lp,
                                 static_cast<float*>(mixed))),
                             (three_tower_forward_kernel<double><<<blocks_for(B), kThreads>>>(
                                 static_cast<const double*>(u), vp, bp, static_cast<const double*>(w), B, nt, d, lp,
                                 static_cast<double*>(mixed))));
  NCSREC_CUDA_LAUNCH_CHECK();
}

void cuda_three_tower_backward(DType dt, const void* const* dlogit, const void* dmixed, const void* u,
                               const void* const* v, const void* const* logits, const void* w, int64_t B, int nt,
                               int64_t d, void* const* dl, void* dg, void* du, void* const* dv) {
  check_tasks(nt);
  if (B == 0) return;
  ConstPointers gp{}, vp{}, lp{};
  Pointers dlp{}, dvp{};
  for (int t = 0; t < nt; ++t) {
    gp.p[t] = dlogit[t];
    vp.p[t] = v[t];
    lp.p[t] = logits[t];
    dlp.p[t] = dl[t];
    dvp.p[t] = dv[t];
  }
  NCSREC_CUDA_FLOAT_DISPATCH(dt,
                             (three_tower_backward_kernel<float><<<blocks_for(B), kThreads>>>(
                                 gp, static_cast<const float*>(dmixed), static_cast<const float*>(u), vp, lp,
                                 static_cast<const float*>(w), B, nt, d, dlp, static_cast<float*>(dg),
                                 static_cast<float*>(du), dvp)),
                             (three_tower_backward_kernel<double><<<blocks_for(B), kThreads>>>(
                                 gp, static_cast<const double*>(dmixed), static_cast<const double*>(u), vp, lp,
                                 static_cast<const double*>(w), B, nt, d, dlp, static_cast<double*>(dg),
                                 static_cast<double*>(du), dvp)));
  NCSREC_CUDA_LAUNCH_CHECK();
}

// ---- elementwise, for learned masks -----------------------------------------------------------

template <class T>
__global__ void multiply_accumulate_kernel(T* y, const T* a, const T* b, int64_t n) {
  GRID_STRIDE(i, n) y[i] = add_rn(y[i], mul_rn(a[i], b[i]));
}
template <class T>
__global__ void add_scalar_kernel(T* x, int64_t n, T a) {
  GRID_STRIDE(i, n) x[i] = x[i] + a;
}
void cuda_multiply_accumulate(DType d, void* y, const void* a, const void* b, int64_t n) {
  if (n == 0) return;
  NCSREC_CUDA_FLOAT_DISPATCH(d,
                             (multiply_accumulate_kernel<float><<<blocks_for(n), kThreads>>>(
                                 static_cast<float*>(y), static_cast<const float*>(a), static_cast<const float*>(b), n)),
                             (multiply_accumulate_kernel<double><<<blocks_for(n), kThreads>>>(
                                 static_cast<double*>(y), static_cast<const double*>(a), static_cast<const double*>(b),
                                 n)));
  NCSREC_CUDA_LAUNCH_CHECK();
}
void cuda_add_scalar(DType d, void* x, int64_t n, double a) {
  if (n == 0) return;
  NCSREC_CUDA_FLOAT_DISPATCH(
      d, (add_scalar_kernel<float><<<blocks_for(n), kThreads>>>(static_cast<float*>(x), n, static_cast<float>(a))),
      (add_scalar_kernel<double><<<blocks_for(n), kThreads>>>(static_cast<double*>(x), n, a)));
  NCSREC_CUDA_LAUNCH_CHECK();
}

// ---- dropout (the rule of core/cpu_training_ops.cpp: a function of (key, i) alone) ---------------

template <class T>
__global__ void dropout_kernel(T* out, const T* in, int64_t n, double rate, T scale, uint64_t key) {
  GRID_STRIDE(i, n) {
    const bool keep = to_unit(hash_combine(key, static_cast<uint64_t>(i))) >= rate;
    out[i] = keep ? in[i] * scale : T(0);
  }
}
void cuda_dropout(DType d, void* out, const void* in, int64_t n, double rate, uint64_t key) {
  if (n == 0) return;
  const double scale = 1.0 / (1.0 - rate);
  NCSREC_CUDA_FLOAT_DISPATCH(d,
                             (dropout_kernel<float><<<blocks_for(n), kThreads>>>(
                                 static_cast<float*>(out), static_cast<const float*>(in), n, rate,
                                 static_cast<float>(scale), key)),
                             (dropout_kernel<double><<<blocks_for(n), kThreads>>>(
                                 static_cast<double*>(out), static_cast<const double*>(in), n, rate, scale, key)));
  NCSREC_CUDA_LAUNCH_CHECK();
}

// ---- dense optimizers (the formulas of core/cpu_training_ops.cpp) ---------------------------

__device__ inline bool steps(const uint8_t* update, int64_t i) { return !update || update[i]; }
__device__ inline bool decays(bool on, const uint8_t* decay, int64_t i) { return on && (!decay || decay[i]); }

template <class T>
__global__ void sgd_kernel(T* w, const T* g, const uint8_t* update, const uint8_t* decay, int64_t n, T lr, T wd,
                           bool decay_on) {
  GRID_STRIDE(i, n) {
    if (!steps(update, i)) continue;
    if (decays(decay_on, decay, i)) w[i] -= lr * (g[i] + wd * w[i]);
    else w[i] -= lr * g[i];
  }
}

template <class T>
__global__ void adam_kernel(T* w, const T* g, T* m, T* v, const uint8_t* update, const uint8_t* decay, int64_t n, T lr,
                            T beta1, T beta2, T eps, T c1, T c2, T lr_wd, bool decay_on) {
  GRID_STRIDE(i, n) {
    if (!steps(update, i)) continue;
    m[i] = beta1 * m[i] + (T(1) - beta1) * g[i];
    v[i] = beta2 * v[i] + (T(1) - beta2) * g[i] * g[i];
    const T step = lr * (m[i] / c1) / (sqrt(v[i] / c2) + eps);
    if (decays(decay_on, decay, i)) w[i] -= step + lr_wd * w[i];
    else w[i] -= step;
  }
}

template <class T>
__global__ void adagrad_kernel(T* w, const T* g, T* acc, const uint8_t* update, const uint8_t* decay, int64_t n, T lr,
                               T eps, T wd, bool decay_on) {
  GRID_STRIDE(i, n) {
    if (!steps(update, i)) continue;
    T gi = g[i];
    if (decays(decay_on, decay, i)) gi += wd * w[i];
    acc[i] += gi * gi;
    w[i] -= lr * gi / (sqrt(acc[i]) + eps);
  }
}

void cuda_sgd_step(DType d, void* w, const void* g, const uint8_t* update, const uint8_t* decay, int64_t n, double lr,
                   double wd) {
  if (n == 0) return;
  NCSREC_CUDA_FLOAT_DISPATCH(d,
                             (sgd_kernel<float><<<blocks_for(n), kThreads>>>(
                                 static_cast<float*>(w), static_cast<const float*>(g), update, decay, n,
                                 static_cast<float>(lr), static_cast<float>(wd), wd > 0)),
                             (sgd_kernel<double><<<blocks_for(n), kThreads>>>(static_cast<double*>(w),
                                                                              static_cast<const double*>(g), update,
                                                                              decay, n, lr, wd, wd > 0)));
  NCSREC_CUDA_LAUNCH_CHECK();
}

void cuda_adam_step(DType d, void* w, const void* g, void* m, void* v, const uint8_t* update, const uint8_t* decay,
                    int64_t n, double lr, double beta1, double beta2, double eps, double c1, double c2, double wd) {
  if (n == 0) return;
  NCSREC_CUDA_FLOAT_DISPATCH(
      d,
      (adam_kernel<float><<<blocks_for(n), kThreads>>>(
          static_cast<float*>(w), static_cast<const float*>(g), static_cast<float*>(m), static_cast<float*>(v), update,
          decay, n, static_cast<float>(lr), static_cast<float>(beta1), static_cast<float>(beta2),
          static_cast<float>(eps), static_cast<float>(c1), static_cast<float>(c2), static_cast<float>(lr * wd), wd > 0)),
      (adam_kernel<double><<<blocks_for(n), kThreads>>>(static_cast<double*>(w), static_cast<const double*>(g),
                                                        static_cast<double*>(m), static_cast<double*>(v), update, decay,
                                                        n, lr, beta1, beta2, eps, c1, c2, lr * wd, wd > 0)));
  NCSREC_CUDA_LAUNCH_CHECK();
}

void cuda_adagrad_step(DType d, void* w, const void* g, void* acc, const uint8_t* update, const uint8_t* decay,
                       int64_t n, double lr, double eps, double wd) {
  if (n == 0) return;
  NCSREC_CUDA_FLOAT_DISPATCH(d,
                             (adagrad_kernel<float><<<blocks_for(n), kThreads>>>(
                                 static_cast<float*>(w), static_cast<const float*>(g), static_cast<float*>(acc), update,
                                 decay, n, static_cast<float>(lr), static_cast<float>(eps), static_cast<float>(wd),
                                 wd > 0)),
                             (adagrad_kernel<double><<<blocks_for(n), kThreads>>>(
                                 static_cast<double*>(w), static_cast<const double*>(g), static_cast<double*>(acc),
                                 update, decay, n, lr, eps, wd, wd > 0)));
  NCSREC_CUDA_LAUNCH_CHECK();
}

}  // namespace

void add_cuda_training_ops(OpTable& t) {
  t.gate_mixture_forward = cuda_gate_mixture_forward;
  t.gate_mixture_backward = cuda_gate_mixture_backward;
  t.sigmoid_bce = cuda_sigmoid_bce;
  t.focal_loss = cuda_focal_loss;
  t.sigmoid_mse = cuda_sigmoid_mse;
  t.esmm_loss = cuda_esmm_loss;
  t.pairwise_dot_forward = cuda_pairwise_dot_forward;
  t.pairwise_dot_backward = cuda_pairwise_dot_backward;
  t.apply_mask = cuda_apply_mask;
  t.add_masked = cuda_add_masked;
  t.dropout = cuda_dropout;
  t.three_tower_forward = cuda_three_tower_forward;
  t.three_tower_backward = cuda_three_tower_backward;
  t.multiply_accumulate = cuda_multiply_accumulate;
  t.add_scalar = cuda_add_scalar;
  t.apg_rows_forward = cuda_apg_rows_forward;
  t.apg_rows_backward = cuda_apg_rows_backward;
  t.add_columns = cuda_add_columns;
  t.batch_norm_forward = cuda_batch_norm_forward;
  t.batch_norm_backward = cuda_batch_norm_backward;
  t.layer_norm_forward = cuda_layer_norm_forward;
  t.layer_norm_backward = cuda_layer_norm_backward;
  t.sgd_step = cuda_sgd_step;
  t.adam_step = cuda_adam_step;
  t.adagrad_step = cuda_adagrad_step;
}

}  // namespace ncsrec

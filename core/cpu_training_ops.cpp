// CPU entries of the dispatch table for training (core/dispatch.h): the fused loss heads, the
// mask kernels and the dense optimizer steps. Element-wise OpenMP loops with static schedules;
// an element's result reads only its own inputs, so it does not depend on the thread count.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/blas_core.h"
#include "core/dispatch.h"
#include "core/error.h"
#include "core/float_dispatch.h"
#include "core/layers/losses.h"
#include "core/metrics/metrics.h"
#include "core/random.h"

namespace ncsrec {
namespace {

constexpr int64_t kParallelMin = 1 << 14;  // below this, threads cost more than they save

// ---- loss heads -----------------------------------------------------------------------------

double cpu_sigmoid_bce(DType d, const void* logits, const float* labels, const float* weights, int64_t n,
                       double normalizer, void* prob, void* grad) {
  double l = 0;
  NCSREC_FLOAT_DISPATCH(d,
                        l = sigmoid_bce_forward_backward(static_cast<const float*>(logits), labels, weights, n,
                                                         normalizer, static_cast<float*>(prob), static_cast<float*>(grad)),
                        l = sigmoid_bce_forward_backward(static_cast<const double*>(logits), labels, weights, n,
                                                         normalizer, static_cast<double*>(prob), static_cast<double*>(grad)));
  return l;
}
double cpu_focal_loss(DType d, const void* logits, const float* labels, const float* weights, int64_t n, double alpha,
                      double gamma, double normalizer, void* prob, void* grad) {
  double l = 0;
  NCSREC_FLOAT_DISPATCH(d,
                        l = focal_forward_backward(static_cast<const float*>(logits), labels, weights, n, alpha, gamma,
                                                   normalizer, static_cast<float*>(prob), static_cast<float*>(grad)),
                        l = focal_forward_backward(static_cast<const double*>(logits), labels, weights, n, alpha, gamma,
                                                   normalizer, static_cast<double*>(prob), static_cast<double*>(grad)));
  return l;
}
double cpu_sigmoid_mse(DType d, const void* logits, const float* labels, const float* weights, int64_t n,
                       double normalizer, void* prob, void* grad) {
  double l = 0;
  NCSREC_FLOAT_DISPATCH(d,
                        l = sigmoid_mse_forward_backward(static_cast<const float*>(logits), labels, weights, n,
                                                         normalizer, static_cast<float*>(prob), static_cast<float*>(grad)),
                        l = sigmoid_mse_forward_backward(static_cast<const double*>(logits), labels, weights, n,
                                                         normalizer, static_cast<double*>(prob), static_cast<double*>(grad)));
  return l;
}

void cpu_esmm_loss(DType d, const void* a, const void* b, const float* click, const float* ctcvr, const float* weights,
                   int64_t n, double normalizer, double cw, void* p_ctr, void* p_cvr, void* p_ctcvr, void* g_ctr,
                   void* g_cvr, double* losses) {
  EsmmLoss l;
  NCSREC_FLOAT_DISPATCH(d,
                        l = esmm_forward_backward(static_cast<const float*>(a), static_cast<const float*>(b), click, ctcvr,
                                                  weights, n, normalizer, cw, static_cast<float*>(p_ctr),
                                                  static_cast<float*>(p_cvr), static_cast<float*>(p_ctcvr),
                                                  static_cast<float*>(g_ctr), static_cast<float*>(g_cvr)),
                        l = esmm_forward_backward(static_cast<const double*>(a), static_cast<const double*>(b), click,
                                                  ctcvr, weights, n, normalizer, cw, static_cast<double*>(p_ctr),
                                                  static_cast<double*>(p_cvr), static_cast<double*>(p_ctcvr),
                                                  static_cast<double*>(g_ctr), static_cast<double*>(g_cvr)));
  losses[0] = l.ctr;
  losses[1] = l.ctcvr;
}

// ---- interaction ----------------------------------------------------------------------------

template <class T>
void dot_forward_t(T* out, int64_t out_stride, int64_t out_col, const T* x, int64_t x_stride, int64_t emb_col,
                   int64_t B, int64_t F, int64_t d) {
#pragma omp parallel for schedule(static) if (B * F * F * d >= (1 << 16))
  for (int64_t b = 0; b < B; ++b) {
    const T* e = x + b * x_stride + emb_col;
    T* o = out + b * out_stride + out_col;
    for (int64_t i = 0; i < F; ++i)
      for (int64_t j = i; j < F; ++j) {
        T s = 0;
        for (int64_t k = 0; k < d; ++k) s += e[i * d + k] * e[j * d + k];
        o[i * F + j] = s;
        o[j * F + i] = s;
      }
  }
}

template <class T>
void dot_backward_t(T* dx, int64_t dx_stride, int64_t emb_col, const T* dout, int64_t dout_stride, int64_t out_col,
                    const T* x, int64_t x_stride, int64_t B, int64_t F, int64_t d) {
  // d(e_i·e_j)/de_i = e_j, and entry (i, j) and (j, i) both depend on e_i.
#pragma omp parallel for schedule(static) if (B * F * F * d >= (1 << 16))
  for (int64_t b = 0; b < B; ++b) {
    const T* e = x + b * x_stride + emb_col;
    const T* g = dout + b * dout_stride + out_col;
    T* de = dx + b * dx_stride + emb_col;
    for (int64_t i = 0; i < F; ++i)
      for (int64_t j = 0; j < F; ++j) {
        const T w = g[i * F + j] + g[j * F + i];
        for (int64_t k = 0; k < d; ++k) de[i * d + k] += w * e[j * d + k];
      }
  }
}

// GCC 12's avx512fintrin.h initialises its "undefined" vectors from themselves, which
// -Wmaybe-uninitialized reports inside _mm512_reduce_add_ps.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// The forward for f32 embeddings of dimension 16: each field pair's dot product is one vector
// multiply and a sum of its 16 lanes.
__attribute__((target("avx512f"))) void dot_forward_f32_d16(float* out, int64_t out_stride, int64_t out_col,
                                                            const float* x, int64_t x_stride, int64_t emb_col,
                                                            int64_t b0, int64_t b1, int64_t F) {
  for (int64_t b = b0; b < b1; ++b) {
    const float* e = x + b * x_stride + emb_col;
    float* o = out + b * out_stride + out_col;
    for (int64_t i = 0; i < F; ++i) {
      const __m512 ei = _mm512_loadu_ps(e + i * 16);
      for (int64_t j = i; j < F; ++j) {
        const float s = _mm512_reduce_add_ps(_mm512_mul_ps(ei, _mm512_loadu_ps(e + j * 16)));
        o[i * F + j] = s;
        o[j * F + i] = s;
      }
    }
  }
}

#pragma GCC diagnostic pop

// fn(b0, b1) over the rows [0, B) in chunks of 64, in parallel when the work is large enough
// (each row is computed whole by one call, so the result does not depend on the threads).
template <class Fn>
void over_row_chunks(int64_t B, int64_t work, Fn fn) {
  constexpr int64_t kRows = 64;
  const int64_t chunks = (B + kRows - 1) / kRows;
#pragma omp parallel for schedule(static) if (work >= (1 << 16))
  for (int64_t c = 0; c < chunks; ++c) fn(c * kRows, std::min(B, (c + 1) * kRows));
}

void cpu_pairwise_dot_forward(DType dt, void* out, int64_t out_stride, int64_t out_col, const void* x, int64_t x_stride,
                              int64_t emb_col, int64_t B, int64_t F, int64_t d) {
  if (dt == DType::F32 && d == 16 && cpu_has_avx512f()) {
    over_row_chunks(B, B * F * F * d, [&](int64_t b0, int64_t b1) {
      dot_forward_f32_d16(static_cast<float*>(out), out_stride, out_col, static_cast<const float*>(x), x_stride, emb_col,
                          b0, b1, F);
    });
    return;
  }
  NCSREC_FLOAT_DISPATCH(dt,
                        dot_forward_t(static_cast<float*>(out), out_stride, out_col, static_cast<const float*>(x),
                                      x_stride, emb_col, B, F, d),
                        dot_forward_t(static_cast<double*>(out), out_stride, out_col, static_cast<const double*>(x),
                                      x_stride, emb_col, B, F, d));
}
// The backward for f32 embeddings of dimension 16 (one AVX-512 vector each): de_i += Σ_j
// (g_ij + g_ji)·e_j as one FMA per (i, j), in the same j order as dot_backward_t. The generic
// loop over a run-time dimension took about 6% of the paper-sized NCS step. Four fields' sums
// run side by side, sharing each e_j's load: one field's chain of dependent FMAs alone waited on
// the FMA's latency. Each de_i is still summed over j in order: the same bits as one at a time.
__attribute__((target("avx512f"))) void dot_backward_f32_d16(float* dx, int64_t dx_stride, int64_t emb_col,
                                                             const float* dout, int64_t dout_stride, int64_t out_col,
                                                             const float* x, int64_t x_stride, int64_t b0, int64_t b1,
                                                             int64_t F) {
  constexpr int kFields = 4;
  for (int64_t b = b0; b < b1; ++b) {
    const float* e = x + b * x_stride + emb_col;
    const float* g = dout + b * dout_stride + out_col;
    float* de = dx + b * dx_stride + emb_col;
    int64_t i = 0;
    for (; i + kFields <= F; i += kFields) {
      __m512 acc[kFields];
      for (int f = 0; f < kFields; ++f) acc[f] = _mm512_loadu_ps(de + (i + f) * 16);
      for (int64_t j = 0; j < F; ++j) {
        const __m512 ej = _mm512_loadu_ps(e + j * 16);
        for (int f = 0; f < kFields; ++f)
          acc[f] = _mm512_fmadd_ps(_mm512_set1_ps(g[(i + f) * F + j] + g[j * F + i + f]), ej, acc[f]);
      }
      for (int f = 0; f < kFields; ++f) _mm512_storeu_ps(de + (i + f) * 16, acc[f]);
    }
    for (; i < F; ++i) {
      __m512 acc = _mm512_loadu_ps(de + i * 16);
      for (int64_t j = 0; j < F; ++j)
        acc = _mm512_fmadd_ps(_mm512_set1_ps(g[i * F + j] + g[j * F + i]), _mm512_loadu_ps(e + j * 16), acc);
      _mm512_storeu_ps(de + i * 16, acc);
    }
  }
}

void cpu_pairwise_dot_backward(DType dt, void* dx, int64_t dx_stride, int64_t emb_col, const void* dout,
                               int64_t dout_stride, int64_t out_col, const void* x, int64_t x_stride, int64_t B,
                               int64_t F, int64_t d) {
  if (dt == DType::F32 && d == 16 && cpu_has_avx512f()) {
    over_row_chunks(B, B * F * F * d, [&](int64_t b0, int64_t b1) {
      dot_backward_f32_d16(static_cast<float*>(dx), dx_stride, emb_col, static_cast<const float*>(dout), dout_stride,
                           out_col, static_cast<const float*>(x), x_stride, b0, b1, F);
    });
    return;
  }
  NCSREC_FLOAT_DISPATCH(dt,
                        dot_backward_t(static_cast<float*>(dx), dx_stride, emb_col, static_cast<const float*>(dout),
                                       dout_stride, out_col, static_cast<const float*>(x), x_stride, B, F, d),
                        dot_backward_t(static_cast<double*>(dx), dx_stride, emb_col, static_cast<const double*>(dout),
                                       dout_stride, out_col, static_cast<const double*>(x), x_stride, B, F, d));
}

// ---- masks ----------------------------------------------------------------------------------

// One byte of the mask covers 8 consecutive elements; the loop is over bytes so that it can be
// split across threads without two threads sharing a byte (and stays bit-identical).
template <class T, bool Accumulate>
void masked_kernel(T* dst, const T* src, const uint8_t* bits, int64_t n) {
  const int64_t nbytes = (n + 7) / 8;
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t b = 0; b < nbytes; ++b) {
    const int64_t end = std::min<int64_t>(8 * b + 8, n);
    const unsigned byte = bits[b];
    for (int64_t i = 8 * b; i < end; ++i) {
      const bool on = (byte >> (i & 7)) & 1u;
      if constexpr (Accumulate) {
        if (on) dst[i] += src[i];
      } else {
        dst[i] = on ? src[i] : T(0);
      }
    }
  }
}

void cpu_apply_mask(DType d, void* out, const void* w, const uint8_t* bits, int64_t n) {
  NCSREC_FLOAT_DISPATCH(d, (masked_kernel<float, false>(static_cast<float*>(out), static_cast<const float*>(w), bits, n)),
                        (masked_kernel<double, false>(static_cast<double*>(out), static_cast<const double*>(w), bits, n)));
}
void cpu_add_masked(DType d, void* grad, const void* dw, const uint8_t* bits, int64_t n) {
  NCSREC_FLOAT_DISPATCH(d, (masked_kernel<float, true>(static_cast<float*>(grad), static_cast<const float*>(dw), bits, n)),
                        (masked_kernel<double, true>(static_cast<double*>(grad), static_cast<const double*>(dw), bits, n)));
}

// ---- normalisation layers (the loops of core/layers/norm.h, moved here from the layer) ---------

constexpr int64_t kColumnBlock = 32;

// out[c] = Σ_r f(r, c), each column summed in row order. Threads split the columns, never the
// rows, so the sums are the same bits for any thread count.
template <class F>
void column_sums(double* out, int64_t rows, int64_t cols, const F& f) {
  const int64_t blocks = (cols + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t c0 = block * kColumnBlock, c1 = std::min(cols, c0 + kColumnBlock);
    for (int64_t c = c0; c < c1; ++c) out[c] = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = c0; c < c1; ++c) out[c] += f(r, c);
  }
}

template <class T>
void batch_norm_forward_t(const T* xv, int64_t B, int64_t C, const T* g, const T* b, T* rm, T* rv, double momentum,
                          double eps, bool training, double* mean, double* inv_std, T* xh, T* y) {
  if (training) {
    column_sums(mean, B, C, [&](int64_t r, int64_t c) { return static_cast<double>(xv[r * C + c]); });
    for (int64_t c = 0; c < C; ++c) mean[c] /= static_cast<double>(B);
    // Two passes (mean, then squared deviations): no cancellation for large means.
    double* var = inv_std;  // holds the sums of squares until it becomes 1/σ
    column_sums(var, B, C, [&](int64_t r, int64_t c) {
      const double d = xv[r * C + c] - mean[c];
      return d * d;
    });
    const double bessel = static_cast<double>(B) / static_cast<double>(B - 1);
    for (int64_t c = 0; c < C; ++c) {
      const double biased = var[c] / static_cast<double>(B);
      rm[c] = static_cast<T>(momentum * rm[c] + (1 - momentum) * mean[c]);
      rv[c] = static_cast<T>(momentum * rv[c] + (1 - momentum) * biased * bessel);
      inv_std[c] = 1.0 / std::sqrt(biased + eps);
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      mean[c] = rm[c];
      inv_std[c] = 1.0 / std::sqrt(static_cast<double>(rv[c]) + eps);
    }
  }
#pragma omp parallel for schedule(static) if (B * C >= kParallelMin)
  for (int64_t r = 0; r < B; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const double h = (xv[r * C + c] - mean[c]) * inv_std[c];
      if (xh) xh[r * C + c] = static_cast<T>(h);
      y[r * C + c] = static_cast<T>(g[c] * h + b[c]);
    }
}

// Both norms' parameter gradients: S = Σ_r dy, P = Σ_r dy·x̂ per column into sums[0, C) and
// sums[C, 2C); dgamma += P, dbeta += S.
template <class T>
void norm_param_grads(const T* g, const T* xh, int64_t B, int64_t C, double* sums, T* dgamma, T* dbeta) {
  double* sum_dy = sums;
  double* sum_dy_xhat = sums + C;
  column_sums(sum_dy, B, C, [&](int64_t r, int64_t c) { return static_cast<double>(g[r * C + c]); });
  column_sums(sum_dy_xhat, B, C, [&](int64_t r, int64_t c) { return static_cast<double>(g[r * C + c]) * xh[r * C + c]; });
  for (int64_t c = 0; c < C; ++c) {
    dgamma[c] += static_cast<T>(sum_dy_xhat[c]);
    dbeta[c] += static_cast<T>(sum_dy[c]);
  }
}

template <class T>
void batch_norm_backward_t(const T* g, const T* xh, int64_t B, int64_t C, const T* gamma, const double* inv_std,
                           double* sums, T* dgamma, T* dbeta, T* dx) {
  norm_param_grads(g, xh, B, C, sums, dgamma, dbeta);
  const double* sum_dy = sums;
  const double* sum_dy_xhat = sums + C;
  const double n = static_cast<double>(B);
#pragma omp parallel for schedule(static) if (B * C >= kParallelMin)
  for (int64_t r = 0; r < B; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = r * C + c;
      dx[i] = static_cast<T>(gamma[c] * inv_std[c] / n * (n * g[i] - sum_dy[c] - xh[i] * sum_dy_xhat[c]));
    }
}

template <class T>
void layer_norm_forward_t(const T* xv, int64_t B, int64_t C, const T* g, const T* b, double eps, double* inv_std,
                          T* xh, T* y) {
#pragma omp parallel for schedule(static) if (B * C >= kParallelMin)
  for (int64_t r = 0; r < B; ++r) {
    const T* xr = xv + r * C;
    double mean = 0, var = 0;
    for (int64_t c = 0; c < C; ++c) mean += xr[c];
    mean /= static_cast<double>(C);
    for (int64_t c = 0; c < C; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    const double inv = 1.0 / std::sqrt(var / static_cast<double>(C) + eps);
    inv_std[r] = inv;
    for (int64_t c = 0; c < C; ++c) {
      const double h = (xr[c] - mean) * inv;
      xh[r * C + c] = static_cast<T>(h);
      y[r * C + c] = static_cast<T>(g[c] * h + b[c]);
    }
  }
}

template <class T>
void layer_norm_backward_t(const T* g, const T* xh, int64_t B, int64_t C, const T* gamma, const double* inv_std,
                           double* sums, T* dgamma, T* dbeta, T* dx) {
  norm_param_grads(g, xh, B, C, sums, dgamma, dbeta);
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
    const double scale = inv_std[r] / n;
    for (int64_t c = 0; c < C; ++c) {
      const double gh = static_cast<double>(gamma[c]) * g[row + c];
      dx[row + c] = static_cast<T>(scale * (n * gh - sum_g - xh[row + c] * sum_g_xhat));
    }
  }
}

void cpu_batch_norm_forward(DType d, const void* x, int64_t rows, int64_t cols, const void* gamma, const void* beta,
                            void* rm, void* rv, double momentum, double eps, bool training, double* mean,
                            double* inv_std, void* xhat, void* y) {
  NCSREC_FLOAT_DISPATCH(
      d,
      batch_norm_forward_t(static_cast<const float*>(x), rows, cols, static_cast<const float*>(gamma),
                           static_cast<const float*>(beta), static_cast<float*>(rm), static_cast<float*>(rv), momentum,
                           eps, training, mean, inv_std, static_cast<float*>(xhat), static_cast<float*>(y)),
      batch_norm_forward_t(static_cast<const double*>(x), rows, cols, static_cast<const double*>(gamma),
                           static_cast<const double*>(beta), static_cast<double*>(rm), static_cast<double*>(rv),
                           momentum, eps, training, mean, inv_std, static_cast<double*>(xhat), static_cast<double*>(y)));
}
void cpu_batch_norm_backward(DType d, const void* dy, const void* xhat, int64_t rows, int64_t cols, const void* gamma,
                             const double* inv_std, double* sums, void* dgamma, void* dbeta, void* dx) {
  NCSREC_FLOAT_DISPATCH(
      d,
      batch_norm_backward_t(static_cast<const float*>(dy), static_cast<const float*>(xhat), rows, cols,
                            static_cast<const float*>(gamma), inv_std, sums, static_cast<float*>(dgamma),
                            static_cast<float*>(dbeta), static_cast<float*>(dx)),
      batch_norm_backward_t(static_cast<const double*>(dy), static_cast<const double*>(xhat), rows, cols,
                            static_cast<const double*>(gamma), inv_std, sums, static_cast<double*>(dgamma),
                            static_cast<double*>(dbeta), static_cast<double*>(dx)));
}
void cpu_layer_norm_forward(DType d, const void* x, int64_t rows, int64_t cols, const void* gamma, const void* beta,
                            double eps, double* inv_std, void* xhat, void* y) {
  NCSREC_FLOAT_DISPATCH(
      d,
      layer_norm_forward_t(static_cast<const float*>(x), rows, cols, static_cast<const float*>(gamma),
                           static_cast<const float*>(beta), eps, inv_std, static_cast<float*>(xhat),
                           static_cast<float*>(y)),
      layer_norm_forward_t(static_cast<const double*>(x), rows, cols, static_cast<const double*>(gamma),
                           static_cast<const double*>(beta), eps, inv_std, static_cast<double*>(xhat),
                           static_cast<double*>(y)));
}
void cpu_layer_norm_backward(DType d, const void* dy, const void* xhat, int64_t rows, int64_t cols, const void* gamma,
                             const double* inv_std, double* sums, void* dgamma, void* dbeta, void* dx) {
  NCSREC_FLOAT_DISPATCH(
      d,
      layer_norm_backward_t(static_cast<const float*>(dy), static_cast<const float*>(xhat), rows, cols,
                            static_cast<const float*>(gamma), inv_std, sums, static_cast<float*>(dgamma),
                            static_cast<float*>(dbeta), static_cast<float*>(dx)),
      layer_norm_backward_t(static_cast<const double*>(dy), static_cast<const double*>(xhat), rows, cols,
                            static_cast<const double*>(gamma), inv_std, sums, static_cast<double*>(dgamma),
                            static_cast<double*>(dbeta), static_cast<double*>(dx)));
}

// ---- the three-tower head (the loops of models/three_tower.cpp) ------------------------------

template <class V>
void three_tower_forward_t(const V* u, const void* const* vp, const void* const* bp, const V* w, int64_t B, int T,
                           int64_t d, void* const* lp, V* s) {
#pragma omp parallel for schedule(static) if (B * T * d >= kParallelMin)
  for (int64_t r = 0; r < B; ++r) {
    V mix = 0;
    for (int t = 0; t < T; ++t) {
      const V* v = static_cast<const V*>(vp[t]) + r * d;
      V l = static_cast<const V*>(bp[t])[0];
      for (int64_t j = 0; j < d; ++j) l += u[r * d + j] * v[j];
      static_cast<V*>(lp[t])[r] = l;
      mix += w[r * T + t] * l;
    }
    s[r] = mix;
  }
}

template <class V>
void three_tower_backward_t(const void* const* gp, const V* ds_p, const V* u, const void* const* vp,
                            const void* const* lp, const V* w, int64_t B, int T, int64_t d, void* const* dlp, V* dg,
                            V* du, void* const* dvp) {
#pragma omp parallel for schedule(static) if (B * T * d >= kParallelMin)
  for (int64_t r = 0; r < B; ++r) {
    const V ds = ds_p ? ds_p[r] : V(0);
    V dot = 0;  // Σ_u w_u·dS·l_u, for the softmax backward
    for (int t = 0; t < T; ++t) {
      const V wt = w[r * T + t];
      static_cast<V*>(dlp[t])[r] = (gp[t] ? static_cast<const V*>(gp[t])[r] : V(0)) + ds * wt;
      dot += wt * ds * static_cast<const V*>(lp[t])[r];
    }
    for (int t = 0; t < T; ++t) {
      const V wt = w[r * T + t];
      dg[r * T + t] = wt * (ds * static_cast<const V*>(lp[t])[r] - dot);
    }
    for (int64_t j = 0; j < d; ++j) du[r * d + j] = 0;
    for (int t = 0; t < T; ++t) {
      const V g = static_cast<const V*>(dlp[t])[r];
      const V* v = static_cast<const V*>(vp[t]) + r * d;
      V* dv = static_cast<V*>(dvp[t]) + r * d;
      for (int64_t j = 0; j < d; ++j) {
        dv[j] = g * u[r * d + j];
        du[r * d + j] += g * v[j];
      }
    }
  }
}

void cpu_three_tower_forward(DType dt, const void* u, const void* const* v, const void* const* bias, const void* w,
                             int64_t B, int T, int64_t d, void* const* logits, void* mixed) {
  NCSREC_FLOAT_DISPATCH(dt,
                        three_tower_forward_t(static_cast<const float*>(u), v, bias, static_cast<const float*>(w), B, T,
                                              d, logits, static_cast<float*>(mixed)),
                        three_tower_forward_t(static_cast<const double*>(u), v, bias, static_cast<const double*>(w), B,
                                              T, d, logits, static_cast<double*>(mixed)));
}
void cpu_three_tower_backward(DType dt, const void* const* dlogit, const void* dmixed, const void* u,
                              const void* const* v, const void* const* logits, const void* w, int64_t B, int T,
                              int64_t d, void* const* dl, void* dg, void* du, void* const* dv) {
  NCSREC_FLOAT_DISPATCH(dt,
                        three_tower_backward_t(dlogit, static_cast<const float*>(dmixed), static_cast<const float*>(u), v,
                                               logits, static_cast<const float*>(w), B, T, d, dl,
                                               static_cast<float*>(dg), static_cast<float*>(du), dv),
                        three_tower_backward_t(dlogit, static_cast<const double*>(dmixed), static_cast<const double*>(u),
                                               v, logits, static_cast<const double*>(w), B, T, d, dl,
                                               static_cast<double*>(dg), static_cast<double*>(du), dv));
}

// ---- APG's per-row products and column blocks (the loops of core/layers/apg.cpp) -----------

template <class T>
void apg_rows_forward_t(T* g, const T* h, const T* s, int64_t B, int64_t K, int64_t s_cols) {
#pragma omp parallel for schedule(static) if (B * K * K >= (1 << 15))
  for (int64_t i = 0; i < B; ++i) {
    const T* hi = h + i * K;
    const T* S = s + i * s_cols;
    T* gi = g + i * K;
    for (int64_t c = 0; c < K; ++c) gi[c] = 0;
    for (int64_t a = 0; a < K; ++a) {
      const T ha = hi[a];
      const T* Sa = S + a * K;
      for (int64_t c = 0; c < K; ++c) gi[c] += ha * Sa[c];
    }
  }
}

template <class T>
void apg_rows_backward_t(T* ds, T* dh, const T* h, const T* s, const T* dg, int64_t B, int64_t K, int64_t s_cols) {
#pragma omp parallel for schedule(static) if (B * K * K >= (1 << 15))
  for (int64_t i = 0; i < B; ++i) {
    const T* hi = h + i * K;
    const T* dgi = dg + i * K;
    const T* S = s + i * s_cols;
    T* dsi = ds + i * s_cols;
    T* dhi = dh + i * K;
    for (int64_t a = 0; a < K; ++a) {
      const T* Sa = S + a * K;
      T* dSa = dsi + a * K;
      T acc = 0;
      for (int64_t c = 0; c < K; ++c) {
        dSa[c] = hi[a] * dgi[c];
        acc += Sa[c] * dgi[c];
      }
      dhi[a] = acc;
    }
  }
}

template <class T>
void add_columns_t(T* y, int64_t ys, int64_t yc, const T* x, int64_t xs, int64_t xc, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) y[r * ys + yc + j] += x[r * xs + xc + j];
}

void cpu_apg_rows_forward(DType d, void* g, const void* h, const void* s, int64_t B, int64_t K, int64_t s_cols) {
  NCSREC_FLOAT_DISPATCH(
      d, apg_rows_forward_t(static_cast<float*>(g), static_cast<const float*>(h), static_cast<const float*>(s), B, K, s_cols),
      apg_rows_forward_t(static_cast<double*>(g), static_cast<const double*>(h), static_cast<const double*>(s), B, K,
                         s_cols));
}
void cpu_apg_rows_backward(DType d, void* ds, void* dh, const void* h, const void* s, const void* dg, int64_t B,
                           int64_t K, int64_t s_cols) {
  NCSREC_FLOAT_DISPATCH(d,
                        apg_rows_backward_t(static_cast<float*>(ds), static_cast<float*>(dh), static_cast<const float*>(h),
                                            static_cast<const float*>(s), static_cast<const float*>(dg), B, K, s_cols),
                        apg_rows_backward_t(static_cast<double*>(ds), static_cast<double*>(dh),
                                            static_cast<const double*>(h), static_cast<const double*>(s),
                                            static_cast<const double*>(dg), B, K, s_cols));
}
void cpu_add_columns(DType d, void* y, int64_t ys, int64_t yc, const void* x, int64_t xs, int64_t xc, int64_t rows,
                     int64_t cols) {
  NCSREC_FLOAT_DISPATCH(d, add_columns_t(static_cast<float*>(y), ys, yc, static_cast<const float*>(x), xs, xc, rows, cols),
                        add_columns_t(static_cast<double*>(y), ys, yc, static_cast<const double*>(x), xs, xc, rows, cols));
}

// ---- elementwise, for learned masks ---------------------------------------------------------

template <class T>
void multiply_accumulate_t(T* y, const T* a, const T* b, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] += a[i] * b[i];
}
void cpu_multiply_accumulate(DType d, void* y, const void* a, const void* b, int64_t n) {
  NCSREC_FLOAT_DISPATCH(
      d, multiply_accumulate_t(static_cast<float*>(y), static_cast<const float*>(a), static_cast<const float*>(b), n),
      multiply_accumulate_t(static_cast<double*>(y), static_cast<const double*>(a), static_cast<const double*>(b), n));
}
template <class T>
void add_scalar_t(T* x, int64_t n, T a) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) x[i] += a;
}
void cpu_add_scalar(DType d, void* x, int64_t n, double a) {
  NCSREC_FLOAT_DISPATCH(d, add_scalar_t(static_cast<float*>(x), n, static_cast<float>(a)),
                        add_scalar_t(static_cast<double*>(x), n, a));
}

// ---- dropout ----------------------------------------------------------------------------------

template <class T>
void dropout_t(T* out, const T* in, int64_t n, double rate, uint64_t key) {
  const T scale = static_cast<T>(1.0 / (1.0 - rate));
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const bool keep = to_unit(hash_combine(key, static_cast<uint64_t>(i))) >= rate;
    out[i] = keep ? in[i] * scale : T(0);
  }
}
void cpu_dropout(DType d, void* out, const void* in, int64_t n, double rate, uint64_t key) {
  NCSREC_FLOAT_DISPATCH(d, dropout_t(static_cast<float*>(out), static_cast<const float*>(in), n, rate, key),
                        dropout_t(static_cast<double*>(out), static_cast<const double*>(in), n, rate, key));
}

// ---- the masked multi-task linear layer, as the plain route computes it ---------------------
// The CPU has no faster way than the plain route (W ⊙ M_t written out, one product per task),
// so these entries are that route, op for op: a device stand-in that registers them (the unit
// tests' fake device) gets the plain route's bits from the fused route's calls.

// W ⊙ M_t into a scratch array kept across calls (an [in, out] weight: a few MB at most).
template <class T>
const T* masked_weight_scratch(const T* w, const uint8_t* bits, int64_t n) {
  thread_local std::vector<T> scratch;
  if (static_cast<int64_t>(scratch.size()) < n) scratch.resize(static_cast<size_t>(n));
  masked_kernel<T, false>(scratch.data(), w, bits, n);
  return scratch.data();
}

void cpu_masked_linear_forward(DType d, int tasks, int64_t rows, int64_t in, int64_t out, const void* const* x,
                               const void* w, const uint8_t* const* bits, const void* bias, bool relu,
                               void* const* y) {
  const OpTable& cpu = ops_for(Device::CPU);
  for (int t = 0; t < tasks; ++t) {
    const void* wm = nullptr;
    NCSREC_FLOAT_DISPATCH(d, wm = masked_weight_scratch(static_cast<const float*>(w), bits[t], in * out),
                          wm = masked_weight_scratch(static_cast<const double*>(w), bits[t], in * out));
    cpu.gemm_bias_act(d, false, false, rows, out, in, x[t], wm, bias, relu, kMatmulFp32, y[t]);
  }
}

void cpu_masked_linear_input_grad(DType d, int tasks, int64_t rows, int64_t in, int64_t out, const void* const* dy,
                                  const void* w, const uint8_t* const* bits, void* const* dx) {
  const OpTable& cpu = ops_for(Device::CPU);
  for (int t = 0; t < tasks; ++t) {
    const void* wm = nullptr;
    NCSREC_FLOAT_DISPATCH(d, wm = masked_weight_scratch(static_cast<const float*>(w), bits[t], in * out),
                          wm = masked_weight_scratch(static_cast<const double*>(w), bits[t], in * out));
    cpu.gemm(d, false, true, rows, in, out, 1.0, dy[t], wm, 0.0, dx[t]);
  }
}

template <class T>
void masked_weight_grad_t(int tasks, int64_t rows, int64_t in, int64_t out, const void* const* x,
                          const void* const* dy, const uint8_t* const* bits, T* dw) {
  thread_local std::vector<T> product;
  const int64_t n = in * out;
  if (static_cast<int64_t>(product.size()) < n) product.resize(static_cast<size_t>(n));
  for (int t = 0; t < tasks; ++t) {
    ops_for(Device::CPU).gemm(dtype_of<T>(), true, false, in, out, rows, 1.0, x[t], dy[t], 0.0, product.data());
    masked_kernel<T, true>(dw, product.data(), bits[t], n);
  }
}

void cpu_masked_linear_weight_grad(DType d, int tasks, int64_t rows, int64_t in, int64_t out, const void* const* x,
                                   const void* const* dy, const uint8_t* const* bits, void* dw) {
  NCSREC_FLOAT_DISPATCH(d, masked_weight_grad_t(tasks, rows, in, out, x, dy, bits, static_cast<float*>(dw)),
                        masked_weight_grad_t(tasks, rows, in, out, x, dy, bits, static_cast<double*>(dw)));
}

// ---- dense optimizers -----------------------------------------------------------------------
// An update mask and weight decay are compile-time variants of each loop, chosen outside it, so
// the plain loop (no mask, no decay) stays plain; an element outside the decay mask takes
// exactly the plain update.

// Whether element i is decayed, in a kDecay loop: `decay_mask` null = every element.
inline bool decayed(const uint8_t* decay_mask, int64_t i) { return !decay_mask || decay_mask[i]; }

// w -= lr · g;  decayed: w -= lr · (g + wd · w)
template <bool kMasked, bool kDecay, class T>
void sgd_t(T* w, const T* g, const uint8_t* mask, const uint8_t* decay_mask, int64_t n, T lr, T wd) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (kMasked)
      if (!mask[i]) continue;
    if constexpr (kDecay)
      if (decayed(decay_mask, i)) {
        w[i] -= lr * (g[i] + wd * w[i]);
        continue;
      }
    w[i] -= lr * g[i];
  }
}

// m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²;  w -= lr · (m / c1) / (sqrt(v / c2) + eps).
// Decayed (AdamW): also w -= lr·wd · w, from the value before this step.
template <bool kMasked, bool kDecay, class T>
void adam_t(T* w, const T* g, T* m, T* v, const uint8_t* mask, const uint8_t* decay_mask, int64_t n, T lr, T beta1,
            T beta2, T eps, T c1, T c2, T lr_wd) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (kMasked)
      if (!mask[i]) continue;
    m[i] = beta1 * m[i] + (T(1) - beta1) * g[i];
    v[i] = beta2 * v[i] + (T(1) - beta2) * g[i] * g[i];
    if constexpr (kDecay)
      if (decayed(decay_mask, i)) {
        w[i] -= lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + eps) + lr_wd * w[i];
        continue;
      }
    w[i] -= lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + eps);
  }
}

// acc += g²;  w -= lr · g / (sqrt(acc) + eps);  decayed: g + wd · w in place of g (L2, both lines)
template <bool kMasked, bool kDecay, class T>
void adagrad_t(T* w, const T* g, T* acc, const uint8_t* mask, const uint8_t* decay_mask, int64_t n, T lr, T eps,
               T wd) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (kMasked)
      if (!mask[i]) continue;
    T gi = g[i];
    if constexpr (kDecay)
      if (decayed(decay_mask, i)) gi += wd * w[i];
    acc[i] += gi * gi;
    w[i] -= lr * gi / (std::sqrt(acc[i]) + eps);
  }
}

// One of the four variants of kernel K: <masked?, decayed?>.
#define NCSREC_PICK_VARIANT_(K, T, masked, decay) \
  ((masked) ? ((decay) ? K<true, true, T> : K<true, false, T>) : ((decay) ? K<false, true, T> : K<false, false, T>))

template <class T>
void sgd_typed(void* w, const void* g, const uint8_t* update, const uint8_t* decay, int64_t n, double lr, double wd) {
  auto kernel = NCSREC_PICK_VARIANT_(sgd_t, T, update, wd > 0);
  kernel(static_cast<T*>(w), static_cast<const T*>(g), update, decay, n, static_cast<T>(lr), static_cast<T>(wd));
}
template <class T>
void adam_typed(void* w, const void* g, void* m, void* v, const uint8_t* update, const uint8_t* decay, int64_t n,
                double lr, double beta1, double beta2, double eps, double c1, double c2, double wd) {
  auto kernel = NCSREC_PICK_VARIANT_(adam_t, T, update, wd > 0);
  kernel(static_cast<T*>(w), static_cast<const T*>(g), static_cast<T*>(m), static_cast<T*>(v), update, decay, n,
         static_cast<T>(lr), static_cast<T>(beta1), static_cast<T>(beta2), static_cast<T>(eps), static_cast<T>(c1),
         static_cast<T>(c2), static_cast<T>(lr * wd));
}
template <class T>
void adagrad_typed(void* w, const void* g, void* acc, const uint8_t* update, const uint8_t* decay, int64_t n, double lr,
                   double eps, double wd) {
  auto kernel = NCSREC_PICK_VARIANT_(adagrad_t, T, update, wd > 0);
  kernel(static_cast<T*>(w), static_cast<const T*>(g), static_cast<T*>(acc), update, decay, n, static_cast<T>(lr),
         static_cast<T>(eps), static_cast<T>(wd));
}
#undef NCSREC_PICK_VARIANT_

void cpu_sgd_step(DType d, void* w, const void* g, const uint8_t* update, const uint8_t* decay, int64_t n, double lr,
                  double wd) {
  NCSREC_FLOAT_DISPATCH(d, sgd_typed<float>(w, g, update, decay, n, lr, wd), sgd_typed<double>(w, g, update, decay, n, lr, wd));
}
void cpu_adam_step(DType d, void* w, const void* g, void* m, void* v, const uint8_t* update, const uint8_t* decay,
                   int64_t n, double lr, double beta1, double beta2, double eps, double c1, double c2, double wd) {
  NCSREC_FLOAT_DISPATCH(d, adam_typed<float>(w, g, m, v, update, decay, n, lr, beta1, beta2, eps, c1, c2, wd),
                        adam_typed<double>(w, g, m, v, update, decay, n, lr, beta1, beta2, eps, c1, c2, wd));
}
void cpu_adagrad_step(DType d, void* w, const void* g, void* acc, const uint8_t* update, const uint8_t* decay,
                      int64_t n, double lr, double eps, double wd) {
  NCSREC_FLOAT_DISPATCH(d, adagrad_typed<float>(w, g, acc, update, decay, n, lr, eps, wd),
                        adagrad_typed<double>(w, g, acc, update, decay, n, lr, eps, wd));
}

// Σ g[i]² over [begin, end) (where mask[i]), in double: element i goes to running sum
// (i − begin) mod 8 and the eight are added pairwise at the end, a fixed order the compiler keeps
// in vector registers; the mask selects without a branch (a random mask's branch mispredicts
// about every other element).
template <bool kMasked, class T>
double sum_squares(const T* g, const uint8_t* mask, int64_t begin, int64_t end) {
  double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  auto add = [&](int lane, int64_t i) {
    const double x = static_cast<double>(g[i]);
    if constexpr (kMasked)
      s[lane] += mask[i] ? x * x : 0.0;
    else
      s[lane] += x * x;
  };
  int64_t i = begin;
  for (; i + 8 <= end; i += 8)
    for (int lane = 0; lane < 8; ++lane) add(lane, i + lane);
  for (int lane = 0; i < end; ++i, ++lane) add(lane, i);
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// masked_sum_squares: the chunks of the sum depend on the buffer's size only (at most kNormChunks of at
// least kNormChunkMin elements): each is summed in order by one thread, then the chunk sums
// in order, so any thread count gives the same bits. No allocation.
constexpr int64_t kNormChunks = 256, kNormChunkMin = 4096;

template <class T>
double masked_sum_squares_t(const T* g, const uint8_t* mask, int64_t n) {
  const int64_t chunk = std::max(kNormChunkMin, (n + kNormChunks - 1) / kNormChunks);
  const int64_t chunks = (n + chunk - 1) / chunk;
  double partial[kNormChunks];
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * chunk, end = std::min(n, begin + chunk);
    partial[c] = mask ? sum_squares<true>(g, mask, begin, end) : sum_squares<false>(g, mask, begin, end);
  }
  double sum = 0;
  for (int64_t c = 0; c < chunks; ++c) sum += partial[c];
  return sum;
}

double cpu_masked_sum_squares(DType d, const void* x, const uint8_t* mask, int64_t n) {
  double r = 0;
  NCSREC_FLOAT_DISPATCH(d, r = masked_sum_squares_t(static_cast<const float*>(x), mask, n),
                        r = masked_sum_squares_t(static_cast<const double*>(x), mask, n));
  return r;
}

}  // namespace

void add_cpu_training_ops(OpTable& t) {
  t.sigmoid_bce = cpu_sigmoid_bce;
  t.focal_loss = cpu_focal_loss;
  t.sigmoid_mse = cpu_sigmoid_mse;
  t.esmm_loss = cpu_esmm_loss;
  t.pairwise_dot_forward = cpu_pairwise_dot_forward;
  t.pairwise_dot_backward = cpu_pairwise_dot_backward;
  t.apply_mask = cpu_apply_mask;
  t.add_masked = cpu_add_masked;
  t.dropout = cpu_dropout;
  t.three_tower_forward = cpu_three_tower_forward;
  t.three_tower_backward = cpu_three_tower_backward;
  t.multiply_accumulate = cpu_multiply_accumulate;
  t.add_scalar = cpu_add_scalar;
  t.apg_rows_forward = cpu_apg_rows_forward;
  t.apg_rows_backward = cpu_apg_rows_backward;
  t.add_columns = cpu_add_columns;
  t.batch_norm_forward = cpu_batch_norm_forward;
  t.batch_norm_backward = cpu_batch_norm_backward;
  t.layer_norm_forward = cpu_layer_norm_forward;
  t.layer_norm_backward = cpu_layer_norm_backward;
  t.masked_linear_forward = cpu_masked_linear_forward;
  t.masked_linear_input_grad = cpu_masked_linear_input_grad;
  t.masked_linear_weight_grad = cpu_masked_linear_weight_grad;
  t.sgd_step = cpu_sgd_step;
  t.adam_step = cpu_adam_step;
  t.adagrad_step = cpu_adagrad_step;
  t.auc = auc_exact;
  t.masked_sum_squares = cpu_masked_sum_squares;
}

}  // namespace ncsrec

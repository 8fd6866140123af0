// CPU kernels: the reference implementation of every op in the dispatch table.
// GEMM goes through cblas (OpenBLAS); element-wise kernels use OpenMP with static schedules,
// and reductions combine per-thread partials in thread order, so results are deterministic
// for a fixed thread count.
#include <cblas.h>
#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/blas_core.h"
#include "core/dispatch.h"
#include "core/error.h"
#include "core/float_dispatch.h"
#include "core/huge_pages.h"

namespace ncsrec {

void add_cpu_training_ops(OpTable& t);  // core/cpu_training_ops.cpp

namespace {

constexpr int64_t kParallelMin = 1 << 14;  // below this, threads cost more than they save

// Embedding tables and their optimizer state are tensors: huge pages for the large ones.
void* cpu_alloc(size_t bytes) { return allocate_for_random_access(bytes); }
void cpu_free(void* p) { std::free(p); }
void cpu_copy(void* dst, const void* src, size_t bytes, CopyKind kind) {
  NCSREC_CHECK(kind == CopyKind::HostToHost, "the CPU backend copies host to host only");
  std::memcpy(dst, src, bytes);
}
void cpu_copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t rows,
                 CopyKind kind) {
  NCSREC_CHECK(kind == CopyKind::HostToHost, "the CPU backend copies host to host only");
  for (size_t r = 0; r < rows; ++r)
    std::memcpy(static_cast<char*>(dst) + r * dst_pitch, static_cast<const char*>(src) + r * src_pitch, width);
}
void cpu_memset_zero(void* p, size_t bytes) { std::memset(p, 0, bytes); }
void cpu_synchronize() {}

// One single-threaded BLAS call on a block of C: rows [m0, m0 + m) and columns [n0, n0 + n) of
// the M x N product.
template <class T>
void gemm_block(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, const T* B, T beta, T* C,
                int64_t m0, int64_t m, int64_t n0, int64_t n) {
  const CBLAS_TRANSPOSE opa = ta ? CblasTrans : CblasNoTrans, opb = tb ? CblasTrans : CblasNoTrans;
  const int64_t lda = ta ? M : K, ldb = tb ? K : N, ldc = N;
  const T* a = ta ? A + m0 : A + m0 * lda;  // op(A)'s rows m0.. are A's columns (ta) or rows
  const T* b = tb ? B + n0 * ldb : B + n0;  // op(B)'s columns n0.. are B's rows (tb) or columns
  T* c = C + m0 * ldc + n0;
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, opa, opb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(K), alpha, a,
                static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
  } else {
    cblas_dgemm(CblasRowMajor, opa, opb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(K), alpha, a,
                static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
  }
}

// The products are threaded by OpenMP, not by OpenBLAS: C is cut into one block per OpenMP
// thread along its longer side and each block is one single-threaded BLAS call. A second
// thread pool (OpenBLAS's pthreads, yield-spinning between calls) beside OpenMP's fought it for
// the cores: on the paper-sized NCS step (2 cores) sched_yield took a fifth of the samples
// (docs/results/bench.md). Each element of C is still one BLAS dot product over all of K; with
// our OpenBLAS the result is bit-identical on 1, 2 and 3 threads (tests/unit/test_gemm.cpp),
// though a BLAS may pick other kernels for a block than for the whole product. The blocks are
// fixed by the thread count asked for and shared out over the team OpenMP gives, which may be
// smaller (OMP_DYNAMIC, OMP_THREAD_LIMIT): every block is computed either way.
template <class T>
void gemm_t(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, const T* B, T beta, T* C) {
  use_single_threaded_blas();
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  constexpr int64_t kAlign = 16;  // block edges on whole SIMD registers and cache lines
  const bool by_rows = M >= N;
  const int64_t side = by_rows ? M : N;
  const int64_t chunk = ((side + threads - 1) / threads + kAlign - 1) / kAlign * kAlign;
  if (threads == 1 || side < 2 * kAlign || M * N * K < (int64_t{1} << 21)) {
    gemm_block(ta, tb, M, N, K, alpha, A, B, beta, C, 0, M, 0, N);
    return;
  }
  const int64_t blocks = (side + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t lo = blk * chunk, n = std::min(side, lo + chunk) - lo;
    if (by_rows) gemm_block(ta, tb, M, N, K, alpha, A, B, beta, C, lo, n, 0, N);
    else gemm_block(ta, tb, M, N, K, alpha, A, B, beta, C, 0, M, lo, n);
  }
}

void cpu_gemm(DType dtype, bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const void* A,
              const void* B, double beta, void* C) {
  if (M == 0 || N == 0) return;
  if (dtype == DType::F32) {
    gemm_t(ta, tb, M, N, K, static_cast<float>(alpha), static_cast<const float*>(A), static_cast<const float*>(B),
           static_cast<float>(beta), static_cast<float*>(C));
  } else {
    NCSREC_CHECK(dtype == DType::F64, "gemm on " << dtype_name(dtype));
    gemm_t(ta, tb, M, N, K, alpha, static_cast<const double*>(A), static_cast<const double*>(B), beta,
           static_cast<double*>(C));
  }
}

template <class T>
void bias_add_t(T* y, const T* b, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) y[r * cols + c] += b[c];
}

template <class T>
void bias_grad_t(T* db, const T* dy, int64_t rows, int64_t cols) {
  // Column sums accumulated row by row in row order: deterministic. Threads take blocks of
  // columns, each summed in the same order, so the bits do not depend on the thread count.
  constexpr int64_t kBlock = 64;
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin && blocks > 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * kBlock, n = std::min(kBlock, cols - c0);
    double acc[kBlock] = {};
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = dy + r * cols + c0;
      for (int64_t c = 0; c < n; ++c) acc[c] += row[c];
    }
    for (int64_t c = 0; c < n; ++c) db[c0 + c] += static_cast<T>(acc[c]);
  }
}

template <class T>
void relu_forward_t(T* y, const T* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
}

template <class T>
void relu_backward_t(T* dx, const T* dy, const T* y, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    // Both loads unconditional, so that the loop vectorises as a blend: a branch on y's sign
    // mispredicted on half of the elements and made this pass 8-10% of the NCS step.
    const T g = dy[i];
    dx[i] = y[i] > T(0) ? g : T(0);
  }
}

template <class T>
void sigmoid_t(T* y, const T* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    // Two branches so that exp never overflows.
    const T v = x[i];
    if (v >= T(0)) {
      y[i] = T(1) / (T(1) + std::exp(-v));
    } else {
      const T e = std::exp(v);
      y[i] = e / (T(1) + e);
    }
  }
}

template <class T>
void softmax_rows_t(T* y, const T* x, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    T m = xr[0];
    for (int64_t c = 1; c < cols; ++c) m = xr[c] > m ? xr[c] : m;
    T s = 0;
    for (int64_t c = 0; c < cols; ++c) s += (yr[c] = std::exp(xr[c] - m));
    for (int64_t c = 0; c < cols; ++c) yr[c] /= s;
  }
}

template <class T>
void axpy_t(int64_t n, double a, const T* x, T* y) {
  const T ta = static_cast<T>(a);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] += ta * x[i];
}

template <class T>
void scale_t(int64_t n, double a, T* x) {
  const T ta = static_cast<T>(a);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) x[i] *= ta;
}

template <class T, bool kSquare>
double reduce_t(const T* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += kSquare ? double(x[i]) * double(x[i]) : double(x[i]);
  return s;
}

template <class T>
void gate_mixture_forward_t(T* out, T* probs, const T* logits, const void* const* experts, int64_t rows, int64_t E,
                            int64_t D) {
  // One row per iteration and a fixed expert order within it: the same bits for any thread count.
#pragma omp parallel for schedule(static) if (rows * E * D >= kParallelMin)
  for (int64_t b = 0; b < rows; ++b) {
    const T* l = logits + b * E;
    T* p = probs + b * E;
    T m = l[0];
    for (int64_t e = 1; e < E; ++e) m = l[e] > m ? l[e] : m;
    T s = 0;
    for (int64_t e = 0; e < E; ++e) s += (p[e] = std::exp(l[e] - m));
    for (int64_t e = 0; e < E; ++e) p[e] /= s;
    T* o = out + b * D;
    for (int64_t d = 0; d < D; ++d) o[d] = T(0);
    for (int64_t e = 0; e < E; ++e) {
      const T* x = static_cast<const T*>(experts[e]) + b * D;
      const T pe = p[e];
      for (int64_t d = 0; d < D; ++d) o[d] += pe * x[d];
    }
  }
}

template <class T>
void gate_mixture_backward_t(T* dlogits, void* const* dexperts, const T* dout, const T* probs,
                             const void* const* experts, int64_t rows, int64_t E, int64_t D) {
#pragma omp parallel for schedule(static) if (rows * E * D >= kParallelMin)
  for (int64_t b = 0; b < rows; ++b) {
    const T* g = dout + b * D;
    const T* p = probs + b * E;
    T* dl = dlogits + b * E;
    // Softmax Jacobian-vector product: dl_e = p_e (s_e − Σ p·s) with s_e = dout·expert_e.
    // s is staged in dl itself, so the kernel needs no scratch memory.
    T mean_s = 0;
    for (int64_t e = 0; e < E; ++e) {
      const T* x = static_cast<const T*>(experts[e]) + b * D;
      T s = 0;
      for (int64_t d = 0; d < D; ++d) s += g[d] * x[d];
      dl[e] = s;
      mean_s += p[e] * s;
    }
    for (int64_t e = 0; e < E; ++e) dl[e] = p[e] * (dl[e] - mean_s);
    for (int64_t e = 0; e < E; ++e) {
      if (!dexperts[e]) continue;
      T* dx = static_cast<T*>(dexperts[e]) + b * D;
      const T pe = p[e];
      for (int64_t d = 0; d < D; ++d) dx[d] += pe * g[d];
    }
  }
}


void cpu_bias_add(DType d, void* y, const void* b, int64_t rows, int64_t cols) {
  NCSREC_FLOAT_DISPATCH(d, bias_add_t(static_cast<float*>(y), static_cast<const float*>(b), rows, cols),
                        bias_add_t(static_cast<double*>(y), static_cast<const double*>(b), rows, cols));
}
void cpu_bias_grad(DType d, void* db, const void* dy, int64_t rows, int64_t cols) {
  NCSREC_FLOAT_DISPATCH(d, bias_grad_t(static_cast<float*>(db), static_cast<const float*>(dy), rows, cols),
                        bias_grad_t(static_cast<double*>(db), static_cast<const double*>(dy), rows, cols));
}
void cpu_relu_forward(DType d, void* y, const void* x, int64_t n) {
  NCSREC_FLOAT_DISPATCH(d, relu_forward_t(static_cast<float*>(y), static_cast<const float*>(x), n),
                        relu_forward_t(static_cast<double*>(y), static_cast<const double*>(x), n));
}
void cpu_relu_backward(DType d, void* dx, const void* dy, const void* y, int64_t n) {
  NCSREC_FLOAT_DISPATCH(
      d, relu_backward_t(static_cast<float*>(dx), static_cast<const float*>(dy), static_cast<const float*>(y), n),
      relu_backward_t(static_cast<double*>(dx), static_cast<const double*>(dy), static_cast<const double*>(y), n));
}
void cpu_sigmoid(DType d, void* y, const void* x, int64_t n) {
  NCSREC_FLOAT_DISPATCH(d, sigmoid_t(static_cast<float*>(y), static_cast<const float*>(x), n),
                        sigmoid_t(static_cast<double*>(y), static_cast<const double*>(x), n));
}
void cpu_softmax_rows(DType d, void* y, const void* x, int64_t rows, int64_t cols) {
  NCSREC_FLOAT_DISPATCH(d, softmax_rows_t(static_cast<float*>(y), static_cast<const float*>(x), rows, cols),
                        softmax_rows_t(static_cast<double*>(y), static_cast<const double*>(x), rows, cols));
}
void cpu_axpy(DType d, int64_t n, double a, const void* x, void* y) {
  NCSREC_FLOAT_DISPATCH(d, axpy_t(n, a, static_cast<const float*>(x), static_cast<float*>(y)),
                        axpy_t(n, a, static_cast<const double*>(x), static_cast<double*>(y)));
}
void cpu_scale(DType d, int64_t n, double a, void* x) {
  NCSREC_FLOAT_DISPATCH(d, scale_t(n, a, static_cast<float*>(x)), scale_t(n, a, static_cast<double*>(x)));
}
double cpu_sum(DType d, const void* x, int64_t n) {
  double r = 0;
  NCSREC_FLOAT_DISPATCH(d, r = (reduce_t<float, false>(static_cast<const float*>(x), n)),
                        r = (reduce_t<double, false>(static_cast<const double*>(x), n)));
  return r;
}
double cpu_sum_squares(DType d, const void* x, int64_t n) {
  double r = 0;
  NCSREC_FLOAT_DISPATCH(d, r = (reduce_t<float, true>(static_cast<const float*>(x), n)),
                        r = (reduce_t<double, true>(static_cast<const double*>(x), n)));
  return r;
}

void cpu_gate_mixture_forward(DType d, void* out, void* probs, const void* logits, const void* const* experts,
                              int64_t rows, int64_t E, int64_t D) {
  NCSREC_FLOAT_DISPATCH(d,
                        gate_mixture_forward_t(static_cast<float*>(out), static_cast<float*>(probs),
                                               static_cast<const float*>(logits), experts, rows, E, D),
                        gate_mixture_forward_t(static_cast<double*>(out), static_cast<double*>(probs),
                                               static_cast<const double*>(logits), experts, rows, E, D));
}
void cpu_gate_mixture_backward(DType d, void* dlogits, void* const* dexperts, const void* dout, const void* probs,
                               const void* const* experts, int64_t rows, int64_t E, int64_t D) {
  NCSREC_FLOAT_DISPATCH(d,
                        gate_mixture_backward_t(static_cast<float*>(dlogits), dexperts,
                                                static_cast<const float*>(dout), static_cast<const float*>(probs),
                                                experts, rows, E, D),
                        gate_mixture_backward_t(static_cast<double*>(dlogits), dexperts,
                                                static_cast<const double*>(dout), static_cast<const double*>(probs),
                                                experts, rows, E, D));
}

// No fused GEMM on the CPU: the three ops one after the other, FP32 whatever the precision.
void cpu_gemm_bias_act(DType d, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void* A, const void* B,
                       const void* bias, bool relu, int /*precision*/, void* C) {
  cpu_gemm(d, ta, tb, M, N, K, 1.0, A, B, 0.0, C);
  if (bias) cpu_bias_add(d, C, bias, M, N);
  if (relu) cpu_relu_forward(d, C, C, M * N);
}

OpTable make_cpu_table() {
  OpTable t;
  t.alloc = cpu_alloc;
  t.free = cpu_free;
  t.copy = cpu_copy;
  t.copy_2d = cpu_copy_2d;
  t.memset_zero = cpu_memset_zero;
  t.synchronize = cpu_synchronize;
  t.gemm = cpu_gemm;
  t.gemm_bias_act = cpu_gemm_bias_act;
  t.bias_add = cpu_bias_add;
  t.bias_grad = cpu_bias_grad;
  t.relu_forward = cpu_relu_forward;
  t.relu_backward = cpu_relu_backward;
  t.sigmoid = cpu_sigmoid;
  t.softmax_rows = cpu_softmax_rows;
  t.axpy = cpu_axpy;
  t.scale = cpu_scale;
  t.sum = cpu_sum;
  t.sum_squares = cpu_sum_squares;
  t.gate_mixture_forward = cpu_gate_mixture_forward;
  t.gate_mixture_backward = cpu_gate_mixture_backward;
  add_cpu_training_ops(t);
  return t;
}

}  // namespace

const OpTable& cpu_op_table() {
  static const OpTable table = make_cpu_table();
  return table;
}

}  // namespace ncsrec

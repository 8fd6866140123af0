// The CUDA backend: device discovery, and the CUDA kernels of the dispatch table (core/dispatch.h).
//
// Everything runs on the legacy default stream, so ops are ordered with each other and with
// cudaMemcpy. GEMM goes through cuBLAS; the other ops are plain grid-stride kernels checked
// against the CPU kernels by tests/gpu/test_cuda_parity.cpp. Reductions (bias_grad, sum,
// sum_squares) accumulate in double in a fixed order that depends only on the sizes (never on
// atomics or the GPU model), so they are deterministic run to run.
#include "cuda/device.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <sstream>

#include "core/device_table.h"
#include "core/sparse.h"
#include "core/dispatch.h"
#include "core/error.h"
#include "core/launcher.h"
#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/embedding_table.h"
#include "cuda/sparse.h"
#include "cuda/train_ops.h"

namespace ncsrec {
namespace {

using namespace cuda_detail;

constexpr int kReduceBlocks = 1024;  // first-pass blocks of sum / sum_squares (a power of two)

cublasHandle_t g_cublas = nullptr;
double* g_reduce_scratch = nullptr;  // kReduceBlocks + 1 doubles on the device
std::mutex g_reduce_mutex;           // guards g_reduce_scratch

// ---- kernels --------------------------------------------------------------------------------

template <class T>
__global__ void bias_add_kernel(T* y, const T* b, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += b[i % cols];
}

// One block per 32 columns: thread (x, y) sums rows y, y + blockDim.y, ... of column x in double
// (coalesced over x), then the blockDim.y partials are combined in a fixed tree order.
constexpr int kBiasGradRows = 16;
template <class T>
__global__ void bias_grad_kernel(T* db, const T* dy, int64_t rows, int64_t cols) {
  __shared__ double partial[kBiasGradRows][33];
  const int64_t c = blockIdx.x * int64_t(32) + threadIdx.x;
  double acc = 0;
  if (c < cols)
    for (int64_t r = threadIdx.y; r < rows; r += kBiasGradRows) acc += static_cast<double>(dy[r * cols + c]);
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  for (int s = kBiasGradRows / 2; s > 0; s >>= 1) {
    if (threadIdx.y < s) partial[threadIdx.y][threadIdx.x] += partial[threadIdx.y + s][threadIdx.x];
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < cols) db[c] += static_cast<T>(partial[0][threadIdx.x]);
}

template <class T>
__global__ void relu_forward_kernel(T* y, const T* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = x[i] > T(0) ? x[i] : T(0);
}

template <class T>
__global__ void relu_backward_kernel(T* dx, const T* dy, const T* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = y[i] > T(0) ? dy[i] : T(0);
}

template <class T>
__global__ void sigmoid_kernel(T* y, const T* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const T v = x[i];  // two branches so that exp never overflows (as on the CPU)
    if (v >= T(0)) {
      y[i] = T(1) / (T(1) + exp(-v));
    } else {
      const T e = exp(v);
      y[i] = e / (T(1) + e);
    }
  }
}

// One block per row (grid-stride over rows): max, then sum of exp in double, then scale.
template <class T>
__global__ void softmax_rows_kernel(T* y, const T* x, int64_t rows, int64_t cols) {
  __shared__ double shared_d[kThreads];
  __shared__ T shared_t[kThreads];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    T m = xr[0];
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = max(m, xr[c]);
    m = block_max(m, shared_t);
    double s = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const T e = exp(xr[c] - m);
      yr[c] = e;
      s += static_cast<double>(e);
    }
    s = block_sum(s, shared_d);
    const T inv = static_cast<T>(1.0 / s);
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) yr[c] *= inv;
  }
}

template <class T>
__global__ void axpy_kernel(int64_t n, T a, const T* x, T* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += a * x[i];
}

template <class T>
__global__ void scale_kernel(int64_t n, T a, T* x) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] *= a;
}

// Pass 1 of sum / sum_squares: block b writes the sum of its grid-stride elements to partial[b].
template <class T, bool kSquare>
__global__ void reduce_pass1_kernel(const T* x, int64_t n, double* partial, const uint8_t* mask = nullptr) {
  __shared__ double shared[kThreads];
  double acc = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    if (mask && !mask[i]) continue;
    const double v = static_cast<double>(x[i]);
    acc += kSquare ? v * v : v;
  }
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Pass 2: one block of kReduceBlocks threads adds the partials into *out.
__global__ void reduce_pass2_kernel(const double* partial, int count, double* out) {
  __shared__ double shared[kReduceBlocks];
  const double v = threadIdx.x < count ? partial[threadIdx.x] : 0.0;
  const double s = block_sum(v, shared);
  if (threadIdx.x == 0) *out = s;
}


// ---- table entries --------------------------------------------------------------------------

void* cuda_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    const bool have_info = cudaMemGetInfo(&free_b, &total_b) == cudaSuccess;
    (void)cudaGetLastError();
    std::ostringstream os;
    os << "out of GPU memory allocating " << bytes << " bytes";
    if (have_info) os << " (" << free_b << " of " << total_b << " bytes free)";
    throw UserError(os.str());
  }
  CUDA_CHECK(err);
  return p;
}

// Called from destructors: must not throw. At process exit the runtime may already be unloading
// (cudaErrorCudartUnloading), which is harmless; any other error is reported on stderr.
void cuda_free(void* p) noexcept {
  if (!p) return;
  const cudaError_t err = cudaFree(p);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    if (err != cudaErrorCudartUnloading)
      std::fprintf(stderr, "ncsrec: warning: cudaFree failed: %s (%s)\n", cudaGetErrorName(err),
                   cudaGetErrorString(err));
  }
}

// Page-locked host memory for the staging buffers (the input going up, its gradient coming down):
// copies from it run at full PCIe speed, without the driver's bounce through its own buffer.
// Null when the driver cannot lock that much: the caller falls back to ordinary memory.
void* cuda_host_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t err = cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return nullptr;
  }
  return p;
}

void cuda_host_free(void* p) noexcept {
  if (!p) return;
  const cudaError_t err = cudaFreeHost(p);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    if (err != cudaErrorCudartUnloading)
      std::fprintf(stderr, "ncsrec: warning: cudaFreeHost failed: %s (%s)\n", cudaGetErrorName(err),
                   cudaGetErrorString(err));
  }
}

cudaMemcpyKind memcpy_kind(CopyKind kind) {
  switch (kind) {
    case CopyKind::HostToHost: return cudaMemcpyHostToHost;
    case CopyKind::HostToDevice: return cudaMemcpyHostToDevice;
    case CopyKind::DeviceToHost: return cudaMemcpyDeviceToHost;
    case CopyKind::DeviceToDevice: return cudaMemcpyDeviceToDevice;
  }
  NCSREC_CHECK(false, "unknown copy kind " << static_cast<int>(kind));
  return cudaMemcpyDefault;
}

void cuda_copy(void* dst, const void* src, size_t bytes, CopyKind kind) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, memcpy_kind(kind)));
}

void cuda_copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t rows,
                  CopyKind kind) {
  if (width == 0 || rows == 0) return;
  CUDA_CHECK(cudaMemcpy2D(dst, dst_pitch, src, src_pitch, width, rows, memcpy_kind(kind)));
}

void cuda_memset_zero(void* p, size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemset(p, 0, bytes));
}

void cuda_synchronize() { CUDA_CHECK(cudaDeviceSynchronize()); }

int checked_int(int64_t v, const char* what) {
  NCSREC_CHECK(v >= 0 && v <= INT_MAX, "gemm " << what << " = " << v << " exceeds cuBLAS's 32-bit range");
  return static_cast<int>(v);
}

// Row-major C[M,N] = alpha op(A)[M,K] op(B)[K,N] + beta C. A row-major matrix is its transpose
// in column-major, so cuBLAS computes the column-major Cᵀ[N,M] = op(B)ᵀ op(A)ᵀ: B first.
void cuda_gemm(DType dtype, bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const void* A,
               const void* B, double beta, void* C) {
  if (M == 0 || N == 0) return;
  const int m = checked_int(N, "N"), n = checked_int(M, "M"), k = checked_int(K, "K");
  const cublasOperation_t op_b = tb ? CUBLAS_OP_T : CUBLAS_OP_N, op_a = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  // Leading dimensions of the row-major arrays; cuBLAS wants at least 1 even when K == 0.
  const int ldb = std::max(1, checked_int(tb ? K : N, "ldb"));
  const int lda = std::max(1, checked_int(ta ? M : K, "lda"));
  const int ldc = m;
  if (dtype == DType::F32 && matmul_precision() != kMatmulFp32) {
    // FP32 arrays, the products on TF32 or BF16 tensor cores, FP32 accumulation.
    const float a = static_cast<float>(alpha), b = static_cast<float>(beta);
    const cublasComputeType_t compute =
        matmul_precision() == kMatmulBf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F_FAST_TF32;
    CUBLAS_CHECK(cublasGemmEx(g_cublas, op_b, op_a, m, n, k, &a, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda, &b, C,
                              CUDA_R_32F, ldc, compute, CUBLAS_GEMM_DEFAULT));
  } else if (dtype == DType::F32) {
    const float a = static_cast<float>(alpha), b = static_cast<float>(beta);
    CUBLAS_CHECK(cublasSgemm(g_cublas, op_b, op_a, m, n, k, &a, static_cast<const float*>(B), ldb,
                             static_cast<const float*>(A), lda, &b, static_cast<float*>(C), ldc));
  } else {
    NCSREC_CHECK(dtype == DType::F64, "gemm on " << dtype_name(dtype));
    CUBLAS_CHECK(cublasDgemm(g_cublas, op_b, op_a, m, n, k, &alpha, static_cast<const double*>(B), ldb,
                             static_cast<const double*>(A), lda, &beta, static_cast<double*>(C), ldc));
  }
}

void cuda_bias_add(DType d, void* y, const void* b, int64_t rows, int64_t cols) {
  if (rows * cols == 0) return;
  const int g = blocks_for(rows * cols);
  NCSREC_CUDA_FLOAT_DISPATCH(
      d, (bias_add_kernel<float><<<g, kThreads>>>(static_cast<float*>(y), static_cast<const float*>(b), rows, cols)),
      (bias_add_kernel<double><<<g, kThreads>>>(static_cast<double*>(y), static_cast<const double*>(b), rows, cols)));
  NCSREC_CUDA_LAUNCH_CHECK();
}

void cuda_bias_grad(DType d, void* db, const void* dy, int64_t rows, int64_t cols) {
  if (cols == 0) return;
  const int64_t g64 = (cols + 31) / 32;
  NCSREC_CHECK(g64 <= INT_MAX, "bias_grad: too many columns " << cols);
  const dim3 grid(static_cast<unsigned>(g64)), block(32, kBiasGradRows);
  NCSREC_CUDA_FLOAT_DISPATCH(
      d,
      (bias_grad_kernel<float><<<grid, block>>>(static_cast<float*>(db), static_cast<const float*>(dy), rows, cols)),
      (bias_grad_kernel<double><<<grid, block>>>(static_cast<double*>(db), static_cast<const double*>(dy), rows,
                                                 cols)));
  NCSREC_CUDA_LAUNCH_CHECK();
}

void cuda_relu_forward(DType d, void* y, const void* x, int64_t n) {
  if (n == 0) return;
  const int g = blocks_for(n);
  NCSREC_CUDA_FLOAT_DISPATCH(
      d, (relu_forward_kernel<float><<<g, kThreads>>>(static_cast<float*>(y), static_cast<const float*>(x), n)),
      (relu_forward_kernel<double><<<g, kThreads>>>(static_cast<double*>(y), static_cast<const double*>(x), n)));
  NCSREC_CUDA_LAUNCH_CHECK();
}

void cuda_relu_backward(DType d, void* dx, const void* dy, const void* y, int64_t n) {
  if (n == 0) return;
  const int g = blocks_for(n);
  NCSREC_CUDA_FLOAT_DISPATCH(d,
                             (relu_backward_kernel<float><<<g, kThreads>>>(static_cast<float*>(dx),
                                                                           static_cast<const float*>(dy),
                                                                           static_cast<const float*>(y), n)),
                             (relu_backward_kernel<double><<<g, kThreads>>>(static_cast<double*>(dx),
                                                                            static_cast<const double*>(dy),
                                                                            static_cast<const double*>(y), n)));
  NCSREC_CUDA_LAUNCH_CHECK();
}

void cuda_sigmoid(DType d, void* y, const void* x, int64_t n) {
  if (n == 0) return;
  const int g = blocks_for(n);
  NCSREC_CUDA_FLOAT_DISPATCH(
      d, (sigmoid_kernel<float><<<g, kThreads>>>(static_cast<float*>(y), static_cast<const float*>(x), n)),
      (sigmoid_kernel<double><<<g, kThreads>>>(static_cast<double*>(y), static_cast<const double*>(x), n)));
  NCSREC_CUDA_LAUNCH_CHECK();
}

void cuda_softmax_rows(DType d, void* y, const void* x, int64_t rows, int64_t cols) {
  if (rows == 0 || cols == 0) return;
  const int g = static_cast<int>(std::min<int64_t>(rows, 65535));
  NCSREC_CUDA_FLOAT_DISPATCH(d,
                             (softmax_rows_kernel<float><<<g, kThreads>>>(static_cast<float*>(y),
                                                                          static_cast<const float*>(x), rows, cols)),
                             (softmax_rows_kernel<double><<<g, kThreads>>>(
                                 static_cast<double*>(y), static_cast<const double*>(x), rows, cols)));
  NCSREC_CUDA_LAUNCH_CHECK();
}

void cuda_axpy(DType d, int64_t n, double a, const void* x, void* y) {
  if (n == 0) return;
  const int g = blocks_for(n);
  NCSREC_CUDA_FLOAT_DISPATCH(d,
                             (axpy_kernel<float><<<g, kThreads>>>(n, static_cast<float>(a),
                                                                  static_cast<const float*>(x), static_cast<float*>(y))),
                             (axpy_kernel<double><<<g, kThreads>>>(n, a, static_cast<const double*>(x),
                                                                   static_cast<double*>(y))));
  NCSREC_CUDA_LAUNCH_CHECK();
}

void cuda_scale(DType d, int64_t n, double a, void* x) {
  if (n == 0) return;
  const int g = blocks_for(n);
  NCSREC_CUDA_FLOAT_DISPATCH(d, (scale_kernel<float><<<g, kThreads>>>(n, static_cast<float>(a), static_cast<float*>(x))),
                             (scale_kernel<double><<<g, kThreads>>>(n, a, static_cast<double*>(x))));
  NCSREC_CUDA_LAUNCH_CHECK();
}

template <bool kSquare>
double cuda_reduce(DType d, const void* x, int64_t n, const uint8_t* mask = nullptr) {
  if (n == 0) return 0.0;
  // The grid depends on n only, so the summation order (and the result) is the same every run.
  const int g = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, kReduceBlocks));
  std::lock_guard<std::mutex> lock(g_reduce_mutex);
  double* partial = g_reduce_scratch;
  double* out = g_reduce_scratch + kReduceBlocks;
  NCSREC_CUDA_FLOAT_DISPATCH(
      d, (reduce_pass1_kernel<float, kSquare><<<g, kThreads>>>(static_cast<const float*>(x), n, partial, mask)),
      (reduce_pass1_kernel<double, kSquare><<<g, kThreads>>>(static_cast<const double*>(x), n, partial, mask)));
  NCSREC_CUDA_LAUNCH_CHECK();
  reduce_pass2_kernel<<<1, kReduceBlocks>>>(partial, g, out);
  NCSREC_CUDA_LAUNCH_CHECK();
  double result = 0;
  CUDA_CHECK(cudaMemcpy(&result, out, sizeof(double), cudaMemcpyDeviceToHost));
  return result;
}

double cuda_sum(DType d, const void* x, int64_t n) { return cuda_reduce<false>(d, x, n); }
double cuda_sum_squares(DType d, const void* x, int64_t n) { return cuda_reduce<true>(d, x, n); }
double cuda_masked_sum_squares(DType d, const void* x, const uint8_t* mask, int64_t n) {
  return cuda_reduce<true>(d, x, n, mask);
}

OpTable make_cuda_table() {
  OpTable t;
  t.alloc = cuda_alloc;
  t.free = cuda_free;
  t.host_alloc = cuda_host_alloc;
  t.host_free = cuda_host_free;
  t.copy = cuda_copy;
  t.copy_2d = cuda_copy_2d;
  t.memset_zero = cuda_memset_zero;
  t.synchronize = cuda_synchronize;
  t.gemm = cuda_gemm;
  t.bias_add = cuda_bias_add;
  t.bias_grad = cuda_bias_grad;
  t.relu_forward = cuda_relu_forward;
  t.relu_backward = cuda_relu_backward;
  t.sigmoid = cuda_sigmoid;
  t.softmax_rows = cuda_softmax_rows;
  t.axpy = cuda_axpy;
  t.scale = cuda_scale;
  t.sum = cuda_sum;
  t.sum_squares = cuda_sum_squares;
  t.masked_sum_squares = cuda_masked_sum_squares;
  add_cuda_training_ops(t);
  add_cuda_metric_ops(t);
  add_cuda_gemm_ops(t);
  add_cuda_masked_linear_ops(t);
  return t;
}

std::mutex g_register_mutex;
bool g_registered = false;

}  // namespace

int cuda_device_count() {
  int count = 0;  // left unwritten by cudaGetDeviceCount when there is no driver
  const cudaError_t err = cudaGetDeviceCount(&count);
  (void)cudaGetLastError();  // clear the sticky "no driver" error so later calls start clean
  if (err != cudaSuccess || count < 0) return 0;
  return count;
}

std::string cuda_device_description(int device) {
  cudaDeviceProp prop{};
  const cudaError_t err = cudaGetDeviceProperties(&prop, device);
  std::ostringstream os;
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    os << "cuda device " << device << " (unavailable: " << cudaGetErrorName(err) << ")";
    return os.str();
  }
  os.setf(std::ios::fixed);
  os.precision(1);
  os << prop.name << " (sm_" << prop.major << prop.minor << ", " << prop.multiProcessorCount << " SMs, "
     << static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0) << " GiB)";
  return os.str();
}

int cuda_select_device_index(int count) { return count > 0 ? launcher_local_rank() % count : 0; }

bool cuda_register_if_available(std::string* why_not) {
  std::lock_guard<std::mutex> lock(g_register_mutex);
  if (g_registered) return true;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  (void)cudaGetLastError();
  if (err != cudaSuccess || count <= 0) {
    if (why_not) {
      std::ostringstream os;
      if (err != cudaSuccess)
        os << "no CUDA device: cudaGetDeviceCount returned " << static_cast<int>(err) << " (" << cudaGetErrorName(err)
           << ": " << cudaGetErrorString(err) << ")";
      else
        os << "no CUDA device: cudaGetDeviceCount found 0 devices";
      *why_not = os.str();
    }
    return false;
  }
  const int device = cuda_select_device_index(count);
  CUDA_CHECK(cudaSetDevice(device));
  // The handle and the reduction scratch live until the process exits: destroying them from a
  // static destructor can run after the CUDA runtime has unloaded.
  if (!g_cublas) {
    CUBLAS_CHECK(cublasCreate(&g_cublas));
    // Full-precision FP32 (no TF32 tensor cores): parity with the CPU kernels is checked at 1e-5.
    CUBLAS_CHECK(cublasSetMathMode(g_cublas, CUBLAS_DEFAULT_MATH));
    CUBLAS_CHECK(cublasSetPointerMode(g_cublas, CUBLAS_POINTER_MODE_HOST));
  }
  if (!g_reduce_scratch) CUDA_CHECK(cudaMalloc(&g_reduce_scratch, (kReduceBlocks + 1) * sizeof(double)));
  register_ops(Device::CUDA, make_cuda_table());
  register_device_tables(Device::CUDA, make_cuda_device_table);
  register_device_csr(Device::CUDA, make_cuda_device_csr);
  g_registered = true;
  return true;
}

}  // namespace ncsrec

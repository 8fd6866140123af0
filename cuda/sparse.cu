// cuSPARSE SpMM for a task's masked layer (see cuda/sparse.h).
//
// Layout trick: the CSR is A = (W ⊙ M)ᵀ [out, in], and cuSPARSE's SpMM multiplies a sparse LEFT
// operand, C = A·B. Our layer has the sparse matrix on the right (y = x·Aᵀ), so the dense
// matrices are handed over as column-major views of our row-major buffers: x [B, in] row-major
// is xᵀ [in, B] column-major (ld = in), and y [B, out] row-major is yᵀ [out, B] column-major
// (ld = out). SpMM then computes yᵀ = A·xᵀ with no transposition of anything, and with A not
// transposed, which keeps cuSPARSE deterministic (the transposed-A path may differ run to run).
// Bias and ReLU follow in one small kernel.
#include "cuda/sparse.h"

#include <cuda_runtime.h>
#include <cusparse.h>

#include <algorithm>
#include <climits>
#include <vector>

#include "core/error.h"
#include "cuda/check.h"

namespace ncsrec {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

// y[b, o] = act(y[b, o] + bias[o]) over y [rows, cols]; bias may be null.
__global__ void bias_act_kernel(float* y, const float* bias, int64_t rows, int64_t cols, bool relu) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float v = y[i];
    if (bias) v += bias[i % cols];
    y[i] = relu ? fmaxf(v, 0.0f) : v;
  }
}

// A device allocation freed on scope exit (cudaFree must not throw from a destructor).
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMalloc(&ptr_, bytes));
    bytes_ = bytes;
  }
  ~DeviceArray() {
    if (ptr_) (void)cudaFree(ptr_);
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; o.bytes_ = 0; }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// RAII for the dense-matrix descriptors of one forward call.
class DnMat {
 public:
  // A column-major [rows, cols] view with leading dimension ld.
  DnMat(int64_t rows, int64_t cols, int64_t ld, const float* values) {
    CUSPARSE_CHECK(cusparseCreateDnMat(&descr_, rows, cols, ld, const_cast<float*>(values), CUDA_R_32F,
                                       CUSPARSE_ORDER_COL));
  }
  ~DnMat() { (void)cusparseDestroyDnMat(descr_); }
  DnMat(const DnMat&) = delete;
  DnMat& operator=(const DnMat&) = delete;
  cusparseDnMatDescr_t get() const { return descr_; }

 private:
  cusparseDnMatDescr_t descr_ = nullptr;
};

int32_t checked_int32(int64_t v, const char* what) {
  NCSREC_CHECK(v >= 0 && v <= INT32_MAX, "CudaCsrLinear: " << what << " = " << v << " exceeds cuSPARSE's 32-bit index");
  return static_cast<int32_t>(v);
}

}  // namespace

struct CudaCsrLinear::Impl {
  int64_t in = 0, out = 0, nnz = 0;
  bool relu = false;
  bool has_bias = false;
  DeviceArray row_ptr, col_idx, values, bias, workspace;
  cusparseHandle_t handle = nullptr;
  cusparseSpMatDescr_t a = nullptr;

  ~Impl() {
    if (a) (void)cusparseDestroySpMat(a);
    if (handle) (void)cusparseDestroy(handle);
  }
};

CudaCsrLinear::CudaCsrLinear(const CsrMatrix& w, const float* bias, bool relu) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  NCSREC_CHECK(static_cast<int64_t>(w.row_ptr.size()) == w.rows + 1 && w.row_ptr.back() == w.nnz() &&
                   static_cast<int64_t>(w.col_idx.size()) == w.nnz(),
               "CudaCsrLinear: malformed CSR");
  m.in = w.cols;
  m.out = w.rows;
  m.nnz = w.nnz();
  m.relu = relu;
  checked_int32(m.in, "in");
  checked_int32(m.out, "out");
  checked_int32(m.nnz, "nnz");
  // 32-bit row offsets and columns: cuSPARSE's CSR SpMM wants one index type for both.
  std::vector<int32_t> row_ptr32(w.row_ptr.begin(), w.row_ptr.end());
  // At least one element each, so that an all-zero mask still has valid (non-null) arrays.
  m.row_ptr = DeviceArray(row_ptr32.size() * sizeof(int32_t));
  m.col_idx = DeviceArray(std::max<size_t>(1, w.col_idx.size()) * sizeof(int32_t));
  m.values = DeviceArray(std::max<size_t>(1, w.values.size()) * sizeof(float));
  CUDA_CHECK(cudaMemcpy(m.row_ptr.get(), row_ptr32.data(), row_ptr32.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  if (m.nnz > 0) {
    CUDA_CHECK(cudaMemcpy(m.col_idx.get(), w.col_idx.data(), w.col_idx.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(m.values.get(), w.values.data(), w.values.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  if (bias) {
    m.has_bias = true;
    m.bias = DeviceArray(static_cast<size_t>(std::max<int64_t>(1, m.out)) * sizeof(float));
    if (m.out > 0) CUDA_CHECK(cudaMemcpy(m.bias.get(), bias, static_cast<size_t>(m.out) * sizeof(float), cudaMemcpyHostToDevice));
  }
  CUSPARSE_CHECK(cusparseCreate(&m.handle));
  CUSPARSE_CHECK(cusparseSetPointerMode(m.handle, CUSPARSE_POINTER_MODE_HOST));
  CUSPARSE_CHECK(cusparseCreateCsr(&m.a, m.out, m.in, m.nnz, m.row_ptr.get(), m.col_idx.get(), m.values.get(),
                                   CUSPARSE_INDEX_32I, CUSPARSE_INDEX_32I, CUSPARSE_INDEX_BASE_ZERO, CUDA_R_32F));
}

CudaCsrLinear::~CudaCsrLinear() = default;

int64_t CudaCsrLinear::in() const { return impl_->in; }
int64_t CudaCsrLinear::out() const { return impl_->out; }
int64_t CudaCsrLinear::nnz() const { return impl_->nnz; }

void CudaCsrLinear::forward(float* y, const float* x, int64_t batch) {
  Impl& m = *impl_;
  NCSREC_CHECK(batch >= 0, "CudaCsrLinear::forward: negative batch " << batch);
  if (batch == 0 || m.out == 0) return;
  checked_int32(batch, "batch");
  if (m.nnz == 0 || m.in == 0) {
    // Nothing to multiply: cuSPARSE is not asked to handle the empty matrix.
    CUDA_CHECK(cudaMemset(y, 0, static_cast<size_t>(batch * m.out) * sizeof(float)));
  } else {
    const DnMat xt(m.in, batch, m.in, x);    // xᵀ [in, B], column-major
    const DnMat yt(m.out, batch, m.out, y);  // yᵀ [out, B], column-major
    const float alpha = 1.0f, beta = 0.0f;
    const cusparseOperation_t op = CUSPARSE_OPERATION_NON_TRANSPOSE;
    size_t need = 0;
    CUSPARSE_CHECK(cusparseSpMM_bufferSize(m.handle, op, op, &alpha, m.a, xt.get(), &beta, yt.get(), CUDA_R_32F,
                                           CUSPARSE_SPMM_ALG_DEFAULT, &need));
    if (need > m.workspace.bytes()) m.workspace = DeviceArray(need);  // grows to the largest batch seen
    CUSPARSE_CHECK(cusparseSpMM(m.handle, op, op, &alpha, m.a, xt.get(), &beta, yt.get(), CUDA_R_32F,
                                CUSPARSE_SPMM_ALG_DEFAULT, m.workspace.get()));
  }
  if (m.has_bias || m.relu) {
    const int64_t n = batch * m.out;
    const int blocks = static_cast<int>(std::max<int64_t>(1, std::min((n + kThreads - 1) / kThreads, kMaxBlocks)));
    bias_act_kernel<<<blocks, kThreads>>>(y, m.has_bias ? static_cast<const float*>(m.bias.get()) : nullptr, batch,
                                          m.out, m.relu);
    CUDA_CHECK(cudaGetLastError());
  }
}

void CudaCsrLinear::forward(Tensor& y, const Tensor& x) {
  NCSREC_CHECK(x.device() == Device::CUDA && y.device() == Device::CUDA && x.dtype() == DType::F32 &&
                   y.dtype() == DType::F32,
               "CudaCsrLinear::forward needs CUDA f32 tensors; got x " << x.describe() << ", y " << y.describe());
  NCSREC_CHECK(x.ndim() == 2 && x.dim(1) == impl_->in,
               "CudaCsrLinear::forward: x " << x.describe() << " must be [B, " << impl_->in << "]");
  NCSREC_CHECK(y.ndim() == 2 && y.dim(0) == x.dim(0) && y.dim(1) == impl_->out,
               "CudaCsrLinear::forward: y " << y.describe() << " must be [" << x.dim(0) << ", " << impl_->out << "]");
  forward(static_cast<float*>(y.raw()), static_cast<const float*>(x.raw()), x.dim(0));
}

std::unique_ptr<DeviceCsrLinear> make_cuda_device_csr(const CsrMatrix& w, const float* bias, bool relu) {
  return std::make_unique<CudaCsrLinear>(w, bias, relu);
}

}  // namespace ncsrec

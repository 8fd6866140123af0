// The cuSPARSE twin of core/sparse.h: one task's masked layer as a CSR matrix on the GPU,
// y = act(x·(W ⊙ M_t) + b) through cusparseSpMM, for inference and export. The CPU
// csr_linear_forward is the reference it is checked against (tests/gpu/test_cuda_sparse.cpp).
//
// Header for host compilers: no CUDA types appear here (the cuSPARSE handle, descriptors and
// device buffers live behind a pointer in cuda/sparse.cu), so .cpp files and tests include it.
//
// Not here: training through CSR (the dense masked GEMM is the training path), f64, streams
// (everything runs on the legacy default stream, ordered with the CUDA OpTable's ops).
#pragma once

#include <cstdint>
#include <memory>

#include "core/sparse.h"
#include "core/tensor.h"

namespace ncsrec {

class CudaCsrLinear final : public DeviceCsrLinear {
 public:
  // Uploads w (= masked_to_csr(W, M), [out, in]) and the bias (host f32 [out], or nullptr for
  // none) to the current device and creates the cuSPARSE handle and sparse descriptor. Needs a
  // GPU: call cuda_register_if_available() first. Throws InternalError (from CUDA_CHECK /
  // CUSPARSE_CHECK) when a CUDA or cuSPARSE call fails, e.g. without a driver.
  CudaCsrLinear(const CsrMatrix& w, const float* bias, bool relu);
  ~CudaCsrLinear() override;
  CudaCsrLinear(const CudaCsrLinear&) = delete;
  CudaCsrLinear& operator=(const CudaCsrLinear&) = delete;

  // y [B, out] = act(x [B, in] · (W ⊙ M) + b): device pointers, row-major, y written (=).
  // Deterministic: SpMM with a non-transposed CSR operand gives the same bits run to run.
  void forward(float* y, const float* x, int64_t batch);
  // The same on CUDA f32 tensors x [B, in] and y [B, out] (DeviceCsrLinear: the model's sparse
  // inference on a CUDA model).
  void forward(Tensor& y, const Tensor& x) override;

  int64_t in() const;
  int64_t out() const;
  int64_t nnz() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The factory cuda/ registers for Device::CUDA (register_device_csr, core/sparse.h).
std::unique_ptr<DeviceCsrLinear> make_cuda_device_csr(const CsrMatrix& w, const float* bias, bool relu);

}  // namespace ncsrec

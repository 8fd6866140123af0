// CSR form of one task's masked weight, for inference and export (NCS4CVR / LT4REC, PAPERS.md §1:
// the "sparsity can reduce computational complexity" claim): y = act(x·(W ⊙ M_t) + b) computed
// from the nnz = M_t.count() surviving connections only, on the CPU. The cuSPARSE twin of the
// forward is cuda/sparse.h; bench/sparse_vs_dense.cpp measures where CSR beats the dense GEMM
// (docs/results/sparse.md).
//
// Orientation: the CSR holds the TRANSPOSED masked weight, (W ⊙ M)ᵀ of shape [out, in]: row o
// lists the inputs i with M[i, o] = 1 and their weights W[i, o]. Each output is then one sparse
// dot product over an input row, y[b, o] = Σ_k values[k] · x[b, col_idx[k]], and the kernel
// vectorises over a tile of batch rows (x tile transposed to [in, tile]): per nonzero, one
// broadcast of values[k] and `tile` contiguous multiply-adds into accumulators that stay in
// registers for the whole CSR row. Measured against the alternatives on the shared 2-core AMD
// EPYC (Zen 5, AVX-512) dev machine, layer 720→512, batch 1024, 1 thread, median of 15 ms
// (bench/sparse_vs_dense.cpp `--variants`, 2026-11-23), at 20% / 5% density:
//   [out,in] CSR, one batch row at a time (gather x[b, col])          41.0 / 13.4
//   [in,out] CSR, one batch row at a time (scatter into y[b, col])    31.5 /  7.9
//   [out,in] CSR, batch tile 16 / 32 / 64 / 128                       25.3 / 8.1, 6.3 / 4.1,
//                                                                      5.9 / 3.8,  7.3 / 5.3
//   tile 32 or 64 with 2 or 4 interleaved partial sums                ≈ tile 64 (no gain)
//   this file (tile 64)                                                5.8 /  3.6
//   dense cblas_sgemm on W ⊙ M (OpenBLAS, Haswell kernels)             6.9 /  6.6
// The gather and scatter kernels cannot vectorise (an indexed load or store per multiply-add).
// Since 2026-12-06 the tile kernel also goes over the inputs in blocks of 128 (their part of the
// transposed tile stays in L1) and sums two rows side by side, with the same bits: 720→512 at
// 20%, batch 4096, 1 thread, 38.1 → 18.9 ms on the 2-core AVX-512 VM (docs/results/sparse.md).
// What CSR costs beyond its multiply-adds is the two tile transposes (B·(in + out) scalar moves),
// which is why it never wins on the small 256→128 layer; see docs/results/sparse.md.
//
// Numerics: values are f32 (the trained weights are f32; CSR is an inference/export format, not
// a training one). Each y[b, o] is summed in f32 in CSR order (ascending input index), without
// FMA contraction, so the result does not depend on the thread count, the tile or the CPU's
// vector width, and is bit-identical run to run. It differs from a BLAS GEMM by rounding only.
//
// On a device the CSR layer is a backend's (cuda/sparse.h: cuSPARSE SpMM), registered as a
// factory (register_device_csr) so that core never includes a CUDA header; the model's sparse
// inference on a device model goes through it.
//
// Not here: training over the mask's connections (core/sparse_train.h, the masked layer's fused
// route on the CPU: its values are read from W at every call, as W moves every step), f64.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/masks.h"
#include "core/tensor.h"

namespace ncsrec {

// A compressed-sparse-row f32 matrix [rows, cols]: row r's nonzeros are
// values[row_ptr[r] .. row_ptr[r+1]) at columns col_idx[same range], columns ascending.
// row_ptr has rows + 1 entries, row_ptr[0] = 0, row_ptr[rows] = nnz. Column indices are int32
// (a layer's fan-in is far below 2³¹); row offsets are int64 so that nnz is never the limit on
// the CPU (cuda/sparse.cu narrows them to int32 on upload, checked, as cuSPARSE wants one index
// type for both arrays).
struct CsrMatrix {
  int64_t rows = 0, cols = 0;
  std::vector<int64_t> row_ptr;  // rows + 1
  std::vector<int32_t> col_idx;  // nnz
  std::vector<float> values;     // nnz

  int64_t nnz() const { return static_cast<int64_t>(values.size()); }
  double density() const { return rows * cols == 0 ? 1.0 : static_cast<double>(nnz()) / static_cast<double>(rows * cols); }
};

// The CSR of (W ⊙ M)ᵀ: W is a CPU f32 tensor [in, out] (or any tensor with in·out elements laid
// out row-major as [in, out]) and M its mask [in, out]. The result is [out, in] with exactly
// M.count() nonzeros: every masked-in connection is stored, even where W holds 0.0 there, so the
// sparsity pattern is the mask's and nnz does not depend on the weights' values.
CsrMatrix masked_to_csr(const Tensor& W, const BitMask& M);

// y[b, o] = act(Σ_i x[b, i] · (W ⊙ M)[i, o] + bias[o]) with w = masked_to_csr(W, M) ([out, in]).
// x: CPU f32 [B, in]; y: CPU f32 [B, out], written (=); bias: f32 [out] or nullptr; relu: act is
// ReLU, else identity. OpenMP over tiles of batch rows; deterministic (see the header comment).
void csr_linear_forward(Tensor& y, const Tensor& x, const CsrMatrix& w, const Tensor* bias, bool relu);

// The same on raw row-major arrays (what the tensor version calls, and what the benchmark times).
void csr_linear_forward(float* y, const float* x, int64_t batch, const CsrMatrix& w, const float* bias, bool relu);

// One task's masked layer as CSR in a device's memory: forward(y, x) is csr_linear_forward on
// f32 tensors x [B, in] and y [B, out] in that device's memory.
class DeviceCsrLinear {
 public:
  virtual ~DeviceCsrLinear() = default;
  virtual void forward(Tensor& y, const Tensor& x) = 0;
};
// Uploads w (= masked_to_csr(W, M)) and the bias (host f32 [out], or null) to the device.
using DeviceCsrFactory = std::unique_ptr<DeviceCsrLinear> (*)(const CsrMatrix& w, const float* bias, bool relu);
// Installs a device's factory (null: none); a backend calls it with its kernels.
void register_device_csr(Device device, DeviceCsrFactory factory);
// The device's factory, or null when its backend has no CSR layer.
DeviceCsrFactory device_csr_factory(Device device);

}  // namespace ncsrec

// CSR conversion of a masked weight and the CPU CSR linear forward (see sparse.h for the layout
// and the measurements behind it).
#include "core/sparse.h"

#include <immintrin.h>

#include <algorithm>
#include <limits>

#include "core/error.h"
#include "core/per_device.h"

namespace ncsrec {

namespace {

// Batch rows per tile: 64 f32 accumulators are four AVX-512 (eight AVX2) registers, enough
// independent add chains to hide the add latency, and the transposed x tile (in · 64 floats,
// 184 KB for in = 720) stays in L2. 16, 32 and 128 were measured too (sparse.h).
constexpr int64_t kTile = 64;

// One tile of `rows` ≤ kTile batch rows. xt is the transposed, zero-padded x tile [in, kTile];
// yt receives the pre-activation tile [out, kTile]. Cloned for AVX-512 / AVX2 / baseline and
// picked at load time (the project builds without -march). FMA contraction is off so that the
// three clones round identically (a separate multiply and add cost nothing measurable here: the
// loop is bound by loads). GCC's unroll-and-jam (on at -O3) unrolls the k loop and then fails to
// vectorise the t loop (a 3x slowdown, seen in the disassembly), hence its switch.
//
// The inputs go in blocks of kBlock (their 32 KiB of xt stay in L1 while every row's nonzeros
// in the block are summed), each row's sum carried from block to block in yt: the same additions
// in the same order as one pass per row. Two rows are summed side by side, each in its own order,
// so that one row's chain of dependent adds does not wait on the add's latency.
constexpr int64_t kBlock = 128;

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"),
               optimize("no-loop-unroll-and-jam", "fp-contract=off")))
void csr_tile(float* __restrict yt, const float* __restrict xt, const int64_t* __restrict split,
              const int32_t* __restrict col_idx, const float* __restrict values, int64_t out, int64_t blocks) {
  for (int64_t blk = 0; blk < blocks; ++blk) {
    int64_t o = 0;
    for (; o + 2 <= out; o += 2) {
      float a[kTile], c[kTile];
      for (int64_t t = 0; t < kTile; ++t) {
        a[t] = blk == 0 ? 0.0f : yt[o * kTile + t];
        c[t] = blk == 0 ? 0.0f : yt[(o + 1) * kTile + t];
      }
      int64_t ka = split[o * (blocks + 1) + blk], kc = split[(o + 1) * (blocks + 1) + blk];
      const int64_t ea = split[o * (blocks + 1) + blk + 1], ec = split[(o + 1) * (blocks + 1) + blk + 1];
      for (; ka < ea && kc < ec; ++ka, ++kc) {
        const float va = values[ka], vc = values[kc];
        const float* __restrict xa = xt + static_cast<int64_t>(col_idx[ka]) * kTile;
        const float* __restrict xc = xt + static_cast<int64_t>(col_idx[kc]) * kTile;
        for (int64_t t = 0; t < kTile; ++t) {
          a[t] += va * xa[t];
          c[t] += vc * xc[t];
        }
      }
      for (; ka < ea; ++ka) {
        const float v = values[ka];
        const float* __restrict xr = xt + static_cast<int64_t>(col_idx[ka]) * kTile;
        for (int64_t t = 0; t < kTile; ++t) a[t] += v * xr[t];
      }
      for (; kc < ec; ++kc) {
        const float v = values[kc];
        const float* __restrict xr = xt + static_cast<int64_t>(col_idx[kc]) * kTile;
        for (int64_t t = 0; t < kTile; ++t) c[t] += v * xr[t];
      }
      for (int64_t t = 0; t < kTile; ++t) {
        yt[o * kTile + t] = a[t];
        yt[(o + 1) * kTile + t] = c[t];
      }
    }
    for (; o < out; ++o) {
      float a[kTile];
      for (int64_t t = 0; t < kTile; ++t) a[t] = blk == 0 ? 0.0f : yt[o * kTile + t];
      for (int64_t k = split[o * (blocks + 1) + blk]; k < split[o * (blocks + 1) + blk + 1]; ++k) {
        const float v = values[k];
        const float* __restrict xr = xt + static_cast<int64_t>(col_idx[k]) * kTile;
        for (int64_t t = 0; t < kTile; ++t) a[t] += v * xr[t];
      }
      for (int64_t t = 0; t < kTile; ++t) yt[o * kTile + t] = a[t];
    }
  }
}

}  // namespace

CsrMatrix masked_to_csr(const Tensor& W, const BitMask& M) {
  NCSREC_CHECK(W.device() == Device::CPU && W.dtype() == DType::F32,
               "masked_to_csr needs a CPU f32 weight; got " << W.describe());
  NCSREC_CHECK(W.numel() == M.size(), "masked_to_csr: weight " << W.describe() << " vs mask [" << M.rows << ", "
                                                               << M.cols << "]");
  NCSREC_CHECK(M.rows <= std::numeric_limits<int32_t>::max(),
               "masked_to_csr: fan-in " << M.rows << " exceeds the int32 column index");
  const int64_t in = M.rows, out = M.cols;
  const float* w = W.data<float>();

  CsrMatrix csr;
  csr.rows = out;
  csr.cols = in;
  csr.row_ptr.assign(static_cast<size_t>(out + 1), 0);
  // Counting pass over the mask in its own (row-major [in, out]) order, then a prefix sum.
  for (int64_t i = 0; i < in; ++i)
    for (int64_t o = 0; o < out; ++o)
      if (M.get(i * out + o)) ++csr.row_ptr[static_cast<size_t>(o + 1)];
  for (int64_t o = 0; o < out; ++o) csr.row_ptr[static_cast<size_t>(o + 1)] += csr.row_ptr[static_cast<size_t>(o)];
  const int64_t nnz = csr.row_ptr.back();
  csr.col_idx.resize(static_cast<size_t>(nnz));
  csr.values.resize(static_cast<size_t>(nnz));
  // Fill pass: visiting i in ascending order leaves each CSR row's columns sorted.
  std::vector<int64_t> next(csr.row_ptr.begin(), csr.row_ptr.end() - 1);
  for (int64_t i = 0; i < in; ++i)
    for (int64_t o = 0; o < out; ++o) {
      const int64_t e = i * out + o;
      if (!M.get(e)) continue;
      const size_t k = static_cast<size_t>(next[static_cast<size_t>(o)]++);
      csr.col_idx[k] = static_cast<int32_t>(i);
      csr.values[k] = w[e];
    }
  return csr;
}

void csr_linear_forward(float* y, const float* x, int64_t batch, const CsrMatrix& w, const float* bias, bool relu) {
  const int64_t in = w.cols, out = w.rows;
  const int64_t tiles = (batch + kTile - 1) / kTile;
  // Where each row's nonzeros cross each block's first column: split[o·(blocks + 1) + b].
  const int64_t blocks = std::max<int64_t>(1, (in + kBlock - 1) / kBlock);
  std::vector<int64_t> split(static_cast<size_t>(out * (blocks + 1)));
  for (int64_t o = 0; o < out; ++o) {
    int64_t k = w.row_ptr[static_cast<size_t>(o)];
    const int64_t end = w.row_ptr[static_cast<size_t>(o + 1)];
    for (int64_t b = 0; b < blocks; ++b) {
      split[static_cast<size_t>(o * (blocks + 1) + b)] = k;
      while (k < end && w.col_idx[static_cast<size_t>(k)] < (b + 1) * kBlock) ++k;
    }
    split[static_cast<size_t>(o * (blocks + 1) + blocks)] = end;
  }
#pragma omp parallel
  {
    // Per-thread scratch, allocated once per call and thread (a few hundred KB at most).
    std::vector<float> xt(static_cast<size_t>(in * kTile)), yt(static_cast<size_t>(out * kTile));
#pragma omp for schedule(static)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t b0 = tile * kTile, rows = std::min(kTile, batch - b0);
      // Transpose the x tile to [in, kTile]; rows past the batch's end are zeros. In blocks of 16
      // columns: each batch row's 16 are one cache line, written to 16 lines of xt that stay in
      // L1 for the tile's rows.
      if (rows < kTile) std::fill(xt.begin(), xt.end(), 0.0f);
      const float* x0 = x + b0 * in;
      for (int64_t i0 = 0; i0 < in; i0 += 16)
        for (int64_t t = 0; t < rows; ++t)
          for (int64_t i = i0; i < std::min(in, i0 + 16); ++i) xt[static_cast<size_t>(i * kTile + t)] = x0[t * in + i];
      csr_tile(yt.data(), xt.data(), split.data(), w.col_idx.data(), w.values.data(), out, blocks);
      // Transpose back with bias and activation, in blocks of 16 outputs (16 lines of yt, which
      // stay in L1 for the tile's rows, to one line of each row of y).
      for (int64_t o0 = 0; o0 < out; o0 += 16)
        for (int64_t t = 0; t < rows; ++t) {
          float* yr = y + (b0 + t) * out;
          for (int64_t o = o0; o < std::min(out, o0 + 16); ++o) {
            float v = yt[static_cast<size_t>(o * kTile + t)];
            if (bias) v += bias[o];
            // ReLU as MAXSS, which is exactly v > 0 ? v : 0 (−0 and NaN give +0) without a branch
            // that random signs mispredict half the time.
            yr[o] = relu ? _mm_cvtss_f32(_mm_max_ss(_mm_set_ss(v), _mm_setzero_ps())) : v;
          }
        }
    }
  }
}

void csr_linear_forward(Tensor& y, const Tensor& x, const CsrMatrix& w, const Tensor* bias, bool relu) {
  NCSREC_CHECK(x.device() == Device::CPU && y.device() == Device::CPU && x.dtype() == DType::F32 &&
                   y.dtype() == DType::F32,
               "csr_linear_forward needs CPU f32 tensors; got x " << x.describe() << ", y " << y.describe());
  NCSREC_CHECK(x.ndim() == 2 && x.dim(1) == w.cols, "csr_linear_forward: x " << x.describe() << " vs CSR [" << w.rows
                                                                             << ", " << w.cols << "] (needs [B, "
                                                                             << w.cols << "])");
  NCSREC_CHECK(y.ndim() == 2 && y.dim(0) == x.dim(0) && y.dim(1) == w.rows,
               "csr_linear_forward: y " << y.describe() << " must be [" << x.dim(0) << ", " << w.rows << "]");
  NCSREC_CHECK(static_cast<int64_t>(w.row_ptr.size()) == w.rows + 1 && w.row_ptr.back() == w.nnz() &&
                   static_cast<int64_t>(w.col_idx.size()) == w.nnz(),
               "csr_linear_forward: malformed CSR");
  const float* b = nullptr;
  if (bias) {
    NCSREC_CHECK(bias->device() == Device::CPU && bias->dtype() == DType::F32 && bias->numel() == w.rows,
                 "csr_linear_forward: bias " << bias->describe() << " must be CPU f32 [" << w.rows << "]");
    b = bias->data<float>();
  }
  csr_linear_forward(y.data<float>(), x.data<float>(), x.dim(0), w, b, relu);
}

namespace {

PerDevice<DeviceCsrFactory> g_csr_factories;

}  // namespace

void register_device_csr(Device device, DeviceCsrFactory factory) { g_csr_factories.set(device, factory); }

DeviceCsrFactory device_csr_factory(Device device) { return g_csr_factories.get(device); }

}  // namespace ncsrec

// Benchmark (not a test): CSR vs dense for the NCS shared MLP's masked layers on the CPU.
//
//   ncsrec_bench_sparse              the table: for each paper layer (720→512, 512→256, 256→128),
//                                    batch (256, 1024, 4096), thread count (1, 2) and mask density
//                                    (100 … 1 %), the median time of
//                                      dense  cblas_sgemm(x, W ⊙ M) + bias + ReLU (W ⊙ M precomputed)
//                                      csr    csr_linear_forward (core/sparse.h), bias + ReLU fused
//                                    and the crossover density below which CSR is faster.
//   ncsrec_bench_sparse --variants   the kernel variants behind core/sparse.cpp's choice (they live
//                                    here, not in the product; STYLE.md), timed on one layer.
//   ncsrec_bench_sparse --training   the masked layer's training products (core/sparse_train.h, the
//                                    CPU's fused route) against the plain route's dense products
//                                    (ops::gemm on W ⊙ M, threaded as in training), for each
//                                    paper layer at batch 4096, 1 and 2 threads, densities 10–50 %:
//                                    forward, input gradient and weight gradient, measured
//                                    alternately, median and best.
//   ncsrec_bench_sparse --chain      the paper's masked MLP (720→512→256→128, two tasks on one
//                                    input, batch 4096) on the CPU's fused route, one forward and
//                                    backward (summed input gradient) as MaskedMLP chains it
//                                    (tiled activations between the layers) against its layers one
//                                    by one (row-major activations), alternately, median and best.
//   --reps N                         repetitions per measurement (default 9; the median is reported)
//   --density D, --threads T         --training and --chain: just this density (a fraction) /
//                                    thread count
//
// Masks are uniformly random at the exact density (a random permutation's first nnz entries), the
// pattern IMP's magnitude pruning gives to weights without structure. Timing is std::chrono
// steady_clock around one call, after one warm-up call; results go to docs/results/sparse.md.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include <unistd.h>

#include "core/blas_core.h"
#include "core/layers/masked_linear.h"
#include "core/masks.h"
#include "core/ops.h"
#include "core/params.h"
#include "core/random.h"
#include "core/sparse.h"
#include "core/sparse_train.h"
#include "core/tensor.h"

namespace ncsrec {
namespace {

struct Layer {
  int64_t in, out;
};
constexpr Layer kLayers[] = {{720, 512}, {512, 256}, {256, 128}};
constexpr int64_t kBatches[] = {256, 1024, 4096};
constexpr double kDensities[] = {1.00, 0.50, 0.30, 0.20, 0.10, 0.05, 0.02, 0.01};

int g_reps = 9;

double median_ms(const std::function<void()>& fn, int reps) {
  fn();  // warm-up: page-faults the outputs, spins up the thread pools
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    const auto t1 = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::nth_element(ms.begin(), ms.begin() + reps / 2, ms.end());
  return ms[static_cast<size_t>(reps / 2)];
}

// Median and minimum times of two functions measured alternately (a, b, a, b, ...), so that load
// from other processes on a shared machine falls on both alike.
struct PairTiming {
  double a_median, b_median, a_min, b_min;
};
PairTiming pair_ms(const std::function<void()>& a, const std::function<void()>& b, int reps) {
  a();
  b();
  std::vector<double> ta, tb;
  auto time = [](const std::function<void()>& fn) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  for (int r = 0; r < reps; ++r) {
    ta.push_back(time(a));
    tb.push_back(time(b));
  }
  std::sort(ta.begin(), ta.end());
  std::sort(tb.begin(), tb.end());
  const size_t mid = static_cast<size_t>(reps / 2);
  return {ta[mid], tb[mid], ta.front(), tb.front()};
}

std::vector<float> random_values(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<float>((rng.bernoulli(0.5) ? -1.0 : 1.0) * rng.uniform(0.05, 1.0));
  return v;
}

BitMask random_mask(int64_t rows, int64_t cols, double density, uint64_t seed) {
  const int64_t n = rows * cols, keep = std::llround(density * static_cast<double>(n));
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  Rng rng(seed);
  for (int64_t i = 0; i < keep; ++i) std::swap(perm[static_cast<size_t>(i)], perm[static_cast<size_t>(i + static_cast<int64_t>(rng.below(static_cast<uint64_t>(n - i))))]);
  BitMask m = BitMask::zeros(rows, cols);
  for (int64_t i = 0; i < keep; ++i) m.set(perm[static_cast<size_t>(i)], true);
  return m;
}

void set_threads(int n) {
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

// The dense layer as the training path computes it: GEMM on the materialised W ⊙ M, then bias and
// ReLU in one pass.
void dense_forward(float* y, const float* x, const float* wm, const float* bias, int64_t B, int64_t in, int64_t out) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(B), static_cast<int>(out),
              static_cast<int>(in), 1.0f, x, static_cast<int>(in), wm, static_cast<int>(out), 0.0f, y,
              static_cast<int>(out));
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o = 0; o < out; ++o) {
      const float v = y[b * out + o] + bias[o];
      y[b * out + o] = v > 0.0f ? v : 0.0f;
    }
}

// ---- variants (see core/sparse.h for the table they produced) ---------------------------------

// V1: [out, in] CSR, one batch row at a time: y[b, o] is a sparse dot product gathering x[b, col].
void variant_gather(float* y, const float* x, int64_t B, const CsrMatrix& wt, const float* bias) {
  const int64_t in = wt.cols, out = wt.rows;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    const float* xr = x + b * in;
    for (int64_t o = 0; o < out; ++o) {
      float acc = 0.0f;
      for (int64_t k = wt.row_ptr[o]; k < wt.row_ptr[o + 1]; ++k) acc += wt.values[k] * xr[wt.col_idx[k]];
      const float v = acc + bias[o];
      y[b * out + o] = v > 0.0f ? v : 0.0f;
    }
  }
}

// V2: [in, out] CSR (the mask's own orientation), one batch row at a time: y[b, :] += x[b, i] · W[i, :]
// scattered over the row's nonzero columns.
void variant_scatter(float* y, const float* x, int64_t B, const CsrMatrix& w, const float* bias) {
  const int64_t in = w.rows, out = w.cols;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    float* yr = y + b * out;
    for (int64_t o = 0; o < out; ++o) yr[o] = bias[o];
    const float* xr = x + b * in;
    for (int64_t i = 0; i < in; ++i) {
      const float xv = xr[i];
      for (int64_t k = w.row_ptr[i]; k < w.row_ptr[i + 1]; ++k) yr[w.col_idx[k]] += xv * w.values[k];
    }
    for (int64_t o = 0; o < out; ++o) yr[o] = yr[o] > 0.0f ? yr[o] : 0.0f;
  }
}

// V3: [out, in] CSR over a tile of T batch rows (x tile transposed), accumulators in registers;
// S interleaved partial sums over the CSR row (k mod S) give S·T/16 independent add chains.
// The product (core/sparse.cpp) is one of these (see sparse.h). GCC's unroll-and-jam (-O3)
// de-vectorises the k loop, hence the optimize attribute.
template <int64_t T, int S>
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), optimize("no-loop-unroll-and-jam")))
void tile_kernel(float* __restrict yt, const float* __restrict xt, const int64_t* __restrict rp,
                 const int32_t* __restrict ci, const float* __restrict vals, int64_t out) {
  for (int64_t o = 0; o < out; ++o) {
    float acc[S][T] = {};
    int64_t k = rp[o];
    const int64_t end = rp[o + 1];
    for (; k + S <= end; k += S)
      for (int s = 0; s < S; ++s) {
        const float v = vals[k + s];
        const float* __restrict xr = xt + static_cast<int64_t>(ci[k + s]) * T;
        for (int64_t t = 0; t < T; ++t) acc[s][t] += v * xr[t];
      }
    for (; k < end; ++k) {
      const float v = vals[k];
      const float* __restrict xr = xt + static_cast<int64_t>(ci[k]) * T;
      for (int64_t t = 0; t < T; ++t) acc[0][t] += v * xr[t];
    }
    for (int s = 1; s < S; ++s)
      for (int64_t t = 0; t < T; ++t) acc[0][t] += acc[s][t];
    for (int64_t t = 0; t < T; ++t) yt[o * T + t] = acc[0][t];
  }
}

template <int64_t T, int S>
void variant_tiled(float* y, const float* x, int64_t B, const CsrMatrix& wt, const float* bias) {
  const int64_t in = wt.cols, out = wt.rows, tiles = (B + T - 1) / T;
#pragma omp parallel
  {
    std::vector<float> xt(static_cast<size_t>(in * T)), yt(static_cast<size_t>(out * T));
#pragma omp for schedule(static)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t b0 = tile * T, rows = std::min(T, B - b0);
      if (rows < T) std::fill(xt.begin(), xt.end(), 0.0f);
      for (int64_t t = 0; t < rows; ++t)
        for (int64_t i = 0; i < in; ++i) xt[static_cast<size_t>(i * T + t)] = x[(b0 + t) * in + i];
      tile_kernel<T, S>(yt.data(), xt.data(), wt.row_ptr.data(), wt.col_idx.data(), wt.values.data(), out);
      for (int64_t t = 0; t < rows; ++t)
        for (int64_t o = 0; o < out; ++o) {
          const float v = yt[static_cast<size_t>(o * T + t)] + bias[o];
          y[(b0 + t) * out + o] = v > 0.0f ? v : 0.0f;
        }
    }
  }
}

// The [in, out] CSR of W ⊙ M (for the scatter variant only).
CsrMatrix masked_to_csr_untransposed(const std::vector<float>& W, const BitMask& M) {
  CsrMatrix c;
  c.rows = M.rows;
  c.cols = M.cols;
  c.row_ptr.push_back(0);
  for (int64_t i = 0; i < M.rows; ++i) {
    for (int64_t o = 0; o < M.cols; ++o)
      if (M.get(i * M.cols + o)) {
        c.col_idx.push_back(static_cast<int32_t>(o));
        c.values.push_back(W[static_cast<size_t>(i * M.cols + o)]);
      }
    c.row_ptr.push_back(c.nnz());
  }
  return c;
}

struct Problem {
  int64_t B, in, out;
  std::vector<float> x, w, wm, bias, y;
  BitMask mask;
  CsrMatrix csr;  // [out, in]
  Problem(Layer l, int64_t batch, double density)
      : B(batch), in(l.in), out(l.out), x(random_values(batch * l.in, 1)), w(random_values(l.in * l.out, 2)),
        wm(w), bias(random_values(l.out, 3)), y(static_cast<size_t>(batch * l.out)),
        mask(random_mask(l.in, l.out, density, 4)) {
    apply_mask_host();
    Tensor wt = Tensor::empty({in, out}, DType::F32);
    std::memcpy(wt.data<float>(), w.data(), w.size() * sizeof(float));
    csr = masked_to_csr(wt, mask);
  }
  void apply_mask_host() {
    for (int64_t e = 0; e < in * out; ++e)
      if (!mask.get(e)) wm[static_cast<size_t>(e)] = 0.0f;
  }
};

void run_variants() {
  const Layer l = kLayers[0];
  const int64_t B = 1024;
  set_threads(1);
  std::printf("variants: layer %ldx%ld, batch %ld, 1 thread, median of %d (ms)\n", static_cast<long>(l.in),
              static_cast<long>(l.out), static_cast<long>(B), g_reps);
  std::printf("%-8s %8s %8s %8s %8s %8s %8s %8s %8s %8s %8s %8s\n", "density", "dense", "gather", "scatter",
              "t16s1", "t32s1", "t64s1", "t128s1", "t32s2", "t32s4", "t64s2", "product");
  for (double d : {0.20, 0.05}) {
    Problem p(l, B, d);
    const CsrMatrix csr_io = masked_to_csr_untransposed(p.w, p.mask);
    float* y = p.y.data();
    const float* x = p.x.data();
    const float* b = p.bias.data();
    const double dense = median_ms([&] { dense_forward(y, x, p.wm.data(), b, B, l.in, l.out); }, g_reps);
    const std::vector<float> ref = p.y;
    auto timed = [&](const char* name, const std::function<void()>& fn) {
      std::fill(p.y.begin(), p.y.end(), std::nanf(""));
      const double ms = median_ms(fn, g_reps);
      double worst = 0;
      for (size_t i = 0; i < ref.size(); ++i) {
        const double diff = std::fabs(static_cast<double>(ref[i]) - p.y[i]);
        worst = std::isnan(diff) ? INFINITY : std::max(worst, diff);
      }
      if (worst > 1e-3) std::printf("  WARNING: %s differs from dense by %g\n", name, worst);
      return ms;
    };
    const double t[] = {
        timed("gather", [&] { variant_gather(y, x, B, p.csr, b); }),
        timed("scatter", [&] { variant_scatter(y, x, B, csr_io, b); }),
        timed("t16s1", [&] { variant_tiled<16, 1>(y, x, B, p.csr, b); }),
        timed("t32s1", [&] { variant_tiled<32, 1>(y, x, B, p.csr, b); }),
        timed("t64s1", [&] { variant_tiled<64, 1>(y, x, B, p.csr, b); }),
        timed("t128s1", [&] { variant_tiled<128, 1>(y, x, B, p.csr, b); }),
        timed("t32s2", [&] { variant_tiled<32, 2>(y, x, B, p.csr, b); }),
        timed("t32s4", [&] { variant_tiled<32, 4>(y, x, B, p.csr, b); }),
        timed("t64s2", [&] { variant_tiled<64, 2>(y, x, B, p.csr, b); }),
        timed("product", [&] { csr_linear_forward(y, x, B, p.csr, b, true); }),
    };
    std::printf("%-7.0f%% %8.3f", d * 100, dense);
    for (double v : t) std::printf(" %8.3f", v);
    std::printf("\n");
  }
}

void run_table() {
  std::printf("OpenBLAS core: %s; OpenMP max threads: %d; median of %d runs (ms)\n", openblas_get_corename(),
              omp_get_max_threads(), g_reps);
  std::printf("%-9s %6s %4s %8s %10s %10s %9s %10s %10s\n", "layer", "batch", "thr", "density", "dense_med",
              "csr_med", "dense/csr", "dense_min", "csr_min");
  struct Crossover {
    std::string what;
    double grid;        // the largest grid density at or below which CSR always wins (0: never)
    double estimated;   // linear interpolation between the grid points around the crossing
  };
  std::vector<Crossover> crossovers;
  for (const Layer& l : kLayers)
    for (int64_t B : kBatches)
      for (int threads : {1, 2}) {
        set_threads(threads);
        std::vector<double> dense_ms, csr_ms;
        for (double d : kDensities) {
          Problem p(l, B, d);
          float* y = p.y.data();
          const PairTiming t = pair_ms(
              [&] { dense_forward(y, p.x.data(), p.wm.data(), p.bias.data(), B, l.in, l.out); },
              [&] { csr_linear_forward(y, p.x.data(), B, p.csr, p.bias.data(), true); }, g_reps);
          const double td = t.a_median, tc = t.b_median;
          dense_ms.push_back(td);
          csr_ms.push_back(tc);
          char name[32];
          std::snprintf(name, sizeof name, "%ldx%ld", static_cast<long>(l.in), static_cast<long>(l.out));
          std::printf("%-9s %6ld %4d %7.0f%% %10.3f %10.3f %9.2f %10.3f %10.3f\n", name, static_cast<long>(B), threads,
                      d * 100, td, tc, td / tc, t.a_min, t.b_min);
          std::fflush(stdout);
        }
        // Densities are in decreasing order: walk from the sparsest up while CSR keeps winning.
        const size_t n = std::size(kDensities);
        double grid = 0, est = 0;
        size_t i = n;
        while (i > 0 && csr_ms[i - 1] < dense_ms[i - 1]) --i;
        if (i < n) {
          grid = kDensities[i];
          if (i == 0) {
            est = 1.0;
          } else {  // CSR loses at kDensities[i-1], wins at kDensities[i]: interpolate the ratio
            const double r_hi = csr_ms[i - 1] / dense_ms[i - 1], r_lo = csr_ms[i] / dense_ms[i];
            const double d_hi = kDensities[i - 1], d_lo = kDensities[i];
            est = d_lo + (1.0 - r_lo) * (d_hi - d_lo) / (r_hi - r_lo);
          }
        }
        char what[64];
        std::snprintf(what, sizeof what, "%ldx%ld B=%ld thr=%d", static_cast<long>(l.in), static_cast<long>(l.out),
                      static_cast<long>(B), threads);
        crossovers.push_back({what, grid, est});
      }
  std::printf("\ncrossover (CSR faster than dense at and below):\n");
  for (const auto& c : crossovers) {
    if (c.grid == 0)
      std::printf("  %-28s never (not even at 1%%)\n", c.what.c_str());
    else
      std::printf("  %-28s grid %5.0f%%   interpolated %5.1f%%\n", c.what.c_str(), c.grid * 100, c.estimated * 100);
  }
}

// ---- training products (core/sparse_train.h) -------------------------------------------------

Tensor tensor_of(const std::vector<float>& v, Shape shape) {
  Tensor t = Tensor::empty(std::move(shape), DType::F32);
  std::memcpy(t.raw(), v.data(), v.size() * sizeof(float));
  return t;
}

void run_training(double only_density, int only_threads) {
  if (!masked_sparse_available()) {
    std::printf("this CPU has no AVX-512F: the sparse training route is never taken\n");
    return;
  }
  constexpr int64_t B = 4096;
  std::printf("training products, batch %ld, median (best) of %d, ms; ratio = dense / sparse medians\n",
              static_cast<long>(B), g_reps);
  std::printf("%-9s %3s %5s | %-26s | %-26s | %-26s\n", "layer", "thr", "dens", "forward dense/sparse",
              "input grad dense/sparse", "weight grad dense/sparse");
  for (const Layer& l : kLayers) {
    const Tensor x = tensor_of(random_values(B * l.in, 1), {B, l.in});
    const Tensor dy = tensor_of(random_values(B * l.out, 2), {B, l.out});
    const Tensor w = tensor_of(random_values(l.in * l.out, 3), {l.in, l.out});
    Tensor y = Tensor::empty({B, l.out}, DType::F32), dx = Tensor::empty({B, l.in}, DType::F32);
    Tensor wm = Tensor::empty({l.in, l.out}, DType::F32), product = Tensor::empty({l.in, l.out}, DType::F32);
    Tensor dw = Tensor::zeros({l.in, l.out}, DType::F32);
    for (const int threads : {1, 2}) {
      if (only_threads > 0 && threads != only_threads) continue;
      omp_set_num_threads(threads);
      for (const double density : {0.10, 0.20, 0.30, 0.40, 0.50}) {
        if (only_density > 0 && std::abs(density - only_density) > 1e-9) continue;
        const BitMask mask = random_mask(l.in, l.out, density, 4);
        const MaskedSparsePlan plan = plan_masked_sparse(mask);
        apply_mask(wm, w, mask);
        const PairTiming f = pair_ms([&] { ops::gemm(y, x, false, wm, false); },
                                     [&] { masked_sparse_forward(plan, B, x.data<float>(), w.data<float>(), nullptr,
                                                                 false, y.data<float>()); },
                                     g_reps);
        const PairTiming d = pair_ms([&] { ops::gemm(dx, dy, false, wm, true); },
                                     [&] { masked_sparse_input_grad(plan, B, dy.data<float>(), nullptr,
                                                                    w.data<float>(), dx.data<float>()); },
                                     g_reps);
        const PairTiming g = pair_ms([&] {
                                       ops::gemm(product, x, true, dy, false);
                                       add_masked(dw, product, mask);
                                     },
                                     [&] { masked_sparse_weight_grad(plan, B, x.data<float>(), dy.data<float>(),
                                                                     nullptr, dw.data<float>(), nullptr); },
                                     g_reps);
        auto cell = [](const PairTiming& t) {
          char text[64];
          std::snprintf(text, sizeof text, "%5.2f (%5.2f) / %5.2f  %4.2fx", t.a_median, t.a_min, t.b_median,
                        t.a_median / t.b_median);
          return std::string(text);
        };
        std::printf("%4ldx%-4ld %3d %4.0f%% | %-26s | %-26s | %-26s\n", static_cast<long>(l.in), static_cast<long>(l.out),
                    threads, density * 100, cell(f).c_str(), cell(d).c_str(), cell(g).c_str());
        std::fflush(stdout);
      }
    }
  }
}

void run_chain(double only_density, int only_threads) {
  if (!masked_sparse_available()) {
    std::printf("this CPU has no AVX-512F: the sparse training route is never taken\n");
    return;
  }
  constexpr int64_t B = 4096;
  set_masked_route(MaskedRoute::Fused);
  std::printf("masked MLP 720-512-256-128, 2 tasks, batch %ld, forward + backward, median (best) of %d, ms\n",
              static_cast<long>(B), g_reps);
  std::printf("%3s %5s | %-16s | %-16s | %s\n", "thr", "dens", "layer by layer", "chained", "ratio");
  for (const int threads : {1, 2}) {
    if (only_threads > 0 && threads != only_threads) continue;
    set_threads(threads);
    for (const double density : {0.10, 0.20, 0.30, 0.40}) {
      if (only_density > 0 && std::abs(density - only_density) > 1e-9) continue;
      ParamStore store;
      MaskedMLP mlp(store, "shared", 720, {512, 256, 128}, 2, /*final_activation=*/true);
      store.finalize(DType::F32, Device::CPU, 5);
      for (int t = 0; t < 2; ++t)
        for (size_t l = 0; l < mlp.depth(); ++l)
          mlp.layer(l).set_mask(t, random_mask(mlp.layer(l).in(), mlp.layer(l).out(), density, 6 + 3 * l + t));
      const Tensor x = tensor_of(random_values(B * 720, 1), {B, 720});
      const Tensor dy0 = tensor_of(random_values(B * 128, 2), {B, 128}), dy1 = tensor_of(random_values(B * 128, 3), {B, 128});
      const std::vector<int> tasks = {0, 1};
      const PairTiming p = pair_ms(
          [&] {
            std::vector<const Tensor*> in = {&x, &x};
            for (size_t l = 0; l < mlp.depth(); ++l) {
              mlp.layer(l).forward_tasks(tasks, in);
              in = {&mlp.layer(l).output(0), &mlp.layer(l).output(1)};
            }
            std::vector<const Tensor*> g = {&dy0, &dy1};
            for (size_t l = mlp.depth(); l-- > 1;) {
              mlp.layer(l).backward_tasks(tasks, g, true);
              g = {&mlp.layer(l).input_grad(0), &mlp.layer(l).input_grad(1)};
            }
            mlp.layer(0).backward_tasks_sum(tasks, g);
          },
          [&] {
            mlp.forward_tasks(tasks, x);
            mlp.backward_tasks_sum(tasks, {&dy0, &dy1});
          },
          g_reps);
      std::printf("%3d %4.0f%% | %6.2f (%6.2f) | %6.2f (%6.2f) | %4.2fx\n", threads, density * 100, p.a_median, p.a_min,
                  p.b_median, p.b_min, p.a_median / p.b_median);
      std::fflush(stdout);
    }
  }
}

}  // namespace
}  // namespace ncsrec

int main(int argc, char** argv) {
  // The kernels `ncsrec` would run (core/blas_core.h; it sets OPENBLAS_CORETYPE the same way), so
  // that the dense side is the product training really gets.
  if (ncsrec::set_openblas_coretype_for_this_cpu())
    ::execv("/proc/self/exe", argv);  // returns only on failure: carry on with OpenBLAS's choice
  std::printf("OpenBLAS kernels: %s\n", ncsrec::openblas_core_in_use().c_str());
  bool variants = false, training = false, chain = false;
  double only_density = 0;
  int only_threads = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--variants") == 0) {
      variants = true;
    } else if (std::strcmp(argv[i], "--training") == 0) {
      training = true;
    } else if (std::strcmp(argv[i], "--chain") == 0) {
      chain = true;
    } else if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
      ncsrec::g_reps = std::max(1, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--density") == 0 && i + 1 < argc) {
      only_density = std::atof(argv[++i]);
    } else if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
      only_threads = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--variants | --training | --chain [--density D] [--threads T]] [--reps N]\n",
                   argv[0]);
      return 2;
    }
  }
  if (chain)
    ncsrec::run_chain(only_density, only_threads);
  else if (training)
    ncsrec::run_training(only_density, only_threads);
  else if (variants)
    ncsrec::run_variants();
  else
    ncsrec::run_table();
  return 0;
}

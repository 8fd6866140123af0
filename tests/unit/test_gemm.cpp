// Specification tests for the CPU product (ops::gemm on the CPU): OpenMP threads it by cutting C
// into blocks, each one single-threaded BLAS call (core/cpu_kernels.cpp). Every transpose
// combination, shapes cut by rows, by columns and not cut at all, sides that are not multiples
// of the block alignment, alpha and beta both non-trivial, against a double reference within an
// error bound: |Δ| ≤ rtol · (|α| Σ_k |A||B| + |β| |C₀|). And the blocks do not change the bits:
// the result on 1, 2 and 3 threads is identical. Also the bias gradient, threaded by blocks of
// columns.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "core/ops.h"
#include "core/tensor.h"

#include "tests/random_inputs.h"

namespace ncsrec {
namespace {

using testing::random_f32;

Tensor to_dtype(const Tensor& t, DType dtype) {
  if (dtype == DType::F32) return t.clone();
  Tensor d = Tensor::empty(t.shape(), DType::F64);
  for (int64_t i = 0; i < t.numel(); ++i) d.data<double>()[i] = t.data<float>()[i];
  return d;
}

double at(const Tensor& t, int64_t i) {
  return t.dtype() == DType::F32 ? static_cast<double>(t.data<float>()[i]) : t.data<double>()[i];
}

struct Case {
  int64_t M, N, K;
};

class Gemm : public ::testing::TestWithParam<std::tuple<bool, bool, DType>> {};

TEST_P(Gemm, MatchesTheReferenceAndIsTheSameOnAnyThreadCount) {
  const auto [ta, tb, dtype] = GetParam();
  const double alpha = 0.75, beta = -0.5;
  const double rtol = dtype == DType::F32 ? 1e-5 : 1e-13;
  // cut by rows (M ≥ N), by columns (N > M), too small to cut, a side just over 2 blocks, and
  // enough work to cut but a longer side under 2 blocks (not cut)
  for (const Case c : {Case{301, 70, 131}, Case{37, 333, 203}, Case{5, 7, 3}, Case{33, 1030, 64}, Case{31, 20, 5000}}) {
    SCOPED_TRACE(::testing::Message() << "M " << c.M << " N " << c.N << " K " << c.K << " ta " << ta << " tb " << tb
                                    << " " << dtype_name(dtype));
    const uint64_t seed = static_cast<uint64_t>(c.M * 1000003 + c.N * 1009 + c.K);
    const Tensor A = to_dtype(random_f32(ta ? Shape{c.K, c.M} : Shape{c.M, c.K}, seed), dtype);
    const Tensor B = to_dtype(random_f32(tb ? Shape{c.N, c.K} : Shape{c.K, c.N}, seed + 1), dtype);
    const Tensor C0 = to_dtype(random_f32({c.M, c.N}, seed + 2), dtype);
    std::vector<Tensor> results;
    const int saved = omp_get_max_threads();
    for (int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
      Tensor C = C0.clone();
      ops::gemm(C, A, ta, B, tb, alpha, beta);
      results.push_back(C);
    }
    omp_set_num_threads(saved);
    // Called from inside a parallel region (each thread its own C): one BLAS call each.
    std::vector<Tensor> inner(2);
#pragma omp parallel num_threads(2)
    {
      const int t = omp_get_thread_num();
      if (t < 2) {
        inner[static_cast<size_t>(t)] = C0.clone();
        ops::gemm(inner[static_cast<size_t>(t)], A, ta, B, tb, alpha, beta);
      }
    }
    for (const Tensor& C : inner)
      if (C.defined()) results.push_back(C);
    const int64_t lda = ta ? c.M : c.K, ldb = tb ? c.K : c.N;
    int64_t bad = 0;
    for (int64_t i = 0; i < c.M; ++i) {
      for (int64_t j = 0; j < c.N; ++j) {
        double ref = 0.0, mag = 0.0;
        for (int64_t k = 0; k < c.K; ++k) {
          const double a = at(A, ta ? k * lda + i : i * lda + k), b = at(B, tb ? j * ldb + k : k * ldb + j);
          ref += a * b;
          mag += std::fabs(a * b);
        }
        const double c0 = at(C0, i * c.N + j);
        ref = alpha * ref + beta * c0;
        const double bound = rtol * (std::fabs(alpha) * mag + std::fabs(beta * c0));
        if (!(std::fabs(at(results[0], i * c.N + j) - ref) <= bound) && bad++ < 5)
          ADD_FAILURE() << "C[" << i << "," << j << "] = " << at(results[0], i * c.N + j) << ", reference " << ref
                        << ", bound " << bound;
      }
    }
    EXPECT_EQ(bad, 0);
    for (size_t r = 1; r < results.size(); ++r)
      EXPECT_EQ(std::memcmp(results[0].raw(), results[r].raw(), results[0].nbytes()), 0)
          << "run " << r << " (runs 1, 2: 2 and 3 threads; then inside a parallel region) changed the bits";
  }
}

INSTANTIATE_TEST_SUITE_P(AllTransposes, Gemm,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool(),
                                            ::testing::Values(DType::F32, DType::F64)));

}  // namespace
}  // namespace ncsrec

namespace ncsrec {
namespace {

// db += column sums of dy, each column summed in row order in double: threads take blocks of
// columns, so the bits are the in-order sum's on any thread count.
TEST(BiasGrad, ColumnSumsInRowOrderOnAnyThreadCount) {
  const int64_t rows = 777, cols = 300;
  const Tensor dy = testing::random_f32({rows, cols}, 5);
  const Tensor db0 = testing::random_f32({cols}, 6);
  std::vector<float> want(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) {
    double acc = 0.0;
    for (int64_t r = 0; r < rows; ++r) acc += dy.data<float>()[r * cols + c];
    want[static_cast<size_t>(c)] = db0.data<float>()[c] + static_cast<float>(acc);
  }
  const int saved = omp_get_max_threads();
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    Tensor db = db0.clone();
    ops::bias_grad(db, dy);
    for (int64_t c = 0; c < cols; ++c)
      ASSERT_EQ(db.data<float>()[c], want[static_cast<size_t>(c)]) << "column " << c << ", " << threads << " threads";
  }
  omp_set_num_threads(saved);
}

}  // namespace
}  // namespace ncsrec

// Specification tests for the CSR form of a masked layer (core/sparse.h): masked_to_csr keeps
// exactly the mask's connections in the transposed [out, in] layout, and csr_linear_forward
// equals the dense act(x·(W ⊙ M) + b) within a rounding bound, at densities 0 … 100 %, on odd
// shapes (batch tiles left partial), with and without bias and ReLU; it is bit-identical across
// thread counts.
//
// Inputs are random and never zero; outputs are poisoned with NaN first. The bound is an error
// bound, not a guess: |Δ| ≤ 1e-5 · (Σ_i |x[b,i]| |(W ⊙ M)[i,o]| + |b[o]|) elementwise, against a
// double-precision reference.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "core/masks.h"
#include "core/random.h"
#include "core/sparse.h"
#include "core/tensor.h"

#include "tests/random_inputs.h"

namespace ncsrec {
namespace {

using testing::random_f32;

using testing::random_mask;

void poison(Tensor& t) {
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = std::numeric_limits<float>::quiet_NaN();
}

// ---------------------------------------------------------------------------------------------
// masked_to_csr

TEST(MaskedToCsr, HoldsExactlyTheMaskedWeightsTransposed) {
  const int64_t in = 13, out = 9;
  const Tensor W = random_f32({in, out}, 1);
  const BitMask M = random_mask(in, out, 0.3, 2);
  const CsrMatrix c = masked_to_csr(W, M);

  EXPECT_EQ(c.rows, out);
  EXPECT_EQ(c.cols, in);
  EXPECT_EQ(c.nnz(), M.count());
  ASSERT_EQ(static_cast<int64_t>(c.row_ptr.size()), out + 1);
  EXPECT_EQ(c.row_ptr.front(), 0);
  EXPECT_EQ(c.row_ptr.back(), c.nnz());
  // Rebuild the dense [in, out] matrix from the CSR: it must be W ⊙ M exactly, columns ascending.
  std::vector<float> dense(static_cast<size_t>(in * out), 0.0f);
  std::vector<int> seen(static_cast<size_t>(in * out), 0);
  for (int64_t o = 0; o < out; ++o) {
    ASSERT_LE(c.row_ptr[o], c.row_ptr[o + 1]);
    for (int64_t k = c.row_ptr[o]; k < c.row_ptr[o + 1]; ++k) {
      const int64_t i = c.col_idx[k];
      ASSERT_TRUE(i >= 0 && i < in);
      if (k > c.row_ptr[o]) EXPECT_LT(c.col_idx[k - 1], c.col_idx[k]) << "row " << o << " not sorted";
      dense[static_cast<size_t>(i * out + o)] = c.values[k];
      ++seen[static_cast<size_t>(i * out + o)];
    }
  }
  const float* w = W.data<float>();
  for (int64_t e = 0; e < in * out; ++e) {
    EXPECT_EQ(seen[static_cast<size_t>(e)], M.get(e) ? 1 : 0) << e;
    EXPECT_EQ(dense[static_cast<size_t>(e)], M.get(e) ? w[e] : 0.0f) << e;
  }
}

TEST(MaskedToCsr, StoresMaskedInZeroWeightsSoThePatternIsTheMasks) {
  Tensor W = random_f32({4, 6}, 3);
  const BitMask M = BitMask::ones(4, 6);
  W.data<float>()[5] = 0.0f;
  EXPECT_EQ(masked_to_csr(W, M).nnz(), 24);
  EXPECT_EQ(masked_to_csr(W, BitMask::zeros(4, 6)).nnz(), 0);
}

TEST(MaskedToCsr, RejectsAMaskOfAnotherShape) {
  const Tensor W = random_f32({4, 6}, 4);
  EXPECT_THROW(masked_to_csr(W, BitMask::ones(5, 6)), InternalError);
}

// ---------------------------------------------------------------------------------------------
// csr_linear_forward

// Double-precision reference act(x·(W ⊙ M) + b) and the elementwise error bound.
void dense_reference(const Tensor& x, const Tensor& W, const BitMask& M, const Tensor* bias, bool relu,
                     std::vector<double>& want, std::vector<double>& bound) {
  const int64_t B = x.dim(0), in = W.dim(0), out = W.dim(1);
  const float* xp = x.data<float>();
  const float* wp = W.data<float>();
  want.assign(static_cast<size_t>(B * out), 0.0);
  bound.assign(static_cast<size_t>(B * out), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o = 0; o < out; ++o) {
      double s = 0, mag = 0;
      for (int64_t i = 0; i < in; ++i) {
        if (!M.get(i * out + o)) continue;
        const double term = static_cast<double>(xp[b * in + i]) * wp[i * out + o];
        s += term;
        mag += std::fabs(term);
      }
      if (bias) {
        s += bias->data<float>()[o];
        mag += std::fabs(bias->data<float>()[o]);
      }
      want[static_cast<size_t>(b * out + o)] = relu ? std::max(s, 0.0) : s;
      bound[static_cast<size_t>(b * out + o)] = 1e-5 * mag;
    }
}

struct ForwardCase {
  int64_t batch, in, out;
  double density;
};

class CsrLinearForward : public ::testing::TestWithParam<std::tuple<ForwardCase, bool /*relu*/, bool /*bias*/>> {};

TEST_P(CsrLinearForward, MatchesTheDenseMaskedLayer) {
  const auto [c, relu, with_bias] = GetParam();
  const uint64_t seed = static_cast<uint64_t>(c.batch * 1000003 + c.in * 1009 + c.out) + (relu ? 7 : 0);
  const Tensor x = random_f32({c.batch, c.in}, seed);
  const Tensor W = random_f32({c.in, c.out}, seed + 1);
  const Tensor b = random_f32({c.out}, seed + 2);
  const BitMask M = random_mask(c.in, c.out, c.density, seed + 3);
  const Tensor* bias = with_bias ? &b : nullptr;

  const CsrMatrix csr = masked_to_csr(W, M);
  ASSERT_EQ(csr.nnz(), M.count());
  Tensor y = Tensor::empty({c.batch, c.out}, DType::F32);
  poison(y);
  csr_linear_forward(y, x, csr, bias, relu);

  std::vector<double> want, bound;
  dense_reference(x, W, M, bias, relu, want, bound);
  const float* got = y.data<float>();
  int reported = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double err = std::fabs(got[i] - want[i]);
    if (!(err <= bound[i])) {  // also catches poison left in place
      ADD_FAILURE() << "element " << i << ": csr " << got[i] << " dense " << want[i] << " |diff| " << err
                    << " > bound " << bound[i];
      if (++reported == 5) break;
    }
  }
}

// Batches 1, 7, 33, 64, 65, 130 leave the 64-row batch tile empty, partial, exact and spilling.
const ForwardCase kCases[] = {
    {1, 1, 1, 1.0},     {1, 33, 7, 0.2},    {7, 33, 7, 0.05},   {33, 7, 65, 0.2},  {64, 129, 33, 0.05},
    {65, 33, 1, 1.0},   {130, 65, 17, 0.2}, {7, 720, 33, 0.05}, {33, 13, 11, 0.0}, {65, 129, 33, 1.0},
    {130, 256, 128, 0.2},
};

std::string case_name(const ::testing::TestParamInfo<CsrLinearForward::ParamType>& info) {
  const auto& [c, relu, bias] = info.param;
  return "B" + std::to_string(c.batch) + "_in" + std::to_string(c.in) + "_out" + std::to_string(c.out) + "_d" +
         std::to_string(static_cast<int>(c.density * 100)) + (relu ? "_relu" : "_linear") + (bias ? "_bias" : "_nobias");
}

INSTANTIATE_TEST_SUITE_P(Shapes, CsrLinearForward,
                         ::testing::Combine(::testing::ValuesIn(kCases), ::testing::Bool(), ::testing::Bool()),
                         case_name);

TEST(CsrLinearForwardDeterminism, BitIdenticalForOneAndTwoThreads) {
  const int64_t B = 200, in = 96, out = 40;
  const Tensor x = random_f32({B, in}, 21), W = random_f32({in, out}, 22), b = random_f32({out}, 23);
  const CsrMatrix csr = masked_to_csr(W, random_mask(in, out, 0.2, 24));
  Tensor y1 = Tensor::empty({B, out}, DType::F32), y2 = Tensor::empty({B, out}, DType::F32);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  csr_linear_forward(y1, x, csr, &b, true);
  omp_set_num_threads(2);
  csr_linear_forward(y2, x, csr, &b, true);
  omp_set_num_threads(saved);
  EXPECT_EQ(std::memcmp(y1.data<float>(), y2.data<float>(), y1.nbytes()), 0);
}

// The documented numerics, bit for bit: each output summed in f32 from 0 over its row's
// nonzeros in CSR order (ascending input), a multiply then an add (no FMA), then the bias and
// ReLU. Inputs over several of the kernel's 128-input blocks, and an odd number of outputs (its
// rows go two at a time).
TEST(CsrLinearForwardDeterminism, EachOutputIsItsRowsProductsAddedInCsrOrder) {
  for (const ForwardCase& c : {ForwardCase{130, 300, 33, 0.2}, ForwardCase{7, 720, 31, 0.05}, ForwardCase{65, 129, 2, 1.0}}) {
    SCOPED_TRACE(std::to_string(c.in) + " inputs, " + std::to_string(c.out) + " outputs");
    const Tensor x = random_f32({c.batch, c.in}, 31), W = random_f32({c.in, c.out}, 32), b = random_f32({c.out}, 33);
    const CsrMatrix csr = masked_to_csr(W, random_mask(c.in, c.out, c.density, 34));
    Tensor y = Tensor::empty({c.batch, c.out}, DType::F32);
    poison(y);
    csr_linear_forward(y, x, csr, &b, true);
    for (int64_t r = 0; r < c.batch; ++r)
      for (int64_t o = 0; o < c.out; ++o) {
        float s = 0.0f;
        for (int64_t k = csr.row_ptr[static_cast<size_t>(o)]; k < csr.row_ptr[static_cast<size_t>(o + 1)]; ++k) {
          volatile float p = csr.values[static_cast<size_t>(k)] * x.data<float>()[r * c.in + csr.col_idx[static_cast<size_t>(k)]];
          s += p;
        }
        s += b.data<float>()[o];
        const float want = s > 0.0f ? s : 0.0f;
        ASSERT_EQ(std::memcmp(&y.data<float>()[r * c.out + o], &want, sizeof want), 0)
            << "row " << r << ", output " << o << ": " << y.data<float>()[r * c.out + o] << " vs " << want;
      }
  }
}

TEST(CsrLinearForwardShapes, RejectsMismatchedInputsWithAClearError) {
  const Tensor W = random_f32({8, 5}, 31);
  const CsrMatrix csr = masked_to_csr(W, BitMask::ones(8, 5));
  Tensor y = Tensor::empty({3, 5}, DType::F32);
  const Tensor x_bad = random_f32({3, 7}, 32), y_bad_b = random_f32({4, 5}, 33), bias_bad = random_f32({4}, 34);
  const Tensor x = random_f32({3, 8}, 35);
  EXPECT_THROW(csr_linear_forward(y, x_bad, csr, nullptr, false), InternalError);
  Tensor yb = y_bad_b.clone();
  EXPECT_THROW(csr_linear_forward(yb, x, csr, nullptr, false), InternalError);
  EXPECT_THROW(csr_linear_forward(y, x, csr, &bias_bad, false), InternalError);
}

}  // namespace
}  // namespace ncsrec

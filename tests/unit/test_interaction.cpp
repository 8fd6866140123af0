// Pairwise dot-product interaction: finite-difference gradients in double, and the output
// against a direct computation.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "core/blas_core.h"
#include "core/layers/interaction.h"
#include "gradcheck.h"
#include "tests/random_inputs.h"

namespace ncsrec {
namespace {

using testing::check_gradient;
using testing::random_tensor;

TEST(PairwiseDot, OutputIsTheFullSymmetricMatrixOfFieldDotProducts) {
  const int64_t B = 3, F = 4, d = 5, emb_col = 2;
  Tensor x = random_tensor({B, emb_col + F * d + 1}, 11);
  Tensor out = random_tensor({B, 1 + F * F}, 12);  // poisoned: every output must be written
  pairwise_dot_forward(out, 1, x, emb_col, F, d);
  const double* xp = x.data<double>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < F; ++i)
      for (int64_t j = 0; j < F; ++j) {
        double s = 0;
        for (int64_t k = 0; k < d; ++k) s += xp[b * x.dim(1) + emb_col + i * d + k] * xp[b * x.dim(1) + emb_col + j * d + k];
        EXPECT_NEAR(out.data<double>()[b * out.dim(1) + 1 + i * F + j], s, 1e-12);
      }
}

TEST(PairwiseDot, GradientMatchesFiniteDifferencesAndAccumulates) {
  const int64_t B = 4, F = 3, d = 4, emb_col = 1, x_cols = emb_col + F * d + 2;
  Tensor x = random_tensor({B, x_cols}, 21);
  Tensor r = random_tensor({B, F * F}, 22);  // loss = sum(out ⊙ r)
  Tensor out = Tensor::empty({B, F * F}, DType::F64);
  auto loss = [&] {
    pairwise_dot_forward(out, 0, x, emb_col, F, d);
    return testing::dot(out, r);
  };
  const Tensor prior = random_tensor({B, x_cols}, 23);
  Tensor dx = prior.clone();
  loss();
  pairwise_dot_backward(dx, emb_col, r, 0, x, F, d);
  // Subtract what was there before: the contract is accumulation into the embedding columns,
  // and the other columns must be left alone.
  Tensor grad = Tensor::zeros({B, x_cols}, DType::F64);
  for (int64_t i = 0; i < grad.numel(); ++i) grad.data<double>()[i] = dx.data<double>()[i] - prior.data<double>()[i];
  for (int64_t b = 0; b < B; ++b) {
    EXPECT_EQ(grad.data<double>()[b * x_cols], 0.0);
    EXPECT_EQ(grad.data<double>()[b * x_cols + x_cols - 1], 0.0);
  }
  EXPECT_TRUE(check_gradient("x", loss, x, grad));
}

// f32 with 16-dimensional embeddings takes its own kernels on AVX-512 CPUs: the forward against
// a double reference, every output written.
TEST(PairwiseDot, TheF32ForwardOfDimension16MatchesADoubleReference) {
  const int64_t B = 130, F = 20, d = 16, emb_col = 3, x_cols = emb_col + F * d + 5;
  const Tensor x = testing::random_f32({B, x_cols}, 34);
  Tensor out = Tensor::empty({B, 1 + F * F}, DType::F32);
  for (int64_t i = 0; i < out.numel(); ++i) out.data<float>()[i] = std::nanf("");
  pairwise_dot_forward(out, 1, x, emb_col, F, d);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < F; ++i)
      for (int64_t j = 0; j < F; ++j) {
        double s = 0, abs_sum = 0;
        for (int64_t k = 0; k < d; ++k) {
          const double p = double(x.data<float>()[b * x_cols + emb_col + i * d + k]) * x.data<float>()[b * x_cols + emb_col + j * d + k];
          s += p;
          abs_sum += std::fabs(p);
        }
        ASSERT_NEAR(out.data<float>()[b * out.dim(1) + 1 + i * F + j], s, 1e-6 * abs_sum) << b << ", " << i << ", " << j;
      }
  for (int64_t b = 0; b < B; ++b) ASSERT_TRUE(std::isnan(out.data<float>()[b * out.dim(1)])) << "column 0 is not the output";
}

// f32 with 16-dimensional embeddings takes its own kernel on AVX-512 CPUs (one vector per
// embedding, four fields at a time and the rest one by one): against a double reference,
// accumulating, the other columns untouched; 20 fields (the paper's) and 7.
TEST(PairwiseDot, TheF32BackwardOfDimension16MatchesADoubleReference) {
  for (const int64_t F : {20, 7}) {
    SCOPED_TRACE(std::to_string(F) + " fields");
    const int64_t B = 130, d = 16, emb_col = 3, x_cols = emb_col + F * d + 5;
    const Tensor x = testing::random_f32({B, x_cols}, 31), g = testing::random_f32({B, 2 + F * F}, 32);
    const Tensor prior = testing::random_f32({B, x_cols}, 33);
    Tensor dx = prior.clone();
    pairwise_dot_backward(dx, emb_col, g, 2, x, F, d);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < x_cols; ++c) {
        const float got = dx.data<float>()[b * x_cols + c], was = prior.data<float>()[b * x_cols + c];
        if (c < emb_col || c >= emb_col + F * d) {
          ASSERT_EQ(got, was) << "column " << c << " is not an embedding column";
          continue;
        }
        const int64_t i = (c - emb_col) / d, k = (c - emb_col) % d;
        double sum = was, abs_sum = std::fabs(was);
        for (int64_t j = 0; j < F; ++j) {
          const double w = double(g.data<float>()[b * g.dim(1) + 2 + i * F + j]) + g.data<float>()[b * g.dim(1) + 2 + j * F + i];
          const double p = w * x.data<float>()[b * x_cols + emb_col + j * d + k];
          sum += p;
          abs_sum += std::fabs(p);
        }
        ASSERT_NEAR(got, sum, 1e-6 * abs_sum) << "row " << b << ", column " << c;
        if (!cpu_has_avx512f()) continue;
        // The vector kernel's bits: one fused multiply-add per field j, in order.
        float exact = was;
        for (int64_t j = 0; j < F; ++j)
          exact = std::fma(g.data<float>()[b * g.dim(1) + 2 + i * F + j] + g.data<float>()[b * g.dim(1) + 2 + j * F + i],
                           x.data<float>()[b * x_cols + emb_col + j * d + k], exact);
        ASSERT_EQ(got, exact) << "row " << b << ", column " << c;
      }
  }
}

}  // namespace
}  // namespace ncsrec

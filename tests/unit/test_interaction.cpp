// Pairwise dot-product interaction: finite-difference gradients in double, and the output
// against a direct computation.
#include <gtest/gtest.h>

#include "core/layers/interaction.h"
#include "gradcheck.h"

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

}  // namespace
}  // namespace ncsrec

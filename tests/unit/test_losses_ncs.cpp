// Specification tests for the NCS4CVR loss heads: focal loss (CTR) and squared error on the
// probability (CVR). Gradients against finite differences in double (hard and soft labels,
// sample weights), the textbook formulas, focal γ = 0, α = 0.5 as half of BCE, zero
// normalizers, and finite values at extreme logits in float.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/layers/losses.h"
#include "core/random.h"
#include "tests/unit/gradcheck.h"

namespace ncsrec {
namespace {

using testing::check_gradient;

using testing::uniform;
using testing::uniform_f;

// Hard labels first, then soft ones.
const std::vector<float> kLabels = {0, 1, 1, 0, 1, 0, 0.25f, 1, 0, 0.75f, 0.5f, 1};

// ---- focal ---------------------------------------------------------------------------------

TEST(FocalLoss, GradientMatchesFiniteDifferencesWithSampleWeightsAndSoftLabels) {
  const int64_t n = static_cast<int64_t>(kLabels.size());
  const std::vector<float> weights = uniform_f(n, 2, 0.2, 3);
  for (double gamma : {2.0, 0.0, 1.5, 3.0}) {
    SCOPED_TRACE(::testing::Message() << "gamma " << gamma);
    std::vector<double> logits = uniform(n, 1, -5, 5);
    const double alpha = 0.75, normalizer = 7.5;
    std::vector<double> prob(n), grad(n), unused_p(n), unused_g(n);
    focal_forward_backward<double>(logits.data(), kLabels.data(), weights.data(), n, alpha, gamma, normalizer,
                                   prob.data(), grad.data());
    auto loss = [&] {
      return focal_forward_backward<double>(logits.data(), kLabels.data(), weights.data(), n, alpha, gamma,
                                            normalizer, unused_p.data(), unused_g.data());
    };
    EXPECT_TRUE(check_gradient("logits", loss, logits.data(), grad.data(), n));
    for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(prob[i], 1 / (1 + std::exp(-logits[i])), 1e-15);
  }
}

TEST(FocalLoss, LossIsTheWeightedSumOfTheTextbookFormula) {
  const std::vector<double> logits = {0.3, -1.2, 2.5, 0.8};
  const std::vector<float> labels = {1, 0, 0, 0.3f}, weights = {2, 1, 0.5f, 1.5f};
  std::vector<double> prob(4), grad(4);
  const double alpha = 0.75, gamma = 2;
  const double loss = focal_forward_backward<double>(logits.data(), labels.data(), weights.data(), 4, alpha, gamma,
                                                     4.0, prob.data(), grad.data());
  double expected = 0;
  for (int i = 0; i < 4; ++i) {
    const double p = 1 / (1 + std::exp(-logits[i]));
    const double l_pos = -alpha * std::pow(1 - p, gamma) * std::log(p);
    const double l_neg = -(1 - alpha) * std::pow(p, gamma) * std::log(1 - p);
    expected += weights[i] * (labels[i] * l_pos + (1 - labels[i]) * l_neg);
  }
  EXPECT_NEAR(loss, expected / 4.0, 1e-14);
  // No weights means weight 1.
  const double unweighted =
      focal_forward_backward<double>(logits.data(), labels.data(), nullptr, 4, alpha, gamma, 1.0, prob.data(),
                                     grad.data());
  EXPECT_GT(unweighted, 0);
}

TEST(FocalLoss, GammaZeroAlphaHalfIsHalfOfBce) {
  const int64_t n = static_cast<int64_t>(kLabels.size());
  const std::vector<double> logits = uniform(n, 3, -6, 6);
  const std::vector<float> weights = uniform_f(n, 4, 0.2, 3);
  std::vector<double> p_focal(n), g_focal(n), p_bce(n), g_bce(n);
  const double focal = focal_forward_backward<double>(logits.data(), kLabels.data(), weights.data(), n, 0.5, 0.0, 3.0,
                                                      p_focal.data(), g_focal.data());
  const double bce = sigmoid_bce_forward_backward<double>(logits.data(), kLabels.data(), weights.data(), n, 3.0,
                                                          p_bce.data(), g_bce.data());
  EXPECT_NEAR(focal, 0.5 * bce, 1e-14 * bce);
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(p_focal[i], p_bce[i]);
    EXPECT_NEAR(g_focal[i], 0.5 * g_bce[i], 1e-15) << "element " << i;
  }
}

TEST(FocalLoss, ZeroNormalizerGivesZeroLossAndGradients) {
  const std::vector<float> logits = {1.5f, -0.5f, 1000.0f}, labels = {0, 1, 0.5f};
  std::vector<float> prob(3), grad(3, 7.0f);
  EXPECT_EQ(focal_forward_backward<float>(logits.data(), labels.data(), nullptr, 3, 0.75, 2.0, 0.0, prob.data(),
                                          grad.data()),
            0.0);
  for (float g : grad) EXPECT_EQ(g, 0.0f);
}

TEST(FocalLoss, ExtremeLogitsGiveFiniteLossesAndGradientsInFloat) {
  const float alpha = 0.75f;
  for (float x : {50.0f, -50.0f, 1000.0f, -1000.0f})
    for (float y : {0.0f, 1.0f, 0.5f}) {
      SCOPED_TRACE(::testing::Message() << "logit " << x << " label " << y);
      float prob, grad;
      const double loss = focal_forward_backward<float>(&x, &y, nullptr, 1, alpha, 2.0, 1.0, &prob, &grad);
      ASSERT_TRUE(std::isfinite(loss) && std::isfinite(grad) && std::isfinite(prob));
      // Confidently wrong costs α|x| (positive) or (1-α)|x| (negative), with gradient -α or 1-α;
      // confidently right costs ~0. A soft label of 0.5 pays half the wrong side.
      const bool pos_wrong = x < 0, neg_wrong = x > 0;
      const double want_loss = y * (pos_wrong ? alpha * std::abs(x) : 0.0) +
                               (1 - y) * (neg_wrong ? (1 - alpha) * std::abs(x) : 0.0);
      const double want_grad = y * (pos_wrong ? -alpha : 0.0) + (1 - y) * (neg_wrong ? 1 - alpha : 0.0);
      EXPECT_NEAR(loss, want_loss, 1e-6 * std::abs(x));
      EXPECT_NEAR(grad, want_grad, 1e-6);
    }
}

TEST(FocalLoss, FloatMatchesDoubleAtModerateLogits) {
  const int64_t n = static_cast<int64_t>(kLabels.size());
  const std::vector<double> logits = uniform(n, 5, -8, 8);
  const std::vector<float> logits_f(logits.begin(), logits.end());
  const std::vector<float> weights = uniform_f(n, 6, 0.2, 3);
  std::vector<double> p(n), g(n);
  std::vector<float> pf(n), gf(n);
  const double ld = focal_forward_backward<double>(logits.data(), kLabels.data(), weights.data(), n, 0.75, 2.0, 4.0,
                                                   p.data(), g.data());
  const double lf = focal_forward_backward<float>(logits_f.data(), kLabels.data(), weights.data(), n, 0.75, 2.0, 4.0,
                                                  pf.data(), gf.data());
  EXPECT_NEAR(lf, ld, 1e-5 * std::abs(ld));
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(gf[i], g[i], 1e-5) << "element " << i;
}

// ---- sigmoid MSE ---------------------------------------------------------------------------

TEST(SigmoidMse, GradientMatchesFiniteDifferencesWithSampleWeightsAndSoftLabels) {
  const int64_t n = static_cast<int64_t>(kLabels.size());
  std::vector<double> logits = uniform(n, 7, -5, 5);
  const std::vector<float> weights = uniform_f(n, 8, 0.2, 3);
  const double normalizer = 4.0;
  std::vector<double> prob(n), grad(n), unused_p(n), unused_g(n);
  sigmoid_mse_forward_backward<double>(logits.data(), kLabels.data(), weights.data(), n, normalizer, prob.data(),
                                       grad.data());
  auto loss = [&] {
    return sigmoid_mse_forward_backward<double>(logits.data(), kLabels.data(), weights.data(), n, normalizer,
                                                unused_p.data(), unused_g.data());
  };
  EXPECT_TRUE(check_gradient("logits", loss, logits.data(), grad.data(), n));
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(prob[i], 1 / (1 + std::exp(-logits[i])), 1e-15);
}

// The paper's weighting: weight 1 on positive labels only, normalised by their count.
TEST(SigmoidMse, PositiveOnlyWeightsGiveTheMeanSquaredErrorOfThePositives) {
  const std::vector<double> logits = {0.4, -2.0, 1.3, 0.0, -0.7};
  const std::vector<float> labels = {0.8f, 0, 1, 0, 0.3f};
  std::vector<float> weights;
  for (float y : labels) weights.push_back(y > 0 ? 1.0f : 0.0f);
  std::vector<double> prob(5), grad(5);
  const double loss = sigmoid_mse_forward_backward<double>(logits.data(), labels.data(), weights.data(), 5, 3.0,
                                                           prob.data(), grad.data());
  double expected = 0;
  for (int i : {0, 2, 4}) {
    const double p = 1 / (1 + std::exp(-logits[i]));
    expected += (p - labels[i]) * (p - labels[i]);
  }
  EXPECT_NEAR(loss, expected / 3.0, 1e-15);
  EXPECT_EQ(grad[1], 0.0);
  EXPECT_EQ(grad[3], 0.0);
  const double p0 = 1 / (1 + std::exp(-logits[0]));
  EXPECT_NEAR(grad[0], 2 * (p0 - labels[0]) * p0 * (1 - p0) / 3.0, 1e-15);
}

TEST(SigmoidMse, ZeroNormalizerGivesZeroLossAndGradients) {
  const std::vector<float> logits = {1.5f, -0.5f, -1000.0f}, labels = {0, 1, 1};
  std::vector<float> prob(3), grad(3, 7.0f);
  EXPECT_EQ(sigmoid_mse_forward_backward<float>(logits.data(), labels.data(), nullptr, 3, 0.0, prob.data(),
                                                grad.data()),
            0.0);
  for (float g : grad) EXPECT_EQ(g, 0.0f);
}

TEST(SigmoidMse, ExtremeLogitsGiveFiniteLossesAndGradientsInFloat) {
  for (float x : {50.0f, -50.0f, 1000.0f, -1000.0f})
    for (float y : {0.0f, 1.0f, 0.5f}) {
      SCOPED_TRACE(::testing::Message() << "logit " << x << " label " << y);
      float prob, grad;
      const double loss = sigmoid_mse_forward_backward<float>(&x, &y, nullptr, 1, 1.0, &prob, &grad);
      ASSERT_TRUE(std::isfinite(loss) && std::isfinite(grad) && std::isfinite(prob));
      // The sigmoid saturates: the loss is (0 or 1 - y)² and the gradient vanishes.
      const double p = x > 0 ? 1.0 : 0.0;
      EXPECT_NEAR(loss, (p - y) * (p - y), 1e-6);
      EXPECT_NEAR(grad, 0.0f, 1e-6f);
    }
}

}  // namespace
}  // namespace ncsrec

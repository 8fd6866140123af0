// Specification tests for the loss heads: sigmoid BCE and ESMM gradients against finite
// differences in double (with sample weights, all label combinations), explicit normalisation,
// and finite losses and gradients at extreme logits in float.
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

TEST(SigmoidBce, GradientMatchesFiniteDifferencesWithSampleWeights) {
  constexpr int64_t n = 10;
  std::vector<double> logits = uniform(n, 1, -4, 4);
  const std::vector<float> labels = {0, 1, 1, 0, 1, 0, 0.25f, 1, 0, 0.75f};  // soft labels too
  const std::vector<float> weights = uniform_f(n, 2, 0.2, 3);
  const double normalizer = 6.5;
  std::vector<double> prob(n), grad(n), unused_p(n), unused_g(n);
  sigmoid_bce_forward_backward<double>(logits.data(), labels.data(), weights.data(), n, normalizer, prob.data(),
                                       grad.data());
  auto loss = [&] {
    return sigmoid_bce_forward_backward<double>(logits.data(), labels.data(), weights.data(), n, normalizer,
                                                unused_p.data(), unused_g.data());
  };
  EXPECT_TRUE(check_gradient("logits", loss, logits.data(), grad.data(), n));
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(prob[i], 1 / (1 + std::exp(-logits[i])), 1e-15);
}

TEST(SigmoidBce, LossIsTheWeightedMeanOfTheTextbookFormula) {
  const std::vector<double> logits = {0.3, -1.2, 2.5};
  const std::vector<float> labels = {1, 0, 0}, weights = {2, 1, 0.5f};
  std::vector<double> prob(3), grad(3);
  const double loss =
      sigmoid_bce_forward_backward<double>(logits.data(), labels.data(), weights.data(), 3, 4.0, prob.data(), grad.data());
  double expected = 0;
  for (int i = 0; i < 3; ++i) {
    const double p = 1 / (1 + std::exp(-logits[i]));
    expected -= weights[i] * (labels[i] * std::log(p) + (1 - labels[i]) * std::log(1 - p));
  }
  EXPECT_NEAR(loss, expected / 4.0, 1e-14);
  // No weights means weight 1.
  const double unweighted =
      sigmoid_bce_forward_backward<double>(logits.data(), labels.data(), nullptr, 3, 1.0, prob.data(), grad.data());
  EXPECT_NEAR(grad[1], 1 / (1 + std::exp(1.2)), 1e-15);
  EXPECT_GT(unweighted, 0);
}

TEST(SigmoidBce, ZeroNormalizerGivesZeroLossAndGradients) {
  const std::vector<float> logits = {1.5f, -0.5f}, labels = {0, 1};
  std::vector<float> prob(2), grad(2, 7.0f);
  EXPECT_EQ(sigmoid_bce_forward_backward<float>(logits.data(), labels.data(), nullptr, 2, 0.0, prob.data(), grad.data()),
            0.0);
  EXPECT_EQ(grad[0], 0.0f);
  EXPECT_EQ(grad[1], 0.0f);
}

TEST(SigmoidBce, ExtremeLogitsGiveFiniteLossesAndGradientsInFloat) {
  const std::vector<float> logits = {50, -50, 1000, -1000, 50, -50, 1000, -1000};
  const std::vector<float> labels = {0, 1, 0, 1, 1, 0, 1, 0};
  std::vector<float> prob(8), grad(8);
  for (size_t i = 0; i < logits.size(); ++i) {
    const double loss =
        sigmoid_bce_forward_backward<float>(&logits[i], &labels[i], nullptr, 1, 1.0, &prob[i], &grad[i]);
    ASSERT_TRUE(std::isfinite(loss)) << "logit " << logits[i] << " label " << labels[i];
    ASSERT_TRUE(std::isfinite(grad[i]) && std::isfinite(prob[i]));
    const bool wrong = (logits[i] > 0) != (labels[i] > 0);
    // A confidently wrong logit costs |x| and has gradient ±1; a confidently right one costs ~0.
    EXPECT_NEAR(loss, wrong ? std::abs(logits[i]) : 0.0, 1e-6 * std::abs(logits[i]));
    EXPECT_NEAR(std::abs(grad[i]), wrong ? 1.0f : 0.0f, 1e-6f);
  }
}

// ---- ESMM ----------------------------------------------------------------------------------

struct EsmmCase {
  std::vector<double> a, b;
  std::vector<float> click, ctcvr, weights;
};

EsmmCase esmm_case(int64_t n, uint64_t seed) {
  EsmmCase c{uniform(n, seed, -3, 3), uniform(n, seed + 1, -3, 3), {}, {}, uniform_f(n, seed + 2, 0.2, 2.5)};
  for (int64_t i = 0; i < n; ++i) {  // cycle through (0, 0), (1, 0), (1, 1)
    c.click.push_back(i % 3 == 0 ? 0.0f : 1.0f);
    c.ctcvr.push_back(i % 3 == 2 ? 1.0f : 0.0f);
  }
  return c;
}

TEST(Esmm, GradientsOfBothLogitsMatchFiniteDifferences) {
  constexpr int64_t n = 12;
  EsmmCase c = esmm_case(n, 11);
  const double normalizer = 5.0, w = 0.7;
  std::vector<double> pc(n), pv(n), pcc(n), ga(n), gb(n), s1(n), s2(n), s3(n), s4(n), s5(n);
  esmm_forward_backward<double>(c.a.data(), c.b.data(), c.click.data(), c.ctcvr.data(), c.weights.data(), n,
                                normalizer, w, pc.data(), pv.data(), pcc.data(), ga.data(), gb.data());
  auto loss = [&] {
    const EsmmLoss l = esmm_forward_backward<double>(c.a.data(), c.b.data(), c.click.data(), c.ctcvr.data(),
                                                     c.weights.data(), n, normalizer, w, s1.data(), s2.data(),
                                                     s3.data(), s4.data(), s5.data());
    return l.ctr + w * l.ctcvr;
  };
  EXPECT_TRUE(check_gradient("logit_ctr", loss, c.a.data(), ga.data(), n));
  EXPECT_TRUE(check_gradient("logit_cvr", loss, c.b.data(), gb.data(), n));
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_NEAR(pc[i], 1 / (1 + std::exp(-c.a[i])), 1e-15);
    EXPECT_NEAR(pv[i], 1 / (1 + std::exp(-c.b[i])), 1e-15);
    EXPECT_NEAR(pcc[i], pc[i] * pv[i], 1e-15);
  }
}

TEST(Esmm, LossesMatchTheTextbookFormulas) {
  constexpr int64_t n = 6;
  EsmmCase c = esmm_case(n, 21);
  std::vector<double> pc(n), pv(n), pcc(n), ga(n), gb(n);
  const EsmmLoss l = esmm_forward_backward<double>(c.a.data(), c.b.data(), c.click.data(), c.ctcvr.data(),
                                                   c.weights.data(), n, 3.0, 2.0, pc.data(), pv.data(), pcc.data(),
                                                   ga.data(), gb.data());
  double ctr = 0, ctcvr = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double p = 1 / (1 + std::exp(-c.a[i])), q = p / (1 + std::exp(-c.b[i]));
    ctr -= c.weights[i] * (c.click[i] * std::log(p) + (1 - c.click[i]) * std::log(1 - p));
    ctcvr -= c.weights[i] * (c.ctcvr[i] * std::log(q) + (1 - c.ctcvr[i]) * std::log(1 - q));
  }
  EXPECT_NEAR(l.ctr, ctr / 3.0, 1e-13);
  EXPECT_NEAR(l.ctcvr, ctcvr / 3.0, 1e-13) << "the ctcvr loss is reported without ctcvr_weight";
}

TEST(Esmm, ZeroNormalizerGivesZeroLossAndGradients) {
  EsmmCase c = esmm_case(3, 31);
  std::vector<double> pc(3), pv(3), pcc(3), ga(3, 5.0), gb(3, 5.0);
  const EsmmLoss l = esmm_forward_backward<double>(c.a.data(), c.b.data(), c.click.data(), c.ctcvr.data(), nullptr, 3,
                                                   0.0, 1.0, pc.data(), pv.data(), pcc.data(), ga.data(), gb.data());
  EXPECT_EQ(l.ctr, 0.0);
  EXPECT_EQ(l.ctcvr, 0.0);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(ga[i], 0.0);
    EXPECT_EQ(gb[i], 0.0);
  }
}

TEST(Esmm, ExtremeLogitsGiveFiniteLossesAndGradientsInFloat) {
  const std::vector<float> extremes = {-1000, -50, 0, 50, 1000};
  const float labels[3][2] = {{0, 0}, {1, 0}, {1, 1}};
  for (float a : extremes)
    for (float b : extremes)
      for (const auto& y : labels) {
        float pc, pv, pcc, ga, gb;
        const EsmmLoss l =
            esmm_forward_backward<float>(&a, &b, &y[0], &y[1], nullptr, 1, 1.0, 1.0, &pc, &pv, &pcc, &ga, &gb);
        SCOPED_TRACE(::testing::Message() << "a=" << a << " b=" << b << " click=" << y[0] << " conv=" << y[1]);
        EXPECT_TRUE(std::isfinite(l.ctr) && std::isfinite(l.ctcvr));
        EXPECT_TRUE(std::isfinite(ga) && std::isfinite(gb));
        EXPECT_TRUE(pcc >= 0 && pcc <= 1 && pc >= 0 && pc <= 1 && pv >= 0 && pv <= 1);
        // |dL/da| <= |σ(a) - y| + |p - z| <= 2 and |dL/db| <= 1 for any logits.
        EXPECT_LE(std::abs(ga), 2.0f);
        EXPECT_LE(std::abs(gb), 1.0f);
      }
}

TEST(Esmm, FloatMatchesDoubleAtModerateLogits) {
  constexpr int64_t n = 9;
  EsmmCase c = esmm_case(n, 41);
  for (double& x : c.b) x *= 4;  // reach p close to 0 and 1
  std::vector<float> af(c.a.begin(), c.a.end()), bf(c.b.begin(), c.b.end());
  std::vector<double> pc(n), pv(n), pcc(n), ga(n), gb(n);
  std::vector<float> pcf(n), pvf(n), pccf(n), gaf(n), gbf(n);
  const EsmmLoss ld = esmm_forward_backward<double>(c.a.data(), c.b.data(), c.click.data(), c.ctcvr.data(),
                                                    c.weights.data(), n, 2.0, 0.5, pc.data(), pv.data(), pcc.data(),
                                                    ga.data(), gb.data());
  const EsmmLoss lf = esmm_forward_backward<float>(af.data(), bf.data(), c.click.data(), c.ctcvr.data(),
                                                   c.weights.data(), n, 2.0, 0.5, pcf.data(), pvf.data(), pccf.data(),
                                                   gaf.data(), gbf.data());
  EXPECT_NEAR(lf.ctr, ld.ctr, 1e-5 * std::abs(ld.ctr));
  EXPECT_NEAR(lf.ctcvr, ld.ctcvr, 1e-5 * std::abs(ld.ctcvr));
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_NEAR(gaf[i], ga[i], 1e-5);
    EXPECT_NEAR(gbf[i], gb[i], 1e-5);
  }
}

}  // namespace
}  // namespace ncsrec

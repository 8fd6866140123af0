// Specification tests for the evaluation metrics (core/metrics/metrics.h): the O(n log n)
// AUC equals the definition (a brute-force count over every positive/negative pair, ties
// half) on scores with many ties, weighted and not; GAUC equals the impression-weighted mean
// of per-group brute-force AUCs; TaskMetrics instances never share state, and their logloss
// and calibration are the textbook formulas.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <vector>

#include "core/metrics/metrics.h"
#include "core/random.h"

namespace ncsrec {
namespace {

// The definition: sum over (positive i, negative j) of w_i w_j [s_i > s_j] + ½ w_i w_j [s_i == s_j],
// divided by (sum of positive weights)(sum of negative weights). O(n²).
double brute_force_auc(const std::vector<float>& scores, const std::vector<float>& labels,
                       const std::vector<float>* weights, const std::vector<size_t>& rows) {
  double wins = 0, pos_weight = 0, neg_weight = 0;
  for (size_t i : rows) {
    const double wi = weights ? (*weights)[i] : 1.0;
    if (labels[i] > 0.5f) pos_weight += wi;
    else neg_weight += wi;
  }
  if (pos_weight <= 0 || neg_weight <= 0) return std::nan("");
  for (size_t i : rows) {
    if (!(labels[i] > 0.5f)) continue;
    for (size_t j : rows) {
      if (labels[j] > 0.5f) continue;
      const double w = (weights ? (*weights)[i] : 1.0) * (weights ? (*weights)[j] : 1.0);
      if (scores[i] > scores[j]) wins += w;
      else if (scores[i] == scores[j]) wins += 0.5 * w;
    }
  }
  return wins / (pos_weight * neg_weight);
}

std::vector<size_t> all_rows(size_t n) {
  std::vector<size_t> rows(n);
  for (size_t i = 0; i < n; ++i) rows[i] = i;
  return rows;
}

struct Sample {
  std::vector<float> scores, labels, weights;
};

// Scores rounded to one decimal (11 distinct values): most pairs of a sample of 50+ rows tie.
// Labels correlate with the score so the AUC is far from ½, where a wrong tie rule shows.
Sample random_sample(int64_t n, uint64_t seed, double positive_rate = 0.4) {
  Rng rng(seed);
  Sample s;
  for (int64_t i = 0; i < n; ++i) {
    const double score = std::round(rng.uniform() * 10.0) / 10.0;
    s.scores.push_back(static_cast<float>(score));
    s.labels.push_back(rng.bernoulli(std::clamp(positive_rate + 0.5 * (score - 0.5), 0.02, 0.98)) ? 1.0f : 0.0f);
    s.weights.push_back(static_cast<float>(rng.uniform(0.1, 3.0)));
  }
  return s;
}

TEST(AucExact, EqualsThePairwiseCountWithTiesAsHalfOnHeavilyTiedScores) {
  for (int64_t n : {2, 3, 7, 50, 333, 1200}) {
    for (uint64_t seed = 1; seed <= 4; ++seed) {
      Sample s = random_sample(n, seed * 1000 + static_cast<uint64_t>(n));
      // Tiny samples may be single-class by chance: force one of each.
      s.labels[0] = 1.0f;
      s.labels[1] = 0.0f;
      const double want = brute_force_auc(s.scores, s.labels, nullptr, all_rows(s.scores.size()));
      const double got = auc_exact(s.scores.data(), s.labels.data(), nullptr, n);
      EXPECT_NEAR(got, want, 1e-12 * std::max(1.0, std::abs(want))) << "n = " << n << ", seed = " << seed;
    }
  }
}

TEST(AucExact, WeightedEqualsThePairwiseSumOfWeightProducts) {
  for (int64_t n : {2, 5, 64, 500, 1500}) {
    for (uint64_t seed = 1; seed <= 4; ++seed) {
      Sample s = random_sample(n, seed * 7919 + static_cast<uint64_t>(n));
      s.labels[0] = 1.0f;
      s.labels[1] = 0.0f;
      const double want = brute_force_auc(s.scores, s.labels, &s.weights, all_rows(s.scores.size()));
      const double got = auc_exact(s.scores.data(), s.labels.data(), s.weights.data(), n);
      EXPECT_NEAR(got, want, 1e-12) << "n = " << n << ", seed = " << seed;
    }
  }
}

TEST(AucExact, AllTiedScoresGiveExactlyOneHalf) {
  Sample s = random_sample(101, 5);
  std::fill(s.scores.begin(), s.scores.end(), 0.3f);
  s.labels[0] = 1.0f;
  s.labels[1] = 0.0f;
  EXPECT_DOUBLE_EQ(auc_exact(s.scores.data(), s.labels.data(), nullptr, 101), 0.5);
  EXPECT_DOUBLE_EQ(auc_exact(s.scores.data(), s.labels.data(), s.weights.data(), 101), 0.5);
}

TEST(AucExact, IsNaNWhenOnlyOneClassIsPresent) {
  for (float label : {0.0f, 1.0f}) {
    Sample s = random_sample(40, 11);
    std::fill(s.labels.begin(), s.labels.end(), label);
    EXPECT_TRUE(std::isnan(auc_exact(s.scores.data(), s.labels.data(), nullptr, 40))) << "label " << label;
    EXPECT_TRUE(std::isnan(auc_exact(s.scores.data(), s.labels.data(), s.weights.data(), 40))) << "label " << label;
  }
  EXPECT_TRUE(std::isnan(auc_exact(nullptr, nullptr, nullptr, 0)));
}

// Impression-weighted mean of per-group brute-force AUCs over groups with both classes.
double brute_force_gauc(const Sample& s, const std::vector<int64_t>& groups) {
  std::map<int64_t, std::vector<size_t>> by_group;
  for (size_t i = 0; i < groups.size(); ++i) by_group[groups[i]].push_back(i);
  double weighted = 0, impressions = 0;
  for (const auto& [g, rows] : by_group) {
    const double a = brute_force_auc(s.scores, s.labels, nullptr, rows);
    if (std::isnan(a)) continue;
    weighted += a * static_cast<double>(rows.size());
    impressions += static_cast<double>(rows.size());
  }
  return impressions > 0 ? weighted / impressions : std::nan("");
}

TEST(Gauc, EqualsTheImpressionWeightedMeanOfPerGroupAucsOverGroupsWithBothClasses) {
  for (int64_t n : {30, 200, 1000}) {
    for (uint64_t seed = 1; seed <= 3; ++seed) {
      Sample s = random_sample(n, seed * 31 + static_cast<uint64_t>(n));
      Rng rng(seed + 99);
      // Group ids spread over a sparse range; some groups have a single row (one class only).
      std::vector<int64_t> groups;
      for (int64_t i = 0; i < n; ++i) groups.push_back(static_cast<int64_t>(rng.below(static_cast<uint64_t>(n / 4))) * 1009 - 5000);
      // One large single-class group: it must be ignored, not counted as ½.
      for (int64_t i = 0; i < n / 5; ++i) {
        groups[static_cast<size_t>(i)] = 123456789;
        s.labels[static_cast<size_t>(i)] = 0.0f;
      }
      const double want = brute_force_gauc(s, groups);
      ASSERT_FALSE(std::isnan(want)) << "test data should have groups with both classes";
      const double got = gauc(s.scores.data(), s.labels.data(), groups.data(), n);
      EXPECT_NEAR(got, want, 1e-12) << "n = " << n << ", seed = " << seed;
    }
  }
}

TEST(Gauc, IsNaNWhenNoGroupHasBothClasses) {
  Sample s = random_sample(60, 3);
  std::vector<int64_t> groups(60);
  for (size_t i = 0; i < 60; ++i) {
    groups[i] = static_cast<int64_t>(i % 6);
    s.labels[i] = groups[i] % 2 == 0 ? 1.0f : 0.0f;  // every group single-class
  }
  EXPECT_TRUE(std::isnan(gauc(s.scores.data(), s.labels.data(), groups.data(), 60)));
}

TEST(TaskMetrics, TwoInstancesFedDifferentDataKeepIndependentState) {
  // Interleaved adds, as the evaluator does batch by batch for every task.
  const Sample a = random_sample(600, 21), b = random_sample(600, 22, 0.15);
  std::vector<float> b_probs = b.scores;
  for (auto& p : b_probs) p = 1.0f - p;  // task b's scores anti-correlate: AUC well below ½
  std::vector<int64_t> groups_a(600), groups_b(600);
  for (size_t i = 0; i < 600; ++i) {
    groups_a[i] = static_cast<int64_t>(i % 17);
    groups_b[i] = static_cast<int64_t>(i % 5);
  }
  TaskMetrics ma, mb;
  for (int64_t begin = 0; begin < 600; begin += 100) {
    const size_t o = static_cast<size_t>(begin);
    ma.add(a.scores.data() + o, a.labels.data() + o, groups_a.data() + o, 100);
    mb.add(b_probs.data() + o, b.labels.data() + o, groups_b.data() + o, 100);
  }
  const TaskMetricValues va = ma.compute(), vb = mb.compute();
  EXPECT_EQ(va.count, 600);
  EXPECT_EQ(vb.count, 600);
  const double want_a = brute_force_auc(a.scores, a.labels, nullptr, all_rows(600));
  const double want_b = brute_force_auc(b_probs, b.labels, nullptr, all_rows(600));
  ASSERT_GT(std::abs(want_a - want_b), 0.2) << "the two data sets should differ clearly";
  EXPECT_NEAR(va.auc, want_a, 1e-12);
  EXPECT_NEAR(vb.auc, want_b, 1e-12);
  Sample b_as_scored = b;
  b_as_scored.scores = b_probs;
  EXPECT_NEAR(va.gauc, brute_force_gauc(a, groups_a), 1e-12);
  EXPECT_NEAR(vb.gauc, brute_force_gauc(b_as_scored, groups_b), 1e-12);
  double pos_a = 0, pos_b = 0;
  for (float y : a.labels) pos_a += y;
  for (float y : b.labels) pos_b += y;
  EXPECT_EQ(va.positives, pos_a);
  EXPECT_EQ(vb.positives, pos_b);

  // Clearing one leaves the other as it was.
  ma.clear();
  EXPECT_EQ(ma.size(), 0);
  const TaskMetricValues vb_again = mb.compute();
  EXPECT_EQ(vb_again.auc, vb.auc);
  EXPECT_EQ(vb_again.logloss, vb.logloss);
}

TEST(TaskMetrics, LoglossAndCalibrationMatchHandComputation) {
  Rng rng(77);
  std::vector<float> p, y;
  for (int i = 0; i < 250; ++i) {
    p.push_back(static_cast<float>(rng.uniform(0.01, 0.99)));
    y.push_back(rng.bernoulli(0.3) ? 1.0f : 0.0f);
  }
  TaskMetrics m;
  m.add(p.data(), y.data(), nullptr, 100);
  m.add(p.data() + 100, y.data() + 100, nullptr, 150);
  const TaskMetricValues v = m.compute();

  double loss = 0, sum_p = 0, sum_y = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    loss += -(y[i] * std::log(static_cast<double>(p[i])) + (1 - y[i]) * std::log(1 - static_cast<double>(p[i])));
    sum_p += p[i];
    sum_y += y[i];
  }
  EXPECT_NEAR(v.logloss, loss / 250, 1e-12);
  EXPECT_NEAR(v.calibration, sum_p / sum_y, 1e-12);
  EXPECT_NEAR(v.mean_prediction, sum_p / 250, 1e-12);
  EXPECT_NEAR(v.mean_label, sum_y / 250, 1e-12);
  EXPECT_TRUE(std::isnan(v.gauc)) << "no groups were given";
}

TEST(TaskMetrics, CalibrationIsNaNWithoutPositivesAndLoglossStaysFiniteAtCertainPredictions) {
  std::vector<float> p = {0.0f, 1.0f, 0.5f, 0.25f}, y = {0, 0, 0, 0};
  TaskMetrics m;
  m.add(p.data(), y.data(), nullptr, 4);
  const TaskMetricValues v = m.compute();
  EXPECT_TRUE(std::isnan(v.calibration));
  EXPECT_TRUE(std::isnan(v.auc));
  EXPECT_TRUE(std::isfinite(v.logloss));  // p = 1 with y = 0 is clamped, not infinite
  EXPECT_GT(v.logloss, 3.0);
}

}  // namespace
}  // namespace ncsrec

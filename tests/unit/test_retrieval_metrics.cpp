// Specification tests for retrieval_at_k (core/metrics/metrics.h): hand-computed recall@K and
// NDCG@K (perfect, reversed, a mixed case worked out below), the tie rule (lower candidate
// index first, in both rankings), K clamped to n, NaN scores last, the undefined cases, and
// agreement with a brute-force full sort on random inputs full of ties.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/metrics/metrics.h"
#include "core/random.h"

namespace ncsrec {
namespace {

std::vector<RetrievalAtK> run(const std::vector<float>& scores, const std::vector<double>& relevance,
                              const std::vector<int64_t>& ks) {
  return retrieval_at_k(scores.data(), relevance.data(), static_cast<int64_t>(scores.size()), ks);
}

TEST(RetrievalAtK, PerfectRankingScoresOne) {
  const std::vector<double> rel = {0.1, 5, 2, 0, 3, 3, 1};
  std::vector<float> scores(rel.begin(), rel.end());
  const auto r = run(scores, rel, {1, 2, 3, 7});
  for (const auto& m : r) {
    EXPECT_DOUBLE_EQ(m.recall, 1);
    EXPECT_DOUBLE_EQ(m.ndcg, 1);
  }
}

// rel = (3, 2, 1, 0), the model ranks the candidates 3, 2, 1, 0 (the reverse of the truth).
//   K=1: model {3}, true {0}: recall 0; DCG 0 -> NDCG 0.
//   K=2: recall 0; DCG = 0 + 1/log2 3 = 0.63093; IDCG = 3 + 2/log2 3 = 4.26186; NDCG 0.148041.
//   K=4: recall 1; DCG = 0 + 1/log2 3 + 2/log2 4 + 3/log2 5 = 2.922959;
//        IDCG = 3 + 2/log2 3 + 1/2 + 0 = 4.761860; NDCG 0.613827.
TEST(RetrievalAtK, ReversedRanking) {
  const auto r = run({0, 1, 2, 3}, {3, 2, 1, 0}, {1, 2, 4});
  EXPECT_DOUBLE_EQ(r[0].recall, 0);
  EXPECT_DOUBLE_EQ(r[0].ndcg, 0);
  EXPECT_DOUBLE_EQ(r[1].recall, 0);
  EXPECT_NEAR(r[1].ndcg, 0.1480409555, 1e-9);
  EXPECT_DOUBLE_EQ(r[2].recall, 1);
  EXPECT_NEAR(r[2].ndcg, 0.6138273133, 1e-9);
}

// Candidates 0..4 with rel = (3, 2, 3, 0, 1) and scores (.9, .8, .1, .7, .2).
//   true order (ties by index): 0, 2, 1, 4, 3;  model order: 0, 1, 3, 4, 2.
//   K=3: model {0,1,3} ∩ true {0,2,1} = {0,1}: recall 2/3.
//        DCG  = 3/log2 2 + 2/log2 3 + 0/log2 4 = 3 + 1.261860 = 4.261860
//        IDCG = 3/log2 2 + 3/log2 3 + 2/log2 4 = 3 + 1.892789 + 1 = 5.892789
//        NDCG = 0.723233
TEST(RetrievalAtK, HandComputedMixedCase) {
  const auto r = run({.9f, .8f, .1f, .7f, .2f}, {3, 2, 3, 0, 1}, {3});
  EXPECT_DOUBLE_EQ(r[0].recall, 2.0 / 3.0);
  EXPECT_NEAR(r[0].ndcg, 0.7232329748, 1e-9);
}

TEST(RetrievalAtK, TiesBreakToTheLowerIndex) {
  // True ties: rel 2 at candidates 1 and 2, so the true top-1 is {1}. The model's top-1 is {2}:
  // recall counts it a miss, NDCG (which sees only gains) a perfect pick.
  auto r = run({0, .5f, .9f, 0}, {1, 2, 2, 0}, {1, 2});
  EXPECT_DOUBLE_EQ(r[0].recall, 0);
  EXPECT_DOUBLE_EQ(r[0].ndcg, 1);
  EXPECT_DOUBLE_EQ(r[1].recall, 1);
  EXPECT_DOUBLE_EQ(r[1].ndcg, 1);
  // Model ties: three equal scores rank 0, 1, 2. rel = (0, 0, 1, 0): top-1 {0} misses {2};
  // top-3 {0,1,2} = true top-3 {2,0,1}; NDCG@3 = (1/log2 4) / 1 = 0.5.
  r = run({.5f, .5f, .5f, .1f}, {0, 0, 1, 0}, {1, 3});
  EXPECT_DOUBLE_EQ(r[0].recall, 0);
  EXPECT_DOUBLE_EQ(r[0].ndcg, 0);
  EXPECT_DOUBLE_EQ(r[1].recall, 1);
  EXPECT_DOUBLE_EQ(r[1].ndcg, 0.5);
  // Everything tied: both rankings are the index order.
  r = run({1, 1, 1, 1}, {2, 2, 2, 2}, {2});
  EXPECT_DOUBLE_EQ(r[0].recall, 1);
  EXPECT_DOUBLE_EQ(r[0].ndcg, 1);
}

TEST(RetrievalAtK, KIsClampedToTheCandidateCount) {
  const std::vector<float> scores = {0, 1, 2};
  const std::vector<double> rel = {3, 2, 1};
  const auto r = run(scores, rel, {3, 10, 1000});
  for (const auto& m : r) {
    EXPECT_DOUBLE_EQ(m.recall, 1);  // all candidates on both sides
    EXPECT_DOUBLE_EQ(m.ndcg, r[0].ndcg);
  }
  // DCG = 1 + 2/log2 3 + 3/2, IDCG = 3 + 2/log2 3 + 1/2.
  EXPECT_NEAR(r[0].ndcg, (1 + 2 / std::log2(3.0) + 1.5) / (3 + 2 / std::log2(3.0) + 0.5), 1e-12);
}

TEST(RetrievalAtK, NanScoresRankLastAndUndefinedCasesAreNan) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto r = run({nan, .1f, .2f}, {1, 0, 0}, {1, 2, 3});  // model order 2, 1, 0; true order 0, 1, 2
  EXPECT_DOUBLE_EQ(r[0].recall, 0);
  EXPECT_DOUBLE_EQ(r[1].recall, 0.5);
  EXPECT_DOUBLE_EQ(r[2].recall, 1);
  EXPECT_DOUBLE_EQ(r[2].ndcg, 0.5);  // the only gain at rank 2: (1/log2 4) / 1
  r = run({.3f, .1f}, {0, 0}, {1});  // no gain anywhere: NDCG undefined
  EXPECT_DOUBLE_EQ(r[0].recall, 1);
  EXPECT_TRUE(std::isnan(r[0].ndcg));
  r = retrieval_at_k(nullptr, nullptr, 0, {5});
  EXPECT_TRUE(std::isnan(r[0].recall) && std::isnan(r[0].ndcg));
  EXPECT_TRUE(run({1}, {1}, {}).empty());
}

TEST(RetrievalAtK, BrokenPreconditionsThrow) {
  EXPECT_THROW(run({1, 2}, {1, 1}, {0}), InternalError);
  EXPECT_THROW(run({1, 2}, {1, -1}, {1}), InternalError);
  EXPECT_THROW(run({1, 2}, {1, std::numeric_limits<double>::quiet_NaN()}, {1}), InternalError);
}

// The definition with full sorts, for comparison.
std::vector<RetrievalAtK> brute_force(const std::vector<float>& scores, const std::vector<double>& rel,
                                      const std::vector<int64_t>& ks) {
  const int64_t n = static_cast<int64_t>(scores.size());
  std::vector<int64_t> model(n), truth(n);
  std::iota(model.begin(), model.end(), 0);
  std::iota(truth.begin(), truth.end(), 0);
  std::sort(model.begin(), model.end(), [&](int64_t a, int64_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  });
  std::sort(truth.begin(), truth.end(),
            [&](int64_t a, int64_t b) { return rel[a] > rel[b] || (rel[a] == rel[b] && a < b); });
  std::vector<RetrievalAtK> out;
  for (int64_t k0 : ks) {
    const int64_t k = std::min(k0, n);
    std::vector<int64_t> m(model.begin(), model.begin() + k), t(truth.begin(), truth.begin() + k);
    double dcg = 0, ideal = 0;
    for (int64_t r = 0; r < k; ++r) {
      dcg += rel[m[r]] / std::log2(r + 2.0);
      ideal += rel[t[r]] / std::log2(r + 2.0);
    }
    std::sort(m.begin(), m.end());
    std::sort(t.begin(), t.end());
    std::vector<int64_t> common;
    std::set_intersection(m.begin(), m.end(), t.begin(), t.end(), std::back_inserter(common));
    out.push_back({static_cast<double>(common.size()) / k, dcg / ideal});
  }
  return out;
}

TEST(RetrievalAtK, EqualsBruteForceOnRandomInputsWithTies) {
  Rng rng(11);
  for (int trial = 0; trial < 300; ++trial) {
    const int64_t n = 1 + static_cast<int64_t>(rng.below(400));
    std::vector<float> scores(n);
    std::vector<double> rel(n);
    for (int64_t i = 0; i < n; ++i) {
      rel[i] = std::round(rng.uniform() * 5) + 0.5;  // 6 distinct values
      scores[i] = static_cast<float>(std::round((0.5 * rel[i] + rng.normal()) * 3) / 3);  // many ties
    }
    const std::vector<int64_t> ks = {1, 1 + static_cast<int64_t>(rng.below(50)), 10, 50, 200, 1000};
    const auto got = run(scores, rel, ks), want = brute_force(scores, rel, ks);
    for (size_t q = 0; q < ks.size(); ++q) {
      ASSERT_DOUBLE_EQ(got[q].recall, want[q].recall) << "trial " << trial << " n " << n << " K " << ks[q];
      ASSERT_NEAR(got[q].ndcg, want[q].ndcg, 1e-12) << "trial " << trial << " n " << n << " K " << ks[q];
    }
  }
}

}  // namespace
}  // namespace ncsrec

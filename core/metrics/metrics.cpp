#include "core/metrics/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_map>

namespace ncsrec {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// AUC over the rows listed in `idx` (any order). Sorts by score, walks groups of tied
// scores: each positive in a tie group beats every earlier negative and half-beats the
// negatives of its own group.
double auc_over(const float* scores, const float* labels, const float* weights, std::vector<int64_t>& idx) {
  std::sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return scores[a] < scores[b]; });
  double neg_below = 0, pos_total = 0, neg_total = 0, wins = 0;
  size_t i = 0;
  while (i < idx.size()) {
    size_t j = i;
    double pos = 0, neg = 0;
    while (j < idx.size() && scores[idx[j]] == scores[idx[i]]) {
      const double w = weights ? weights[idx[j]] : 1.0;
      (labels[idx[j]] > 0.5f ? pos : neg) += w;
      ++j;
    }
    wins += pos * (neg_below + 0.5 * neg);
    neg_below += neg;
    pos_total += pos;
    neg_total += neg;
    i = j;
  }
  if (pos_total <= 0 || neg_total <= 0) return kNaN;
  return wins / (pos_total * neg_total);
}

}  // namespace

double auc_exact(const float* scores, const float* labels, const float* weights, int64_t n) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  return auc_over(scores, labels, weights, idx);
}

double gauc(const float* scores, const float* labels, const int64_t* groups, int64_t n) {
  std::unordered_map<int64_t, std::vector<int64_t>> by_group;
  for (int64_t i = 0; i < n; ++i) by_group[groups[i]].push_back(i);
  // Sum in a fixed order (by group id) so the result does not depend on hash-map order.
  std::vector<int64_t> keys;
  keys.reserve(by_group.size());
  for (auto& kv : by_group) keys.push_back(kv.first);
  std::sort(keys.begin(), keys.end());
  double weighted = 0, total = 0;
  for (int64_t g : keys) {
    auto& idx = by_group[g];
    const double a = auc_over(scores, labels, nullptr, idx);
    if (std::isnan(a)) continue;
    weighted += a * static_cast<double>(idx.size());
    total += static_cast<double>(idx.size());
  }
  return total > 0 ? weighted / total : kNaN;
}

void TaskMetrics::add(const float* probabilities, const float* labels, const int64_t* groups, int64_t n) {
  if (n == 0) return;  // an empty vector's data() may be null: it must not look like "no groups"
  probs_.insert(probs_.end(), probabilities, probabilities + n);
  labels_.insert(labels_.end(), labels, labels + n);
  if (groups && has_groups_) groups_.insert(groups_.end(), groups, groups + n);
  else {
    has_groups_ = false;
    groups_.clear();
  }
}

void TaskMetrics::clear() {
  probs_.clear();
  labels_.clear();
  groups_.clear();
  has_groups_ = true;
}

TaskMetricValues TaskMetrics::compute() const {
  TaskMetricValues v;
  const int64_t n = size();
  v.count = n;
  if (n == 0) {
    v.auc = v.gauc = v.logloss = v.calibration = kNaN;
    return v;
  }
  double loss = 0, sum_p = 0, sum_y = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double p = std::clamp(static_cast<double>(probs_[static_cast<size_t>(i)]), 1e-7, 1 - 1e-7);
    const double y = labels_[static_cast<size_t>(i)];
    loss -= y * std::log(p) + (1 - y) * std::log(1 - p);
    sum_p += probs_[static_cast<size_t>(i)];
    sum_y += y;
  }
  v.positives = sum_y;
  v.logloss = loss / static_cast<double>(n);
  v.mean_prediction = sum_p / static_cast<double>(n);
  v.mean_label = sum_y / static_cast<double>(n);
  v.calibration = sum_y > 0 ? sum_p / sum_y : kNaN;
  v.auc = auc_exact(probs_.data(), labels_.data(), nullptr, n);
  v.gauc = has_groups_ && !groups_.empty() ? ncsrec::gauc(probs_.data(), labels_.data(), groups_.data(), n) : kNaN;
  return v;
}

}  // namespace ncsrec

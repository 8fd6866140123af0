#include "core/metrics/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <unordered_map>

#include "core/error.h"

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

namespace {

// A candidate with its sort key, kept by value in the heap (no indirection when comparing).
template <class K>
struct Ranked {
  K key;
  uint32_t index;
};
// Strict total order: a ranks before b (higher key, then lower index).
template <class K>
bool ranks_before(const Ranked<K>& a, const Ranked<K>& b) {
  return a.key > b.key || (a.key == b.key && a.index < b.index);
}

// The first k (1 <= k <= n) of candidates 0..n-1 in ranked order. One pass with a heap of the
// k kept, the last-ranked at the root (std::partial_sort's method, without an n-sized index
// array): a candidate that does not beat the root costs one comparison, and in random order
// only about k·ln(n/k) of them do.
template <class Key>
void select_top(int64_t n, int64_t k, Key key, std::vector<uint32_t>& top) {
  using K = decltype(key(0u));
  std::vector<Ranked<K>> heap(static_cast<size_t>(k));
  for (uint32_t i = 0; i < static_cast<uint32_t>(k); ++i) heap[i] = {key(i), i};
  std::make_heap(heap.begin(), heap.end(), ranks_before<K>);  // a parent never ranks before its children
  for (int64_t i = k; i < n; ++i) {
    const Ranked<K> x{key(static_cast<uint32_t>(i)), static_cast<uint32_t>(i)};
    if (!(x.key > heap[0].key)) continue;  // on a tie the kept candidate has the lower index and wins
    // Replace the root by x and sift it down past every child that ranks after it.
    size_t at = 0;
    for (;;) {
      size_t child = 2 * at + 1;
      if (child >= heap.size()) break;
      if (child + 1 < heap.size() && ranks_before(heap[child], heap[child + 1])) ++child;
      if (!ranks_before(x, heap[child])) break;
      heap[at] = heap[child];
      at = child;
    }
    heap[at] = x;
  }
  std::sort_heap(heap.begin(), heap.end(), ranks_before<K>);
  top.resize(heap.size());
  for (size_t r = 0; r < heap.size(); ++r) top[r] = heap[r].index;
}

}  // namespace

std::vector<RetrievalAtK> retrieval_at_k(const float* scores, const double* relevance, int64_t n,
                                         const std::vector<int64_t>& ks) {
  NCSREC_CHECK(n >= 0 && n <= static_cast<int64_t>(UINT32_MAX), "retrieval_at_k: n = " << n);
  int64_t k_max = 0;
  for (int64_t k : ks) {
    NCSREC_CHECK(k >= 1, "retrieval_at_k: K must be >= 1, got " << k);
    k_max = std::max(k_max, std::min(k, n));
  }
  std::vector<RetrievalAtK> out(ks.size());
  if (ks.empty()) return out;
  if (n == 0) {
    for (auto& r : out) r.recall = r.ndcg = kNaN;
    return out;
  }
  bool all_valid = true;  // a branch-free pass; the first bad value is looked up only on failure
  for (int64_t i = 0; i < n; ++i)
    all_valid &= relevance[i] >= 0 && relevance[i] <= std::numeric_limits<double>::max();
  if (!all_valid)
    for (int64_t i = 0; i < n; ++i)
      NCSREC_CHECK(relevance[i] >= 0 && std::isfinite(relevance[i]),
                   "retrieval_at_k: relevance[" << i << "] = " << relevance[i] << " (must be finite and >= 0)");

  // Strict orders: higher first, then lower index first. NaN scores count as -infinity.
  auto score_key = [scores](uint32_t a) {
    const float s = scores[a];
    return std::isnan(s) ? -std::numeric_limits<float>::infinity() : s;
  };
  auto relevance_key = [relevance](uint32_t a) { return relevance[a]; };
  auto true_before = [relevance](uint32_t a, uint32_t b) {
    return relevance[a] > relevance[b] || (relevance[a] == relevance[b] && a < b);
  };
  std::vector<uint32_t> model_top, true_top;
  select_top(n, k_max, score_key, model_top);
  select_top(n, k_max, relevance_key, true_top);

  for (size_t q = 0; q < ks.size(); ++q) {
    const int64_t k = std::min(ks[q], n);
    // Candidate j is in the true top-k iff it is the k-th or ranks before it.
    const uint32_t last_true = true_top[static_cast<size_t>(k - 1)];
    int64_t hits = 0;
    double dcg = 0, ideal = 0;
    for (int64_t r = 0; r < k; ++r) {
      const uint32_t j = model_top[static_cast<size_t>(r)];
      hits += j == last_true || true_before(j, last_true);
      const double discount = 1.0 / std::log2(static_cast<double>(r + 2));
      dcg += relevance[j] * discount;
      ideal += relevance[true_top[static_cast<size_t>(r)]] * discount;
    }
    out[q].recall = static_cast<double>(hits) / static_cast<double>(k);
    out[q].ndcg = ideal > 0 ? dcg / ideal : kNaN;
  }
  return out;
}

}  // namespace ncsrec

// Evaluation metrics for one task. Each task owns its own accumulator: no state is shared
// between tasks (a known bug elsewhere reported the first task's AUC for the second).
#pragma once

#include <cstdint>
#include <vector>

namespace ncsrec {

// Exact ROC AUC: the probability that a random positive scores above a random negative, ties
// counted as half. Labels > 0.5 are positives. Weighted when `weights` is non-null (each pair
// counts w_pos * w_neg). Returns NaN when either class is empty. O(n log n).
double auc_exact(const float* scores, const float* labels, const float* weights, int64_t n);

// Group AUC: the impression-weighted mean of per-group AUCs, over groups (users) that have both
// a positive and a negative. NaN if no group qualifies.
double gauc(const float* scores, const float* labels, const int64_t* groups, int64_t n);

struct TaskMetricValues {
  int64_t count = 0;         // samples evaluated
  double positives = 0;      // sum of labels
  double auc = 0;            // NaN when undefined
  double gauc = 0;           // NaN when undefined or no groups given
  double logloss = 0;        // mean binary cross-entropy of the predicted probabilities
  double calibration = 0;    // mean prediction / mean label (NaN when no positives)
  double mean_prediction = 0, mean_label = 0;
};

// Accumulates (probability, label, group) triples; compute() at the end.
class TaskMetrics {
 public:
  void add(const float* probabilities, const float* labels, const int64_t* groups, int64_t n);
  TaskMetricValues compute() const;
  int64_t size() const { return static_cast<int64_t>(probs_.size()); }
  void clear();
  // What was added, in order (groups empty unless every add() gave groups).
  const std::vector<float>& probabilities() const { return probs_; }
  const std::vector<float>& labels() const { return labels_; }
  const std::vector<int64_t>& groups() const { return groups_; }
  bool has_groups() const { return has_groups_ && !probs_.empty(); }

 private:
  std::vector<float> probs_, labels_;
  std::vector<int64_t> groups_;
  bool has_groups_ = true;
};

// Top-K retrieval quality of one query against graded true relevance over the same candidates.
// scores: the model's scores of n candidates; relevance: the true relevance (>= 0, finite) of
// the same candidates. Both rankings are strict: ties are broken by candidate index, lower
// first, and a NaN score counts as -infinity. A negative or non-finite relevance, or K < 1, is
// a broken precondition (InternalError).
//   recall@K = |model top-K ∩ true top-K| / K
//   ndcg@K   = DCG(model top-K) / DCG(true top-K), gains = relevance, discount 1/log2(rank+2)
//              (rank from 0); NaN when the true top-K has zero gain.
// K > n is clamped to n. n == 0 gives NaN for both. One pass over the n
// candidates per ranking (a heap of the K kept): O(n + K log K log(n/K)) in random order.
struct RetrievalAtK {
  double recall = 0, ndcg = 0;
};
std::vector<RetrievalAtK> retrieval_at_k(const float* scores, const double* relevance, int64_t n,
                                         const std::vector<int64_t>& ks);

}  // namespace ncsrec

// Retrieval quality of a three_tower model on generated data (`ncsrec eval --retrieval`):
// for sampled requests of the eval data (user, day, hour, device), every item that exists that
// day is scored by the model and by the generator's true relevance, recomputed from its saved
// parameters (generator.h5), and the model's top K is compared with the true top K by exact
// brute force (recall@K, NDCG@K; core/metrics/metrics.h).
//
// Lists (what the model ranks by): `mixed` (the gate-mixed score S, what one index over the
// serving form retrieves; the only list of a one-task model is its task) and each task's own
// score. Relevance: `click` = p(click), `conversion` = p(click)·p(conv | click), the chance that
// showing the item leads to a conversion, both at position 0 (position only shifts the click
// logit by a constant, so the click ranking does not depend on it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/metrics/metrics.h"
#include "models/multitask_model.h"

namespace ncsrec {

struct RetrievalOptions {
  std::string generator;               // generator.h5 of the data
  int64_t queries = 2000;              // requests: the first rows of distinct users in the eval data
  std::vector<int64_t> ks{10, 50, 200};
  std::string export_path;             // if set: the serving form written as HDF5 (see docs/dmmp.md)
};

struct RetrievalList {
  std::string list;       // mixed | <task view name>
  std::string relevance;  // click | conversion
  std::vector<RetrievalAtK> at_k;  // means over the queries, one per K
};

struct RetrievalReport {
  int64_t queries = 0, items = 0;
  std::string day;  // yyyymmdd of the requests
  std::vector<int64_t> ks;
  std::vector<RetrievalList> lists;
  double seconds = 0;
};

RetrievalReport evaluate_retrieval(MultiTaskModel& model, const std::vector<std::string>& eval_files,
                                   const RetrievalOptions& options);

std::string format_retrieval_table(const RetrievalReport& report);
std::string retrieval_json(const RetrievalReport& report);

}  // namespace ncsrec

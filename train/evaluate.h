// Evaluation over a whole eval set, per "view": one per task (a task "given" another is
// evaluated on the rows where the given label is 1: CVR over clicked impressions), plus the
// product view for each given pair (CTCVR = pCTR·pCVR over all impressions). Each view owns
// its own metric state. Where the data carries the generator's true probabilities
// (truth/<label>), the Bayes-optimal AUC of the same rows is reported beside the model's.
#pragma once

#include <string>
#include <vector>

#include "core/metrics/metrics.h"
#include "dist/communicator.h"
#include "models/multitask_model.h"
#include "train/train_config.h"

namespace ncsrec {

struct ViewResult {
  std::string name;
  TaskMetricValues metrics;
  double bayes_auc = 0;  // NaN when the data has no truth for this view
};

struct EvalReport {
  int64_t rows = 0;
  double seconds = 0;
  std::vector<ViewResult> views;
};

// Data entries (day folders, .h5 files, or glob patterns) expanded to shard files: in entry
// order, each pattern's matches sorted, each folder's shards sorted, every file once.
std::vector<std::string> expand_data_paths(const std::vector<std::string>& entries, const std::string& what);

EvalReport evaluate(MultiTaskModel& model, const std::vector<std::string>& files, const TrainConfig& config,
                    Communicator& comm);

// The results table printed at the end of training and by `ncsrec eval`.
std::string format_eval_table(const EvalReport& report);

}  // namespace ncsrec

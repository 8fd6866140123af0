// The training loop: read batches, step the model, update dense and sparse parameters, show
// progress on a terminal, log metrics.jsonl, evaluate at the end, write summary.json and a
// final checkpoint into the run folder.
#pragma once

#include <string>

#include "dist/communicator.h"
#include "train/evaluate.h"
#include "train/train_config.h"

namespace ncsrec {

struct TrainSummary {
  int64_t steps = 0, samples = 0;
  double train_seconds = 0, samples_per_second = 0;
  CommStats comm;  // the training steps' collectives on this rank
  EvalReport eval;
  std::string checkpoint;
};

// `resolved_yaml` is the config as run (overrides applied); it is saved in the run folder and
// in every checkpoint.
TrainSummary run_training(const TrainConfig& config, const std::string& resolved_yaml, const std::string& run_dir,
                          Communicator& comm);

// Applies run.threads to OpenMP and OpenBLAS (0 leaves the defaults).
void configure_threads(int64_t threads);

}  // namespace ncsrec

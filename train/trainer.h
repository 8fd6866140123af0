// The training loop: read batches, step the model, update dense and sparse parameters, show
// progress on a terminal, log metrics.jsonl, evaluate at the end, write summary.json and a
// final checkpoint into the run folder.
#pragma once

#include <functional>
#include <string>

#include "dist/communicator.h"
#include "train/evaluate.h"
#include "train/train_config.h"

namespace ncsrec {

struct TrainSummary {
  int64_t steps = 0;    // the run's step count at the end (resumed steps included)
  int64_t samples = 0;  // samples (global positions) read by this call's training steps
  int64_t trained_rows = 0;  // rows those steps trained on, over all ranks (fewer with negative downsampling)
  int64_t resumed_from_step = -1;  // the checkpoint's step when resumed, else -1
  int64_t first_step = 0;          // the step the run started from (init.from), else 0
  bool preempted = false;          // stopped by request_training_stop(): checkpoint saved, no final
  double checkpoint_seconds = 0;   // saving periodic checkpoints (not part of train_seconds)
  double train_seconds = 0, samples_per_second = 0;
  CommStats comm;  // the training steps' collectives on this rank
  EvalReport eval;
  EvalReport progressive_eval;  // the initialised model on data.train, before training (init.from)
  std::string checkpoint;
};

struct TrainOptions {
  // Continue from the newest checkpoint in <run_dir>/checkpoints (step-<N> or final): weights,
  // optimizer state, masks, embedding rows, step and data position. The config must be the
  // run's (the command line checks which keys may change).
  bool resume = false;
  // The data day this run trains on (recorded in its checkpoints as meta/day).
  std::string day;
  // Called on every rank after each step with the step count (tests use it to preempt).
  std::function<void(int64_t step)> after_step;
  // Sums the dense gradient in place of `comm` (train_one_step): the NCCL communicator of a GPU
  // model on several ranks (run.dense_comm). Same ranks as `comm`.
  Communicator* dense_comm = nullptr;
};

// `resolved_yaml` is the config as run (overrides applied); it is saved in the run folder and
// in every checkpoint.
//
// Preemption: SIGTERM and SIGUSR1 (or request_training_stop()) make the run stop at the next
// step boundary on every rank, save `checkpoints/step-<N>` and return with `preempted` set,
// without the final checkpoint, evaluation or summary.json. `--resume` goes on from there.
TrainSummary run_training(const TrainConfig& config, const std::string& resolved_yaml, const std::string& run_dir,
                          Communicator& comm, const TrainOptions& options = {});

// What the signal handler does: the running training stops at its next step boundary.
void request_training_stop();
// Installs the SIGTERM/SIGUSR1 handler for the whole process (the command calls it first), so
// that a signal during start-up (MPI, data, model) stops the run at its first step instead of
// killing it.
void catch_stop_signals();

// Applies run.threads to OpenMP, which also threads the BLAS products (0 leaves the default).
void configure_threads(int64_t threads);

// The masked layers' route measurements of this process (run.masked_route: auto;
// core/layers/masked_linear.h masked_route_choices) as a JSON array of objects, "[]" if none.
std::string masked_route_choices_json();

}  // namespace ncsrec

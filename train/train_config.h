// The training configuration: the YAML file (plus --set overrides) read strictly into plain
// structs. See docs/config.md for every key.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/data/reader.h"
#include "core/lr_schedule.h"
#include "core/optim.h"
#include "models/multitask_model.h"

namespace ncsrec {

struct DataConfig {
  std::vector<std::string> train;  // day folders (with _DONE) or shard files
  std::vector<std::string> eval;
  std::vector<std::string> valid;  // model selection (IMP picks each task's mask by its AUC here)
  int64_t window_rows = 1 << 18;
  std::string group_meta = "user_id";  // meta column for GAUC ("" = none)
  // Negative downsampling of the training data (core/data/reader.h): rows whose label
  // `negative_label` is 0 are kept with probability `negative_rate` (1 = off). Evaluation data
  // is never downsampled. The correction that keeps predictions calibrated:
  //   weight  kept negatives weigh 1 / rate in every loss
  //   logit   the tasks trained on that label predict σ(logit + log rate) (TaskSpec::logit_offset)
  //   none    predictions stay those of the downsampled data (ranking only)
  std::string negative_label;
  double negative_rate = 1.0;
  std::string negative_correction = "logit";
};

struct TrainLoopConfig {
  int64_t batch_size = 1024;
  int64_t epochs = 1;
  int64_t max_steps = 0;    // 0 = no limit
  int64_t log_every = 100;  // steps between metrics.jsonl lines
  int64_t eval_batch_size = 8192;
  bool shuffle = true;
  // joint: every task's loss in each step; alternating: one batch per task in turn (NCS4CVR).
  std::string schedule = "joint";
  // exact: a task's step moves nothing outside its mask and its tower (optimizer state
  // included); paper_shared_adam: one optimizer updates every parameter on every step, as in
  // the NCS4CVR code (Adam momentum then moves weights the stepping task does not use).
  std::string mask_semantics = "exact";
  // Scales both optimizers' lr each step (core/lr_schedule.h); the default is a constant rate.
  LrSchedule lr_schedule;
  // > 0: the dense gradient is scaled to this L2 norm when its norm is larger (sparse
  // embedding gradients are not clipped). 0 = off.
  double clip_grad_norm = 0.0;
  // > 0: a checkpoint `checkpoints/step-<N>` every this many steps (and at preemption); the
  // newest `keep_checkpoints` of them are kept. `checkpoints/final` is always written.
  int64_t checkpoint_every = 0;
  int64_t keep_checkpoints = 2;
  // With init.from: evaluate the initialised model on data.train before training on it
  // (progressive validation: yesterday's model on today's data).
  bool progressive_eval = true;
};

// `init:` (train/init_from.h): start a new run from another run's checkpoint.
struct InitSpec {
  std::string from;  // checkpoint folder; "" = no initialisation
  std::vector<std::pair<std::string, std::string>> map;  // new-name prefix -> checkpoint-name prefix
  std::vector<std::string> reinit;                       // patterns of new names left fresh
  bool optimizer_state = true;  // carry optimizer state (and the optimizer step) for loaded parameters
  bool masks = true;            // take the masks (ncs) from the checkpoint
  // true: a parameter (not matched by reinit) missing from the checkpoint is an error;
  // false: it keeps its fresh initialisation and is listed in the report.
  bool strict = true;
};

struct TrainConfig {
  uint64_t seed = 1;
  std::string device = "cpu";  // cpu | cuda | auto
  std::string matmul = "fp32";  // fp32 | tf32 | bf16: the device's matrix products
  std::string masked_route = "auto";  // auto | plain | fused: how a device runs the masked layers
  std::string dense_comm = "auto";  // auto | nccl | host: how a GPU model's ranks sum the dense gradient
  int64_t threads = 0;         // 0 = OpenMP default
  double comm_timeout = 60;    // seconds a collective may wait for the other ranks
  double bucket_mb = 25;       // the dense gradient's all-reduce buckets (MiB; train/step.h)
  int64_t bucket_bytes() const { return static_cast<int64_t>(bucket_mb * 1024 * 1024); }
  DataConfig data;
  ModelConfig model;
  OptimizerConfig dense_optimizer;
  OptimizerConfig sparse_optimizer;
  TrainLoopConfig train;
  InitSpec init;
};

// How the training data of `config` is read on rank `rank` of `world_size` in `epoch`
// (shuffled windows, the final partial global batch dropped).
ReaderOptions training_reader_options(const TrainConfig& config, const std::vector<std::string>& files, int rank,
                                      int world_size, int64_t epoch);

// Reads, validates and returns the config. `overrides` are "a.b=c" assignments applied before
// validation. `resolved` receives the final YAML (saved with the run and its checkpoints).
TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides,
                              std::string* resolved = nullptr);
TrainConfig parse_train_config(const std::string& yaml_text, const std::string& file_name);

}  // namespace ncsrec

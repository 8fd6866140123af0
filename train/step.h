// One optimisation step, shared by the training loop, the IMP mask search and the bench: loss
// normalisers summed over ranks, forward/backward, dense gradients all-reduced, the rates set
// from the schedule, the dense gradient clipped by its global norm, then the dense update
// (through the model's update mask unless the paper's shared-optimizer semantics are asked for)
// and the sparse updates of the touched embedding rows.
#pragma once

#include <memory>
#include <vector>

#include "core/data/block.h"
#include "core/lr_schedule.h"
#include "core/optim.h"
#include "dist/communicator.h"
#include "embedding/embedding_table.h"
#include "models/multitask_model.h"
#include "train/train_config.h"

namespace ncsrec {

// The optimizers and how each step drives them. A step sets the dense and every sparse
// optimizer's lr to its base_lr() times lr_factor(lr_schedule, step).
struct Optimizers {
  std::unique_ptr<DenseOptimizer> dense;
  std::vector<std::unique_ptr<SparseOptimizer>> sparse;  // one per table
  LrSchedule lr_schedule;     // constant rate by default
  double clip_grad_norm = 0;  // > 0: clip the dense gradient to this global norm
};

// What a step did besides its loss (for the training log).
struct StepStats {
  double grad_norm = 0;  // L2 norm of the dense gradient over the updated elements, before clipping
  bool clipped = false;
  double lr = 0, sparse_lr = 0;  // the rates the step used (sparse_lr: 0 without tables)
};

// Where `config` trains (run.device): cpu; cuda (its backend must be registered:
// cuda_register_if_available); auto: cuda when a backend is registered, else cpu.
Device training_device(const TrainConfig& config);

// Optimizers with a constant rate and no clipping; weight decay (from `dense`) applies where
// the model's ParamStore::decay_mask() is 1.
Optimizers make_optimizers(const OptimizerConfig& dense, const OptimizerConfig& sparse, MultiTaskModel& model);
// The same, with the schedule and clipping of `config.train`: what the trainer and IMP use.
Optimizers make_optimizers(const TrainConfig& config, MultiTaskModel& model);

// `task` -1 steps all tasks (joint), t >= 0 task t alone. With `exact_masks` no parameter
// outside the stepping task's reach (its mask, its tower) moves, nor its optimizer state;
// without, every trainable dense parameter is updated (NCS4CVR's one Adam shared by alternating
// tasks). Non-trainable state (ParamStore::add_state) is never touched by the optimizer. The
// gradient norm (and clipping) covers exactly the elements the update reads: the update mask,
// or the trainable ones. `step` counts from 1. Returns the loss summed over ranks; `stats`, if
// given, receives the step's gradient norm and rates.
//
// `comm` sums the host's values (loss normalisers, losses, BatchNorm statistics, embedding
// gradients); `dense_comm`, when given, sums the dense gradient instead (NCCL on the device's
// buffers for a GPU model; run.dense_comm), over the same ranks.
//
// The dense gradient is summed in buckets of at most `bucket_bytes`, each started as soon as the
// backward has finished its range (MultiTaskModel::set_gradient_ready: the towers' while the
// shared block's backward runs, the block's while the embeddings' backward and exchange run)
// and all finished after the backward. Where the gradient is not in the memory the communicator
// takes (a GPU model over MPI), it is summed in one call after the backward through a copy.
constexpr int64_t kDenseBucketBytes = int64_t{25} << 20;

// Plans the memory of training steps on batches of up to `rows` rows before the first one:
// the model's buffers (MultiTaskModel::plan_memory), the update masks every schedule's steps
// read on the device, and the gradient norm's reduction. After it a step allocates no device
// memory (DeviceModel.APlannedModelAllocatesNoDeviceMemoryInAnyStep), and the steps compute
// exactly what they would have without it. Collective like plan_memory. Nothing for a CPU model.
void plan_step_memory(MultiTaskModel& model, int64_t rows);
StepLoss train_one_step(MultiTaskModel& model, Optimizers& optimizers, const Block& batch, int task, int64_t step,
                        bool exact_masks, Communicator& comm, StepStats* stats = nullptr,
                        Communicator* dense_comm = nullptr, int64_t bucket_bytes = kDenseBucketBytes);

}  // namespace ncsrec

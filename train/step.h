// One optimisation step, shared by the training loop and the IMP mask search: loss
// normalisers summed over ranks, forward/backward, dense gradients all-reduced, then the dense
// update (through the model's update mask unless the paper's shared-optimizer semantics are
// asked for) and the sparse updates of the touched embedding rows.
#pragma once

#include <memory>
#include <vector>

#include "core/data/block.h"
#include "core/optim.h"
#include "dist/communicator.h"
#include "embedding/embedding_table.h"
#include "models/multitask_model.h"

namespace ncsrec {

struct Optimizers {
  std::unique_ptr<DenseOptimizer> dense;
  std::vector<std::unique_ptr<SparseOptimizer>> sparse;  // one per table
};

Optimizers make_optimizers(const OptimizerConfig& dense, const OptimizerConfig& sparse, MultiTaskModel& model);

// `task` -1 steps all tasks (joint), t >= 0 task t alone. With `exact_masks` no parameter
// outside the stepping task's reach (its mask, its tower) moves, nor its optimizer state;
// without, every dense parameter is updated (NCS4CVR's one Adam shared by alternating tasks).
// `step` counts from 1. Returns the loss summed over ranks.
StepLoss train_one_step(MultiTaskModel& model, Optimizers& optimizers, const Block& batch, int task, int64_t step,
                        bool exact_masks, Communicator& comm);

}  // namespace ncsrec

// Iterative magnitude pruning with rewinding (NCS4CVR / LT4REC, PAPERS.md §1): per task,
// train single-task through the task's current mask, prune the fraction p = 1 − r^(1/n) of the
// remaining weights by global magnitude across all masked layers (exact by count), rewind every
// parameter and the optimizer state to the saved initialisation θ₀, and repeat for n rounds.
// Every round's mask is kept; each task's mask is the round with the best AUC on the
// validation split (the paper picked by hand).
#pragma once

#include <string>
#include <vector>

#include "core/masks.h"
#include "dist/communicator.h"
#include "models/multitask_model.h"
#include "train/train_config.h"

namespace ncsrec {

// The values of every dense parameter and embedding row of a model: θ₀ for rewinding.
// (A rewound optimizer is a fresh one: its state starts from zero, as it did at θ₀.)
struct ModelSnapshot {
  Tensor params;
  std::vector<Tensor> tables;
  static ModelSnapshot capture(MultiTaskModel& model);
  void restore(MultiTaskModel& model) const;
};

struct ImpRound {
  int round = 0;
  double density = 1;    // of the task's mask over all masked layers, during this round's training
  double valid_auc = 0;  // the task's AUC on data.valid after this round's training
};

struct ImpResult {
  std::vector<std::vector<ImpRound>> rounds;  // [task][round]
  std::vector<int> chosen;                    // [task]: the round picked
  std::vector<std::vector<BitMask>> masks;    // [task][masked layer]: the chosen masks
};

// Runs the search for every task of `config.model` (type ncs, masks.find: imp). Writes
// <run_dir>/masks/round-<k>.h5 (every task's round-k mask), <run_dir>/masks/chosen.h5 and
// <run_dir>/masks/imp.json. `schema` is the training data's. `dense_comm`, if given, sums the
// dense gradient of every step (train_one_step; NCCL for a GPU model on several ranks).
ImpResult find_masks_imp(const TrainConfig& config, const DataSchema& schema, const std::vector<std::string>& train_files,
                         const std::vector<std::string>& valid_files, const std::string& run_dir, Communicator& comm,
                         Communicator* dense_comm = nullptr);

}  // namespace ncsrec

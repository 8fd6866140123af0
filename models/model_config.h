// The `model` section of a training config, as plain structs, and its strict parser.
// Names (labels, slots) are checked against the data when the model is built.
#pragma once

#include <string>
#include <vector>

#include "core/config.h"
#include "core/layers/embedding_bag.h"

namespace ncsrec {

struct TaskSpec {
  std::string name;   // "ctr"
  std::string label;  // data label column: "click"
  std::string given;  // name of the task whose label must be 1 for this task's rows ("" = all rows)
  std::vector<int64_t> tower;  // hidden sizes; the output layer (1 logit) is added
  double loss_weight = 1.0;
  std::string loss = "bce";    // bce | focal | mse (squared error of σ(logit), on positive labels only)
  double focal_alpha = 0.75, focal_gamma = 2.0;
};

struct TableSpec {
  std::string name;
  int64_t rows = 0;
  std::vector<std::string> slots;
  Pooling pooling = Pooling::Sum;
};

// Neuron-connection sharing (type ncs): which shared layers carry per-task masks, and where
// the masks come from.
struct MaskSpec {
  std::vector<int64_t> layers;  // masked shared layers (default: all)
  std::string file;             // an HDF5 file or checkpoint folder with mask/<task>/shared.<i>
  std::string find = "none";    // none | imp | learned (ours: scores with a straight-through gradient)
  double final_density = 0.2;   // imp: density after the last round; learned: each layer's top-k budget
  int rounds = 4;               // imp: pruning rounds n (p = 1 - final_density^(1/n) per round)
  int64_t epochs_per_round = 1; // imp: single-task training before each prune
  bool shared_init = true;      // imp: one θ₀ for all tasks (false: one per task, as the paper)
  double score_init = 0.01;     // learned: scores start U(-score_init, score_init) plus |W₀| (see ncs.md)
};

struct ModelConfig {
  std::string source;  // the config file it came from, for error messages ("" when built in code)
  std::string type = "esmm";  // single_task | shared_embedding | shared_bottom | esmm | ncs
  std::vector<TaskSpec> tasks;
  int64_t embedding_dim = 8;
  double embedding_init = 0.05;
  std::vector<TableSpec> tables;
  bool use_dense = true;
  // "dot": append the DLRM-style F×F dot products of the field embeddings to the input.
  std::string interaction = "none";
  std::vector<int64_t> bottom;  // shared_bottom: the shared MLP's sizes
  std::vector<int64_t> shared;  // ncs: the masked shared layers' sizes (ReLU after each)
  MaskSpec masks;               // ncs
};

ModelConfig parse_model_config(ConfigNode node);

extern const char* const kEsmmCtrWeightMessage;

}  // namespace ncsrec

// The `model` section of a training config, as plain structs, and its strict parser.
// Names (labels, slots) are checked against the data when the model is built.
#pragma once

#include <string>
#include <vector>

#include "core/config.h"
#include "core/layers/embedding_bag.h"
#include "models/feed_forward.h"
#include "models/history_features.h"

namespace ncsrec {

struct TaskSpec {
  std::string name;   // "ctr"
  std::string label;  // data label column: "click"
  std::string given;  // name of the task whose label must be 1 for this task's rows ("" = all rows)
  std::vector<int64_t> tower;  // hidden sizes; the output layer (1 logit) is added
  double loss_weight = 1.0;
  std::string loss = "bce";    // bce | focal | mse (squared error of σ(logit), on positive labels only)
  double focal_alpha = 0.75, focal_gamma = 2.0;
  // Added to the logit at inference (predict, eval, export): log(rate) for a task trained on
  // negatives downsampled at `rate` with the logit correction. Not a model key: set from
  // data.negative_sampling (train/train_config.h).
  double logit_offset = 0.0;
};

struct TableSpec {
  std::string name;
  int64_t rows = 0;  // a fixed table: ids map to rows modulo `rows`
  std::vector<std::string> slots;
  Pooling pooling = Pooling::Sum;
  // Over several ranks: row_wise (rows spread over all ranks by a hash of the row),
  // table_wise (the whole table on rank `table_rank`) or replicated (every rank a full copy,
  // for small tables). One rank holds everything whatever the placement.
  std::string placement = "row_wise";
  int64_t table_rank = 0;
  // A hash table (capacity > 0): every id its own row, inserted in training once read
  // admit_after times; rows not seen for ttl_days days dropped at the start of a day; full:
  // evict the least recently seen rows (evict_when_full) or stop with an error.
  int64_t capacity = 0;
  int64_t admit_after = 1;
  int64_t ttl_days = 0;
  bool evict_when_full = false;
  // The most ids one row has in each of the table's slots, for the memory plan of a table on a
  // device (its per-batch buffers hold batch_size × this per slot; a batch with more grows them).
  int64_t max_ids_per_row = 1;
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
  // imp: which round's mask each task keeps: best_valid (the best validation AUC, round 0 the
  // unpruned block included) or last (the final_density masks, as the paper's fixed sparsity)
  std::string keep = "best_valid";
  double score_init = 0.01;     // learned: scores start U(-score_init, score_init) plus |W₀| (see ncs.md)
  // learned: how the density is held to final_density. topk: each layer keeps exactly its k
  // highest scores; penalty: the mask is score > 0, and an L1 penalty on the scores whose
  // weight follows the density error (models/multitask_model.cpp) holds it near the target.
  std::string sparsity = "topk";
  double penalty_gain = 1.0;    // penalty: λ per unit of relative density error
};

// Experts of type mmoe / ple.
struct ExpertSpec {
  int64_t count = 4;                // mmoe: number of experts
  std::vector<int64_t> sizes;       // each expert's MLP (ReLU after every layer)
  bool masked = false;              // experts are masked shared layers (NCS): see `masks`
  int64_t levels = 1;               // ple: CGC levels
  int64_t task_experts = 1;         // ple: experts per task per level
  int64_t shared_experts = 1;       // ple: shared experts per level
};

// APG (PAPERS.md §4): which MLPs' hidden layers it replaces, and how.
struct ApgSpec {
  std::vector<std::string> in;              // towers | bottom | experts (empty: APG off)
  ApgOptions options;
  std::vector<std::string> condition;       // group-wise: these slots' embeddings; empty: self-wise
};

// Type three_tower (the DMMP student, PAPERS.md §5): a user tower and one item tower per task
// whose inner products are the task logits, and a user-preference gate that mixes them into one
// retrieval score. Which inputs are the user's and which the item's is configured by slot and
// by dense column.
struct TowerSpec {
  std::vector<std::string> slots;  // sparse slots read by this side
  std::vector<int64_t> dense;      // dense columns read by this side
  std::vector<int64_t> sizes;      // the MLP's sizes; the last is the retrieval embedding's width
};

struct ThreeTowerSpec {
  TowerSpec user, item;
  bool gate = true;                     // false: every task weighs 1/T in the mixed score
  std::vector<int64_t> gate_sizes{32};  // the gate MLP's hidden sizes (a linear layer to T logits follows)
  // Ours: the mixed score S = Σ w_t·l_t (gate weights w, task logits l) is trained by BCE of
  // σ(S) against Σ a_t·y_t (a = mix_targets, the tasks' impression-level labels).
  double mix_weight = 1.0;
  std::vector<double> mix_targets;  // per task; default 1/T each
  // Distillation: BCE of each task's σ(l_t) against the teacher's impression-level probability.
  std::string teacher;              // a checkpoint folder of an ESMM-headed model ("" = none)
  double distill_weight = 1.0;
};

struct ModelConfig {
  std::string source;  // the config file it came from, for error messages ("" when built in code)
  // single_task | shared_embedding | shared_bottom | esmm | ncs | mmoe | ple | three_tower
  std::string type = "esmm";
  // ESMM heads (pCTR and pCTCVR = pCTR·pCVR over all impressions): type esmm (shared
  // embeddings), or `esmm: true` on shared_bottom, ncs, mmoe and ple.
  bool esmm = false;
  std::vector<TaskSpec> tasks;
  int64_t embedding_dim = 8;
  double embedding_init = 0.05;
  std::vector<TableSpec> tables;
  bool use_dense = true;
  // "dot": append the DLRM-style F×F dot products of the field embeddings to the input.
  std::string interaction = "none";
  std::vector<int64_t> bottom;  // shared_bottom: the shared MLP's sizes
  std::vector<int64_t> shared;  // ncs: the masked shared layers' sizes (ReLU after each)
  MaskSpec masks;               // ncs, and mmoe/ple with masked experts
  ExpertSpec experts;           // mmoe, ple
  LayerOptions layers;          // hidden layers of towers, bottom and unmasked experts: norm, dropout
  ApgSpec apg;
  ThreeTowerSpec three_tower;   // three_tower
  HistorySpec history;          // E-CDCTR historical embedding features (models/history_features.h)
  // fixed: loss_weight per task; uncertainty: learned log σ_k per loss, L = Σ w_k L_k / (2σ_k²) + log σ_k
  // (the default of three_tower)
  std::string loss_weighting = "fixed";
  bool uses_masks() const { return type == "ncs" || experts.masked; }
};

ModelConfig parse_model_config(ConfigNode node);

// The name of the event "task given `given`" over all impressions (the product of the two
// labels): "ctcvr" for cvr given ctr, otherwise "<given>_<task>". Loss, view and list names.
std::string joint_task_name(const std::string& given, const std::string& task);

extern const char* const kEsmmCtrWeightMessage;

}  // namespace ncsrec

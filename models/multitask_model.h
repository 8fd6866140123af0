// The baseline multi-task models of the foundation issue, assembled from core layers and
// embedding tables:
//   single_task    every task has its own embedding tables and tower (no sharing at all)
//   shared_embedding  shared embeddings, one tower per task, independent losses
//   shared_bottom  shared embeddings and a shared MLP ("hard sharing"), one tower per task
//   esmm           shared embeddings, a CTR tower and a CVR tower, trained through
//                  pCTR and pCTCVR = pCTR·pCVR over all impressions (Ma et al., SIGIR 2018)
// A task may be "given" another task's label (CVR given click): outside ESMM it then trains and
// evaluates only on rows where that label is 1.
//
// Inputs: the pooled embeddings of every configured slot, concatenated, then the dense
// features, then (interaction: dot) the F×F dot products of the slot embeddings. Parameters: `bottom.<i>.{weight,bias}`, `tower.<task>.<i>.{weight,bias}`;
// tables `<table>` (or `<task>.<table>` in single_task).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/data/block.h"
#include "core/layers/embedding_bag.h"
#include "core/layers/linear.h"
#include "core/params.h"
#include "embedding/embedding_table.h"

namespace ncsrec {

struct TaskSpec {
  std::string name;   // "ctr"
  std::string label;  // data label column: "click"
  std::string given;  // name of the task whose label must be 1 for this task's rows ("" = all rows)
  std::vector<int64_t> tower;  // hidden sizes; the output layer (1 logit) is added
  double loss_weight = 1.0;
};

struct TableSpec {
  std::string name;
  int64_t rows = 0;
  std::vector<std::string> slots;
  Pooling pooling = Pooling::Sum;
};

struct ModelConfig {
  std::string source;  // the config file it came from, for error messages ("" when built in code)
  std::string type = "esmm";  // single_task | shared_embedding | shared_bottom | esmm
  std::vector<TaskSpec> tasks;
  int64_t embedding_dim = 8;
  double embedding_init = 0.05;
  std::vector<TableSpec> tables;
  bool use_dense = true;
  // "dot": append the DLRM-style F×F dot products of the field embeddings to the input.
  std::string interaction = "none";
  std::vector<int64_t> bottom;  // shared_bottom only
};

// Reads and validates the `model` section (structure only; names are checked against the
// data schema when the model is built).
ModelConfig parse_model_config(ConfigNode node);

struct StepLoss {
  std::vector<double> per_task;  // the loss of each task's head (ESMM: ctr, ctcvr)
  double total = 0;              // weighted sum, what the gradients are of
};

class MultiTaskModel {
 public:
  MultiTaskModel(const ModelConfig& config, const DataSchema& schema, DType dtype, uint64_t seed);

  const ModelConfig& config() const { return config_; }
  // Whether batches of `schema` can feed this model: the same labels, slots and dense width in
  // the same order (weight, meta and truth columns may differ). Throws UserError naming `what`.
  void check_compatible(const DataSchema& schema, const std::string& what) const;
  const std::vector<std::string>& loss_names() const { return loss_names_; }

  // The per-task loss normalisers of a batch (rows, or rows whose "given" label is 1), to be
  // summed over ranks by the caller and passed back to train_step.
  std::vector<double> local_normalizers(const Block& batch) const;
  // Forward, loss and backward. Dense gradients accumulate into params().grads(); the sparse
  // gradient of every table is left in sparse_grads().
  StepLoss train_step(const Block& batch, const std::vector<double>& normalizers);
  // Probabilities [task][row] (ESMM: pCTR, pCVR).
  void predict(const Block& batch, std::vector<std::vector<float>>& probabilities);

  ParamStore& params() { return params_; }
  std::vector<EmbeddingTable>& tables() { return tables_; }
  const std::vector<SparseGrad>& sparse_grads() const { return sparse_grads_; }
  int64_t input_dim() const { return input_dim_; }
  DType dtype() const { return dtype_; }

 private:
  struct SlotRef {
    int slot;  // index in the data schema
    int64_t col;
    Pooling pooling;
  };
  struct TableRef {
    int table;  // index in tables_
    std::vector<SlotRef> slots;
  };
  struct InputGroup {  // one set of embedding tables feeding the input vector
    std::vector<TableRef> tables;
    Tensor x_buf, x;
    Tensor dx_buf, dx;  // input gradient including the interaction's share (when it is on)
  };

  void forward(const Block& batch);
  const Tensor& tower_input(size_t task);

  ModelConfig config_;
  DataSchema schema_;
  DType dtype_;
  int64_t input_dim_ = 0, embedding_cols_ = 0, fields_ = 0, interaction_col_ = -1;
  std::vector<int> label_index_;  // per task: index in schema.tasks
  std::vector<int> given_task_;   // per task: index of the given task or -1
  std::vector<std::string> loss_names_;
  ParamStore params_;
  std::vector<EmbeddingTable> tables_;
  std::vector<InputGroup> groups_;
  std::vector<int> group_of_task_;
  std::unique_ptr<MLP> bottom_;
  std::vector<std::unique_ptr<MLP>> towers_;
  std::vector<SparseGrad> sparse_grads_;
  std::vector<Tensor> dlogit_bufs_, prob_bufs_;
  Tensor dshared_buf_;
};

}  // namespace ncsrec

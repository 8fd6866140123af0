// The multi-task models, assembled from core layers, embedding tables and a shared block
// (models/shared_block.h):
//   single_task    every task has its own embedding tables and tower (no sharing at all)
//   shared_embedding  shared embeddings, one tower per task, independent losses
//   shared_bottom  shared embeddings and a shared MLP ("hard sharing"), one tower per task
//   esmm           shared embeddings, a CTR tower and a CVR tower, trained through
//                  pCTR and pCTCVR = pCTR·pCVR over all impressions (Ma et al., SIGIR 2018)
//   ncs            neuron-connection sharing (NCS4CVR / LT4REC): shared layers whose one weight
//                  matrix each task sees through its own binary mask, h = act(x·(W⊙M_t) + b),
//                  then a tower (the paper: a linear head) per task
//   mmoe, ple      multi-gate mixtures of experts (PAPERS.md §6); experts may be masked (NCS)
//   three_tower    the DMMP student (PAPERS.md §5, models/three_tower.h): user and item towers
//                  whose inner products are the task logits, each task scored over all
//                  impressions (a task given another predicts both: CTCVR), a user-preference
//                  gate mixing them, and optional distillation from a teacher's predictions
// `esmm: true` puts ESMM's heads on shared_bottom, ncs, mmoe or ple. Hidden layers of towers,
// bottoms and unmasked experts take norm, dropout and APG (models/feed_forward.h).
// A task may be "given" another task's label (CVR given click): outside ESMM it then trains and
// evaluates only on rows where that label is 1.
//
// Inputs: the pooled embeddings of every configured slot, concatenated, then the dense
// features, then (interaction: dot) the F×F dot products of the slot embeddings. Parameters:
// `bottom.<i>.*`, `shared.<i>.*`, `expert.<j>.<i>.*`, `gate.<task>.*`, `ple.<l>.*`,
// `tower.<task>.<i>.*`, `loss_weight.<loss>.log_sigma`; tables `<table>` (or `<task>.<table>`
// in single_task).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/data/block.h"
#include "core/device_table.h"
#include "core/layers/embedding_bag.h"
#include "core/layers/linear.h"
#include "core/params.h"
#include "core/masks.h"
#include "core/phase_clock.h"
#include "core/sparse.h"
#include "core/layers/masked_linear.h"
#include "dist/communicator.h"
#include "embedding/embedding_table.h"
#include "embedding/sharded_table.h"
#include "models/feed_forward.h"
#include "models/history_features.h"
#include "models/model_config.h"
#include "models/shared_block.h"
#include "models/three_tower.h"

namespace ncsrec {

struct StepLoss {
  std::vector<double> per_task;  // the loss of each task's head (ESMM: ctr, ctcvr); NaN for a task not stepped
  double total = 0;              // weighted sum, what the gradients are of
};

class MultiTaskModel {
 public:
  // `comm`: the ranks the embedding tables are placed over (model.tables.<t>.placement); null
  // for one process. The model keeps the pointer: forward and backward exchange embedding rows
  // through it, so every rank must run the same sequence of train_step/predict calls.
  // `device`: where the model runs: its layers, parameters, gradients and loss heads, and its
  // embedding tables where place_tables_on_device moves them (else they stay on the host and
  // the pooled input goes up, its gradient down). The dense and history features are assembled
  // on the host and go up (see docs/cuda.md).
  MultiTaskModel(const ModelConfig& config, const DataSchema& schema, DType dtype, uint64_t seed,
                 Communicator* comm = nullptr, Device device = Device::CPU);
  Device device() const { return device_; }

  const ModelConfig& config() const { return config_; }
  // Whether batches of `schema` can feed this model: the same labels, slots and dense width in
  // the same order (weight, meta and truth columns may differ). Throws UserError naming `what`.
  void check_compatible(const DataSchema& schema, const std::string& what) const;
  const std::vector<std::string>& loss_names() const { return loss_names_; }

  // The per-task loss normalisers of a batch (rows, or rows whose "given" label is 1), to be
  // summed over ranks by the caller and passed back to train_step.
  std::vector<double> local_normalizers(const Block& batch) const;
  // Forward, loss and backward. Dense gradients accumulate into params().grads(); the sparse
  // gradient of every table is left in sparse_grads(). `only_task` >= 0 steps that task alone
  // (its loss, its path through the masks): the alternating schedule. ESMM has no single-task step.
  StepLoss train_step(const Block& batch, const std::vector<double>& normalizers, int only_task = -1);
  // Called inside train_step each time a range [begin, end) of params().grads() holds its final
  // value for the step, so the caller can start that range's all-reduce while the backward goes
  // on: the towers' (and loss weights') range after the towers, the shared block's after the
  // block, the rest (history attention) before the tables' backward. The ranges cover the buffer
  // once per step, back to front. Empty: not called.
  using GradientReady = std::function<void(int64_t begin, int64_t end)>;
  // Sizes, now, every buffer that training steps on batches of up to `rows` rows use on the
  // device (the layers' outputs and gradients, the staging buffers, the masks' device bits,
  // cuBLASLt's plans; the masked layers' route measurements under run.masked_route: auto): a
  // dry joint step (and each task's own step, where the model has them) on a batch of `rows`
  // rows whose bags are all empty, so no table is read or changed. Afterwards every parameter
  // value is as before (BatchNorm's statistics included) and every gradient is 0. Collective
  // when the tables are sharded (every rank calls it). train/step.h plan_step_memory adds the
  // optimizer's side.
  void plan_memory(int64_t rows);
  void set_gradient_ready(GradientReady ready) { gradient_ready_ = std::move(ready); }
  // The training step the next train_step belongs to: dropout masks are a pure function of
  // (seed, step, layer, element), so a resumed run draws the same masks.
  void set_step(int64_t step) { step_ = step; }
  // The day (days since 1970-01-01, -1: none) of the training batches that follow: the tables'
  // last_seen_day, and hash tables drop the rows not seen for their ttl_days.
  void start_day(int64_t day);
  // One byte per dense parameter: 1 where a step of `task` (-1: all tasks, a joint step) may
  // change the parameter and its optimizer state. A task's step never touches another task's
  // tower, nor a masked weight outside its own mask; a joint step touches the union.
  const uint8_t* update_mask(int task);
  // The same bytes in the parameters' device memory (update_mask itself on the CPU): what the
  // dense optimizer reads.
  const uint8_t* update_mask_on_device(int task);

  // Masks (ncs, masked experts): one per task per masked layer.
  int num_masked_layers() const { return static_cast<int>(masked_refs_.size()); }
  std::string masked_layer_name(int i) const;  // "shared.<layer>", "expert.<j>.<layer>", ...
  const BitMask& mask(int task, int i) const;
  void set_mask(int task, int i, const BitMask& mask);
  std::vector<const Tensor*> masked_weights() const;
  // Learned masks: sets every mask to what predict() uses, the top-k of the current scores
  // (the masks a training step chose lag its update of the scores by one step; the trainer
  // calls this before every checkpoint). Masks from a file or IMP are fixed: nothing to do.
  void refresh_masks() {
    if (!score_params_.empty()) refresh_learned_masks();
  }
  // Learned masks with masks.sparsity: penalty, once per step (alike on every rank): the
  // penalty's step on the scores of the tasks `task` steps (-1: all) at the dense rate `lr`
  // (see the .cpp). Nothing for top-k masks.
  void apply_mask_penalty(int task, double lr);
  // The densities of the learned masks, [task][masked layer] (for logs).
  std::vector<std::vector<double>> mask_densities() const;
  // Inference through CSR (ncs, f32): predict() then runs every task's masked layers as sparse
  // products of W ⊙ M_t (core/sparse.h; on a device model the backend's CSR layer, cuSPARSE on
  // a GPU), built now from the current weights and masks. Same results as the dense path up to
  // rounding; faster where the masks are sparse enough (docs/results/sparse.md). Training
  // steps and a changed mask drop it.
  void enable_sparse_inference();
  // Probabilities [task][row] (ESMM: pCTR, pCVR; three_tower: each task over impressions).
  void predict(const Block& batch, std::vector<std::vector<float>>& probabilities);

  // three_tower with model.three_tower.teacher: the model whose predictions the student is
  // distilled from, run on every training batch (kept, not owned). Its tasks must cover the
  // student's labels.
  void set_teacher(MultiTaskModel* teacher);
  // three_tower's serving form for the rows of `batch` [B, T·d + 1] (models/three_tower.h): the
  // user side [w_1·u; …; w_T·u; Σ w_t·b_t] (reads only user inputs) and the item side
  // [v_1; …; v_T; 1] (reads only item inputs). Their row inner product is the mixed score S;
  // `mixed` (if given) receives S for the same rows.
  void retrieval_user(const Block& batch, Tensor& out, std::vector<float>* mixed = nullptr);
  void retrieval_items(const Block& batch, Tensor& out);
  int64_t retrieval_dim() const;  // T·d + 1

  // The loss weights in effect, by loss name: the fixed weights, or (uncertainty weighting)
  // w_k / (2σ_k²) with the learned σ_k, for logging.
  std::vector<std::pair<std::string, double>> loss_weights() const;
  // Multiply-adds per sample of one joint forward (embedding lookups excluded), for cost tables.
  int64_t multiply_adds_per_sample() const;

  ParamStore& params() { return params_; }
  // The step's time by phase (off unless enabled; `ncsrec bench` turns it on): train_step marks
  // its phases, train_one_step the rest.
  PhaseClock& phase_clock() { return phase_clock_; }
  // This rank's part of every table (all of it on one rank); sparse optimizers step shard().
  // With the tables trained on the device, the host copy is brought up to date first; through
  // the non-const overload it is then taken as changed, and goes back to the device before the
  // next step (a whole-table copy each way: read through the const overload where nothing
  // changes).
  std::vector<ShardedTable>& tables();
  const std::vector<ShardedTable>& tables() const;
  // The embedding tables trained in the device's memory (core/device_table.h) instead of the
  // host's: for a device model on one process whose tables are all f32 ones, fixed-size or hash
  // tables that admit an id at its first read and do not evict when full (a TTL is applied at
  // the start of a day, on the host copy), with a sparse optimizer the
  // device has, where the device's backend trains tables. `state`: each
  // table's sparse optimizer state (SparseOptimizer::state()), mirrored on the device. Returns
  // whether they moved; where not, the tables stay on the host, pooled there and stepped by the
  // host's sparse optimizers.
  bool place_tables_on_device(const OptimizerConfig& sparse,
                              const std::vector<std::vector<std::pair<std::string, Tensor*>>>& state);
  bool tables_on_device() const { return !device_tables_.empty(); }
  // Why place_tables_on_device keeps the tables on the host (empty: it moves them).
  std::string device_table_limits(const OptimizerConfig& sparse) const;
  // The tables as built, for their names, shapes and options: while tables train on the device
  // their rows here may be behind (tables() brings them up to date).
  const std::vector<ShardedTable>& table_layout() const { return tables_; }
  // Table t's hash_stats(), counting the rows a device-side copy has inserted since the host
  // copy was last brought up to date (without copying rows off the device).
  HashStats table_hash_stats(size_t t) const;
  // The sparse optimizers' rate for the device-side updates of the following training steps.
  void set_device_table_lr(double lr) { device_table_lr_ = lr; }
  // Per table: the gradient of this rank's shard (rows = shard rows), already summed over ranks.
  const std::vector<SparseGrad>& sparse_grads() const { return sparse_grads_; }
  int64_t input_dim() const { return input_dim_; }
  // E-CDCTR historical embedding features (model.history), null without them.
  const HistoryFeatures* history() const { return history_.get(); }
  int64_t history_col() const { return history_col_; }
  // Input layout: the dense features' first column; the dot products' first column (-1: no
  // interaction) and the number of fields they are over (slots, plus interacting history features).
  int64_t dense_col() const { return dense_col_; }
  int64_t interaction_col() const { return interaction_col_; }
  int64_t interaction_fields() const { return interaction_fields_; }
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
    Tensor host_buf, host;  // the input as assembled on the host (a device model: its interaction
                            // columns are never written there; they are made on the device)
    Tensor x_buf, x;        // the input where the dense part runs (host itself on the CPU)
    GradientSum dx;         // input gradient, summed over its consumers (on the model's device)
    Tensor dx_host_buf;     // a device model: dx copied back for the tables and history, without
                            // the interaction's columns (never written)
  };

  // `training`: the tables count the batch's reads and hash tables insert its admitted ids.
  void forward(const Block& batch, bool training = false);
  Pass pass(size_t group, bool training) const;
  const Tensor& shared_output(size_t task);  // what task's tower reads (after forward)
  std::vector<double> effective_loss_weights() const;
  void add_condition_gradient(Tensor& dx, const Tensor& dcond) const;  // apg group-wise: into the input columns
  bool row_in_loss(const Block& batch, size_t task, int64_t row) const;
  void init_learned_masks(uint64_t seed);
  void refresh_learned_masks();  // masks = each layer's top-k scores, per task
  // Every active task's loss head on the model's device: logits, dlogits and probs there.
  StepLoss compute_losses(const Block& batch, const std::vector<double>& normalizers,
                          const std::vector<const Tensor*>& logits, std::vector<Tensor*>& dlogits,
                          std::vector<Tensor*>& probs, int only_task);
  // A host column of n floats on the model's device, through a pinned staging buffer there
  // (the staging buffer itself on the CPU).
  struct StagedColumn {
    Tensor host, device;
  };
  Tensor stage_f32(StagedColumn& column, const float* values, int64_t n);
  std::vector<StagedColumn> loss_columns_;  // labels and loss weights of each task, going up
  Tensor p_ctcvr_buf_;                      // esmm: pCTCVR of the step

  ModelConfig config_;
  DataSchema schema_;
  DType dtype_;
  Device device_ = Device::CPU;
  int64_t input_dim_ = 0, embedding_cols_ = 0, fields_ = 0, interaction_col_ = -1;
  std::unique_ptr<HistoryFeatures> history_;  // model.history
  int64_t history_col_ = -1;                  // its first input column
  int64_t dense_col_ = 0, interaction_fields_ = 0;
  std::vector<int> label_index_;  // per task: index in schema.tasks
  std::vector<int> given_task_;   // per task: index of the given task or -1
  std::vector<std::string> loss_names_;
  ParamStore params_;
  std::vector<ShardedTable> tables_;
  // Tables trained on the device: one per table, their host columns (values, optimizer state),
  // and which copy is newer (the device's after a step, the host's after a non-const tables()).
  std::vector<std::unique_ptr<DeviceTable>> device_tables_;
  std::vector<std::vector<std::pair<std::string, Tensor*>>> device_table_state_;
  mutable bool device_tables_newer_ = false;
  bool host_tables_newer_ = false;
  double device_table_lr_ = 0.0;
  // Per device table, its hash_counts() already counted in the host table's hash_stats().
  mutable std::vector<DeviceHashCounts> device_counts_folded_;
  void store_device_tables() const;  // the device's rows into the host tables, when newer
  void load_device_tables();         // the host's rows onto the device, when newer
  std::vector<DeviceTable::Column> device_table_columns(size_t table) const;
  Communicator* comm_ = nullptr;                   // null: one process
  std::vector<ShardedTable::Lookup> lookups_;      // per table (over several ranks): this batch's rows
  std::vector<InputGroup> groups_;
  std::vector<int> group_of_task_;
  // three_tower: every loss of the step; writes dL/dl_t into `dlogits` and dL/dS into `dmixed`.
  StepLoss three_tower_losses(const Block& batch, const std::vector<double>& normalizers,
                              std::vector<Tensor>& dlogits, Tensor& dmixed);
  Tensor soft_grad_buf_;  // three_tower distillation: a soft loss's gradient

  std::unique_ptr<ThreeTower> three_tower_;       // three_tower
  MultiTaskModel* teacher_ = nullptr;              // three_tower distillation
  std::vector<std::pair<int, int>> teacher_targets_;  // per task: the teacher's task and its given task (or -1)
  Tensor dmixed_buf_;                              // three_tower: dL/dS of the step
  std::vector<double> base_loss_weights_;          // per loss: the configured weight
  std::unique_ptr<SharedBlock> block_;             // null: towers read the input (shared_embedding, esmm, single_task)
  MaskedMLP* masked_ = nullptr;                    // ncs: the block's masked MLP (sparse inference)
  std::vector<MaskedLayerRef> masked_refs_;        // every masked layer, in mask-file order
  std::vector<Param*> score_params_;               // learned masks: [task][masked layer]
  std::vector<Tensor> score_host_bufs_;            // learned masks on a device: the scores' host copies
  std::vector<Param*> penalty_params_;             // learned masks, penalty: its integral term per [task][masked layer]
  std::vector<Param*> log_sigma_;                  // uncertainty weighting: one per loss
  std::vector<std::pair<int64_t, int64_t>> condition_cols_;  // apg group-wise: input columns [begin, end)
  int64_t condition_dim_ = 0;
  std::vector<Tensor> cond_bufs_, conds_;          // per group: the APG condition of this batch
  uint64_t seed_ = 0;
  int64_t step_ = 0;                               // the dropout counter (set_step)
  std::vector<std::vector<CsrMatrix>> csr_;        // sparse inference: [task][shared layer]
  // On a device model, the same layers in the device's memory (the backend's DeviceCsrLinear).
  std::vector<std::vector<std::unique_ptr<DeviceCsrLinear>>> csr_device_;
  void drop_sparse_inference() {
    csr_.clear();
    csr_device_.clear();
  }
  std::vector<Tensor> csr_out_bufs_, csr_outs_;    // sparse inference: per shared layer
  std::vector<std::vector<uint8_t>> update_masks_;  // [task + 1], 0 = joint; built lazily
  bool update_masks_stale_ = true;
  std::vector<Tensor> update_masks_device_;        // their device copies (a device model)
  bool update_masks_device_stale_ = true;
  // A device model's per-task staging of logits for the host (predict).
  std::vector<Tensor> logit_host_bufs_, staged_logits_;  // staged: the current views
  // The host copy of a task's logits [B, 1] (the tensor itself on the CPU).
  const Tensor& logits_on_host(size_t task, const Tensor& logits);
  std::vector<std::unique_ptr<FeedForward>> towers_;
  std::vector<SparseGrad> sparse_grads_;
  PhaseClock phase_clock_;
  GradientReady gradient_ready_;
  // The gradient buffer's ranges by the component that writes them last: [0, block) the input
  // side (history attention), [block, towers) the shared block (its learned-mask scores, the
  // three-tower model), [towers, numel) the towers and the loss weights.
  int64_t block_params_begin_ = 0, tower_params_begin_ = 0;
  std::vector<EmbeddingBagWorkspace> bag_workspaces_;  // per table: the backward's memory, reused
  std::vector<SparseGrad> local_grads_;                // per table: over the lookup's rows (sharded, hashed)
  std::vector<Tensor> dlogit_bufs_, prob_bufs_;  // prob_bufs_: predict's, on the host
  std::vector<Tensor> train_prob_bufs_;           // a training step's probabilities, where the model is
  Tensor shifted_logit_buf_;  // predict: logit + TaskSpec::logit_offset
};

}  // namespace ncsrec

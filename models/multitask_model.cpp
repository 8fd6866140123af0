#include "models/multitask_model.h"

#include <algorithm>
#include <cstring>
#include <cmath>
#include <limits>
#include <set>

#include "core/layers/interaction.h"
#include "core/layers/losses.h"
#include "core/ops.h"
#include "core/random.h"

namespace ncsrec {

namespace {
std::string in_file(const ModelConfig& m) { return m.source.empty() ? std::string() : m.source + ": "; }
}  // namespace

MultiTaskModel::MultiTaskModel(const ModelConfig& config, const DataSchema& schema, DType dtype, uint64_t seed)
    : config_(config), schema_(schema), dtype_(dtype) {
  // Tasks: labels must exist in the data.
  for (const auto& t : config_.tasks) {
    const int li = schema_.task_index(t.label);
    if (li < 0) {
      std::string have;
      for (const auto& n : schema_.tasks) have += (have.empty() ? "" : ", ") + n;
      throw ConfigError(in_file(config_) + "model.tasks." + t.name + ".label: the data has no label '" + t.label + "' (it has: " + have +
                        ")");
    }
    label_index_.push_back(li);
    int g = -1;
    for (size_t j = 0; j < config_.tasks.size(); ++j)
      if (config_.tasks[j].name == t.given) g = static_cast<int>(j);
    given_task_.push_back(g);
  }
  if (config_.type == "esmm") {
    // Also checked here for configs built in code: the loss below divides by this weight.
    if (!(config_.tasks[0].loss_weight > 0))
      throw ConfigError(in_file(config_) + "model.tasks." + config_.tasks[0].name + ".loss_weight: " + kEsmmCtrWeightMessage);
    loss_names_ = {config_.tasks[0].name, "ctcvr"};
  } else
    for (const auto& t : config_.tasks) loss_names_.push_back(t.name);

  // Input layout: each table's slots in config order, then the dense features.
  const size_t n_groups = config_.type == "single_task" ? config_.tasks.size() : 1;
  groups_.resize(n_groups);
  const int64_t dim = config_.embedding_dim;
  for (size_t g = 0; g < n_groups; ++g) {
    int64_t col = 0;
    for (const auto& spec : config_.tables) {
      TableRef ref;
      ref.table = static_cast<int>(tables_.size());
      const std::string name = n_groups > 1 ? config_.tasks[g].name + "." + spec.name : spec.name;
      try {
        tables_.emplace_back(name, spec.rows, dim, dtype_, seed, config_.embedding_init);
      } catch (const UserError& e) {
        throw ConfigError(in_file(config_) + "model.tables." + spec.name + ".rows: a table of " +
                          std::to_string(spec.rows) + " rows x " + std::to_string(dim) + " does not fit: " + e.what());
      }
      for (const auto& slot : spec.slots) {
        const int si = schema_.slot_index(slot);
        if (si < 0) {
          std::string have;
          for (const auto& n : schema_.slots) have += (have.empty() ? "" : ", ") + n;
          throw ConfigError(in_file(config_) + "model.tables." + spec.name + ".slots: the data has no sparse slot '" + slot +
                            "' (it has: " + have + ")");
        }
        ref.slots.push_back({si, col, spec.pooling});
        col += dim;
      }
      groups_[g].tables.push_back(ref);
    }
    embedding_cols_ = col;
  }
  fields_ = embedding_cols_ / dim;
  input_dim_ = embedding_cols_ + (config_.use_dense ? schema_.dense_dim : 0);
  if (config_.interaction == "dot") {
    interaction_col_ = input_dim_;
    input_dim_ += fields_ * fields_;
  }

  int64_t tower_in = input_dim_;
  if (config_.type == "shared_bottom") {
    bottom_ = std::make_unique<MLP>(params_, "bottom", input_dim_, config_.bottom, /*final_activation=*/true);
    tower_in = bottom_->out();
  }
  if (config_.type == "ncs") {
    masked_ = std::make_unique<MaskedMLP>(params_, "shared", input_dim_, config_.shared,
                                          static_cast<int>(config_.tasks.size()), /*final_activation=*/true);
    tower_in = masked_->out();
    if (config_.masks.find == "learned")
      for (size_t t = 0; t < config_.tasks.size(); ++t)
        for (int l = 0; l < num_masked_layers(); ++l) {
          const MaskedLinear& layer = masked_->layer(static_cast<size_t>(config_.masks.layers[static_cast<size_t>(l)]));
          score_params_.push_back(params_.add("mask_score." + config_.tasks[t].name + "." + masked_layer_name(l),
                                              {layer.in(), layer.out()}, Init::Zeros));
          score_params_.back()->decay = false;
          score_params_.back()->task = static_cast<int>(t);
        }
  }
  for (size_t t = 0; t < config_.tasks.size(); ++t) {
    std::vector<int64_t> sizes = config_.tasks[t].tower;
    sizes.push_back(1);
    towers_.push_back(std::make_unique<MLP>(params_, "tower." + config_.tasks[t].name, tower_in, sizes, false));
    group_of_task_.push_back(n_groups > 1 ? static_cast<int>(t) : 0);
  }
  params_.finalize(dtype_, Device::CPU, seed);
  if (!score_params_.empty()) init_learned_masks(seed);
  sparse_grads_.resize(tables_.size());
  dlogit_bufs_.resize(config_.tasks.size());
  prob_bufs_.resize(config_.tasks.size());
}

void MultiTaskModel::check_compatible(const DataSchema& schema, const std::string& what) const {
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return "[" + s + "]";
  };
  if (schema.tasks != schema_.tasks)
    throw UserError(what + " has labels " + join(schema.tasks) + " but the model was built for " + join(schema_.tasks));
  if (schema.slots != schema_.slots)
    throw UserError(what + " has sparse slots " + join(schema.slots) + " but the model was built for " +
                    join(schema_.slots));
  if (schema.dense_dim != schema_.dense_dim)
    throw UserError(what + " has " + std::to_string(schema.dense_dim) + " dense features but the model was built for " +
                    std::to_string(schema_.dense_dim));
}

std::vector<double> MultiTaskModel::local_normalizers(const Block& batch) const {
  std::vector<double> n(config_.tasks.size(), static_cast<double>(batch.rows));
  if (config_.type == "esmm") return n;  // both ESMM losses are over all impressions
  for (size_t t = 0; t < config_.tasks.size(); ++t) {
    // A task counts the rows its loss is over: those whose given label is 1, and for the MSE
    // loss (the NCS4CVR paper's CVR loss) only rows with a positive label.
    const bool positives_only = config_.tasks[t].loss == "mse";
    if (given_task_[t] < 0 && !positives_only) continue;
    double c = 0;
    for (int64_t i = 0; i < batch.rows; ++i) c += row_in_loss(batch, t, i) ? 1 : 0;
    n[t] = c;
  }
  return n;
}

bool MultiTaskModel::row_in_loss(const Block& batch, size_t t, int64_t i) const {
  const size_t r = static_cast<size_t>(i);
  if (given_task_[t] >= 0 &&
      batch.labels[static_cast<size_t>(label_index_[static_cast<size_t>(given_task_[t])])][r] <= 0.5f)
    return false;
  if (config_.tasks[t].loss == "mse" && batch.labels[static_cast<size_t>(label_index_[t])][r] <= 0.0f) return false;
  return true;
}

namespace {

template <class T>
void copy_dense(Tensor& x, int64_t col, const std::vector<float>& dense, int64_t rows, int64_t dim) {
  T* out = x.data<T>();
  const int64_t stride = x.dim(1);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < dim; ++j) out[r * stride + col + j] = static_cast<T>(dense[static_cast<size_t>(r * dim + j)]);
}

}  // namespace

void MultiTaskModel::forward(const Block& batch) {
  if (!(batch.schema.tasks == schema_.tasks && batch.schema.slots == schema_.slots &&
        batch.schema.dense_dim == schema_.dense_dim))
    check_compatible(batch.schema, "a batch");
  const int64_t B = batch.rows;
  for (auto& g : groups_) {
    g.x = ensure_buffer(g.x_buf, B, input_dim_, dtype_, Device::CPU);
    for (const auto& tr : g.tables) {
      const EmbeddingTable& table = tables_[static_cast<size_t>(tr.table)];
      for (const auto& s : tr.slots) {
        const SparseColumn& c = batch.sparse[static_cast<size_t>(s.slot)];
        embedding_bag_forward(g.x, s.col, table.values(), c.offsets.data(), c.ids.data(), B, s.pooling);
      }
    }
    if (config_.use_dense && schema_.dense_dim > 0) {
      if (dtype_ == DType::F32) copy_dense<float>(g.x, embedding_cols_, batch.dense, B, schema_.dense_dim);
      else copy_dense<double>(g.x, embedding_cols_, batch.dense, B, schema_.dense_dim);
    }
    if (interaction_col_ >= 0) pairwise_dot_forward(g.x, interaction_col_, g.x, 0, fields_, config_.embedding_dim);
  }
}

const Tensor& MultiTaskModel::tower_input(size_t task) {
  (void)task;
  return groups_[static_cast<size_t>(group_of_task_[task])].x;
}

namespace {

template <class T>
double task_loss(const TaskSpec& spec, const T* logits, const float* labels, const float* weights, int64_t n,
                 double normalizer, T* prob, T* grad) {
  if (spec.loss == "focal")
    return focal_forward_backward<T>(logits, labels, weights, n, spec.focal_alpha, spec.focal_gamma, normalizer, prob,
                                     grad);
  if (spec.loss == "mse") return sigmoid_mse_forward_backward<T>(logits, labels, weights, n, normalizer, prob, grad);
  return sigmoid_bce_forward_backward<T>(logits, labels, weights, n, normalizer, prob, grad);
}

}  // namespace

template <class T>
StepLoss MultiTaskModel::compute_losses(const Block& batch, const std::vector<double>& normalizers,
                                        const std::vector<const Tensor*>& logits, std::vector<Tensor*>& dlogits,
                                        std::vector<Tensor*>& probs, int only_task) const {
  const ModelConfig& cfg = config_;
  const int64_t B = batch.rows;
  const float* data_weight = batch.weight.empty() ? nullptr : batch.weight.data();
  StepLoss loss;
  if (cfg.type == "esmm") {
    const auto& click = batch.labels[static_cast<size_t>(label_index_[0])];
    const auto& conv = batch.labels[static_cast<size_t>(label_index_[1])];
    std::vector<float> ctcvr(static_cast<size_t>(B));
    for (int64_t i = 0; i < B; ++i) ctcvr[static_cast<size_t>(i)] = click[static_cast<size_t>(i)] * conv[static_cast<size_t>(i)];
    std::vector<T> p_ctcvr(static_cast<size_t>(B));
    // Loss weights: the CTR loss carries the first task's weight, the CTCVR loss the second's.
    const EsmmLoss l = esmm_forward_backward<T>(
        logits[0]->data<T>(), logits[1]->data<T>(), click.data(), ctcvr.data(), data_weight, B, normalizers[0],
        cfg.tasks[1].loss_weight / std::max(cfg.tasks[0].loss_weight, 1e-12), probs[0]->data<T>(),
        probs[1]->data<T>(), p_ctcvr.data(), dlogits[0]->data<T>(), dlogits[1]->data<T>());
    // esmm_forward_backward's gradients are of ctr + w·ctcvr; scale by the CTR task's weight.
    if (cfg.tasks[0].loss_weight != 1.0) {
      ops::scale(*dlogits[0], cfg.tasks[0].loss_weight);
      ops::scale(*dlogits[1], cfg.tasks[0].loss_weight);
    }
    loss.per_task = {l.ctr, l.ctcvr};
    loss.total = cfg.tasks[0].loss_weight * l.ctr + cfg.tasks[1].loss_weight * l.ctcvr;
    return loss;
  }
  std::vector<float> w(static_cast<size_t>(B));
  loss.per_task.assign(cfg.tasks.size(), std::numeric_limits<double>::quiet_NaN());
  for (size_t t = 0; t < cfg.tasks.size(); ++t) {
    if (only_task >= 0 && static_cast<int>(t) != only_task) continue;
    for (int64_t i = 0; i < B; ++i)
      w[static_cast<size_t>(i)] = row_in_loss(batch, t, i) ? (data_weight ? data_weight[i] : 1.0f) : 0.0f;
    const double l = task_loss<T>(cfg.tasks[t], logits[t]->data<T>(),
                                  batch.labels[static_cast<size_t>(label_index_[t])].data(), w.data(), B,
                                  normalizers[t], probs[t]->data<T>(), dlogits[t]->data<T>());
    if (cfg.tasks[t].loss_weight != 1.0) ops::scale(*dlogits[t], cfg.tasks[t].loss_weight);
    loss.per_task[t] = l;
    loss.total += cfg.tasks[t].loss_weight * l;
  }
  return loss;
}

const Tensor& MultiTaskModel::shared_output(size_t task) {
  if (masked_ && !csr_.empty()) {
    const Tensor* h = &groups_[0].x;
    const int64_t B = h->dim(0);
    for (size_t l = 0; l < masked_->depth(); ++l) {
      const MaskedLinear& layer = masked_->layer(l);
      csr_outs_[l] = ensure_buffer(csr_out_bufs_[l], B, layer.out(), dtype_, Device::CPU);
      csr_linear_forward(csr_outs_[l], *h, csr_[task][l], &layer.bias()->value, layer.activation() == Activation::ReLU);
      h = &csr_outs_[l];
    }
    return *h;
  }
  if (masked_) return masked_->forward(static_cast<int>(task), groups_[0].x);
  if (bottom_) return bottom_output_;
  return tower_input(task);
}

void MultiTaskModel::init_learned_masks(uint64_t seed) {
  // Scores start at |W₀| plus a little noise: the first masks are the magnitude masks of the
  // initialisation (one-shot pruning at init), from which training moves them.
  size_t k = 0;
  for (size_t t = 0; t < config_.tasks.size(); ++t)
    for (int l = 0; l < num_masked_layers(); ++l, ++k) {
      Param* score = score_params_[k];
      MaskedLinear& layer = masked_->layer(static_cast<size_t>(config_.masks.layers[static_cast<size_t>(l)]));
      Rng rng(hash_combine(seed, hash_string(score->name)));
      const int64_t n = score->value.numel();
      auto fill = [&](auto* s, const auto* w) {
        for (int64_t i = 0; i < n; ++i) s[i] = static_cast<std::remove_pointer_t<decltype(s)>>(
            std::abs(w[i]) + rng.uniform(-config_.masks.score_init, config_.masks.score_init));
      };
      if (dtype_ == DType::F32) fill(score->value.data<float>(), layer.weight()->value.data<float>());
      else fill(score->value.data<double>(), layer.weight()->value.data<double>());
      layer.set_score_grad(static_cast<int>(t), score->grad);
    }
  refresh_learned_masks();
}

void MultiTaskModel::refresh_learned_masks() {
  // Each layer keeps exactly k = round(density · N) connections per task: the k highest scores,
  // ties broken by index, so the density holds to the target by construction.
  size_t k = 0;
  std::vector<int64_t> order;
  for (size_t t = 0; t < config_.tasks.size(); ++t)
    for (int l = 0; l < num_masked_layers(); ++l, ++k) {
      const Param* score = score_params_[k];
      const int64_t n = score->value.numel();
      const int64_t keep = std::llround(config_.masks.final_density * static_cast<double>(n));
      order.resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
      auto select = [&](const auto* s) {
        std::nth_element(order.begin(), order.begin() + keep, order.end(), [&](int64_t a, int64_t b) {
          return s[a] > s[b] || (s[a] == s[b] && a < b);
        });
      };
      if (dtype_ == DType::F32) select(score->value.data<float>());
      else select(score->value.data<double>());
      const BitMask& current = mask(static_cast<int>(t), l);
      BitMask m = BitMask::zeros(current.rows, current.cols);
      for (int64_t i = 0; i < keep; ++i) m.set(order[static_cast<size_t>(i)], true);
      if (m != current) set_mask(static_cast<int>(t), l, m);
    }
}

StepLoss MultiTaskModel::train_step(const Block& batch, const std::vector<double>& normalizers, int only_task) {
  csr_.clear();  // the weights are about to move: sparse inference must be enabled again after training
  if (!score_params_.empty()) refresh_learned_masks();
  NCSREC_CHECK(normalizers.size() == config_.tasks.size(), "one normaliser per task expected");
  const size_t T = config_.tasks.size();
  NCSREC_CHECK(only_task < static_cast<int>(T), "task " << only_task << " out of range");
  if (only_task >= 0 && config_.type == "esmm")
    throw ConfigError(in_file(config_) + "model.type: esmm trains its two losses together; use train.schedule: joint");
  auto active = [&](size_t t) { return only_task < 0 || static_cast<int>(t) == only_task; };
  forward(batch);
  const int64_t B = batch.rows;
  if (bottom_) bottom_output_ = bottom_->forward(groups_[0].x);
  std::vector<const Tensor*> logits(T, nullptr);
  std::vector<Tensor> dlogit_views(T), prob_views(T);
  std::vector<Tensor*> dlogits(T), probs(T);
  for (size_t t = 0; t < T; ++t) {
    if (!active(t)) continue;
    logits[t] = &towers_[t]->forward(shared_output(t));
    dlogit_views[t] = ensure_buffer(dlogit_bufs_[t], B, 1, dtype_, Device::CPU);
    prob_views[t] = ensure_buffer(prob_bufs_[t], B, 1, dtype_, Device::CPU);
    dlogits[t] = &dlogit_views[t];
    probs[t] = &prob_views[t];
  }
  StepLoss loss = dtype_ == DType::F32 ? compute_losses<float>(batch, normalizers, logits, dlogits, probs, only_task)
                                       : compute_losses<double>(batch, normalizers, logits, dlogits, probs, only_task);

  // Backward: towers, then the shared part (through each task's masks for ncs; the sum of the
  // towers' input gradients for a plain shared block), then the tables.
  std::vector<const Tensor*> dinput(groups_.size(), nullptr);
  Tensor dsum;  // outlives the branches: dinput may point at it
  if (groups_.size() == 1) {
    dsum = ensure_buffer(dshared_buf_, B, masked_ ? input_dim_ : towers_[0]->in(), dtype_, Device::CPU);
    bool first = true;
    for (size_t t = 0; t < T; ++t) {
      if (!active(t)) continue;
      const Tensor& dtower = towers_[t]->backward(*dlogits[t], true);
      const Tensor& dx = masked_ ? masked_->backward(static_cast<int>(t), dtower, true) : dtower;
      if (first) dsum.copy_from(dx);
      else ops::axpy(dsum, 1.0, dx);
      first = false;
    }
    dinput[0] = bottom_ ? &bottom_->backward(dsum, true) : &dsum;
  } else {
    for (size_t t = 0; t < T; ++t)
      if (active(t)) dinput[static_cast<size_t>(group_of_task_[t])] = &towers_[t]->backward(*dlogits[t], true);
  }
  for (size_t g = 0; g < groups_.size(); ++g) {
    if (!dinput[g]) {  // single_task: this task's group was not stepped
      for (const auto& tr : groups_[g].tables) sparse_grads_[static_cast<size_t>(tr.table)] = SparseGrad{};
      continue;
    }
    if (interaction_col_ >= 0) {
      // The embeddings also reach the loss through their dot products.
      InputGroup& grp = groups_[g];
      grp.dx = ensure_buffer(grp.dx_buf, B, input_dim_, dtype_, Device::CPU);
      grp.dx.copy_from(*dinput[g]);
      pairwise_dot_backward(grp.dx, 0, *dinput[g], interaction_col_, grp.x, fields_, config_.embedding_dim);
      dinput[g] = &grp.dx;
    }
    for (const auto& tr : groups_[g].tables) {
      std::vector<SlotInput> inputs;
      for (const auto& s : tr.slots) {
        const SparseColumn& c = batch.sparse[static_cast<size_t>(s.slot)];
        inputs.push_back({c.offsets.data(), c.ids.data(), s.col, s.pooling});
      }
      const EmbeddingTable& table = tables_[static_cast<size_t>(tr.table)];
      sparse_grads_[static_cast<size_t>(tr.table)] =
          embedding_bag_backward(*dinput[g], inputs, B, table.rows(), table.dim());
    }
  }
  return loss;
}

void MultiTaskModel::predict(const Block& batch, std::vector<std::vector<float>>& probabilities) {
  if (!score_params_.empty() && csr_.empty()) refresh_learned_masks();
  forward(batch);
  const int64_t B = batch.rows;
  if (bottom_) bottom_output_ = bottom_->forward(groups_[0].x);
  probabilities.assign(config_.tasks.size(), std::vector<float>(static_cast<size_t>(B)));
  for (size_t t = 0; t < config_.tasks.size(); ++t) {
    const Tensor& logit = towers_[t]->forward(shared_output(t));
    Tensor p = ensure_buffer(prob_bufs_[t], B, 1, dtype_, Device::CPU);
    ops::sigmoid(p, logit);
    if (dtype_ == DType::F32) std::memcpy(probabilities[t].data(), p.data<float>(), static_cast<size_t>(B) * sizeof(float));
    else
      for (int64_t i = 0; i < B; ++i) probabilities[t][static_cast<size_t>(i)] = static_cast<float>(p.data<double>()[i]);
  }
}

std::string MultiTaskModel::masked_layer_name(int i) const {
  return "shared." + std::to_string(config_.masks.layers.at(static_cast<size_t>(i)));
}

const BitMask& MultiTaskModel::mask(int task, int i) const {
  NCSREC_CHECK(masked_, "the model has no masked layers");
  return masked_->layer(static_cast<size_t>(config_.masks.layers.at(static_cast<size_t>(i)))).mask(task);
}

void MultiTaskModel::set_mask(int task, int i, const BitMask& mask) {
  NCSREC_CHECK(masked_, "the model has no masked layers");
  masked_->layer(static_cast<size_t>(config_.masks.layers.at(static_cast<size_t>(i)))).set_mask(task, mask);
  update_masks_stale_ = true;
  csr_.clear();  // built from the old masks
}

void MultiTaskModel::enable_sparse_inference() {
  if (!masked_) throw ConfigError(in_file(config_) + "model.type: sparse inference needs the masked layers of type ncs");
  if (dtype_ != DType::F32) throw UserError("sparse inference runs in f32");
  if (!score_params_.empty()) refresh_learned_masks();
  csr_.assign(config_.tasks.size(), {});
  for (size_t t = 0; t < config_.tasks.size(); ++t)
    for (size_t l = 0; l < masked_->depth(); ++l) {
      const MaskedLinear& layer = masked_->layer(l);
      csr_[t].push_back(masked_to_csr(layer.weight()->value, layer.mask(static_cast<int>(t))));
    }
  csr_out_bufs_.assign(masked_->depth(), Tensor());
  csr_outs_.assign(masked_->depth(), Tensor());
}

std::vector<const Tensor*> MultiTaskModel::masked_weights() const {
  std::vector<const Tensor*> w;
  for (int i = 0; i < num_masked_layers(); ++i)
    w.push_back(&masked_->layer(static_cast<size_t>(config_.masks.layers[static_cast<size_t>(i)])).weight()->value);
  return w;
}

const uint8_t* MultiTaskModel::update_mask(int task) {
  const size_t T = config_.tasks.size();
  NCSREC_CHECK(task >= -1 && task < static_cast<int>(T), "task " << task << " out of range");
  if (update_masks_stale_) {
    update_masks_.assign(T + 1, std::vector<uint8_t>(static_cast<size_t>(params_.numel()), 0));
    for (const Param& p : params_.params()) {
      // Owner: a tower belongs to its task; everything else (bottom, shared biases, masked
      // kernels) to all tasks, the masked kernels further restricted by each task's mask.
      int owner = -1;
      for (size_t t = 0; t < T; ++t)
        if (p.name.rfind("tower." + config_.tasks[t].name + ".", 0) == 0 ||
            p.name.rfind("mask_score." + config_.tasks[t].name + ".", 0) == 0)
          owner = static_cast<int>(t);
      const BitMask* masks[64] = {};
      NCSREC_CHECK(T <= 64, "at most 64 tasks");
      bool masked_kernel = false;
      for (int i = 0; i < num_masked_layers(); ++i)
        if (p.name == masked_layer_name(i) + ".weight") {
          masked_kernel = true;
          for (size_t t = 0; t < T; ++t) masks[t] = &mask(static_cast<int>(t), i);
        }
      const int64_t n = shape_numel(p.shape);
      for (size_t t = 0; t < T; ++t) {
        if (owner >= 0 && owner != static_cast<int>(t)) continue;
        uint8_t* task_mask = update_masks_[t + 1].data() + p.offset;
        uint8_t* joint = update_masks_[0].data() + p.offset;
        for (int64_t e = 0; e < n; ++e) {
          const uint8_t on = masked_kernel ? (masks[t]->get(e) ? 1 : 0) : 1;
          task_mask[e] = on;
          joint[e] |= on;
        }
      }
    }
    update_masks_stale_ = false;
  }
  return update_masks_[static_cast<size_t>(task + 1)].data();
}

template StepLoss MultiTaskModel::compute_losses<float>(const Block&, const std::vector<double>&,
                                                        const std::vector<const Tensor*>&, std::vector<Tensor*>&,
                                                        std::vector<Tensor*>&, int) const;
template StepLoss MultiTaskModel::compute_losses<double>(const Block&, const std::vector<double>&,
                                                         const std::vector<const Tensor*>&, std::vector<Tensor*>&,
                                                         std::vector<Tensor*>&, int) const;

}  // namespace ncsrec

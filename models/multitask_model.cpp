#include "models/multitask_model.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "core/layers/interaction.h"
#include "core/layers/losses.h"
#include "core/ops.h"
#include "core/random.h"

namespace ncsrec {

namespace {
// ESMM's CTCVR loss constrains only the product pCTR·pCVR: without the CTR loss neither factor
// is determined (and the fused loss's gradients, scaled by this weight, would all be zero).
const char* const kEsmmCtrWeightMessage =
    "esmm needs a CTR loss weight > 0: pCTR (and so pCVR) is learned through the CTR loss";
}  // namespace

ModelConfig parse_model_config(ConfigNode node) {
  ModelConfig m;
  m.source = node.file();
  m.type = node.get_choice("type", {"single_task", "shared_embedding", "shared_bottom", "esmm"}, "esmm");
  m.embedding_dim = node.get_int("embedding_dim", 8, 1, 1024);
  m.embedding_init = node.get_double("embedding_init", 0.05, 0.0, 10.0);
  m.use_dense = node.get_bool("use_dense", true);
  m.interaction = node.get_choice("interaction", {"none", "dot"}, "none");
  m.bottom = node.get_int_list("bottom", {}, 1, 1 << 16);
  const std::vector<int64_t> default_tower = node.get_int_list("tower", {64, 32}, 1, 1 << 16);

  ConfigNode tasks = node.child("tasks");
  if (tasks.size() == 0) tasks.fail_here("at least one task is required (e.g. ctr: {label: click})");
  for (auto& [name, t] : tasks.entries()) {
    TaskSpec spec;
    spec.name = name;
    spec.label = t.get_string("label");
    spec.given = t.get_string("given", "");
    spec.tower = t.get_int_list("tower", default_tower, 1, 1 << 16);
    spec.loss_weight = t.get_double("loss_weight", 1.0, 0.0, 1e6);
    t.finish();
    m.tasks.push_back(spec);
  }
  std::set<std::string> names;
  for (const auto& t : m.tasks) names.insert(t.name);
  for (const auto& t : m.tasks)
    if (!t.given.empty() && (!names.count(t.given) || t.given == t.name))
      tasks.fail(t.name + ".given", "'" + t.given + "' is not another task of this model");

  if (m.type == "esmm") {
    if (m.tasks.size() != 2 || !m.tasks[0].given.empty() || m.tasks[1].given != m.tasks[0].name)
      tasks.fail_here("esmm needs exactly two tasks, a CTR task first and a CVR task second with given: <ctr task>");
    if (!(m.tasks[0].loss_weight > 0)) tasks.fail(m.tasks[0].name + ".loss_weight", kEsmmCtrWeightMessage);
  }
  if (m.type != "shared_bottom" && !m.bottom.empty())
    node.fail("bottom", "a shared bottom MLP is only used by type shared_bottom");
  if (m.type == "shared_bottom" && m.bottom.empty()) node.fail("bottom", "shared_bottom needs bottom: [sizes]");

  ConfigNode tables = node.child("tables");
  if (tables.size() == 0) tables.fail_here("at least one embedding table is required");
  std::set<std::string> used_slots;
  for (auto& [name, t] : tables.entries()) {
    TableSpec spec;
    spec.name = name;
    spec.rows = t.get_int("rows", 1, int64_t(1) << 40);
    spec.slots = t.get_string_list("slots", {name});
    spec.pooling = t.get_choice("pooling", {"sum", "mean"}, "sum") == "sum" ? Pooling::Sum : Pooling::Mean;
    t.finish();
    for (const auto& s : spec.slots)
      if (!used_slots.insert(s).second) t.fail("slots", "slot '" + s + "' is already read by another table");
    m.tables.push_back(spec);
  }
  node.finish();
  return m;
}

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
  for (size_t t = 0; t < config_.tasks.size(); ++t) {
    std::vector<int64_t> sizes = config_.tasks[t].tower;
    sizes.push_back(1);
    towers_.push_back(std::make_unique<MLP>(params_, "tower." + config_.tasks[t].name, tower_in, sizes, false));
    group_of_task_.push_back(n_groups > 1 ? static_cast<int>(t) : 0);
  }
  params_.finalize(dtype_, Device::CPU, seed);
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
    if (given_task_[t] < 0) continue;
    const auto& given = batch.labels[static_cast<size_t>(label_index_[static_cast<size_t>(given_task_[t])])];
    double c = 0;
    for (float v : given) c += v > 0.5f ? 1 : 0;
    n[t] = c;
  }
  return n;
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
StepLoss compute_losses(const ModelConfig& cfg, const Block& batch, const std::vector<int>& label_index,
                        const std::vector<int>& given_task, const std::vector<double>& normalizers,
                        const std::vector<const Tensor*>& logits, std::vector<Tensor*>& dlogits,
                        std::vector<Tensor*>& probs) {
  const int64_t B = batch.rows;
  const float* data_weight = batch.weight.empty() ? nullptr : batch.weight.data();
  StepLoss loss;
  if (cfg.type == "esmm") {
    const auto& click = batch.labels[static_cast<size_t>(label_index[0])];
    const auto& conv = batch.labels[static_cast<size_t>(label_index[1])];
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
  for (size_t t = 0; t < cfg.tasks.size(); ++t) {
    for (int64_t i = 0; i < B; ++i) {
      float wi = data_weight ? data_weight[i] : 1.0f;
      if (given_task[t] >= 0)
        wi *= batch.labels[static_cast<size_t>(label_index[static_cast<size_t>(given_task[t])])][static_cast<size_t>(i)] > 0.5f ? 1.0f : 0.0f;
      w[static_cast<size_t>(i)] = wi;
    }
    const double l = sigmoid_bce_forward_backward<T>(
        logits[t]->data<T>(), batch.labels[static_cast<size_t>(label_index[t])].data(), w.data(), B, normalizers[t],
        probs[t]->data<T>(), dlogits[t]->data<T>());
    if (cfg.tasks[t].loss_weight != 1.0) ops::scale(*dlogits[t], cfg.tasks[t].loss_weight);
    loss.per_task.push_back(l);
    loss.total += cfg.tasks[t].loss_weight * l;
  }
  return loss;
}

}  // namespace

StepLoss MultiTaskModel::train_step(const Block& batch, const std::vector<double>& normalizers) {
  NCSREC_CHECK(normalizers.size() == config_.tasks.size(), "one normaliser per task expected");
  forward(batch);
  const int64_t B = batch.rows;
  const size_t T = config_.tasks.size();
  const Tensor* shared = nullptr;
  if (bottom_) shared = &bottom_->forward(groups_[0].x);
  std::vector<const Tensor*> logits(T);
  std::vector<Tensor> dlogit_views(T), prob_views(T);
  std::vector<Tensor*> dlogits(T), probs(T);
  for (size_t t = 0; t < T; ++t) {
    logits[t] = &towers_[t]->forward(shared ? *shared : tower_input(t));
    dlogit_views[t] = ensure_buffer(dlogit_bufs_[t], B, 1, dtype_, Device::CPU);
    prob_views[t] = ensure_buffer(prob_bufs_[t], B, 1, dtype_, Device::CPU);
    dlogits[t] = &dlogit_views[t];
    probs[t] = &prob_views[t];
  }
  StepLoss loss = dtype_ == DType::F32
                      ? compute_losses<float>(config_, batch, label_index_, given_task_, normalizers, logits, dlogits, probs)
                      : compute_losses<double>(config_, batch, label_index_, given_task_, normalizers, logits, dlogits, probs);

  // Backward: towers, then the shared part (sum of the towers' input gradients), then tables.
  std::vector<const Tensor*> dinput(groups_.size(), nullptr);
  Tensor dsum;  // outlives the branch: dinput may point at it
  if (groups_.size() == 1) {
    dsum = ensure_buffer(dshared_buf_, B, towers_[0]->in(), dtype_, Device::CPU);
    for (size_t t = 0; t < T; ++t) {
      const Tensor& dx = towers_[t]->backward(*dlogits[t], true);
      if (t == 0) dsum.copy_from(dx);
      else ops::axpy(dsum, 1.0, dx);
    }
    dinput[0] = bottom_ ? &bottom_->backward(dsum, true) : &dsum;
  } else {
    for (size_t t = 0; t < T; ++t) dinput[static_cast<size_t>(group_of_task_[t])] = &towers_[t]->backward(*dlogits[t], true);
  }
  for (size_t g = 0; g < groups_.size(); ++g) {
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
  forward(batch);
  const int64_t B = batch.rows;
  const Tensor* shared = bottom_ ? &bottom_->forward(groups_[0].x) : nullptr;
  probabilities.assign(config_.tasks.size(), std::vector<float>(static_cast<size_t>(B)));
  for (size_t t = 0; t < config_.tasks.size(); ++t) {
    const Tensor& logit = towers_[t]->forward(shared ? *shared : tower_input(t));
    Tensor p = ensure_buffer(prob_bufs_[t], B, 1, dtype_, Device::CPU);
    ops::sigmoid(p, logit);
    if (dtype_ == DType::F32) std::memcpy(probabilities[t].data(), p.data<float>(), static_cast<size_t>(B) * sizeof(float));
    else
      for (int64_t i = 0; i < B; ++i) probabilities[t][static_cast<size_t>(i)] = static_cast<float>(p.data<double>()[i]);
  }
}

}  // namespace ncsrec

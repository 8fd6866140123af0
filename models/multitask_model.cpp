#include "models/multitask_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <set>
#include <type_traits>

#include "core/layers/interaction.h"
#include "core/layers/losses.h"
#include "core/ops.h"
#include "core/random.h"

namespace ncsrec {

namespace {
std::string in_file(const ModelConfig& m) { return m.source.empty() ? std::string() : m.source + ": "; }
}  // namespace

MultiTaskModel::MultiTaskModel(const ModelConfig& config, const DataSchema& schema, DType dtype, uint64_t seed,
                               Communicator* comm, Device device)
    : config_(config), schema_(schema), dtype_(dtype), device_(device),
      comm_(comm && comm->world_size() > 1 ? comm : nullptr) {
  if (config_.type == "esmm") config_.esmm = true;  // configs built in code
  if (device_ != Device::CPU) (void)ops_for(device_);  // a clear error now if the device has no backend
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
  if (config_.esmm) {
    // Also checked here for configs built in code: the loss below divides by this weight.
    if (!(config_.tasks[0].loss_weight > 0))
      throw ConfigError(in_file(config_) + "model.tasks." + config_.tasks[0].name + ".loss_weight: " + kEsmmCtrWeightMessage);
    loss_names_ = {config_.tasks[0].name, "ctcvr"};
  } else if (config_.type == "three_tower") {
    // Every task over all impressions: a task given another scores both (ctr given, cvr: ctcvr).
    for (size_t t = 0; t < config_.tasks.size(); ++t) {
      const int g = given_task_[t];
      const std::string& n = config_.tasks[t].name;
      loss_names_.push_back(g < 0 ? n : joint_task_name(config_.tasks[static_cast<size_t>(g)].name, n));
      base_loss_weights_.push_back(config_.tasks[t].loss_weight);
    }
    const size_t T = config_.tasks.size();
    if (!config_.three_tower.teacher.empty())
      for (size_t t = 0; t < T; ++t) {
        loss_names_.push_back("kd_" + loss_names_[t]);
        base_loss_weights_.push_back(config_.three_tower.distill_weight);
      }
    if (T > 1) {
      loss_names_.push_back("mix");
      base_loss_weights_.push_back(config_.three_tower.mix_weight);
    }
    config_.use_dense = true;  // the towers pick their dense columns themselves
  } else
    for (const auto& t : config_.tasks) loss_names_.push_back(t.name);
  if (base_loss_weights_.empty())
    for (size_t k = 0; k < loss_names_.size(); ++k) base_loss_weights_.push_back(config_.tasks[k].loss_weight);

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
      const int rank = comm_ ? comm_->rank() : 0, world = comm_ ? comm_->world_size() : 1;
      if (spec.placement == "table_wise" && world > 1 && spec.table_rank >= world)
        throw ConfigError(in_file(config_) + "model.tables." + spec.name + ".table_rank: " +
                          std::to_string(spec.table_rank) + " is not a rank of this job of " + std::to_string(world));
      HashOptions hash;
      hash.capacity = spec.capacity;
      hash.admit_after = spec.admit_after;
      hash.ttl_days = spec.ttl_days;
      hash.evict_when_full = spec.evict_when_full;
      try {
        tables_.emplace_back(name, spec.rows, dim, dtype_, seed, config_.embedding_init, parse_placement(spec.placement),
                             world > 1 ? static_cast<int>(spec.table_rank) : 0, rank, world,
                             spec.capacity > 0 ? &hash : nullptr);
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
  // Then the history features (history.interact: right after the slot embeddings, as more
  // fields of the interaction), the dense features, the rest of the history features, the dot
  // products of the interaction's fields.
  int64_t col = embedding_cols_;
  interaction_fields_ = fields_;
  if (config_.history.enabled()) {
    history_ = std::make_unique<HistoryFeatures>(config_.history, schema_, params_, in_file(config_));
    if (config_.history.interact) {
      if (config_.interaction != "dot")
        throw ConfigError(in_file(config_) + "model.history.interact: needs interaction: dot");
      for (const auto& [name, width] : history_->widths())
        if (width != dim)
          throw ConfigError(in_file(config_) + "model.history.interact: feature " + name + " has vectors of " +
                            std::to_string(width) + ", not embedding_dim " + std::to_string(dim) +
                            ": only fields of one width take part in the dot products");
      history_col_ = col;
      col += history_->width();
      interaction_fields_ += history_->width() / dim;
    }
  }
  dense_col_ = col;
  col += config_.use_dense ? schema_.dense_dim : 0;
  if (history_ && !config_.history.interact) {
    history_col_ = col;
    col += history_->width();
  }
  input_dim_ = col;
  if (config_.interaction == "dot") {
    interaction_col_ = input_dim_;
    input_dim_ += interaction_fields_ * interaction_fields_;
  }

  // APG's group-wise condition: the chosen slots' pooled embeddings, columns of the input.
  for (const auto& slot : config_.apg.condition) {
    bool found = false;
    for (const auto& tr : groups_[0].tables)
      for (const auto& s : tr.slots)
        if (schema_.slots[static_cast<size_t>(s.slot)] == slot) {
          condition_cols_.push_back({s.col, s.col + dim});
          found = true;
        }
    if (!found)
      throw ConfigError(in_file(config_) + "model.apg.condition: '" + slot +
                        "' is not a slot of any model table (a group-wise condition is made of input embeddings)");
    condition_dim_ += dim;
  }
  auto apg_in = [&](const char* where) {
    return std::find(config_.apg.in.begin(), config_.apg.in.end(), where) != config_.apg.in.end();
  };
  auto with_apg = [&](bool on, bool group) {
    LayerOptions o = config_.layers;
    if (!on) return o;
    o.apg = true;
    o.apg_options = config_.apg.options;
    o.condition_dim = group ? condition_dim_ : 0;
    return o;
  };
  if (condition_dim_ > 0 && (apg_in("bottom") || apg_in("experts")))
    throw ConfigError(in_file(config_) + "model.apg.condition: a group-wise condition is supported in towers; "
                      "bottom and experts use self-wise APG (drop apg.condition or list only towers in apg.in)");

  seed_ = seed;
  const int T = static_cast<int>(config_.tasks.size());
  std::vector<std::string> task_names;
  for (const auto& t : config_.tasks) task_names.push_back(t.name);
  ExpertOptions experts;
  experts.sizes = config_.experts.sizes;
  experts.layers = with_apg(apg_in("experts"), false);
  experts.masked = config_.experts.masked;
  experts.masked_layers = config_.masks.layers;
  block_params_begin_ = params_.numel();
  if (config_.type == "shared_bottom")
    block_ = make_bottom_block(params_, input_dim_, config_.bottom, with_apg(apg_in("bottom"), false));
  if (config_.type == "ncs") block_ = make_masked_block(params_, input_dim_, config_.shared, config_.masks.layers, T, &masked_);
  if (config_.type == "mmoe")
    block_ = make_mmoe_block(params_, input_dim_, static_cast<int>(config_.experts.count), experts, task_names);
  if (config_.type == "ple")
    block_ = make_ple_block(params_, input_dim_, static_cast<int>(config_.experts.levels),
                            static_cast<int>(config_.experts.task_experts),
                            static_cast<int>(config_.experts.shared_experts), experts, task_names);
  if (config_.type == "three_tower") {
    // Each side's input columns: its slots' embeddings, then its dense columns.
    const ThreeTowerSpec& spec = config_.three_tower;
    auto columns = [&](const TowerSpec& side, const char* name) {
      std::vector<int64_t> cols;
      for (const auto& slot : side.slots)
        for (const auto& tr : groups_[0].tables)
          for (const auto& s : tr.slots)
            if (schema_.slots[static_cast<size_t>(s.slot)] == slot)
              for (int64_t j = 0; j < dim; ++j) cols.push_back(s.col + j);
      for (int64_t c : side.dense) {
        if (c >= schema_.dense_dim)
          throw ConfigError(in_file(config_) + "model.towers." + name + ".dense: column " + std::to_string(c) +
                            " does not exist: the data has " + std::to_string(schema_.dense_dim) + " dense features");
        cols.push_back(dense_col_ + c);
      }
      return cols;
    };
    three_tower_ = std::make_unique<ThreeTower>(params_, columns(spec.user, "user"), columns(spec.item, "item"),
                                                spec.user.sizes, spec.item.sizes, spec.gate, spec.gate_sizes,
                                                task_names, config_.layers);
  }
  const int64_t tower_in = block_ ? block_->out_dim() : input_dim_;
  if (block_) masked_refs_ = block_->masked_layers();
  if (config_.uses_masks() && masked_refs_.empty())
    throw ConfigError(in_file(config_) + "model.masks.layers: no layer is masked");
  if (config_.masks.find == "learned")
    for (int t = 0; t < T; ++t)
      for (int l = 0; l < num_masked_layers(); ++l) {
        const MaskedLinear& layer = *masked_refs_[static_cast<size_t>(l)].layer;
        Param* score = params_.add("mask_score." + task_names[static_cast<size_t>(t)] + "." + masked_layer_name(l),
                                   {layer.in(), layer.out()}, Init::Zeros);
        score->decay = false;
        score->task = t;
        score_params_.push_back(score);
        if (config_.masks.sparsity == "penalty") {
          Param* lambda = params_.add_state("mask_penalty." + task_names[static_cast<size_t>(t)] + "." +
                                                masked_layer_name(l), {1}, Init::Zeros);
          lambda->task = t;
          penalty_params_.push_back(lambda);
        }
      }
  tower_params_begin_ = params_.numel();
  for (int t = 0; t < T && !three_tower_; ++t) {
    std::vector<int64_t> sizes = config_.tasks[static_cast<size_t>(t)].tower;
    sizes.push_back(1);
    const std::string prefix = "tower." + task_names[static_cast<size_t>(t)];
    towers_.push_back(std::make_unique<FeedForward>(params_, prefix, tower_in, sizes, false,
                                                    with_apg(apg_in("towers"), condition_dim_ > 0)));
    mark_task_owned(params_, prefix + ".", t);
    group_of_task_.push_back(n_groups > 1 ? t : 0);
  }
  if (config_.loss_weighting == "uncertainty")
    for (size_t k = 0; k < loss_names_.size(); ++k) {
      Param* p = params_.add("loss_weight." + loss_names_[k] + ".log_sigma", {1}, Init::Zeros);
      // ESMM: the ctr loss to the CTR task, ctcvr to the CVR task; three_tower: kd_<t> to task t,
      // mix to all tasks.
      const size_t n = config_.tasks.size();
      const bool kd = three_tower_ && !config_.three_tower.teacher.empty();
      p->task = k < n ? static_cast<int>(k) : kd && k < 2 * n ? static_cast<int>(k - n) : -1;
      log_sigma_.push_back(p);
    }
  params_.finalize(dtype_, device_, seed);
  if (!score_params_.empty()) init_learned_masks(seed);
  sparse_grads_.resize(tables_.size());
  bag_workspaces_.resize(tables_.size());
  local_grads_.resize(tables_.size());
  dlogit_bufs_.resize(config_.tasks.size());
  prob_bufs_.resize(config_.tasks.size());
  train_prob_bufs_.resize(config_.tasks.size());
  logit_host_bufs_.resize(config_.tasks.size());
  staged_logits_.resize(config_.tasks.size());
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
  if (config_.esmm || three_tower_) return n;  // ESMM's and three_tower's losses are over all impressions
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

std::vector<ShardedTable>& MultiTaskModel::tables() {
  store_device_tables();
  host_tables_newer_ = !device_tables_.empty();
  return tables_;
}

const std::vector<ShardedTable>& MultiTaskModel::tables() const {
  store_device_tables();
  return tables_;
}

HashStats MultiTaskModel::table_hash_stats(size_t t) const {
  HashStats h = tables_[t].hash_stats();
  if (device_tables_newer_ && t < device_tables_.size() && tables_[t].hashed()) {
    const DeviceHashCounts now = device_tables_[t]->hash_counts(), folded = device_counts_folded_[t];
    h.rows = device_tables_[t]->rows();
    h.pending = now.pending;
    h.inserted += now.inserted - folded.inserted;
    h.evicted_full += now.evicted_full - folded.evicted_full;
  }
  return h;
}

std::string MultiTaskModel::device_table_limits(const OptimizerConfig& sparse) const {
  if (device_ == Device::CPU) return "a CPU model";
  if (!device_table_factory(device_)) return "the " + std::string(device_name(device_)) + " backend trains no table";
  if (comm_) return "several ranks (the tables are sharded over the hosts)";
  if (dtype_ != DType::F32) return "an f64 model";
  if (sparse.type != "sgd" && sparse.type != "adagrad" && sparse.type != "adam")
    return "sparse optimizer " + sparse.type;
  return "";
}

bool MultiTaskModel::place_tables_on_device(const OptimizerConfig& sparse,
                                            const std::vector<std::vector<std::pair<std::string, Tensor*>>>& state) {
  NCSREC_CHECK(state.size() == tables_.size(), state.size() << " optimizer states for " << tables_.size() << " tables");
  device_tables_.clear();
  if (!device_table_limits(sparse).empty()) return false;
  const DeviceTableFactory make = device_table_factory(device_);
  for (size_t t = 0; t < tables_.size(); ++t) {
    const ShardedTable& table = tables_[t];
    DeviceTableSpec spec;
    spec.name = table.name();
    spec.hash = table.hashed();
    spec.rows = table.rows();
    spec.dim = table.dim();
    spec.seed = seed_;
    spec.init_scale = config_.embedding_init;
    spec.optimizer = sparse;
    if (table.hashed()) {
      spec.admit_after = table.hash_options().admit_after;
      spec.evict_when_full = table.hash_options().evict_when_full;
    }
    device_tables_.push_back(make(spec));
  }
  device_counts_folded_.assign(tables_.size(), DeviceHashCounts{});
  device_table_state_ = state;
  device_table_lr_ = sparse.lr;
  host_tables_newer_ = true;  // the host's rows (initial or restored) go up before the first step
  device_tables_newer_ = false;
  return true;
}

std::vector<DeviceTable::Column> MultiTaskModel::device_table_columns(size_t t) const {
  // The host copy is the device's mirror: storing into it does not change the model.
  EmbeddingTable& shard = const_cast<ShardedTable&>(tables_[t]).shard();
  std::vector<DeviceTable::Column> columns{{"values", shard.values().raw()}};
  for (const auto& [name, tensor] : device_table_state_[t]) columns.push_back({name, tensor->raw()});
  columns.push_back({"count", shard.count().data()});
  columns.push_back({"last_seen_day", shard.last_seen_day().data()});
  columns.push_back({"updated_step", shard.updated_step().data()});
  return columns;
}

void MultiTaskModel::store_device_tables() const {
  if (!device_tables_newer_) return;
  for (size_t t = 0; t < device_tables_.size(); ++t) {
    auto& table = const_cast<ShardedTable&>(tables_[t]);
    if (!table.hashed()) {  // the same rows in the same order
      device_tables_[t]->store(device_table_columns(t));
      continue;
    }
    // A hash table: the host holds the device's ids (new ones get rows, evicted ones lose
    // theirs) and pending ids, then each column comes down in the device's row order and goes
    // to the host's row of each id.
    const std::vector<int64_t> keys = device_tables_[t]->keys();
    std::vector<std::pair<int64_t, ShardedTable::Pending>> pending;
    for (const PendingId& p : device_tables_[t]->pending()) pending.push_back({p.id, {p.count, p.last_seen_day}});
    const DeviceHashCounts now = device_tables_[t]->hash_counts();
    DeviceHashCounts& folded = device_counts_folded_[t];
    table.adopt_trained(keys, pending, now.inserted - folded.inserted, now.evicted_full - folded.evicted_full);
    folded = now;
    const std::vector<DeviceTable::Column> host = device_table_columns(t);
    const auto n = static_cast<int64_t>(keys.size());
    const int64_t host_rows = table.shard().rows();
    std::vector<std::vector<char>> staged(host.size());
    std::vector<DeviceTable::Column> down;
    std::vector<size_t> row_bytes;
    for (size_t c = 0; c < host.size(); ++c) {
      size_t bytes = sizeof(int64_t);  // the counters
      if (c == 0) bytes = static_cast<size_t>(table.dim()) * sizeof(float);
      else if (c <= device_table_state_[t].size())
        bytes = device_table_state_[t][c - 1].second->nbytes() / static_cast<size_t>(std::max<int64_t>(host_rows, 1));
      row_bytes.push_back(bytes);
      staged[c].resize(bytes * static_cast<size_t>(n));
      down.push_back({host[c].name, staged[c].data()});
    }
    device_tables_[t]->store(down);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = table.shard_index(keys[static_cast<size_t>(i)]);
      NCSREC_CHECK(r >= 0, "table " << table.name() << ": id " << keys[static_cast<size_t>(i)] << " has no host row");
      for (size_t c = 0; c < host.size(); ++c)
        std::memcpy(static_cast<char*>(host[c].data) + static_cast<size_t>(r) * row_bytes[c],
                    staged[c].data() + static_cast<size_t>(i) * row_bytes[c], row_bytes[c]);
    }
  }
  device_tables_newer_ = false;
}

void MultiTaskModel::load_device_tables() {
  if (!host_tables_newer_) return;
  for (size_t t = 0; t < device_tables_.size(); ++t) {
    const RowColumn& keys = tables_[t].shard_rows();
    std::vector<PendingId> pending;
    for (const auto& [id, p] : tables_[t].pending()) pending.push_back({id, p.count, p.last_seen_day});
    device_tables_[t]->load(std::vector<int64_t>(keys.begin(), keys.end()), device_table_columns(t), pending);
  }
  host_tables_newer_ = false;
}

void MultiTaskModel::start_day(int64_t day) {
  // Tables on the device: the day's TTL drops rows on the host copy (brought up to date first),
  // and the device's tables are rebuilt from it before the next step.
  for (auto& table : tables()) table.start_day(day);
}

void MultiTaskModel::forward(const Block& batch, bool training) {
  if (!(batch.schema.tasks == schema_.tasks && batch.schema.slots == schema_.slots &&
        batch.schema.dense_dim == schema_.dense_dim))
    check_compatible(batch.schema, "a batch");
  const int64_t B = batch.rows;
  lookups_.resize(tables_.size());
  const bool tables_on_device = !device_tables_.empty();
  if (tables_on_device) load_device_tables();
  // A training forward changes the device's tables too (counters, a hash table's new ids).
  if (tables_on_device && training) device_tables_newer_ = true;
  for (auto& g : groups_) {
    g.host = ensure_buffer(g.host_buf, B, input_dim_, dtype_, Device::CPU, device_);  // goes up
    for (const auto& tr : g.tables) {
      ShardedTable& table = tables_[static_cast<size_t>(tr.table)];
      if (tables_on_device) continue;  // pooled on the device below
      if (!comm_ && !table.hashed()) {  // one process, a fixed table: it is all here
        for (const auto& s : tr.slots) {
          const SparseColumn& c = batch.sparse[static_cast<size_t>(s.slot)];
          embedding_bag_forward(g.host, s.col, table.shard().values(), c.offsets.data(), c.ids.data(), B, s.pooling);
          if (training) table.count_reads(c.ids.data(), static_cast<int64_t>(c.ids.size()));
        }
        continue;
      }
      // A hash table, or several ranks: the batch's unique rows (fetched from their owners), then
      // pooled from them.
      std::vector<ShardedTable::IdsView> ids;
      for (const auto& s : tr.slots) {
        const SparseColumn& c = batch.sparse[static_cast<size_t>(s.slot)];
        ids.push_back({c.ids.data(), static_cast<int64_t>(c.ids.size())});
      }
      ShardedTable::Lookup& lookup = lookups_[static_cast<size_t>(tr.table)];
      table.lookup(ids, comm_, &lookup, training);
      for (size_t i = 0; i < tr.slots.size(); ++i) {
        const SlotRef& s = tr.slots[i];
        const SparseColumn& c = batch.sparse[static_cast<size_t>(s.slot)];
        embedding_bag_forward(g.host, s.col, lookup.values, c.offsets.data(), lookup.ids[i].data(), B, s.pooling);
      }
    }
    if (config_.use_dense && schema_.dense_dim > 0) {
      if (dtype_ == DType::F32) copy_dense<float>(g.host, dense_col_, batch.dense, B, schema_.dense_dim);
      else copy_dense<double>(g.host, dense_col_, batch.dense, B, schema_.dense_dim);
    }
    if (history_) history_->forward(g.host, history_col_, batch);
    if (device_ == Device::CPU) {
      if (interaction_col_ >= 0)
        pairwise_dot_forward(g.host, interaction_col_, g.host, 0, interaction_fields_, config_.embedding_dim);
      g.x = g.host;
    } else {
      // The dot products are made on the device from the embeddings gone up (the interaction's
      // columns, last in the input and F² of them a row, never cross the bus).
      g.x = ensure_buffer(g.x_buf, B, input_dim_, dtype_, device_);
      const int64_t host_end = interaction_col_ >= 0 ? interaction_col_ : input_dim_;
      if (tables_on_device) {
        // Only the host's columns go up (dense features, history); the tables pool their slots
        // into the rest on the device, from the batch's ids.
        g.x.copy_columns_from(g.host, embedding_cols_, host_end);
        for (const auto& tr : g.tables) {
          std::vector<DeviceTable::Slot> slots;
          for (const auto& s : tr.slots) {
            const SparseColumn& c = batch.sparse[static_cast<size_t>(s.slot)];
            slots.push_back({c.offsets.data(), c.ids.data(), static_cast<int64_t>(c.ids.size()), s.col,
                             s.pooling == Pooling::Mean});
          }
          device_tables_[static_cast<size_t>(tr.table)]->forward(slots, B, static_cast<float*>(g.x.raw()), input_dim_,
                                                                  training, tables_[static_cast<size_t>(tr.table)].day());
        }
      } else {
        g.x.copy_columns_from(g.host, host_end);
      }
      if (interaction_col_ >= 0)
        pairwise_dot_forward(g.x, interaction_col_, g.x, 0, interaction_fields_, config_.embedding_dim);
    }
  }
  if (condition_dim_ > 0) {
    cond_bufs_.resize(groups_.size());
    conds_.resize(groups_.size());
    for (size_t g = 0; g < groups_.size(); ++g) {  // the chosen columns of the input, where it is
      conds_[g] = ensure_buffer(cond_bufs_[g], B, condition_dim_, dtype_, device_);
      int64_t at = 0;
      for (const auto& [begin, end] : condition_cols_) {
        conds_[g].copy_column_block(at, groups_[g].x, begin, end - begin);
        at += end - begin;
      }
    }
  }
}

Pass MultiTaskModel::pass(size_t group, bool training) const {
  Pass p;
  p.training = training;
  p.dropout_key = hash_combine(seed_, static_cast<uint64_t>(step_));
  p.condition = condition_dim_ > 0 ? &conds_[group] : nullptr;
  return p;
}


Tensor MultiTaskModel::stage_f32(StagedColumn& column, const float* values, int64_t n) {
  Tensor host = ensure_buffer(column.host, n, 1, DType::F32, Device::CPU, device_);
  if (n > 0) std::memcpy(host.raw(), values, static_cast<size_t>(n) * sizeof(float));
  if (device_ == Device::CPU) return host;
  Tensor up = ensure_buffer(column.device, n, 1, DType::F32, device_);
  up.copy_from(host);
  return up;
}

StepLoss MultiTaskModel::compute_losses(const Block& batch, const std::vector<double>& normalizers,
                                        const std::vector<const Tensor*>& logits, std::vector<Tensor*>& dlogits,
                                        std::vector<Tensor*>& probs, int only_task) {
  const ModelConfig& cfg = config_;
  const int64_t B = batch.rows;
  const float* data_weight = batch.weight.empty() ? nullptr : batch.weight.data();
  StepLoss loss;
  const std::vector<double> weight = effective_loss_weights();
  loss_columns_.resize(2 * cfg.tasks.size() + 1);
  if (cfg.esmm) {
    const auto& click = batch.labels[static_cast<size_t>(label_index_[0])];
    const auto& conv = batch.labels[static_cast<size_t>(label_index_[1])];
    std::vector<float> ctcvr(static_cast<size_t>(B));
    for (int64_t i = 0; i < B; ++i) ctcvr[static_cast<size_t>(i)] = click[static_cast<size_t>(i)] * conv[static_cast<size_t>(i)];
    const Tensor click_t = stage_f32(loss_columns_[0], click.data(), B);
    const Tensor ctcvr_t = stage_f32(loss_columns_[1], ctcvr.data(), B);
    Tensor weight_t;
    if (data_weight) weight_t = stage_f32(loss_columns_[2], data_weight, B);
    Tensor p_ctcvr = ensure_buffer(p_ctcvr_buf_, B, 1, dtype_, device_);
    // Loss weights: the CTR loss carries the first task's weight, the CTCVR loss the second's.
    const ops::EsmmLosses l =
        ops::esmm_loss(*logits[0], *logits[1], click_t, ctcvr_t, data_weight ? &weight_t : nullptr, normalizers[0],
                       weight[1] / std::max(weight[0], 1e-12), *probs[0], *probs[1], p_ctcvr, *dlogits[0], *dlogits[1]);
    // esmm_loss's gradients are of ctr + w·ctcvr; scale by the CTR loss's weight.
    if (weight[0] != 1.0) {
      ops::scale(*dlogits[0], weight[0]);
      ops::scale(*dlogits[1], weight[0]);
    }
    loss.per_task = {l.ctr, l.ctcvr};
    loss.total = weight[0] * l.ctr + weight[1] * l.ctcvr;
    return loss;
  }
  std::vector<float> w(static_cast<size_t>(B));
  loss.per_task.assign(cfg.tasks.size(), std::numeric_limits<double>::quiet_NaN());
  for (size_t t = 0; t < cfg.tasks.size(); ++t) {
    if (only_task >= 0 && static_cast<int>(t) != only_task) continue;
    for (int64_t i = 0; i < B; ++i)
      w[static_cast<size_t>(i)] = row_in_loss(batch, t, i) ? (data_weight ? data_weight[i] : 1.0f) : 0.0f;
    const Tensor labels = stage_f32(loss_columns_[2 * t], batch.labels[static_cast<size_t>(label_index_[t])].data(), B);
    const Tensor weights = stage_f32(loss_columns_[2 * t + 1], w.data(), B);
    const TaskSpec& spec = cfg.tasks[t];
    double l;
    if (spec.loss == "focal")
      l = ops::focal_loss(*logits[t], labels, &weights, spec.focal_alpha, spec.focal_gamma, normalizers[t], *probs[t],
                          *dlogits[t]);
    else if (spec.loss == "mse")
      l = ops::sigmoid_mse(*logits[t], labels, &weights, normalizers[t], *probs[t], *dlogits[t]);
    else
      l = ops::sigmoid_bce(*logits[t], labels, &weights, normalizers[t], *probs[t], *dlogits[t]);
    if (weight[t] != 1.0) ops::scale(*dlogits[t], weight[t]);
    loss.per_task[t] = l;
    loss.total += weight[t] * l;
  }
  return loss;
}

const Tensor& MultiTaskModel::shared_output(size_t task) {
  if (masked_ && !csr_.empty()) {
    const Tensor* h = &groups_[0].x;
    const int64_t B = h->dim(0);
    for (size_t l = 0; l < masked_->depth(); ++l) {
      const MaskedLinear& layer = masked_->layer(l);
      csr_outs_[l] = ensure_buffer(csr_out_bufs_[l], B, layer.out(), dtype_, device_);
      if (device_ == Device::CPU)
        csr_linear_forward(csr_outs_[l], *h, csr_[task][l], &layer.bias()->value, layer.activation() == Activation::ReLU);
      else
        csr_device_[task][l]->forward(csr_outs_[l], *h);
      h = &csr_outs_[l];
    }
    return *h;
  }
  if (block_) return block_->output(task);
  return groups_[static_cast<size_t>(group_of_task_[task])].x;
}

void MultiTaskModel::init_learned_masks(uint64_t seed) {
  // Scores start at |W₀| plus a little noise: the first masks are the magnitude masks of the
  // initialisation (one-shot pruning at init), from which training moves them. With the
  // penalty (mask = score > 0) they start at |W₀| − q, q the layer's (1 − density) quantile
  // of |W₀|: the same first masks.
  const bool penalty = config_.masks.sparsity == "penalty";
  size_t k = 0;
  for (size_t t = 0; t < config_.tasks.size(); ++t)
    for (int l = 0; l < num_masked_layers(); ++l, ++k) {
      Param* score = score_params_[k];
      MaskedLinear& layer = *masked_refs_[static_cast<size_t>(l)].layer;
      Rng rng(hash_combine(seed, hash_string(score->name)));
      const int64_t n = score->value.numel();
      // Made on the host from a host copy of the weight, then put where the scores are.
      const Tensor weight = layer.weight()->value.to(Device::CPU);
      Tensor scores = Tensor::empty(score->value.shape(), dtype_);
      auto fill = [&](auto* s, const auto* w) {
        for (int64_t i = 0; i < n; ++i) s[i] = static_cast<std::remove_pointer_t<decltype(s)>>(
            std::abs(w[i]) + rng.uniform(-config_.masks.score_init, config_.masks.score_init));
      };
      if (dtype_ == DType::F32) fill(scores.data<float>(), weight.data<float>());
      else fill(scores.data<double>(), weight.data<double>());
      if (penalty) {
        auto shift = [&](auto* s, const auto* w) {
          std::vector<double> mags(static_cast<size_t>(n));
          for (int64_t i = 0; i < n; ++i) mags[static_cast<size_t>(i)] = std::abs(static_cast<double>(w[i]));
          const int64_t keep = std::llround(config_.masks.final_density * static_cast<double>(n));
          const auto at = mags.begin() + std::clamp<int64_t>(n - keep, 0, n - 1);
          std::nth_element(mags.begin(), at, mags.end());
          // Scores above the (n − keep)-th smallest magnitude stay positive (before the noise).
          const double q = keep >= n ? -1.0 : *at;
          for (int64_t i = 0; i < n; ++i) s[i] = static_cast<std::remove_pointer_t<decltype(s)>>(s[i] - q);
        };
        if (dtype_ == DType::F32) shift(scores.data<float>(), weight.data<float>());
        else shift(scores.data<double>(), weight.data<double>());
      }
      score->value.copy_from(scores);
      layer.set_score_grad(static_cast<int>(t), score->grad);
    }
  refresh_learned_masks();
}

void MultiTaskModel::refresh_learned_masks() {
  // Top-k: each layer keeps exactly k = round(density · N) connections per task, the k highest
  // scores, ties broken by index, so the density holds to the target by construction.
  // Penalty: the connections whose score is above 0.
  size_t k = 0;
  std::vector<int64_t> order;
  score_host_bufs_.resize(score_params_.size());
  for (size_t t = 0; t < config_.tasks.size(); ++t)
    for (int l = 0; l < num_masked_layers(); ++l, ++k) {
      // The scores where the host can read them: a device model's come down (one copy a layer).
      const Tensor& value = score_params_[k]->value;
      Tensor host = value;
      if (value.device() != Device::CPU) {
        host = ensure_buffer(score_host_bufs_[k], value.dim(0), value.dim(1), dtype_, Device::CPU, value.device());
        host.copy_from(value);
      }
      const Tensor* score = &host;
      const int64_t n = score->numel();
      if (!penalty_params_.empty()) {
        const BitMask& current = mask(static_cast<int>(t), l);
        BitMask m = BitMask::zeros(current.rows, current.cols);
        auto threshold = [&](const auto* s) {
          for (int64_t i = 0; i < n; ++i)
            if (s[i] > 0) m.set(i, true);
        };
        if (dtype_ == DType::F32) threshold(score->data<float>());
        else threshold(score->data<double>());
        if (m != current) set_mask(static_cast<int>(t), l, m);
        continue;
      }
      const int64_t keep = std::llround(config_.masks.final_density * static_cast<double>(n));
      order.resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
      auto select = [&](const auto* s) {
        std::nth_element(order.begin(), order.begin() + keep, order.end(), [&](int64_t a, int64_t b) {
          return s[a] > s[b] || (s[a] == s[b] && a < b);
        });
      };
      if (dtype_ == DType::F32) select(score->data<float>());
      else select(score->data<double>());
      const BitMask& current = mask(static_cast<int>(t), l);
      BitMask m = BitMask::zeros(current.rows, current.cols);
      for (int64_t i = 0; i < keep; ++i) m.set(order[static_cast<size_t>(i)], true);
      if (m != current) set_mask(static_cast<int>(t), l, m);
    }
}

void MultiTaskModel::apply_mask_penalty(int task, double lr) {
  if (penalty_params_.empty()) return;
  // The penalty λ · Σ_i s_i on a layer's scores: its gradient is λ for every score, applied as a
  // plain gradient step of the dense rate outside the optimizer (Adam would normalise a uniform
  // push away). Its weight follows the density error e = (density − target) / target each step,
  // λ = gain · e + Σ (gain / 20) · e (proportional plus a slow integral, kept in the state
  // mask_penalty.<task>.<layer>): the scores' uniform shift integrates λ, so the proportional
  // term alone steers the density and the integral removes the bias of the scores' own drift.
  const double target = config_.masks.final_density, gain = config_.masks.penalty_gain;
  size_t k = 0;
  for (size_t t = 0; t < config_.tasks.size(); ++t)
    for (int l = 0; l < num_masked_layers(); ++l, ++k) {
      if (task >= 0 && static_cast<int>(t) != task) continue;
      Param* score = score_params_[k];
      const double e = (mask(static_cast<int>(t), l).density() - target) / target;
      Tensor& integral = penalty_params_[k]->value;  // one element, where the model is
      set_host_values(integral, {host_values(integral)[0] + gain / 20 * e});
      const double shift = lr * (gain * e + host_values(integral)[0]);
      // s -= shift, the shift rounded to the scores' dtype first.
      ops::add_scalar(score->value, dtype_ == DType::F32 ? -static_cast<double>(static_cast<float>(shift)) : -shift);
    }
}

std::vector<std::vector<double>> MultiTaskModel::mask_densities() const {
  std::vector<std::vector<double>> d(config_.tasks.size());
  for (size_t t = 0; t < config_.tasks.size(); ++t)
    for (int l = 0; l < num_masked_layers(); ++l) d[t].push_back(mask(static_cast<int>(t), l).density());
  return d;
}

StepLoss MultiTaskModel::train_step(const Block& batch, const std::vector<double>& normalizers, int only_task) {
  drop_sparse_inference();  // the weights are about to move: sparse inference must be enabled again after training
  if (!score_params_.empty()) refresh_learned_masks();
  NCSREC_CHECK(normalizers.size() == config_.tasks.size(), "one normaliser per task expected");
  const size_t T = config_.tasks.size();
  NCSREC_CHECK(only_task < static_cast<int>(T), "task " << only_task << " out of range");
  if (only_task >= 0 && config_.esmm)
    throw ConfigError(in_file(config_) + "model: ESMM heads train their two losses together; use train.schedule: joint");
  auto active = [&](size_t t) { return only_task < 0 || static_cast<int>(t) == only_task; };
  if (three_tower_ && only_task >= 0)
    throw ConfigError(in_file(config_) + "model: three_tower trains its losses together; use train.schedule: joint");
  forward(batch, true);
  phase_clock_.mark(StepPhase::Input);
  const int64_t B = batch.rows;
  std::vector<bool> active_tasks(T);
  for (size_t t = 0; t < T; ++t) active_tasks[t] = active(t);
  if (block_) block_->forward(groups_[0].x, active_tasks, pass(0, true));
  std::vector<const Tensor*> logits(T, nullptr);
  std::vector<Tensor> dlogit_views(T), prob_views(T);
  std::vector<Tensor*> dlogits(T), probs(T);
  for (size_t t = 0; t < T && !three_tower_; ++t) {
    if (!active(t)) continue;
    const size_t g = static_cast<size_t>(group_of_task_[t]);
    logits[t] = &towers_[t]->forward(shared_output(t), pass(g, true));
    dlogit_views[t] = ensure_buffer(dlogit_bufs_[t], B, 1, dtype_, device_);
    prob_views[t] = ensure_buffer(train_prob_bufs_[t], B, 1, dtype_, device_);
    dlogits[t] = &dlogit_views[t];
    probs[t] = &prob_views[t];
  }
  phase_clock_.mark(StepPhase::DenseForward);
  StepLoss loss;
  Tensor dmixed;  // three_tower: dL/dS
  if (three_tower_) {
    three_tower_->forward(groups_[0].x, pass(0, true));
    loss = three_tower_losses(batch, normalizers, dlogit_views, dmixed);
  } else {
    // The losses run where the logits are: only the labels go up and the loss values come down.
    loss = compute_losses(batch, normalizers, logits, dlogits, probs, only_task);
  }
  if (!log_sigma_.empty()) {
    // L = Σ_k w_k L_k / (2σ_k²) + log σ_k, s_k = log σ_k: dL/ds_k = −2·(w_k e^{−2s_k}/2)·L_k + 1.
    // Each rank's L_k is its share of the global loss, so the gradients sum over ranks to the
    // global one; the +1 and the log σ_k term belong to the whole step and are added by rank 0.
    const std::vector<double> weight = effective_loss_weights();
    const double once = !comm_ || comm_->rank() == 0 ? 1.0 : 0.0;
    for (size_t k = 0; k < log_sigma_.size(); ++k) {
      if (std::isnan(loss.per_task[k])) continue;
      const double s = host_values(log_sigma_[k]->value)[0];
      const double g = -2.0 * weight[k] * loss.per_task[k] + once;
      add_host_values(log_sigma_[k]->grad, {g});
      loss.total += once * s;
    }
  }

  phase_clock_.mark(StepPhase::Losses);

  // Backward: towers, then the shared block (summing its tasks' gradients), then per input
  // group: the APG condition's gradient, the interaction, the tables.
  std::vector<const Tensor*> dtower(T, nullptr);
  for (size_t t = 0; t < T && !three_tower_; ++t)
    if (active(t)) dtower[t] = &towers_[t]->backward(*dlogits[t], true);
  auto ready = [&](int64_t begin, int64_t end) {
    if (gradient_ready_ && end > begin) gradient_ready_(begin, end);
  };
  ready(tower_params_begin_, params_.numel());
  for (auto& grp : groups_) grp.dx.reset();
  if (three_tower_) {
    std::vector<const Tensor*> dl;
    for (size_t t = 0; t < T; ++t) dl.push_back(&dlogit_views[t]);
    groups_[0].dx.add(three_tower_->backward(dl, T > 1 ? &dmixed : nullptr));
  } else if (block_) {
    const Tensor& dx = block_->backward(dtower);  // the block's buffer, handed over: no copy
    for (const Tensor* d : dtower)
      NCSREC_CHECK(!d || d->raw() != dx.raw(), "the shared block returned a tower's gradient as its own buffer");
    groups_[0].dx.adopt(dx);
  } else {
    for (size_t t = 0; t < T; ++t)
      if (dtower[t]) groups_[static_cast<size_t>(group_of_task_[t])].dx.add(*dtower[t]);
  }
  if (condition_dim_ > 0)
    for (size_t t = 0; t < T; ++t) {
      if (!dtower[t] || !towers_[t]->dcondition().defined()) continue;
      const size_t g = static_cast<size_t>(group_of_task_[t]);
      add_condition_gradient(groups_[g].dx.sum, towers_[t]->dcondition());
    }
  ready(block_params_begin_, tower_params_begin_);
  phase_clock_.mark(StepPhase::DenseBackward);
  // The input side in two passes: first what still writes dense gradients (history attention),
  // then, with the whole dense gradient final, the tables.
  std::vector<Tensor> input_grads(groups_.size());
  for (size_t g = 0; g < groups_.size(); ++g) {
    InputGroup& grp = groups_[g];
    if (!grp.dx.any) continue;
    // The embeddings (and interacting history features) also reach the loss through their dot
    // products (disjoint columns of dx): on the device for a device model, before dx comes down.
    Tensor dx = grp.dx.sum;
    if (interaction_col_ >= 0) {
      const Tensor& x = device_ == Device::CPU ? grp.host : grp.x;
      pairwise_dot_backward(dx, 0, dx, interaction_col_, x, interaction_fields_, config_.embedding_dim);
    }
    // The rest of the backward is the host's where the tables live there: a device model's input
    // gradient comes down once, without the interaction's columns. Tables on the device read it
    // where it is; it comes down only for the history features.
    if (!device_tables_.empty()) {
      if (history_) {
        Tensor down = ensure_buffer(grp.dx_host_buf, B, input_dim_, dtype_, Device::CPU, device_);
        down.copy_columns_from(grp.dx.sum, history_col_, history_col_ + history_->width());
        history_->backward(down, history_col_, batch);
      }
      input_grads[g] = grp.dx.sum;
      continue;
    }
    if (device_ != Device::CPU) {
      dx = ensure_buffer(grp.dx_host_buf, B, input_dim_, dtype_, Device::CPU, device_);
      if (interaction_col_ >= 0) dx.copy_columns_from(grp.dx.sum, interaction_col_);
      else dx.copy_from(grp.dx.sum);
    }
    if (history_) history_->backward(dx, history_col_, batch);  // attention's queries
    input_grads[g] = dx;
  }
  ready(0, block_params_begin_);
  for (size_t g = 0; g < groups_.size(); ++g) {
    InputGroup& grp = groups_[g];
    if (!grp.dx.any) {  // single_task: this task's group was not stepped (on every rank alike)
      for (const auto& tr : grp.tables) {
        SparseGrad& grad = sparse_grads_[static_cast<size_t>(tr.table)];
        grad.rows.clear();  // keeps the capacity
        grad.values = Tensor();
      }
      continue;
    }
    const Tensor& dx = input_grads[g];
    if (!device_tables_.empty()) {
      // Each table's segment sum and sparse update of the rows the batch read, on the device.
      for (const auto& tr : grp.tables)
        device_tables_[static_cast<size_t>(tr.table)]->backward_update(static_cast<const float*>(dx.raw()), input_dim_,
                                                                       device_table_lr_, step_);
      device_tables_newer_ = true;
      continue;
    }
    // Each table's gradient is its own (its rows, its workspace), so the tables that the forward
    // read directly run in parallel, each as the serial loop would compute it; a table's own
    // sort and segment sum then run on one thread. An error is rethrown after the loop, the
    // first in table order.
    const size_t n = grp.tables.size();
    std::vector<std::vector<SlotInput>> inputs(n);
    std::vector<char> direct(n);
    for (size_t k = 0; k < n; ++k) {
      const auto& tr = grp.tables[k];
      const size_t t = static_cast<size_t>(tr.table);
      direct[k] = !comm_ && !tables_[t].hashed();  // forward read the table itself
      for (size_t i = 0; i < tr.slots.size(); ++i) {
        const SlotRef& s = tr.slots[i];
        const SparseColumn& c = batch.sparse[static_cast<size_t>(s.slot)];
        inputs[k].push_back({c.offsets.data(), direct[k] ? c.ids.data() : lookups_[t].ids[i].data(), s.col, s.pooling});
      }
    }
    std::vector<std::exception_ptr> errors(n);
#pragma omp parallel for schedule(dynamic) if (n > 1 && B >= 256)
    for (size_t k = 0; k < n; ++k) {
      if (!direct[k]) continue;
      const size_t t = static_cast<size_t>(grp.tables[k].table);
      try {
        embedding_bag_backward(sparse_grads_[t], bag_workspaces_[t], dx, inputs[k], B, tables_[t].shard().rows(),
                               tables_[t].dim());
      } catch (...) {
        errors[k] = std::current_exception();
      }
    }
    for (const std::exception_ptr& e : errors)
      if (e) std::rethrow_exception(e);
    for (size_t k = 0; k < n; ++k) {
      if (direct[k]) continue;
      // The gradient over the batch's rows goes back to their owners, summed over ranks there.
      const size_t t = static_cast<size_t>(grp.tables[k].table);
      SparseGrad& local = local_grads_[t];
      embedding_bag_backward(local, bag_workspaces_[t], dx, inputs[k], B, lookups_[t].values.dim(0), tables_[t].dim());
      sparse_grads_[t] = tables_[t].reduce_gradient(lookups_[t], local, comm_);
    }
  }
  phase_clock_.mark(StepPhase::EmbeddingBackward);
  return loss;
}

void MultiTaskModel::plan_memory(int64_t rows) {
  NCSREC_CHECK(rows > 0, "plan_memory for " << rows << " rows");
  Block dry = Block::with_schema(schema_);
  dry.rows = rows;
  for (auto& l : dry.labels) l.assign(static_cast<size_t>(rows), 1.0f);  // every "given" row counts
  if (schema_.has_weight) dry.weight.assign(static_cast<size_t>(rows), 1.0f);
  dry.dense.assign(static_cast<size_t>(rows * schema_.dense_dim), 0.0f);
  for (auto& col : dry.sparse) col.offsets.assign(static_cast<size_t>(rows + 1), 0);  // empty bags
  for (auto& m : dry.meta) m.assign(static_cast<size_t>(rows), 0);
  for (auto& t : dry.truth) t.assign(static_cast<size_t>(rows), 0.0f);
  const Tensor saved = params_.values().clone();  // a training forward moves BatchNorm's statistics
  const bool tables_were_newer = device_tables_newer_;  // empty bags change no row
  const std::vector<double> normalizers = local_normalizers(dry);
  train_step(dry, normalizers, -1);
  if (!config_.esmm && !three_tower_)  // the alternating schedule's single-task steps
    for (int t = 0; t < static_cast<int>(config_.tasks.size()); ++t) train_step(dry, normalizers, t);
  params_.values().copy_from(saved);
  params_.zero_grad();
  for (SparseGrad& g : sparse_grads_) {
    g.rows.clear();
    g.values = Tensor();
  }
  device_tables_newer_ = tables_were_newer;
  // Tables on the device: their per-batch buffers for max_ids_per_row ids (the table's config,
  // 1 by default) per bag of every slot reading them; a batch with more grows them.
  if (!device_tables_.empty())
    for (const auto& g : groups_)
      for (const auto& tr : g.tables) {
        const auto slots = static_cast<int64_t>(tr.slots.size());
        const int64_t per_row = config_.tables[static_cast<size_t>(tr.table) % config_.tables.size()].max_ids_per_row;
        device_tables_[static_cast<size_t>(tr.table)]->reserve(slots, rows, rows * per_row * slots);
      }
}

void MultiTaskModel::set_teacher(MultiTaskModel* teacher) {
  if (!three_tower_ || config_.three_tower.teacher.empty())
    throw ConfigError(in_file(config_) + "model.three_tower: a teacher is only used by type three_tower with distill.teacher");
  if (teacher->three_tower_)
    throw ConfigError(in_file(config_) + "model.distill.teacher: the teacher is itself a three_tower student; "
                      "distill from a ranking model with ESMM heads (e.g. type ple, esmm: true)");
  teacher_targets_.clear();
  for (size_t t = 0; t < config_.tasks.size(); ++t) {
    // The teacher's task with the same label, and its given task with the same given label:
    // then its impression-level probability is the student's target.
    const std::string& label = config_.tasks[t].label;
    int tt = -1;
    for (size_t j = 0; j < teacher->config_.tasks.size(); ++j)
      if (teacher->config_.tasks[j].label == label) tt = static_cast<int>(j);
    if (tt < 0)
      throw ConfigError(in_file(config_) + "model.distill.teacher: the teacher (" + teacher->config_.type +
                        ") has no task with label '" + label + "' for task " + config_.tasks[t].name);
    const int g = given_task_[t], tg = teacher->given_task_[static_cast<size_t>(tt)];
    const std::string mine = g < 0 ? "" : config_.tasks[static_cast<size_t>(g)].label;
    const std::string theirs = tg < 0 ? "" : teacher->config_.tasks[static_cast<size_t>(tg)].label;
    if (mine != theirs)
      throw ConfigError(in_file(config_) + "model.distill.teacher: task " + config_.tasks[t].name + " is given '" +
                        mine + "' but the teacher's task with label '" + label + "' is given '" + theirs +
                        "': their probabilities are of different events");
    teacher_targets_.push_back({tt, tg});
  }
  teacher_ = teacher;
}

StepLoss MultiTaskModel::three_tower_losses(const Block& batch, const std::vector<double>& normalizers,
                                            std::vector<Tensor>& dlogits, Tensor& dmixed) {
  const ThreeTowerSpec& spec = config_.three_tower;
  const size_t n_tasks = config_.tasks.size();
  const int64_t B = batch.rows;
  const size_t rows = static_cast<size_t>(B);
  const std::vector<double> weight = effective_loss_weights();
  // Impression-level hard labels: y_t, times y_given for a task given another.
  std::vector<std::vector<float>> hard(n_tasks, std::vector<float>(rows));
  for (size_t t = 0; t < n_tasks; ++t) {
    const auto& y = batch.labels[static_cast<size_t>(label_index_[t])];
    const int g = given_task_[t];
    for (size_t i = 0; i < rows; ++i)
      hard[t][i] = y[i] * (g < 0 ? 1.0f : batch.labels[static_cast<size_t>(label_index_[static_cast<size_t>(g)])][i]);
  }
  std::vector<std::vector<float>> soft;
  if (!spec.teacher.empty()) {
    if (!teacher_)
      throw UserError(in_file(config_) + "model.distill.teacher: the teacher model was not loaded (set_teacher)");
    std::vector<std::vector<float>> p;
    teacher_->predict(batch, p);
    soft.assign(n_tasks, std::vector<float>(rows));
    for (size_t t = 0; t < n_tasks; ++t) {
      const auto [tt, tg] = teacher_targets_[t];
      for (size_t i = 0; i < rows; ++i)
        soft[t][i] = p[static_cast<size_t>(tt)][i] * (tg < 0 ? 1.0f : p[static_cast<size_t>(tg)][i]);
    }
  }
  // The targets go up (labels, the teacher's probabilities, the mixed score's target, the data
  // weights); the heads run where the logits are, and only the loss values come down.
  loss_columns_.resize(2 * n_tasks + 2);
  Tensor data_weight;
  if (!batch.weight.empty()) data_weight = stage_f32(loss_columns_[2 * n_tasks + 1], batch.weight.data(), B);
  const Tensor* w = batch.weight.empty() ? nullptr : &data_weight;
  train_prob_bufs_.resize(n_tasks);
  Tensor prob = ensure_buffer(train_prob_bufs_[0], B, 1, dtype_, device_);
  StepLoss loss;
  size_t k = 0;  // the loss index, in loss_names_ order
  for (size_t t = 0; t < n_tasks; ++t, ++k) {
    dlogits[t] = ensure_buffer(dlogit_bufs_[t], B, 1, dtype_, device_);
    const Tensor y = stage_f32(loss_columns_[t], hard[t].data(), B);
    const double l = ops::sigmoid_bce(three_tower_->logit(t), y, w, normalizers[0], prob, dlogits[t]);
    ops::scale(dlogits[t], weight[k]);
    loss.per_task.push_back(l);
    loss.total += weight[k] * l;
  }
  for (size_t t = 0; t < soft.size(); ++t, ++k) {
    Tensor grad = ensure_buffer(soft_grad_buf_, B, 1, dtype_, device_);
    const Tensor y = stage_f32(loss_columns_[n_tasks + t], soft[t].data(), B);
    const double l = ops::sigmoid_bce(three_tower_->logit(t), y, w, normalizers[0], prob, grad);
    ops::axpy(dlogits[t], weight[k], grad);
    loss.per_task.push_back(l);
    loss.total += weight[k] * l;
  }
  if (n_tasks > 1) {
    // Ours: σ(S) against the shares of the tasks' impression-level labels.
    std::vector<float> target(rows, 0.0f);
    for (size_t t = 0; t < n_tasks; ++t)
      for (size_t i = 0; i < rows; ++i) target[i] += static_cast<float>(spec.mix_targets[t]) * hard[t][i];
    dmixed = ensure_buffer(dmixed_buf_, B, 1, dtype_, device_);
    const Tensor y = stage_f32(loss_columns_[2 * n_tasks], target.data(), B);
    const double l = ops::sigmoid_bce(three_tower_->mixed(), y, w, normalizers[0], prob, dmixed);
    ops::scale(dmixed, weight[k]);
    loss.per_task.push_back(l);
    loss.total += weight[k] * l;
    ++k;
  }
  NCSREC_CHECK(k == loss_names_.size(), "three_tower: " << k << " losses computed, " << loss_names_.size() << " named");
  return loss;
}

void MultiTaskModel::retrieval_user(const Block& batch, Tensor& out, std::vector<float>* mixed) {
  if (!three_tower_) throw ConfigError(in_file(config_) + "model.type: retrieval vectors need type three_tower");
  forward(batch);
  three_tower_->forward(groups_[0].x, pass(0, false));
  three_tower_->user_side(out);
  if (mixed) {
    mixed->resize(static_cast<size_t>(batch.rows));
    const Tensor& m = three_tower_->mixed();
    const Tensor host = m.device() == Device::CPU ? m : m.to(Device::CPU);
    for (int64_t i = 0; i < batch.rows; ++i)
      (*mixed)[static_cast<size_t>(i)] = dtype_ == DType::F32 ? host.data<float>()[i]
                                                               : static_cast<float>(host.data<double>()[i]);
  }
}

void MultiTaskModel::retrieval_items(const Block& batch, Tensor& out) {
  if (!three_tower_) throw ConfigError(in_file(config_) + "model.type: retrieval vectors need type three_tower");
  forward(batch);
  three_tower_->forward(groups_[0].x, pass(0, false));
  three_tower_->item_side(out);
}

int64_t MultiTaskModel::retrieval_dim() const {
  return three_tower_ ? three_tower_->serving_dim() : 0;
}

void MultiTaskModel::add_condition_gradient(Tensor& dx, const Tensor& dcond) const {
  int64_t at = 0;
  for (const auto& [begin, end] : condition_cols_) {
    ops::add_columns(dx, begin, dcond, at, end - begin);
    at += end - begin;
  }
}

void MultiTaskModel::predict(const Block& batch, std::vector<std::vector<float>>& probabilities) {
  if (!score_params_.empty() && csr_.empty()) refresh_learned_masks();
  forward(batch);
  const int64_t B = batch.rows;
  const size_t T = config_.tasks.size();
  if (block_ && csr_.empty()) block_->forward(groups_[0].x, std::vector<bool>(T, true), pass(0, false));
  if (three_tower_) three_tower_->forward(groups_[0].x, pass(0, false));
  probabilities.assign(T, std::vector<float>(static_cast<size_t>(B)));
  for (size_t t = 0; t < T; ++t) {
    const Tensor& logit = logits_on_host(
        t, three_tower_ ? three_tower_->logit(t)
                        : towers_[t]->forward(shared_output(t), pass(static_cast<size_t>(group_of_task_[t]), false)));
    Tensor p = ensure_buffer(prob_bufs_[t], B, 1, dtype_, Device::CPU);
    const double offset = config_.tasks[t].logit_offset;  // negative downsampling's logit correction
    if (offset != 0.0) {
      Tensor shifted = ensure_buffer(shifted_logit_buf_, B, 1, dtype_, Device::CPU);
      if (dtype_ == DType::F32)
        for (int64_t i = 0; i < B; ++i) shifted.data<float>()[i] = logit.data<float>()[i] + static_cast<float>(offset);
      else
        for (int64_t i = 0; i < B; ++i) shifted.data<double>()[i] = logit.data<double>()[i] + offset;
      ops::sigmoid(p, shifted);
    } else {
      ops::sigmoid(p, logit);
    }
    if (dtype_ == DType::F32) std::memcpy(probabilities[t].data(), p.data<float>(), static_cast<size_t>(B) * sizeof(float));
    else
      for (int64_t i = 0; i < B; ++i) probabilities[t][static_cast<size_t>(i)] = static_cast<float>(p.data<double>()[i]);
  }
}


std::vector<double> MultiTaskModel::effective_loss_weights() const {
  std::vector<double> w;
  for (size_t k = 0; k < loss_names_.size(); ++k) {
    double v = base_loss_weights_[k];  // ESMM: ctr ↔ task 0, ctcvr ↔ task 1
    if (!log_sigma_.empty()) v *= std::exp(-2.0 * host_values(log_sigma_[k]->value)[0]) / 2.0;
    w.push_back(v);
  }
  return w;
}

std::vector<std::pair<std::string, double>> MultiTaskModel::loss_weights() const {
  const std::vector<double> w = effective_loss_weights();
  std::vector<std::pair<std::string, double>> out;
  for (size_t k = 0; k < w.size(); ++k) out.emplace_back(loss_names_[k], w[k]);
  return out;
}

int64_t MultiTaskModel::multiply_adds_per_sample() const {
  int64_t n = block_ ? block_->multiply_adds_per_row() : 0;
  if (three_tower_) n += three_tower_->multiply_adds_per_row();
  for (const auto& t : towers_) n += t->multiply_adds_per_row();
  if (interaction_col_ >= 0) n += interaction_fields_ * interaction_fields_ * config_.embedding_dim;
  return n;
}

std::string MultiTaskModel::masked_layer_name(int i) const { return masked_refs_.at(static_cast<size_t>(i)).name; }

const BitMask& MultiTaskModel::mask(int task, int i) const {
  NCSREC_CHECK(!masked_refs_.empty(), "the model has no masked layers");
  return masked_refs_.at(static_cast<size_t>(i)).layer->mask(task);
}

void MultiTaskModel::set_mask(int task, int i, const BitMask& mask) {
  NCSREC_CHECK(!masked_refs_.empty(), "the model has no masked layers");
  masked_refs_.at(static_cast<size_t>(i)).layer->set_mask(task, mask);
  update_masks_stale_ = true;
  drop_sparse_inference();  // built from the old masks
}

void MultiTaskModel::enable_sparse_inference() {
  if (!masked_) throw ConfigError(in_file(config_) + "model.type: sparse inference needs the masked layers of type ncs");
  if (dtype_ != DType::F32) throw UserError("sparse inference runs in f32");
  const DeviceCsrFactory make = device_ == Device::CPU ? nullptr : device_csr_factory(device_);
  if (device_ != Device::CPU && !make)
    throw UserError(std::string("sparse inference: the ") + device_name(device_) +
                    " backend has no CSR layer; load the model with device cpu");
  if (!score_params_.empty()) refresh_learned_masks();
  drop_sparse_inference();
  csr_.assign(config_.tasks.size(), {});
  if (make) csr_device_.resize(config_.tasks.size());
  for (size_t t = 0; t < config_.tasks.size(); ++t)
    for (size_t l = 0; l < masked_->depth(); ++l) {
      const MaskedLinear& layer = masked_->layer(l);
      // The CSR is built on the host from the weights there (a device model's come down once).
      const Tensor& weight = layer.weight()->value;
      const Tensor host_weight = weight.device() == Device::CPU ? weight : weight.to(Device::CPU);
      csr_[t].push_back(masked_to_csr(host_weight, layer.mask(static_cast<int>(t))));
      if (make) {
        const std::vector<double> bias = host_values(layer.bias()->value);
        const std::vector<float> bias_f32(bias.begin(), bias.end());
        csr_device_[t].push_back(make(csr_[t].back(), bias_f32.data(), layer.activation() == Activation::ReLU));
      }
    }
  csr_out_bufs_.assign(masked_->depth(), Tensor());
  csr_outs_.assign(masked_->depth(), Tensor());
}

std::vector<const Tensor*> MultiTaskModel::masked_weights() const {
  std::vector<const Tensor*> w;
  for (const auto& ref : masked_refs_) w.push_back(&ref.layer->weight()->value);
  return w;
}

const uint8_t* MultiTaskModel::update_mask(int task) {
  const size_t T = config_.tasks.size();
  NCSREC_CHECK(task >= -1 && task < static_cast<int>(T), "task " << task << " out of range");
  if (update_masks_stale_) {
    update_masks_.assign(T + 1, std::vector<uint8_t>(static_cast<size_t>(params_.numel()), 0));
    for (const Param& p : params_.params()) {
      // Owner (Param::task): a task's tower, gates, private experts, mask scores and loss
      // weight belong to it; everything else (bottom, shared experts, shared biases, masked
      // kernels) to all tasks, the masked kernels further restricted by each task's mask.
      // State the forward pass sets (BatchNorm statistics) is no optimizer's to move.
      if (!p.trainable) continue;
      const int owner = p.task;
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
    update_masks_device_stale_ = true;
  }
  return update_masks_[static_cast<size_t>(task + 1)].data();
}

const Tensor& MultiTaskModel::logits_on_host(size_t task, const Tensor& logits) {
  if (logits.device() == Device::CPU) return logits;
  Tensor& host = staged_logits_[task];
  host = ensure_buffer(logit_host_bufs_[task], logits.dim(0), logits.dim(1), logits.dtype(), Device::CPU,
                       logits.device());
  host.copy_from(logits);
  return host;
}

const uint8_t* MultiTaskModel::update_mask_on_device(int task) {
  const uint8_t* host = update_mask(task);
  if (device_ == Device::CPU) return host;
  if (update_masks_device_stale_) {
    update_masks_device_.resize(update_masks_.size());  // changed masks reuse the memory
    for (size_t i = 0; i < update_masks_.size(); ++i) update_masks_device_[i].assign_bytes(update_masks_[i], device_);
    update_masks_device_stale_ = false;
  }
  return static_cast<const uint8_t*>(update_masks_device_[static_cast<size_t>(task + 1)].raw());
}

}  // namespace ncsrec

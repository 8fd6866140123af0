// The serving export (train/export.h): load the checkpoint as predict does, fold it into its
// serving form, and write each group of docs/export.md. Every name and attribute written here
// is specified there; a change here is a change of the format (kExportFormatVersion).
#include "train/export.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <unordered_set>
#include <utility>

#include <yaml-cpp/yaml.h>

#include "core/config.h"
#include "core/error.h"
#include "core/hdf5_util.h"
#include "core/masks.h"
#include "models/serving.h"
#include "train/checkpoint.h"
#include "train/train_config.h"

namespace ncsrec {
namespace fs = std::filesystem;

namespace {

// FeedForward builds BatchNorm and LayerNorm with their default eps (core/layers/norm.h).
constexpr double kNormEps = 1e-5;

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ",") + n;
  return s;
}

std::vector<uint64_t> dims_of(const Shape& s) { return std::vector<uint64_t>(s.begin(), s.end()); }

const char* norm_name(Norm n) { return n == Norm::Batch ? "batch" : n == Norm::Layer ? "layer" : "none"; }

const char* pooling_name(Pooling p) { return p == Pooling::Mean ? "mean" : "sum"; }

// Refuses an --out the write could only fail on, before the checkpoint is loaded.
void check_out_path(const std::string& out) {
  if (out.empty()) throw UserError("export: --out is empty");
  if (fs::is_directory(out)) throw UserError("export: --out " + out + " is a folder; give a file name (FILE.h5)");
  const fs::path parent = fs::path(out).parent_path().empty() ? fs::path(".") : fs::path(out).parent_path();
  if (!fs::is_directory(parent))
    throw UserError("export: cannot write " + out + ": the folder " + parent.string() + " does not exist");
  if (::access(parent.c_str(), W_OK | X_OK) != 0)
    throw UserError("export: cannot write " + out + ": the folder " + parent.string() + " is not writable");
}

// The checkpoint's config with the serving form's changes (models/serving.h: APG factors
// multiplied out, apg.overparam 0), still a config ncsrec reads.
std::string serving_yaml(const std::string& trained_yaml, bool fold_apg, const std::string& where) {
  YAML::Node root = YAML::Load(trained_yaml);
  if (fold_apg) apply_override(root, "model.apg.overparam=0");
  YAML::Emitter emitter;
  emitter << root;
  const std::string text = emitter.c_str();
  parse_train_config(text, where);  // an invariant: the edited config is still valid
  return text;
}

void write_meta(h5::File& f, const std::string& checkpoint, const CheckpointMeta& meta, const std::string& yaml,
                const ExportOptions& options) {
  f.create_group("meta");
  f.set_attr("meta", "format", std::string("ncsrec-export"));
  f.set_attr("meta", "format_version", kExportFormatVersion);
  f.set_attr("meta", "kind", std::string(options.since.empty() ? "full" : "delta"));
  std::error_code ec;
  const fs::path abs = fs::weakly_canonical(fs::absolute(checkpoint), ec);
  f.set_attr("meta", "source_checkpoint", ec ? checkpoint : abs.string());
  f.set_attr("meta", "step", meta.step);
  f.set_attr("meta", "epoch", meta.epoch);
  f.set_attr("meta", "day", meta.day);
  f.set_attr("meta", "init_from", meta.init_from);
  f.set_attr("meta", "world_size", meta.world_size);
  f.set_attr("meta", "checkpoint_format_version", meta.format_version);
  f.set_attr("meta", "config", yaml);
  f.set_attr_f64("meta", "csr_below", options.csr_below);
}

void write_schema(h5::File& f, const DataSchema& schema) {
  f.create_group("schema");
  f.set_attr("schema", "labels", join(schema.tasks));
  f.set_attr("schema", "slots", join(schema.slots));
  f.set_attr("schema", "dense_dim", schema.dense_dim);
}

void write_model(h5::File& f, const MultiTaskModel& model) {
  const ModelConfig& c = model.config();
  f.create_group("model");
  f.set_attr("model", "type", c.type);
  f.set_attr("model", "esmm", static_cast<int64_t>(c.esmm ? 1 : 0));
  std::vector<std::string> tasks, outputs;
  for (const auto& t : c.tasks) {
    tasks.push_back(t.name);
    outputs.push_back("p_" + t.name);
  }
  if (c.esmm) outputs.push_back("p_ctcvr");
  f.set_attr("model", "tasks", join(tasks));
  f.set_attr("model", "outputs", join(outputs));
  f.set_attr("model", "embedding_dim", c.embedding_dim);
  f.set_attr("model", "norm", std::string(norm_name(c.layers.norm)));
  f.set_attr_f64("model", "norm_eps", kNormEps);
  f.set_attr_i64s("model", "bottom", c.bottom);
  f.set_attr_i64s("model", "shared", c.shared);
  const bool experts = c.type == "mmoe" || c.type == "ple";
  f.set_attr("model", "experts_masked", static_cast<int64_t>(experts && c.experts.masked ? 1 : 0));
  f.set_attr_i64s("model", "expert_sizes", experts ? c.experts.sizes : std::vector<int64_t>{});
  f.set_attr("model", "mmoe_experts", c.type == "mmoe" ? c.experts.count : int64_t{0});
  f.set_attr("model", "ple_levels", c.type == "ple" ? c.experts.levels : int64_t{0});
  f.set_attr("model", "ple_task_experts", c.type == "ple" ? c.experts.task_experts : int64_t{0});
  f.set_attr("model", "ple_shared_experts", c.type == "ple" ? c.experts.shared_experts : int64_t{0});
  std::vector<std::string> masked;
  for (int l = 0; l < model.num_masked_layers(); ++l) masked.push_back(model.masked_layer_name(l));
  f.set_attr("model", "masked_layers", join(masked));
  f.set_attr("model", "apg_in", join(c.apg.in));
  f.set_attr("model", "apg_rank", c.apg.options.rank);
  f.set_attr_i64s("model", "apg_hyper_hidden", c.apg.options.hyper_hidden);
  f.set_attr("model", "apg_generate_bias", static_cast<int64_t>(c.apg.options.generate_bias ? 1 : 0));
  f.set_attr("model", "apg_condition", join(c.apg.condition));
  for (size_t t = 0; t < c.tasks.size(); ++t) {
    const TaskSpec& spec = c.tasks[t];
    const std::string g = "model/tasks/" + spec.name;
    f.create_group(g);
    f.set_attr(g, "index", static_cast<int64_t>(t));
    f.set_attr(g, "label", spec.label);
    f.set_attr(g, "given", spec.given);
    f.set_attr_i64s(g, "tower", spec.tower);
    f.set_attr_f64(g, "logit_offset", spec.logit_offset);
  }
}

// The input vector's layout, as MultiTaskModel builds it: each table's slots in config order
// (one block of embedding_dim columns per slot), the dense features, the F×F dot products.
void write_input(h5::File& f, const MultiTaskModel& model, const DataSchema& schema) {
  const ModelConfig& c = model.config();
  std::vector<std::string> slots, tables, pooling;
  for (const auto& t : c.tables)
    for (const auto& s : t.slots) {
      slots.push_back(s);
      tables.push_back(t.name);
      pooling.push_back(pooling_name(t.pooling));
    }
  const int64_t fields = static_cast<int64_t>(slots.size());
  const int64_t dense = c.use_dense ? schema.dense_dim : 0;
  f.create_group("input");
  f.set_attr("input", "slots", join(slots));
  f.set_attr("input", "tables", join(tables));
  f.set_attr("input", "pooling", join(pooling));
  f.set_attr("input", "per_task_tables", static_cast<int64_t>(c.type == "single_task" ? 1 : 0));
  f.set_attr("input", "embedding_dim", c.embedding_dim);
  f.set_attr("input", "fields", fields);
  f.set_attr("input", "dense_col", model.dense_col());
  f.set_attr("input", "dense_dim", dense);
  std::vector<std::string> history;
  std::vector<int64_t> history_dims;
  if (model.history())
    for (const auto& [name, width] : model.history()->widths()) {
      history.push_back(name);
      history_dims.push_back(width);
    }
  f.set_attr("input", "history", join(history));
  f.set_attr_i64s("input", "history_dims", history_dims);
  f.set_attr("input", "history_col", model.history() ? model.history_col() : int64_t{-1});
  f.set_attr("input", "interaction", c.interaction);
  f.set_attr("input", "interaction_col", model.interaction_col());
  f.set_attr("input", "interaction_fields", model.interaction_fields());
  f.set_attr("input", "width", model.input_dim());
}

bool is_masked_kernel(const MultiTaskModel& model, const std::string& name) {
  for (int l = 0; l < model.num_masked_layers(); ++l)
    if (name == model.masked_layer_name(l) + ".weight") return true;
  return false;
}

// Inference parameters: all but mask scores, learned loss weights and the shared W of masked
// layers (exported per task under masked/).
int64_t write_dense(h5::File& f, MultiTaskModel& model) {
  int64_t n = 0;
  for (const Param& p : model.params().params()) {
    // History queries are folded into history/ (one vector per id).
    if (p.name.rfind("mask_score.", 0) == 0 || p.name.rfind("loss_weight.", 0) == 0 ||
        p.name.rfind("history.", 0) == 0 || is_masked_kernel(model, p.name))
      continue;
    f.write("dense/" + p.name, p.value.data<float>(), dims_of(p.shape));
    ++n;
  }
  return n;
}

// history/<feature>: E-CDCTR's historical embedding features in their serving form, one vector
// per id (attention folded with the learned query); written whole in full and delta exports.
void write_history(h5::File& f, const MultiTaskModel& model) {
  if (!model.history()) return;
  f.create_group("history");
  f.set_attr("history", "version", model.history()->version());
  f.set_attr("history", "file", model.history()->file());
  f.set_attr("history", "aggregate", model.config().history.aggregate);
  for (const auto& t : model.history()->serving_tables()) {
    const std::string g = "history/" + t.name;
    f.write(g + "/keys", t.keys.data(), {t.keys.size()});
    f.write(g + "/values", t.values.data(), {t.keys.size(), static_cast<uint64_t>(t.dim)});
    f.set_attr(g, "slot", t.slot);
    f.set_attr(g, "kind", t.kind);
    f.set_attr(g, "rows", t.rows);
    f.set_attr(g, "dim", t.dim);
  }
}

// masked/<layer>/<task>: W ⊙ M_t [in, out], dense, or (density below csr_below) the CSR of that
// same matrix: row i (an input) holds the outputs o with M_t[i, o] = 1, ascending, and
// W[i, o]; every masked-in connection is stored, even where W holds 0.
void write_masked(h5::File& f, MultiTaskModel& model, const ExportOptions& options, ExportSummary& summary) {
  const std::vector<const Tensor*> weights = model.masked_weights();
  for (int l = 0; l < model.num_masked_layers(); ++l) {
    const Tensor& w = *weights[static_cast<size_t>(l)];
    const int64_t in = w.dim(0), out = w.dim(1);
    const float* wv = w.data<float>();
    for (size_t t = 0; t < model.config().tasks.size(); ++t) {
      const BitMask& m = model.mask(static_cast<int>(t), l);
      NCSREC_CHECK(m.rows == in && m.cols == out, "mask of " << model.masked_layer_name(l) << " is not [in, out]");
      const std::string name = "masked/" + model.masked_layer_name(l) + "/" + model.config().tasks[t].name;
      if (m.density() < options.csr_below) {
        std::vector<int64_t> indptr(static_cast<size_t>(in + 1), 0), indices;
        std::vector<float> data;
        for (int64_t i = 0; i < in; ++i) {
          for (int64_t o = 0; o < out; ++o)
            if (m.get(i * out + o)) {
              indices.push_back(o);
              data.push_back(wv[i * out + o]);
            }
          indptr[static_cast<size_t>(i + 1)] = static_cast<int64_t>(indices.size());
        }
        f.write(name + "/indptr", indptr.data(), {indptr.size()});
        f.write(name + "/indices", indices.data(), {indices.size()});
        f.write(name + "/data", data.data(), {data.size()});
        f.set_attr(name, "format", std::string("csr"));
        ++summary.masked_csr;
      } else {
        std::vector<float> dense(static_cast<size_t>(in * out));
        for (int64_t e = 0; e < in * out; ++e) dense[static_cast<size_t>(e)] = m.get(e) ? wv[e] : 0.0f;
        f.write(name, dense.data(), {static_cast<uint64_t>(in), static_cast<uint64_t>(out)});
        f.set_attr(name, "format", std::string("dense"));
        ++summary.masked_dense;
      }
      f.set_attr_i64s(name, "shape", {in, out});
      f.set_attr(name, "nnz", m.count());
    }
  }
}

// What a delta is taken against: the since checkpoint's step and the keys each table held.
struct Since {
  int64_t step = -1;
  std::map<std::string, std::unordered_set<int64_t>> keys;  // by table name
};

Since read_since(const std::string& since, const CheckpointMeta& now) {
  verify_checkpoint(since);
  const CheckpointMeta then = read_checkpoint_meta(since);
  // updated_step tells "changed after `then`" only when the steps since then are numbered after
  // then's step: the same run later on, or a run that continued its step count (init.from with
  // optimizer_state).
  const bool same_run = then.first_step == now.first_step && then.init_from == now.init_from && then.step <= now.step;
  if (!same_run && now.first_step < then.step)
    throw UserError("export --since " + since + ": that checkpoint is at step " + std::to_string(then.step) +
                    ", but the exported run's steps start at " + std::to_string(now.first_step) +
                    " (not a later checkpoint of the same run, nor a run continuing from it with "
                    "init.optimizer_state): rows changed since cannot be told apart; export in full instead");
  Since out;
  out.step = then.step;
  for (int64_t r = 0; r < then.world_size; ++r) {
    const h5::File f = h5::File::open_read(since + "/rank-" + std::to_string(r) + ".h5");
    if (!f.exists("embedding")) continue;
    for (const std::string& name : f.list("embedding")) {
      auto& set = out.keys[name];
      for (int64_t k : f.read_i64("embedding/" + name + "/keys")) set.insert(k);
    }
  }
  return out;
}

// tables/<table>: keys ascending (a full export of a fixed table: global row r at position r),
// their values and updated_step; a delta: only the rows inserted or updated since, and the
// keys evicted since (`evicted`).
void write_tables(h5::File& f, MultiTaskModel& model, const Since* since, ExportSummary& summary) {
  const ModelConfig& c = model.config();
  const auto& tables = std::as_const(model).tables();
  // Built as the model builds them: per input group (one per task in single_task), the
  // config's tables in order.
  NCSREC_CHECK(!c.tables.empty() && tables.size() % c.tables.size() == 0, "tables do not follow the config");
  for (size_t i = 0; i < tables.size(); ++i) {
    const ShardedTable& table = tables[i];
    const TableSpec& spec = c.tables[i % c.tables.size()];
    NCSREC_CHECK(table.hashed() || table.holds_all_rows(), "table " << table.name() << " is not whole in this process");
    const std::string g = "tables/" + table.name();
    const EmbeddingTable& shard = table.shard();
    const RowColumn& all_keys = shard.keys();
    const std::unordered_set<int64_t>* before = nullptr;
    if (since) {
      const auto it = since->keys.find(table.name());
      if (it == since->keys.end())
        throw UserError("export --since: that checkpoint has no table " + table.name() + " (another model?)");
      before = &it->second;
    }
    std::vector<int64_t> rows;  // shard rows exported, by ascending key
    for (int64_t r = 0; r < shard.rows(); ++r)
      if (!before || shard.updated_step()[static_cast<size_t>(r)] > since->step || !before->count(all_keys[static_cast<size_t>(r)]))
        rows.push_back(r);
    std::sort(rows.begin(), rows.end(), [&](int64_t a, int64_t b) { return all_keys[static_cast<size_t>(a)] < all_keys[static_cast<size_t>(b)]; });
    std::vector<int64_t> keys, updated;
    std::vector<float> values;
    values.reserve(rows.size() * static_cast<size_t>(table.dim()));
    for (int64_t r : rows) {
      keys.push_back(all_keys[static_cast<size_t>(r)]);
      updated.push_back(shard.updated_step()[static_cast<size_t>(r)]);
      const float* v = shard.values().data<float>() + r * table.dim();
      values.insert(values.end(), v, v + table.dim());
    }
    f.write(g + "/keys", keys.data(), {keys.size()});
    f.write(g + "/values", values.data(), {static_cast<uint64_t>(keys.size()), static_cast<uint64_t>(table.dim())});
    f.write(g + "/updated_step", updated.data(), {updated.size()});
    if (before) {
      std::vector<int64_t> evicted;
      for (int64_t k : *before)
        if (table.shard_index(k) < 0) evicted.push_back(k);
      std::sort(evicted.begin(), evicted.end());
      f.write(g + "/evicted", evicted.data(), {evicted.size()});
      summary.evicted += static_cast<int64_t>(evicted.size());
    }
    f.set_attr(g, "kind", std::string(table.hashed() ? "hash" : "fixed"));
    f.set_attr(g, "rows", table.rows());
    f.set_attr(g, "dim", table.dim());
    f.set_attr(g, "pooling", std::string(pooling_name(spec.pooling)));
    f.set_attr(g, "slots", join(spec.slots));
    ++summary.tables;
    summary.table_rows += static_cast<int64_t>(keys.size());
  }
}

}  // namespace

ExportSummary export_checkpoint(const std::string& checkpoint, const DataSchema& schema, const std::string& out,
                                const ExportOptions& options) {
  check_out_path(out);
  TrainConfig config;
  CheckpointMeta meta;
  // One process reads every rank's file (embedding rows by key), as predict does.
  std::unique_ptr<MultiTaskModel> trained = load_model(checkpoint, schema, nullptr, &config, &meta);
  const bool fold_apg = trained->config().apg.options.overparam != 0;
  std::unique_ptr<MultiTaskModel> folded;
  if (fold_apg) {
    folded = std::make_unique<MultiTaskModel>(serving_config(trained->config()), schema, DType::F32, config.seed);
    copy_for_serving(*trained, *folded);
    trained.reset();
  }
  MultiTaskModel& model = folded ? *folded : *trained;
  model.refresh_masks();
  const std::string yaml = serving_yaml(meta.config_yaml, fold_apg, checkpoint + " (saved config)");

  ExportSummary summary;
  summary.step = meta.step;
  summary.day = meta.day;
  Since since;
  if (!options.since.empty()) {
    since = read_since(options.since, meta);
    summary.since_step = since.step;
  }
  const std::string tmp = out + ".tmp";
  struct RemoveOnFailure {  // a failed export leaves no FILE.tmp behind (and FILE untouched)
    std::string path;
    bool armed = true;
    ~RemoveOnFailure() {
      std::error_code ec;
      if (armed) fs::remove(path, ec);
    }
  } cleanup{tmp};
  try {
    h5::File f = h5::File::create(tmp);
    write_meta(f, checkpoint, meta, yaml, options);
    write_schema(f, schema);
    write_model(f, model);
    write_input(f, model, schema);
    summary.dense_tensors = write_dense(f, model);
    write_masked(f, model, options, summary);
    write_history(f, model);
    if (!options.since.empty()) {
      std::error_code abs_ec;
      const fs::path abs = fs::weakly_canonical(fs::absolute(options.since), abs_ec);
      f.set_attr("meta", "since_checkpoint", abs_ec ? options.since : abs.string());
      f.set_attr("meta", "since_step", since.step);
    }
    write_tables(f, model, options.since.empty() ? nullptr : &since, summary);
    f.close();
    fsync_path(tmp, false, "export");
  } catch (const UserError& e) {
    throw UserError("export: writing " + out + " failed (disk full?); " + out + " was left as it was: " + e.what());
  }
  std::error_code ec;
  fs::rename(tmp, out, ec);
  if (ec) throw UserError("export: cannot rename " + tmp + " to " + out + ": " + ec.message());
  cleanup.armed = false;
  const fs::path parent = fs::path(out).parent_path().empty() ? fs::path(".") : fs::path(out).parent_path();
  fsync_path(parent.string(), true, "export");
  summary.bytes = static_cast<uint64_t>(fs::file_size(out, ec));
  return summary;
}

}  // namespace ncsrec

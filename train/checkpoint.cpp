#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "core/crc32c.h"
#include "core/error.h"
#include "core/hdf5_util.h"
#include "train/mask_io.h"

namespace ncsrec {
namespace fs = std::filesystem;

void fsync_path(const std::string& path, bool directory, const char* what) {
  const int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) throw UserError(std::string(what) + ": cannot open " + path + " to sync it to disk");
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw UserError(std::string(what) + ": fsync of " + path + " failed (disk full or I/O error?)");
}

namespace {

std::vector<uint64_t> dims_of(const Shape& s) { return std::vector<uint64_t>(s.begin(), s.end()); }

void write_tensor(h5::File& f, const std::string& name, const Tensor& t) {
  const Tensor host = t.device() == Device::CPU ? t : t.to(Device::CPU);
  switch (host.dtype()) {
    case DType::F32: f.write(name, host.data<float>(), dims_of(host.shape())); break;
    case DType::F64: f.write(name, host.data<double>(), dims_of(host.shape())); break;
    case DType::I64: f.write(name, host.data<int64_t>(), dims_of(host.shape())); break;
    case DType::U8: f.write(name, host.data<uint8_t>(), dims_of(host.shape())); break;
  }
}

// Rows `order` of `t` (a leading dimension of rows), as a new tensor.
Tensor gather_rows(const Tensor& t, const std::vector<int64_t>& order) {
  Shape shape = t.shape();
  shape[0] = static_cast<int64_t>(order.size());
  Tensor out = Tensor::empty(shape, t.dtype(), Device::CPU);
  const size_t row_bytes = t.dim(0) > 0 ? t.nbytes() / static_cast<size_t>(t.dim(0)) : 0;
  for (size_t i = 0; i < order.size(); ++i)
    std::memcpy(static_cast<char*>(out.raw()) + i * row_bytes,
                static_cast<const char*>(t.raw()) + static_cast<size_t>(order[i]) * row_bytes, row_bytes);
  return out;
}

std::vector<int64_t> gather(const RowColumn& v, const std::vector<int64_t>& order) {
  std::vector<int64_t> out(order.size());
  for (size_t i = 0; i < order.size(); ++i) out[i] = v[static_cast<size_t>(order[i])];
  return out;
}

}  // namespace

void read_checkpoint_tensor(const h5::File& f, const std::string& name, Tensor& t, const std::string& dir) {
  const std::vector<uint64_t> d = f.dims(name);
  if (d != dims_of(t.shape())) {
    std::ostringstream os;
    os << "checkpoint " << dir << ": " << name << " has shape [";
    for (size_t i = 0; i < d.size(); ++i) os << (i ? ", " : "") << d[i];
    os << "] but the model expects " << shape_string(t.shape())
       << " (was the checkpoint written by a different model config?)";
    throw UserError(os.str());
  }
  Tensor host = Tensor::empty(t.shape(), t.dtype(), Device::CPU);
  switch (t.dtype()) {
    case DType::F32: { auto v = f.read_f32(name); std::copy(v.begin(), v.end(), host.data<float>()); break; }
    case DType::F64: { auto v = f.read_f64(name); std::copy(v.begin(), v.end(), host.data<double>()); break; }
    case DType::I64: { auto v = f.read_i64(name); std::copy(v.begin(), v.end(), host.data<int64_t>()); break; }
    case DType::U8: { auto v = f.read_u8(name); std::copy(v.begin(), v.end(), host.data<uint8_t>()); break; }
  }
  t.copy_from(host);
}

namespace {

std::string rank_file(int rank) { return "rank-" + std::to_string(rank) + ".h5"; }

void rename_checked(const std::string& from, const std::string& to) {
  std::error_code rc;
  fs::rename(from, to, rc);
  if (rc) throw UserError("checkpoint: cannot rename " + from + " to " + to + ": " + rc.message());
}

bool verifies(const std::string& dir) {
  try {
    verify_checkpoint(dir);
    return true;
  } catch (const UserError&) {
    return false;
  }
}

}  // namespace

void recover_checkpoint(const std::string& dir) {
  if (fs::exists(dir)) return;
  // A crash between the two renames of a save leaves `dir` missing, the previous checkpoint
  // as `dir.old` and the new one, complete (its manifest is written last), as `dir.tmp`.
  for (const std::string& candidate : {dir + ".tmp", dir + ".old"})
    if (fs::exists(candidate + "/manifest") && verifies(candidate)) {
      rename_checked(candidate, dir);
      return;
    }
}

namespace {

// Copies the rows of `name` (a [keys, ...] dataset of `f`) whose key this rank holds into the
// same shard rows of `out`; marks them in `filled`.
void copy_rows_by_key(const h5::File& f, const std::string& name, const std::vector<int64_t>& keys,
                      const ShardedTable& table, Tensor& out, std::vector<uint8_t>* filled, const std::string& dir) {
  const std::vector<uint64_t> d = f.dims(name);
  // Elements per row from the shape, not numel / rows: a shard may hold no row (a table_wise
  // table on another rank), and its rows still have their width.
  int64_t width = 1;
  for (int k = 1; k < static_cast<int>(out.ndim()); ++k) width *= out.dim(k);
  uint64_t file_width = 1;
  for (size_t k = 1; k < d.size(); ++k) file_width *= d[k];
  if (d.empty() || d[0] != keys.size() || static_cast<int64_t>(file_width) != width || d.size() != out.shape().size())
    throw UserError("checkpoint " + dir + ": " + name + " in " + f.path() + " does not match its " +
                    std::to_string(keys.size()) + " keys and the model's rows of " + std::to_string(width) +
                    " (was the checkpoint written by a different model config?)");
  const size_t row_bytes = static_cast<size_t>(width) * dtype_size(out.dtype());
  auto copy = [&](const auto& data) {
    const char* src = reinterpret_cast<const char*>(data.data());
    char* dst = static_cast<char*>(out.raw());
    for (size_t k = 0; k < keys.size(); ++k) {
      const int64_t r = table.shard_index(keys[k]);  // -1: not held here (or not a row of the table)
      if (r < 0) continue;
      std::memcpy(dst + static_cast<size_t>(r) * row_bytes, src + k * row_bytes, row_bytes);
      if (filled) (*filled)[static_cast<size_t>(r)] = 1;
    }
  };
  switch (out.dtype()) {
    case DType::F32: copy(f.read_f32(name)); break;
    case DType::F64: copy(f.read_f64(name)); break;
    case DType::I64: copy(f.read_i64(name)); break;
    case DType::U8: copy(f.read_u8(name)); break;
  }
}

// Copies the rows of the per-row counter `name` (int64 [keys]) whose key this rank holds; a
// checkpoint written before the counters existed leaves them as they are.
void copy_counter_by_key(const h5::File& f, const std::string& name, const std::vector<int64_t>& keys,
                         const ShardedTable& table, RowColumn& out, const std::string& dir) {
  if (!f.exists(name)) return;
  const std::vector<int64_t> values = f.read_i64(name);
  if (values.size() != keys.size())
    throw UserError("checkpoint " + dir + ": " + name + " in " + f.path() + " has " + std::to_string(values.size()) +
                    " rows for " + std::to_string(keys.size()) + " keys");
  for (size_t k = 0; k < keys.size(); ++k) {
    const int64_t r = table.shard_index(keys[k]);
    if (r >= 0) out[static_cast<size_t>(r)] = values[k];
  }
}

}  // namespace

void load_table_rows(const std::string& dir, int64_t world_size, std::vector<ShardedTable>& tables,
                     const std::vector<SparseOptimizer*>& optimizers, const std::vector<std::string>* sources) {
  std::vector<std::vector<uint8_t>> filled;
  for (const ShardedTable& t : tables) filled.emplace_back(static_cast<size_t>(t.shard().rows()), 0);
  auto source_of = [&](size_t i) { return sources ? (*sources)[i] : tables[i].name(); };
  // Every rank file may hold rows of this rank's shards (another world size, another placement):
  // each is opened once and read for every table.
  for (int r = 0; r < world_size; ++r) {
    const h5::File f = h5::File::open_read(dir + "/" + rank_file(r));
    for (size_t i = 0; i < tables.size(); ++i) {
      ShardedTable& table = tables[i];
      if (source_of(i).empty()) continue;
      const std::string base = "embedding/" + source_of(i);
      if (!f.exists(base + "/keys"))
        throw UserError("checkpoint " + dir + ": " + rank_file(r) + " has no table '" + source_of(i) +
                        "' (was it written by a different model config?)");
      const std::vector<int64_t> keys = f.read_i64(base + "/keys");
      table.insert_owned(keys);  // a hash table: rows for the ids this rank owns
      EmbeddingTable& shard = table.shard();
      copy_rows_by_key(f, base + "/values", keys, table, shard.values(), table.hashed() ? nullptr : &filled[i], dir);
      if (i < optimizers.size() && optimizers[i])
        for (auto& [slot, t] : optimizers[i]->state()) copy_rows_by_key(f, base + "/optim/" + slot, keys, table, *t, nullptr, dir);
      copy_counter_by_key(f, base + "/count", keys, table, shard.count(), dir);
      copy_counter_by_key(f, base + "/last_seen_day", keys, table, shard.last_seen_day(), dir);
      copy_counter_by_key(f, base + "/updated_step", keys, table, shard.updated_step(), dir);
      if (table.hashed() && f.exists(base + "/pending/keys")) {
        const std::vector<int64_t> ids = f.read_i64(base + "/pending/keys"), count = f.read_i64(base + "/pending/count"),
                                   day = f.read_i64(base + "/pending/last_seen_day");
        if (count.size() != ids.size() || day.size() != ids.size())
          throw UserError("checkpoint " + dir + ": " + base + "/pending in " + f.path() + " has datasets of unequal length");
        for (size_t k = 0; k < ids.size(); ++k) table.set_pending(ids[k], {count[k], day[k]});
      }
    }
  }
  for (size_t i = 0; i < tables.size(); ++i)
    for (size_t k = 0; k < filled[i].size() && !source_of(i).empty() && !tables[i].hashed(); ++k)
      if (!filled[i][k])
        throw UserError("checkpoint " + dir + ": table '" + tables[i].name() + "' has no row " +
                        std::to_string(tables[i].shard_rows()[k]) + " (was it written for a table of other rows?)");
}

void save_checkpoint(const std::string& dir, const TrainingState& state, const CheckpointMeta& meta,
                     Communicator& comm) {
  const std::string tmp = dir + ".tmp";
  if (comm.rank() == 0) {
    recover_checkpoint(dir);  // never delete the only whole copy a crash left behind
    std::error_code ec;
    fs::remove_all(tmp, ec);  // now at most a stale half-written folder
    fs::create_directories(tmp, ec);
    if (ec) throw UserError("checkpoint: cannot create " + tmp + ": " + ec.message());
  }
  comm.barrier();

  const std::string path = tmp + "/" + rank_file(comm.rank());
  {
    h5::File f = h5::File::create(path);
    f.create_group("meta");
    f.set_attr("meta", "config", meta.config_yaml);
    f.set_attr("meta", "step", meta.step);
    f.set_attr("meta", "epoch", meta.epoch);
    f.set_attr("meta", "data_position", meta.data_position);
    f.set_attr("meta", "world_size", meta.world_size);
    f.set_attr("meta", "seed", meta.seed);
    f.set_attr("meta", "optimizer_step", meta.optimizer_step);
    f.set_attr("meta", "format_version", meta.format_version);
    f.set_attr("meta", "day", meta.day);
    f.set_attr("meta", "init_from", meta.init_from);
    f.set_attr("meta", "first_step", meta.first_step);
    const HistoryFeatures* history = state.model->history();
    f.set_attr("meta", "history_file", history ? history->file() : std::string());
    f.set_attr("meta", "history_version", history ? history->version() : std::string());
    f.set_attr("meta", "rank", static_cast<int64_t>(comm.rank()));

    MultiTaskModel& model = *state.model;
    for (Param& p : model.params().params()) write_tensor(f, "dense/" + p.name, p.value);
    if (state.dense_optimizer) {
      for (auto& [slot, buffer] : state.dense_optimizer->state())
        for (Param& p : model.params().params())
          write_tensor(f, "optim/" + p.name + "/" + slot, buffer->view(p.offset, p.shape));
    }
    if (model.num_masked_layers() > 0) write_masks(f, model);
    // Each rank writes the rows it holds, keyed by global row: any number of ranks can load them.
    const auto& tables = std::as_const(model).tables();
    for (size_t i = 0; i < tables.size(); ++i) {
      // Rows in increasing key order (a hash table holds them in insertion order), so that a
      // checkpoint does not depend on the order ids arrived in, or on an earlier restore.
      const std::string base = "embedding/" + tables[i].name();
      const EmbeddingTable& shard = tables[i].shard();
      std::vector<int64_t> order(static_cast<size_t>(shard.rows()));
      for (size_t r = 0; r < order.size(); ++r) order[r] = static_cast<int64_t>(r);
      const RowColumn& keys = shard.keys();
      std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keys[static_cast<size_t>(a)] < keys[static_cast<size_t>(b)]; });
      const std::vector<int64_t> sorted_keys = gather(keys, order);
      f.write(base + "/keys", sorted_keys.data(), {sorted_keys.size()});
      write_tensor(f, base + "/values", gather_rows(shard.values(), order));
      if (i < state.sparse_optimizers.size() && state.sparse_optimizers[i])
        for (auto& [slot, t] : state.sparse_optimizers[i]->state()) write_tensor(f, base + "/optim/" + slot, gather_rows(*t, order));
      for (const auto& [name, counter] : {std::pair<const char*, const RowColumn*>{"count", &shard.count()},
                                          {"last_seen_day", &shard.last_seen_day()},
                                          {"updated_step", &shard.updated_step()}}) {
        const std::vector<int64_t> v = gather(*counter, order);
        f.write(base + "/" + name, v.data(), {v.size()});
      }
      if (tables[i].hashed()) {
        std::vector<int64_t> ids, count, day;
        for (const auto& [id, p] : tables[i].pending()) {
          ids.push_back(id);
          count.push_back(p.count);
          day.push_back(p.last_seen_day);
        }
        f.write(base + "/pending/keys", ids.data(), {ids.size()});
        f.write(base + "/pending/count", count.data(), {count.size()});
        f.write(base + "/pending/last_seen_day", day.data(), {day.size()});
      }
    }
    f.close();
  }
  fsync_path(path, false);
  comm.barrier();

  if (comm.rank() == 0) {
    std::ostringstream manifest;
    manifest << "ncsrec-checkpoint " << kCheckpointFormatVersion << "\n";
    for (int r = 0; r < comm.world_size(); ++r) {
      uint64_t size = 0;
      const uint32_t crc = crc32c_file(tmp + "/" + rank_file(r), &size);
      manifest << rank_file(r) << " " << size << " " << std::hex << crc << std::dec << "\n";
    }
    {
      std::ofstream out(tmp + "/manifest");
      out << manifest.str();
      if (!out.flush()) throw UserError("checkpoint: cannot write " + tmp + "/manifest (disk full?)");
    }
    fsync_path(tmp + "/manifest", false);
    fsync_path(tmp, true);
    // Swap in: the old checkpoint (if any) is moved aside first and removed only after the
    // new one has its final name; a crash in between leaves `dir.old` whole.
    std::error_code ec;
    const std::string old = dir + ".old";
    fs::remove_all(old, ec);
    if (fs::exists(dir)) rename_checked(dir, old);
    rename_checked(tmp, dir);
    fsync_path(fs::path(dir).parent_path().empty() ? "." : fs::path(dir).parent_path().string(), true);
    fs::remove_all(old, ec);
  }
  comm.barrier();
}

void verify_checkpoint(const std::string& dir) {
  const std::string what = "checkpoint " + dir;
  if (!fs::is_directory(dir)) throw UserError(what + ": no such checkpoint folder");
  std::ifstream in(dir + "/manifest");
  if (!in)
    throw UserError(what + ": no manifest (the checkpoint was not completed); use an earlier checkpoint");
  std::string magic;
  int64_t version = 0;
  in >> magic >> version;
  if (magic != "ncsrec-checkpoint") throw UserError(what + ": the manifest is not an ncsrec manifest");
  if (version > kCheckpointFormatVersion)
    throw UserError(what + ": format version " + std::to_string(version) + " is newer than this ncsrec reads (" +
                    std::to_string(kCheckpointFormatVersion) + ")");
  std::string name, crc_hex;
  uint64_t size = 0;
  int files = 0;
  while (in >> name >> size >> crc_hex) {
    ++files;
    const std::string path = dir + "/" + name;
    if (!fs::exists(path)) throw UserError(what + ": " + name + " listed in the manifest is missing");
    uint64_t got_size = 0;
    const uint32_t crc = crc32c_file(path, &got_size);
    if (got_size != size)
      throw UserError(what + ": " + name + " is " + std::to_string(got_size) + " bytes, the manifest says " +
                      std::to_string(size) + " (truncated?); use an earlier checkpoint");
    char* end = nullptr;
    const unsigned long long want = std::strtoull(crc_hex.c_str(), &end, 16);
    if (crc_hex.empty() || crc_hex.size() > 8 || *end != '\0')
      throw UserError(what + ": the manifest's checksum for " + name + " is malformed ('" + crc_hex +
                      "'); use an earlier checkpoint");
    if (crc != static_cast<uint32_t>(want))
      throw UserError(what + ": " + name + " fails its CRC32C check (corrupt); use an earlier checkpoint");
  }
  if (files == 0) throw UserError(what + ": the manifest lists no files");
}

CheckpointMeta read_checkpoint_meta(const std::string& dir) {
  recover_checkpoint(dir);
  verify_checkpoint(dir);
  h5::File f = h5::File::open_read(dir + "/" + rank_file(0));
  CheckpointMeta m;
  m.config_yaml = f.attr_string("meta", "config");
  m.step = f.attr_int("meta", "step");
  m.epoch = f.attr_int("meta", "epoch");
  m.data_position = f.attr_int("meta", "data_position");
  m.world_size = f.attr_int("meta", "world_size");
  m.seed = f.attr_int("meta", "seed");
  m.optimizer_step = f.attr_int("meta", "optimizer_step");
  m.format_version = f.attr_int("meta", "format_version");
  if (f.has_attr("meta", "day")) m.day = f.attr_string("meta", "day");
  if (f.has_attr("meta", "init_from")) m.init_from = f.attr_string("meta", "init_from");
  if (f.has_attr("meta", "first_step")) m.first_step = f.attr_int("meta", "first_step");
  if (f.has_attr("meta", "history_file")) m.history_file = f.attr_string("meta", "history_file");
  if (f.has_attr("meta", "history_version")) m.history_version = f.attr_string("meta", "history_version");
  return m;
}

namespace {

// load_checkpoint once `meta` has been read (and the manifest verified) by read_checkpoint_meta.
void load_verified(const std::string& dir, const CheckpointMeta& meta, const TrainingState& state) {
  MultiTaskModel& model = *state.model;
  // The same run (resume, eval, export) must read the history features it was trained with.
  const std::string now = model.history() ? model.history()->version() : std::string();
  if (now != meta.history_version)
    throw UserError("checkpoint " + dir + " was trained with history features " +
                    (meta.history_version.empty() ? std::string("(none)")
                                                  : "of snapshots " + meta.history_version + " (" + meta.history_file + ")") +
                    ", but its config now reads " +
                    (now.empty() ? std::string("none") : "snapshots " + now + " (" + model.history()->file() + ")") +
                    ": restore that file, or start a new run from the checkpoint with --init-from");
  // Dense parameters, their optimizer state and the masks are the same on every rank: rank 0's.
  h5::File f = h5::File::open_read(dir + "/" + rank_file(0));
  for (Param& p : model.params().params()) read_checkpoint_tensor(f, "dense/" + p.name, p.value, dir);
  if (state.dense_optimizer) {
    for (auto& [slot, buffer] : state.dense_optimizer->state())
      for (Param& p : model.params().params()) {
        Tensor view = buffer->view(p.offset, p.shape);
        read_checkpoint_tensor(f, "optim/" + p.name + "/" + slot, view, dir);
      }
  }
  if (model.num_masked_layers() > 0) read_masks(f, model);
  load_table_rows(dir, meta.world_size, model.tables(), state.sparse_optimizers);
}

}  // namespace

CheckpointMeta load_checkpoint(const std::string& dir, const TrainingState& state) {
  const CheckpointMeta meta = read_checkpoint_meta(dir);
  load_verified(dir, meta, state);
  return meta;
}

namespace {

// N for a folder named step-<N> (suffixes .tmp/.old stripped by the caller), else -1.
int64_t step_of_name(const std::string& name) {
  if (name.rfind("step-", 0) != 0 || name.size() == 5) return -1;
  int64_t n = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || n > INT64_MAX / 10 - 10) return -1;
    n = n * 10 + (name[i] - '0');
  }
  return n;
}

// The base names of the checkpoints in `dir`, whole or left as .tmp/.old by a crash.
std::vector<std::string> checkpoint_names(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return names;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string name = e.path().filename().string();
    for (const char* suffix : {".tmp", ".old"}) {
      const std::string s = suffix;
      if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0)
        name.resize(name.size() - s.size());
    }
    if ((name == "final" || step_of_name(name) >= 0) &&
        std::find(names.begin(), names.end(), name) == names.end())
      names.push_back(name);
  }
  return names;
}

// The step of checkpoint `dir` from its rank-0 file, without the manifest's checksums (the load
// that follows verifies them, once). A file HDF5 cannot read gets the manifest's message.
int64_t unverified_step(const std::string& dir) {
  try {
    return h5::File::open_read(dir + "/" + rank_file(0)).attr_int("meta", "step");
  } catch (const std::exception&) {
    verify_checkpoint(dir);  // throws the clear message when the file is damaged
    throw;
  }
}

}  // namespace

std::string newest_checkpoint(const std::string& checkpoints_dir) {
  std::string best;
  int64_t best_step = -1;
  for (const std::string& name : checkpoint_names(checkpoints_dir)) {
    const std::string path = checkpoints_dir + "/" + name;
    recover_checkpoint(path);
    if (!fs::is_directory(path)) continue;
    const int64_t step = name == "final" ? unverified_step(path) : step_of_name(name);
    if (step > best_step || (step == best_step && name == "final")) {
      best = path;
      best_step = step;
    }
  }
  return best;
}

void prune_step_checkpoints(const std::string& checkpoints_dir, int64_t keep) {
  std::vector<std::pair<int64_t, std::string>> steps;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(checkpoints_dir, ec)) {
    const std::string name = e.path().filename().string();
    const int64_t n = step_of_name(name);
    if (n >= 0 && e.is_directory()) steps.emplace_back(n, e.path().string());
  }
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + static_cast<size_t>(keep) < steps.size(); ++i) fs::remove_all(steps[i].second, ec);
}

std::unique_ptr<MultiTaskModel> load_model(const std::string& dir, const DataSchema& schema, Communicator* comm,
                                           TrainConfig* config, CheckpointMeta* meta, Device device) {
  const CheckpointMeta m = read_checkpoint_meta(dir);
  const TrainConfig c = parse_train_config(m.config_yaml, dir + " (saved config)");
  auto model = std::make_unique<MultiTaskModel>(c.model, schema, DType::F32, c.seed, comm, device);
  load_verified(dir, m, TrainingState{model.get(), nullptr, {}});
  if (config) *config = c;
  if (meta) *meta = m;
  return model;
}

}  // namespace ncsrec

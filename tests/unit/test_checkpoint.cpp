// Specification tests for checkpoints (train/checkpoint.h): a save/load round trip restores
// every parameter, optimizer state and embedding value bit for bit, and the metadata; a
// damaged or incomplete checkpoint is a UserError naming its folder (never a crash or a
// silent load); saving is atomic (no `.tmp`/`.old` left behind, a stale `.tmp` from a crash
// is harmless); the file is plain HDF5 that h5py reads without any ncsrec code.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/optim.h"
#include "core/random.h"
#include "dist/communicator.h"
#include "embedding/embedding_table.h"
#include "models/multitask_model.h"
#include "train/checkpoint.h"

#include "scratch_dir.h"

namespace ncsrec {
namespace {

namespace fs = std::filesystem;

using testing::ScratchDir;

DataSchema test_schema() {
  DataSchema s;
  s.tasks = {"click", "conversion"};
  s.dense_dim = 2;
  s.slots = {"user", "item", "tags"};
  return s;
}

ModelConfig esmm_config(int64_t tower_size) {
  ModelConfig m;
  m.type = "esmm";
  m.embedding_dim = 3;
  m.tasks = {TaskSpec{"ctr", "click", "", {tower_size}, 1.0}, TaskSpec{"cvr", "conversion", "ctr", {tower_size}, 1.0}};
  m.tables = {TableSpec{"user", 13, {"user"}, Pooling::Sum}, TableSpec{"item", 9, {"item", "tags"}, Pooling::Mean}};
  return m;
}

void fill_random(Tensor& t, Rng& rng) {
  if (t.dtype() == DType::F32) {
    float* p = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(rng.normal());
  } else {
    double* p = t.data<double>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = rng.normal();
  }
}

// A model with its optimizers, as the trainer holds them.
struct Trained {
  std::unique_ptr<MultiTaskModel> model;
  std::unique_ptr<DenseOptimizer> dense;
  std::vector<std::unique_ptr<SparseOptimizer>> sparse;

  Trained(int64_t tower_size, uint64_t seed) {
    model = std::make_unique<MultiTaskModel>(esmm_config(tower_size), test_schema(), DType::F32, seed);
    OptimizerConfig adam;
    adam.type = "adam";
    adam.lr = 0.01;
    dense = make_dense_optimizer(adam, model->params().numel(), DType::F32, Device::CPU);
    // Table 0 gets sparse Adagrad, table 1 sparse Adam (f32 moments and i64 step counts).
    OptimizerConfig adagrad;
    adagrad.type = "adagrad";
    adagrad.initial_accumulator = 0.1;
    sparse.push_back(make_sparse_optimizer(adagrad, model->tables()[0].shard()));
    sparse.push_back(make_sparse_optimizer(adam, model->tables()[1].shard()));
  }
  TrainingState state() {
    TrainingState s{model.get(), dense.get(), {}};
    for (auto& o : sparse) s.sparse_optimizers.push_back(o.get());
    return s;
  }
  // Random values everywhere, then one optimizer step so every state buffer is non-zero.
  void randomize(uint64_t seed) {
    Rng rng(seed);
    fill_random(model->params().values(), rng);
    fill_random(model->params().grads(), rng);
    dense->step(model->params().values(), model->params().grads(), 1);
    for (size_t t = 0; t < model->tables().size(); ++t) {
      EmbeddingTable& table = model->tables()[t].shard();
      fill_random(table.values(), rng);
      SparseGrad g;
      for (int64_t r = 0; r < table.rows(); ++r)
        if (rng.bernoulli(0.6)) g.rows.push_back(r);
      g.values = Tensor::empty({static_cast<int64_t>(g.rows.size()), table.dim()}, DType::F32);
      fill_random(g.values, rng);
      sparse[t]->step(table, g);
    }
  }
};

std::string bytes_of(const Tensor& t) { return std::string(static_cast<const char*>(t.raw()), t.nbytes()); }

// Every tensor a checkpoint covers, by name, as raw bytes.
std::map<std::string, std::string> snapshot(Trained& m) {
  std::map<std::string, std::string> s;
  for (const Param& p : m.model->params().params()) s["dense/" + p.name] = bytes_of(p.value);
  for (auto& [slot, buffer] : m.dense->state()) s["optim/" + slot] = bytes_of(*buffer);
  for (size_t t = 0; t < m.model->tables().size(); ++t) {
    const std::string base = "embedding/" + m.model->tables()[t].name();
    s[base + "/values"] = bytes_of(m.model->tables()[t].shard().values());
    for (auto& [slot, tensor] : m.sparse[t]->state()) s[base + "/optim/" + slot] = bytes_of(*tensor);
  }
  return s;
}

CheckpointMeta random_meta(uint64_t seed) {
  Rng rng(seed);
  CheckpointMeta m;
  m.config_yaml = "model:\n  type: esmm  # \"quoted\", 'single', ünïcödé\ntrain: {batch_size: " +
                  std::to_string(rng.below(10000)) + "}\n";
  m.step = static_cast<int64_t>(rng.below(1u << 30));
  m.epoch = static_cast<int64_t>(rng.below(100));
  m.data_position = static_cast<int64_t>(rng.next() >> 2);  // beyond 32 bits
  m.world_size = 1;
  m.seed = static_cast<int64_t>(rng.next() >> 1);
  m.optimizer_step = static_cast<int64_t>(rng.below(1u << 30));
  return m;
}

void save(const fs::path& dir, Trained& m, const CheckpointMeta& meta) {
  auto comm = make_local_communicator();
  save_checkpoint(dir.string(), m.state(), meta, *comm);
}

// Expects `f` to throw a UserError whose message names `path` (and nothing else escapes).
template <class F>
void expect_user_error_naming(F&& f, const std::string& path, const std::string& what) {
  try {
    f();
    ADD_FAILURE() << what << ": no error";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << what << ": " << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": not a UserError: " << e.what();
  }
}

std::set<std::string> folder_entries(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

TEST(Checkpoint, SaveThenLoadRestoresEveryTensorBitForBitAndTheMeta) {
  ScratchDir scratch("round_trip");
  Trained saved(5, 1);
  saved.randomize(11);
  const CheckpointMeta meta = random_meta(12);
  const fs::path dir = scratch.path / "ckpt";
  save(dir, saved, meta);

  Trained loaded(5, 2);  // another seed: every initial value differs
  const auto before = snapshot(saved), fresh = snapshot(loaded);
  for (const auto& [name, bytes] : before)
    if (name.find("values") != std::string::npos || name.rfind("dense/", 0) == 0)
      EXPECT_NE(fresh.at(name), bytes) << name << " should start different";

  const CheckpointMeta got = load_checkpoint(dir.string(), loaded.state());
  const auto after = snapshot(loaded);
  ASSERT_EQ(after.size(), before.size());
  for (const auto& [name, bytes] : before) EXPECT_TRUE(after.at(name) == bytes) << name << " differs after loading";

  EXPECT_EQ(got.config_yaml, meta.config_yaml);
  EXPECT_EQ(got.step, meta.step);
  EXPECT_EQ(got.epoch, meta.epoch);
  EXPECT_EQ(got.data_position, meta.data_position);
  EXPECT_EQ(got.world_size, meta.world_size);
  EXPECT_EQ(got.seed, meta.seed);
  EXPECT_EQ(got.optimizer_step, meta.optimizer_step);
  EXPECT_EQ(got.format_version, kCheckpointFormatVersion);
  EXPECT_EQ(read_checkpoint_meta(dir.string()).step, meta.step);
}

TEST(Checkpoint, ATruncatedFileIsAUserErrorNamingTheCheckpoint) {
  ScratchDir scratch("truncated");
  Trained saved(5, 1);
  saved.randomize(3);
  const fs::path dir = scratch.path / "ckpt";
  save(dir, saved, random_meta(4));
  const fs::path file = dir / "rank-0.h5";
  fs::resize_file(file, fs::file_size(file) / 2);
  Trained target(5, 2);
  expect_user_error_naming([&] { load_checkpoint(dir.string(), target.state()); }, dir.string(), "truncated");
  expect_user_error_naming([&] { verify_checkpoint(dir.string()); }, dir.string(), "truncated (verify)");
}

TEST(Checkpoint, OneFlippedByteIsACrcMismatchNamingTheCheckpoint) {
  ScratchDir scratch("flipped");
  Trained saved(5, 1);
  saved.randomize(5);
  const fs::path dir = scratch.path / "ckpt";
  save(dir, saved, random_meta(6));
  const fs::path file = dir / "rank-0.h5";
  std::string bytes;
  {
    std::ifstream in(file, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  Rng rng(7);
  const size_t at = bytes.size() / 4 + rng.below(bytes.size() / 2);  // somewhere in the middle
  bytes[at] = static_cast<char>(bytes[at] ^ (1 << rng.below(8)));
  std::ofstream(file, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_EQ(fs::file_size(file), bytes.size());

  Trained target(5, 2);
  const auto untouched = snapshot(target);
  try {
    load_checkpoint(dir.string(), target.state());
    ADD_FAILURE() << "a corrupt checkpoint was loaded";
  } catch (const UserError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(dir.string()), std::string::npos) << message;
    EXPECT_NE(message.find("CRC"), std::string::npos) << message;
  }
  EXPECT_TRUE(snapshot(target) == untouched) << "a rejected checkpoint must not change the model";
}

TEST(Checkpoint, AFolderWithoutManifestIsAnIncompleteCheckpoint) {
  ScratchDir scratch("no_manifest");
  Trained saved(5, 1);
  saved.randomize(8);
  const fs::path dir = scratch.path / "ckpt";
  save(dir, saved, random_meta(9));
  // What a crash before the manifest leaves: the rank files in a folder, no manifest.
  const fs::path incomplete = scratch.path / "ckpt-incomplete.tmp";
  fs::copy(dir, incomplete, fs::copy_options::recursive);
  fs::remove(incomplete / "manifest");
  Trained target(5, 2);
  expect_user_error_naming([&] { load_checkpoint(incomplete.string(), target.state()); }, incomplete.string(),
                           "no manifest");
  expect_user_error_naming([&] { read_checkpoint_meta(incomplete.string()); }, incomplete.string(),
                           "no manifest (meta)");
  expect_user_error_naming([&] { load_checkpoint((scratch.path / "absent").string(), target.state()); },
                           (scratch.path / "absent").string(), "no folder");
}

TEST(Checkpoint, LoadingIntoAModelOfAnotherShapeIsAUserErrorNamingTheCheckpoint) {
  ScratchDir scratch("shape");
  Trained saved(5, 1);
  saved.randomize(10);
  const fs::path dir = scratch.path / "ckpt";
  save(dir, saved, random_meta(11));
  Trained wider(6, 2);
  try {
    load_checkpoint(dir.string(), wider.state());
    ADD_FAILURE() << "a checkpoint of tower 5 was loaded into tower 6";
  } catch (const UserError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(dir.string()), std::string::npos) << message;
    EXPECT_NE(message.find("shape"), std::string::npos) << message;
  }
}

TEST(Checkpoint, SavingOverACheckpointReplacesItAndLeavesNoTmpOrOldFolder) {
  ScratchDir scratch("replace");
  const fs::path dir = scratch.path / "ckpt";
  Trained first(5, 1);
  first.randomize(1);
  save(dir, first, random_meta(1));
  Trained second(5, 1);
  second.randomize(2);
  const CheckpointMeta meta2 = random_meta(2);
  save(dir, second, meta2);

  EXPECT_EQ(folder_entries(scratch.path), std::set<std::string>{"ckpt"});
  EXPECT_EQ(folder_entries(dir), (std::set<std::string>{"manifest", "rank-0.h5"}));
  EXPECT_EQ(read_checkpoint_meta(dir.string()).step, meta2.step);
  Trained loaded(5, 3);
  load_checkpoint(dir.string(), loaded.state());
  EXPECT_TRUE(snapshot(loaded) == snapshot(second));
}

TEST(Checkpoint, AStaleTmpFolderFromACrashDoesNotBreakTheNextSave) {
  ScratchDir scratch("stale_tmp");
  const fs::path dir = scratch.path / "ckpt";
  const fs::path tmp = scratch.path / "ckpt.tmp";
  fs::create_directories(tmp);
  std::ofstream(tmp / "rank-0.h5") << "half a file";
  std::ofstream(tmp / "manifest") << "ncsrec-checkpoint 1\nrank-0.h5 11 deadbeef\n";
  std::ofstream(tmp / "leftover") << "junk";

  Trained saved(5, 1);
  saved.randomize(4);
  const CheckpointMeta meta = random_meta(5);
  save(dir, saved, meta);
  EXPECT_EQ(folder_entries(scratch.path), std::set<std::string>{"ckpt"});
  EXPECT_EQ(folder_entries(dir), (std::set<std::string>{"manifest", "rank-0.h5"}));
  verify_checkpoint(dir.string());
  Trained loaded(5, 2);
  EXPECT_EQ(load_checkpoint(dir.string(), loaded.state()).step, meta.step);
  EXPECT_TRUE(snapshot(loaded) == snapshot(saved));
}

// The state a crash between the swap's two renames leaves: `ckpt` gone, the previous
// checkpoint as `ckpt.old`, the new whole one as `ckpt.tmp`.
TEST(Checkpoint, ACrashBetweenTheTwoRenamesLosesNoWholeCheckpoint) {
  ScratchDir scratch("crash_swap");
  const fs::path dir = scratch.path / "ckpt", staging = scratch.path / "staging";
  Trained older(5, 1), newer(5, 1);
  older.randomize(11);
  newer.randomize(12);
  const CheckpointMeta older_meta = random_meta(11), newer_meta = random_meta(12);
  save(dir, older, older_meta);
  save(staging, newer, newer_meta);
  fs::rename(dir, scratch.path / "ckpt.old");
  fs::rename(staging, scratch.path / "ckpt.tmp");

  // A reader finds the newer checkpoint under its name.
  EXPECT_EQ(read_checkpoint_meta(dir.string()).step, newer_meta.step);
  Trained loaded(5, 2);
  load_checkpoint(dir.string(), loaded.state());
  EXPECT_TRUE(snapshot(loaded) == snapshot(newer));

  // With only the old copy left (the new one was never completed), it comes back, and the
  // next save starts from it instead of deleting it.
  fs::remove_all(dir);
  save(scratch.path / "ckpt.old", older, older_meta);
  fs::create_directories(scratch.path / "ckpt.tmp");
  std::ofstream(scratch.path / "ckpt.tmp" / "rank-0.h5") << "half";
  recover_checkpoint(dir.string());
  EXPECT_EQ(read_checkpoint_meta(dir.string()).step, older_meta.step);
  save(dir, newer, newer_meta);
  EXPECT_EQ(folder_entries(scratch.path), std::set<std::string>{"ckpt"});
  EXPECT_EQ(read_checkpoint_meta(dir.string()).step, newer_meta.step);
}

TEST(Checkpoint, AMalformedManifestChecksumIsAUserError) {
  ScratchDir scratch("bad_crc_field");
  const fs::path dir = scratch.path / "ckpt";
  Trained saved(5, 1);
  saved.randomize(3);
  save(dir, saved, random_meta(3));
  std::string text;
  {
    std::ifstream in(dir / "manifest");
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  const size_t last = text.rfind(' ');
  std::ofstream(dir / "manifest") << text.substr(0, last) << " zz\n";
  try {
    verify_checkpoint(dir.string());
    ADD_FAILURE() << "a malformed checksum was accepted";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("malformed"), std::string::npos) << e.what();
  }
}

TEST(Checkpoint, TheFileIsReadableByH5pyWithoutNcsrecCode) {
  if (std::system("/usr/bin/python3 -c 'import h5py' >/dev/null 2>&1") != 0) GTEST_SKIP() << "h5py is not installed";
  ScratchDir scratch("h5py");
  Trained saved(5, 1);
  saved.randomize(6);
  const CheckpointMeta meta = random_meta(7);
  const fs::path dir = scratch.path / "ckpt";
  save(dir, saved, meta);

  const std::string param = "tower.cvr.0.weight";
  const fs::path script = scratch.path / "read.py", out = scratch.path / "out.txt", config = scratch.path / "config.txt";
  std::ofstream(script) << R"(import sys, h5py
ckpt, param, out, config_out = sys.argv[1:5]
with h5py.File(ckpt + "/rank-0.h5", "r") as f:
    w = f["dense/" + param][...]
    a = f["meta"].attrs
    c = a["config"]
    c = c.decode("utf-8") if isinstance(c, bytes) else str(c)
    with open(config_out, "w", encoding="utf-8") as g:
        g.write(c)
    with open(out, "w") as g:
        g.write(" ".join(str(d) for d in w.shape) + "\n")
        g.write(" ".join(repr(float(x)) for x in w.ravel()) + "\n")
        for k in ["step", "epoch", "data_position", "world_size", "seed", "optimizer_step", "format_version"]:
            g.write("%s %d\n" % (k, int(a[k])))
)";
  const std::string command = "/usr/bin/python3 '" + script.string() + "' '" + dir.string() + "' " + param + " '" +
                              out.string() + "' '" + config.string() + "' 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << command;

  const Param* p = saved.model->params().find(param);
  ASSERT_NE(p, nullptr);
  std::ifstream in(out);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, std::to_string(p->shape[0]) + " " + std::to_string(p->shape[1]));
  std::getline(in, line);
  std::istringstream values(line);
  const float* want = p->value.data<float>();
  int64_t n = 0;
  for (double x; values >> x; ++n) {
    ASSERT_LT(n, p->value.numel());
    EXPECT_EQ(static_cast<float>(x), want[n]) << "element " << n;
  }
  EXPECT_EQ(n, p->value.numel());
  std::map<std::string, int64_t> attrs;
  for (std::string key; in >> key;) in >> attrs[key];
  EXPECT_EQ(attrs["step"], meta.step);
  EXPECT_EQ(attrs["epoch"], meta.epoch);
  EXPECT_EQ(attrs["data_position"], meta.data_position);
  EXPECT_EQ(attrs["world_size"], meta.world_size);
  EXPECT_EQ(attrs["seed"], meta.seed);
  EXPECT_EQ(attrs["optimizer_step"], meta.optimizer_step);
  EXPECT_EQ(attrs["format_version"], kCheckpointFormatVersion);
  std::ifstream config_in(config, std::ios::binary);
  const std::string config_text((std::istreambuf_iterator<char>(config_in)), {});
  EXPECT_EQ(config_text, meta.config_yaml);
}

}  // namespace
}  // namespace ncsrec

// E-CDCTR's historical embedding features: `ncsrec history` merging K snapshot exports into
// one file (train/history.h), and the model-side reader (models/history_features.h): mean and
// attention aggregation, ids without a row, fixed-table ids by modulo, the attention query's
// finite-difference gradient, and the version a checkpoint records and insists on.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/hdf5_util.h"
#include "core/random.h"
#include "models/history_features.h"
#include "scratch_dir.h"
#include "tests/unit/fake_device.h"
#include "tests/unit/gradcheck.h"
#include "tiny_data.h"
#include "train/checkpoint.h"
#include "train/history.h"
#include "train/step.h"
#include "train/trainer.h"

namespace ncsrec {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

constexpr int64_t kDim = 3;

// A snapshot folder as the E-CDCTR pipeline writes it: snapshot.h5 in `ncsrec export`'s layout
// (only what `ncsrec history` reads) and, when `done`, _DONE. Table "user_id" is a hash table
// holding `ids`, each value v(id, k) = id + 0.1·j + 10·k; table "hour" a fixed table of 4 rows.
void write_snapshot(const fs::path& dir, const std::string& day, int64_t step, const std::vector<int64_t>& ids, int k,
                    bool done = true) {
  fs::create_directories(dir);
  h5::File f = h5::File::create((dir / "snapshot.h5").string());
  f.create_group("meta");
  f.set_attr("meta", "format", std::string("ncsrec-export"));
  f.set_attr("meta", "kind", std::string("full"));
  f.set_attr("meta", "day", day);
  f.set_attr("meta", "step", step);
  auto table = [&](const std::string& name, const std::string& kind, int64_t rows, const std::vector<int64_t>& keys) {
    std::vector<float> values;
    for (int64_t key : keys)
      for (int64_t j = 0; j < kDim; ++j) values.push_back(static_cast<float>(key + 0.1 * j + 10 * k));
    f.write("tables/" + name + "/keys", keys.data(), {keys.size()});
    f.write("tables/" + name + "/values", values.data(), {keys.size(), static_cast<uint64_t>(kDim)});
    f.set_attr("tables/" + name, "kind", kind);
    f.set_attr("tables/" + name, "rows", rows);
    f.set_attr("tables/" + name, "dim", kDim);
  };
  table("user_id", "hash", 100, ids);
  table("hour", "fixed", 4, {0, 1, 2, 3});
  f.close();
  if (done) std::ofstream(dir / "_DONE").close();
}

// Two snapshots, newest first: day 2 holds ids 5, 7, 9; day 1 holds 5 and 6.
fs::path two_snapshots(const fs::path& root) {
  write_snapshot(root / "snap-2", "2026-01-02", 20, {5, 7, 9}, 0);
  write_snapshot(root / "snap-1", "2026-01-01", 10, {5, 6}, 1);
  build_history_features({(root / "snap-2").string(), (root / "snap-1").string()}, {"user_id", "hour"},
                         (root / "history").string());
  return root / "history" / "features.h5";
}

TEST(HistoryFile, MergesTheSnapshotsKeysNewestFirstWithPresenceAndAVersion) {
  ScratchDir scratch("history_merge");
  const fs::path file = two_snapshots(scratch.path);
  EXPECT_TRUE(fs::exists(scratch.path / "history/_DONE"));
  EXPECT_FALSE(fs::exists(scratch.path / "history.tmp"));
  const h5::File f = h5::File::open_read(file.string());
  EXPECT_EQ(f.attr_string("/", "version"), "2026-01-02@20,2026-01-01@10");
  EXPECT_EQ(f.attr_int("/", "k"), 2);
  EXPECT_EQ(f.read_i64("tables/user_id/keys"), (std::vector<int64_t>{5, 6, 7, 9}));
  EXPECT_EQ(f.read_u8("tables/user_id/present"), (std::vector<uint8_t>{1, 1, 0, 1, 1, 0, 1, 0}));
  const std::vector<float> v = f.read_f32("tables/user_id/values");  // [4, 2, 3]
  EXPECT_FLOAT_EQ(v[0], 5.0f);                      // id 5, newest snapshot
  EXPECT_FLOAT_EQ(v[3 + 1], 15.1f);                 // id 5, older snapshot, j = 1
  EXPECT_FLOAT_EQ(v[(1 * 2 + 0) * 3], 0.0f);        // id 6 absent from the newest
  EXPECT_FLOAT_EQ(v[(1 * 2 + 1) * 3 + 2], 16.2f);   // id 6 in the older
  EXPECT_EQ(f.attr_string("tables/hour", "kind"), "fixed");
}

TEST(HistoryFile, RefusesASnapshotStillBeingWrittenAnExistingOutputAndMismatchedTables) {
  ScratchDir scratch("history_refusals");
  write_snapshot(scratch.path / "done", "2026-01-01", 10, {1}, 0);
  write_snapshot(scratch.path / "writing", "2026-01-02", 20, {1}, 0, false);
  auto message = [&](const std::vector<std::string>& snaps, const std::vector<std::string>& tables, const fs::path& out) {
    try {
      build_history_features(snaps, tables, out.string());
    } catch (const UserError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  std::string m = message({(scratch.path / "writing").string()}, {"user_id"}, scratch.path / "out");
  EXPECT_NE(m.find("has no _DONE"), std::string::npos) << m;
  EXPECT_FALSE(fs::exists(scratch.path / "out"));
  m = message({(scratch.path / "done").string()}, {"item_id"}, scratch.path / "out");
  EXPECT_NE(m.find("no table 'item_id'"), std::string::npos) << m;
  fs::create_directories(scratch.path / "taken");
  m = message({(scratch.path / "done").string()}, {"user_id"}, scratch.path / "taken");
  EXPECT_NE(m.find("exists already"), std::string::npos) << m;
}

DataSchema one_slot_schema() {
  DataSchema s;
  s.tasks = {"click"};
  s.slots = {"user_id", "hour"};
  return s;
}

Block batch_of(const std::vector<std::vector<int64_t>>& users, const std::vector<int64_t>& hours) {
  Block b = Block::with_schema(one_slot_schema());
  b.rows = static_cast<int64_t>(users.size());
  for (size_t r = 0; r < users.size(); ++r) {
    b.labels[0].push_back(0.0f);
    for (int64_t id : users[r]) b.sparse[0].ids.push_back(id);
    b.sparse[0].offsets.push_back(static_cast<int64_t>(b.sparse[0].ids.size()));
    b.sparse[1].ids.push_back(hours[r]);
    b.sparse[1].offsets.push_back(static_cast<int64_t>(r + 1));
  }
  return b;
}

TEST(HistoryFeatures, MeanOfThePresentSnapshotsZerosForUnknownIdsAndFixedTablesByModulo) {
  ScratchDir scratch("history_mean");
  HistorySpec spec;
  spec.file = two_snapshots(scratch.path).string();
  spec.features = {{"user_id", "user_id"}, {"hour", "hour"}};
  ParamStore params;
  HistoryFeatures h(spec, one_slot_schema(), params, "test: ");
  params.finalize(DType::F64, Device::CPU, 1);
  EXPECT_EQ(h.width(), 2 * kDim);
  EXPECT_EQ(h.version(), "2026-01-02@20,2026-01-01@10");
  // Rows: user 5 (both snapshots), user 9 (newest only), unknown user 42, users {5, 6} summed.
  const Block b = batch_of({{5}, {9}, {42}, {5, 6}}, {1, 6, 0, 3});
  Tensor x = Tensor::empty({4, 1 + 2 * kDim}, DType::F64);
  x.zero_();
  h.forward(x, 1, b);
  auto at = [&](int64_t r, int64_t c) { return x.data<double>()[r * (1 + 2 * kDim) + c]; };
  EXPECT_NEAR(at(0, 1), (5.0 + 15.0) / 2, 1e-5);    // user 5, j = 0: mean of 5 and 15
  EXPECT_NEAR(at(1, 2), 9.1, 1e-5);                 // user 9: its one snapshot
  EXPECT_EQ(at(2, 1), 0.0);                         // unknown id
  EXPECT_NEAR(at(3, 1), 10.0 + 16.0, 1e-5);         // 5 → mean 10, 6 → 16 (older only), summed
  EXPECT_NEAR(at(1, 1 + kDim), (2.0 + 12.0) / 2, 1e-5);  // hour id 6 is row 6 mod 4 = 2
  EXPECT_EQ(at(0, 0), 0.0);                          // columns before `col` untouched
}

TEST(HistoryFeatures, AttentionStartsAsTheMeanAndItsQueryGradientMatchesFiniteDifferences) {
  ScratchDir scratch("history_attention");
  HistorySpec spec;
  spec.file = two_snapshots(scratch.path).string();
  spec.aggregate = "attention";
  spec.features = {{"user_id", "user_id"}};
  ParamStore params;
  HistoryFeatures h(spec, one_slot_schema(), params, "test: ");
  params.finalize(DType::F64, Device::CPU, 1);
  Param* q = params.find("history.user_id.query");
  ASSERT_NE(q, nullptr);
  const Block b = batch_of({{5}, {9}, {42}, {5, 6}, {6}}, {0, 0, 0, 0, 0});
  Tensor x = Tensor::empty({5, kDim}, DType::F64);
  h.forward(x, 0, b);
  EXPECT_NEAR(x.data<double>()[0], 10.0, 1e-9);  // q = 0: uniform over the present snapshots

  // Scale the vectors' dot products down so the softmax is not saturated: q small.
  testing::fill_uniform(q->value, 3, -0.05, 0.05);
  const Tensor g = testing::random_tensor({5, kDim}, 4);
  auto loss = [&] {
    h.forward(x, 0, b);
    double l = 0;
    for (int64_t i = 0; i < x.numel(); ++i) l += x.data<double>()[i] * g.data<double>()[i];
    return l;
  };
  q->grad.zero_();
  h.backward(g, 0, b);
  EXPECT_TRUE(testing::check_gradient("query", loss, q->value, q->grad));
  EXPECT_NE(q->grad.data<double>()[0], 0.0);
  // The serving form is the forward's output for each id alone.
  const auto tables = h.serving_tables();
  ASSERT_EQ(tables.size(), 1u);
  h.forward(x, 0, b);
  EXPECT_NEAR(tables[0].values[0], x.data<double>()[0], 1e-5);  // id 5 is key 0
}

TEST(HistoryFeatures, MistakesNameTheFileAndWhatToDo) {
  ScratchDir scratch("history_mistakes");
  HistorySpec spec;
  spec.file = (scratch.path / "missing.h5").string();
  spec.features = {{"user_id", "user_id"}};
  ParamStore params;
  try {
    HistoryFeatures h(spec, one_slot_schema(), params, "c.yaml: ");
    FAIL();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("model.history.file"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("ncsrec history"), std::string::npos) << e.what();
  }
  spec.file = two_snapshots(scratch.path).string();
  spec.features = {{"user_id", "uid"}};
  EXPECT_THROW(HistoryFeatures(spec, one_slot_schema(), params, "c.yaml: "), ConfigError);
}

// A model with history features trains, and its checkpoint records the features' version;
// resuming or evaluating with another features file is refused, initialising from it is not.
TEST(HistoryTraining, TheCheckpointRecordsTheVersionAndALoadWithOtherFeaturesIsRefused) {
  ScratchDir scratch("history_training");
  testing::write_day(scratch.path / "train", 200, 1);
  write_snapshot(scratch.path / "s2", "2026-01-02", 20, {1, 2, 3, 4}, 0);
  write_snapshot(scratch.path / "s1", "2026-01-01", 10, {1, 2, 3}, 1);
  build_history_features({(scratch.path / "s2").string(), (scratch.path / "s1").string()}, {"user_id"},
                         (scratch.path / "h-a").string());
  build_history_features({(scratch.path / "s2").string()}, {"user_id"}, (scratch.path / "h-b").string());
  auto config = [&](const std::string& file) {
    return parse_train_config("data: {train: [\"" + (scratch.path / "train").string() + "\"]}\n"
                              "model:\n  type: esmm\n  embedding_dim: 4\n  tower: [8]\n"
                              "  tables: {user: {rows: 50}, item: {rows: 50}}\n"
                              "  history: {file: \"" + file + "\", aggregate: attention, features: {user_id: user}}\n"
                              "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n"
                              "train: {batch_size: 16}\n",
                              "h.yaml");
  };
  auto comm = make_local_communicator();
  const std::string file_a = (scratch.path / "h-a/features.h5").string(), file_b = (scratch.path / "h-b/features.h5").string();
  run_training(config(file_a), "x: 1", (scratch.path / "run").string(), *comm);
  const CheckpointMeta meta = read_checkpoint_meta((scratch.path / "run/checkpoints/final").string());
  EXPECT_EQ(meta.history_file, file_a);
  EXPECT_EQ(meta.history_version, "2026-01-02@20,2026-01-01@10");
  // Loading it into a model that reads other features: refused, naming both versions.
  MultiTaskModel other(config(file_b).model, DataSchema{{"click", "conversion"}, false, 0, {"user", "item"}, {"user_id"}, {}},
                       DType::F32, 1);
  try {
    load_checkpoint((scratch.path / "run/checkpoints/final").string(), TrainingState{&other, nullptr, {}});
    FAIL() << "expected a UserError";
  } catch (const UserError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("2026-01-02@20,2026-01-01@10"), std::string::npos) << m;
    EXPECT_NE(m.find("--init-from"), std::string::npos) << m;
  }
  // A new run initialised from it with the newer features: allowed; its query was carried.
  TrainConfig next = config(file_b);
  next.init.from = (scratch.path / "run/checkpoints/final").string();
  run_training(next, "x: 1", (scratch.path / "run2").string(), *comm);
  EXPECT_EQ(read_checkpoint_meta((scratch.path / "run2/checkpoints/final").string()).history_version, "2026-01-02@20");
}

// History attention on a device model (the stand-in device): the query comes down for the
// forward and its gradient goes up, and the steps give the CPU model's bits, with the tables on
// the device (only the history columns of the input gradient come down) and interacting
// history features.
TEST(HistoryTraining, AttentionTrainsOnADeviceModelAsOnTheCpu) {
  ScratchDir scratch("history_device");
  write_snapshot(scratch.path / "s2", "2026-01-02", 20, {1, 2, 3, 4}, 0);
  write_snapshot(scratch.path / "s1", "2026-01-01", 10, {1, 2, 3}, 1);
  build_history_features({(scratch.path / "s2").string(), (scratch.path / "s1").string()}, {"user_id"},
                         (scratch.path / "h").string());
  const std::string file = (scratch.path / "h/features.h5").string();
  for (const std::string extra : {std::string(), std::string("  interaction: dot\n")}) {
    SCOPED_TRACE(extra.empty() ? "appended" : "interacting");
    const std::string history = extra.empty() ? "  history: {file: \"" + file + "\", aggregate: attention, features: {user_id: user}}\n"
                                              : "  history: {file: \"" + file + "\", aggregate: attention, interact: true, features: {user_id: user}}\n";
    const TrainConfig config = parse_train_config(
        "data: {train: [\"unused\"]}\nmodel:\n  type: esmm\n  embedding_dim: 3\n  tower: [6]\n" + extra +
            "  tables: {user: {rows: 10}, item: {rows: 10}}\n" + history +
            "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n"
            "optimizer: {type: sgd, lr: 0.1}\ntrain: {batch_size: 16}\n",
        "h.yaml");
    testing::FakeDevice device;
    const Block first = testing::random_block(16, 1, {"user", "item"}, 0, 6);
    MultiTaskModel cpu(config.model, first.schema, DType::F32, 3, nullptr, Device::CPU);
    MultiTaskModel gpu(config.model, first.schema, DType::F32, 3, nullptr, Device::CUDA);
    Optimizers o_cpu = make_optimizers(config, cpu), o_gpu = make_optimizers(config, gpu);
    EXPECT_TRUE(gpu.tables_on_device());
    auto comm = make_local_communicator();
    for (int64_t step = 1; step <= 3; ++step) {
      const Block batch = testing::random_block(16, 10 + static_cast<uint64_t>(step), {"user", "item"}, 0, 6);
      EXPECT_EQ(train_one_step(cpu, o_cpu, batch, -1, step, true, *comm).total,
                train_one_step(gpu, o_gpu, batch, -1, step, true, *comm).total)
          << "step " << step;
    }
    const Tensor a = cpu.params().values(), b = gpu.params().values().to(Device::CPU);
    ASSERT_EQ(a.nbytes(), b.nbytes());
    EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << "the same weights and queries";
    MultiTaskModel fresh(config.model, first.schema, DType::F32, 3, nullptr, Device::CPU);
    bool query_moved = false;
    for (Param& p : cpu.params().params())
      if (p.name.find("query") != std::string::npos)
        for (Param& q : fresh.params().params())
          if (q.name == p.name) query_moved = std::memcmp(p.value.raw(), q.value.raw(), p.value.nbytes()) != 0;
    EXPECT_TRUE(query_moved) << "the attention's query trained";
  }
}

}  // namespace
}  // namespace ncsrec

// Starting a run from another run's checkpoint (init.from): the daily cycle carries weights,
// optimizer state and the step, so that day A then day B from A's checkpoint is bit-identical
// to one unshuffled run over A and B; transfer by name loads through init.map, leaves
// init.reinit fresh, and refuses what it cannot find; --day fills the data paths.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "core/error.h"
#include "core/data/hdf5_shard.h"
#include "core/hdf5_util.h"
#include "core/masks.h"
#include "dist/communicator.h"
#include "models/multitask_model.h"
#include "run_command.h"
#include "tests/random_inputs.h"
#include "scratch_dir.h"
#include "tiny_data.h"
#include "train/checkpoint.h"
#include "train/init_from.h"
#include "train/mask_io.h"
#include "train/trainer.h"

namespace ncsrec {
namespace {

namespace fs = std::filesystem;
using testing::run_ncsrec;
using testing::ScratchDir;
using testing::shell_quoted;
using testing::write_day;

const char* kModel =
    "model:\n  type: esmm\n  embedding_dim: 4\n  tower: [8]\n  tables: {user: {rows: 50}, item: {rows: 50}}\n"
    "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n"
    "optimizer: {type: adam, lr: 0.01}\nsparse_optimizer: {type: adam, lr: 0.01}\n";

std::string data_yaml(const std::vector<fs::path>& train) {
  std::string list;
  for (const auto& p : train) list += (list.empty() ? "\"" : ", \"") + p.string() + "\"";
  return "data: {train: [" + list + "]}\n";
}

std::vector<float> values_of(const fs::path& checkpoint, const std::string& dataset) {
  return h5::File::open_read((checkpoint / "rank-0.h5").string()).read_f32(dataset);
}

// 96 rows a day: 6 whole batches of 16, so day A's run ends exactly where A ends in A + B.
TEST(InitFrom, DayAThenDayBFromItsCheckpointEqualsOneRunOverBoth) {
  ScratchDir scratch("init_two_days");
  write_day(scratch.path / "day=2026-01-01", 96, 1);
  write_day(scratch.path / "day=2026-01-02", 96, 2);
  const std::string loop = "train: {batch_size: 16, shuffle: false, log_every: 3, "
                           "lr_schedule: {warmup_steps: 4, decay: linear, decay_steps: 20}}\n";
  auto comm = make_local_communicator();
  const std::string both = data_yaml({scratch.path / "day=2026-01-01", scratch.path / "day=2026-01-02"}) + kModel + loop;
  run_training(parse_train_config(both, "both.yaml"), both, (scratch.path / "both").string(), *comm);

  const std::string a = data_yaml({scratch.path / "day=2026-01-01"}) + kModel + loop;
  run_training(parse_train_config(a, "a.yaml"), a, (scratch.path / "a").string(), *comm);
  const std::string b = data_yaml({scratch.path / "day=2026-01-02"}) + kModel + loop + "init: {from: \"" +
                        (scratch.path / "a/checkpoints/final").string() + "\"}\n";
  TrainOptions day_b;
  day_b.day = "2026-01-02";
  const TrainSummary sb = run_training(parse_train_config(b, "b.yaml"), b, (scratch.path / "b").string(), *comm, day_b);
  EXPECT_EQ(sb.first_step, 6);
  EXPECT_EQ(sb.steps, 12);
  EXPECT_EQ(sb.progressive_eval.rows, 96) << "day A's model is evaluated on day B before training on it";

  const fs::path x = scratch.path / "both/checkpoints/final", y = scratch.path / "b/checkpoints/final";
  for (const std::string name : {"dense/tower.ctr.0.weight", "dense/tower.cvr.1.bias", "optim/tower.ctr.0.weight/m",
                                 "optim/tower.cvr.0.weight/v", "embedding/user/values", "embedding/item/optim/m",
                                 "embedding/item/optim/steps"}) {
    const auto vx = values_of(x, name), vy = values_of(y, name);
    ASSERT_EQ(vx.size(), vy.size()) << name;
    EXPECT_EQ(std::memcmp(vx.data(), vy.data(), vx.size() * sizeof(float)), 0) << name << " differs";
  }
  const CheckpointMeta m = read_checkpoint_meta(y.string());
  EXPECT_EQ(m.step, 12);
  EXPECT_EQ(m.first_step, 6);
  EXPECT_EQ(m.day, "2026-01-02");
  EXPECT_EQ(m.init_from, (scratch.path / "a/checkpoints/final").string());

  // Without the optimizer state the run starts its optimizer and step afresh: it differs.
  const std::string fresh = b + "";
  TrainConfig c = parse_train_config(b, "b.yaml");
  c.init.optimizer_state = false;
  const TrainSummary sf = run_training(c, b, (scratch.path / "b_fresh").string(), *comm);
  EXPECT_EQ(sf.first_step, 0);
  EXPECT_EQ(sf.steps, 6);
  EXPECT_NE(values_of(scratch.path / "b_fresh/checkpoints/final", "dense/tower.ctr.0.weight"),
            values_of(y, "dense/tower.ctr.0.weight"));
}

TEST(InitFrom, TransferByNameMapsRenamedParametersAndLeavesReinitFresh) {
  ScratchDir scratch("init_transfer");
  write_day(scratch.path / "train", 96, 1);
  auto comm = make_local_communicator();
  const std::string loop = "train: {batch_size: 16}\n";
  const std::string src = data_yaml({scratch.path / "train"}) + kModel + loop;
  run_training(parse_train_config(src, "src.yaml"), src, (scratch.path / "src").string(), *comm);
  const fs::path ckpt = scratch.path / "src/checkpoints/final";

  // The same architecture with tasks named otherwise: its towers are tower.click.* and tower.buy.*.
  const std::string renamed =
      "model:\n  type: esmm\n  embedding_dim: 4\n  tower: [8]\n  tables: {user: {rows: 50}, item: {rows: 50}}\n"
      "  tasks: {click: {label: click}, buy: {label: conversion, given: click}}\n";
  const std::string init = "init: {from: \"" + ckpt.string() +
                           "\", map: {tower.click.: tower.ctr., tower.buy.: tower.cvr.}, reinit: [\"tower.buy.1.*\", "
                           "embedding.item], optimizer_state: false}\n";
  const TrainConfig config = parse_train_config(data_yaml({scratch.path / "train"}) + renamed + init, "dst.yaml");
  int64_t rows = 0;
  const DataSchema schema = read_shard_schema((scratch.path / "train/part-0000.h5").string(), &rows);
  MultiTaskModel model(config.model, schema, DType::F32, config.seed, nullptr);
  MultiTaskModel fresh(config.model, schema, DType::F32, config.seed, nullptr);
  const InitReport report = init_from_checkpoint(config.init, TrainingState{&model, nullptr, {}});
  EXPECT_TRUE(report.missing.empty());
  EXPECT_EQ(report.reinitialised, (std::vector<std::string>{"tower.buy.1.weight", "tower.buy.1.bias", "embedding.item"}));

  const auto fresh_params = fresh.params().params();
  for (const Param& p : model.params().params()) {
    const std::vector<float> got(p.value.data<float>(), p.value.data<float>() + p.value.numel());
    if (p.name.rfind("tower.buy.1.", 0) == 0) {
      const Param* f = nullptr;
      for (const Param& q : fresh_params)
        if (q.name == p.name) f = &q;
      ASSERT_NE(f, nullptr);
      EXPECT_EQ(got, std::vector<float>(f->value.data<float>(), f->value.data<float>() + f->value.numel()))
          << p.name << " was to stay fresh";
    } else {
      EXPECT_EQ(got, values_of(ckpt, "dense/" + map_param_name(p.name, config.init.map))) << p.name;
    }
  }
  const Tensor& user = model.tables()[0].shard().values();
  EXPECT_EQ(std::vector<float>(user.data<float>(), user.data<float>() + user.numel()),
            values_of(ckpt, "embedding/user/values"));
  const Tensor& item = model.tables()[1].shard().values();
  const Tensor& item_fresh = fresh.tables()[1].shard().values();
  EXPECT_EQ(std::memcmp(item.raw(), item_fresh.raw(), static_cast<size_t>(item.numel()) * sizeof(float)), 0);

  // Without the map the renamed towers are not in the checkpoint: one clear error, or (strict:
  // false) they stay fresh and are listed.
  TrainConfig unmapped = config;
  unmapped.init.map.clear();
  unmapped.init.reinit.clear();
  MultiTaskModel other(config.model, schema, DType::F32, config.seed, nullptr);
  try {
    init_from_checkpoint(unmapped.init, TrainingState{&other, nullptr, {}});
    ADD_FAILURE() << "loaded a model whose towers the checkpoint does not have";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("tower.click.0.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("init.map"), std::string::npos) << e.what();
  }
  unmapped.init.strict = false;
  const InitReport loose = init_from_checkpoint(unmapped.init, TrainingState{&other, nullptr, {}});
  EXPECT_EQ(loose.missing.size(), 8u);  // two towers of two layers, weight and bias
}

// The daily cycle keeps an NCS model's masks fixed: day B started from day A's checkpoint
// trains with A's masks, whatever masks the config names (no mask search runs), and its
// checkpoint holds them unchanged; only init.masks: false applies the config's masks instead.
TEST(InitFrom, NcsMasksStayFixedAcrossDaysUnlessInitMasksIsFalse) {
  ScratchDir scratch("init_masks");
  write_day(scratch.path / "day=2026-01-01", 64, 1);
  write_day(scratch.path / "day=2026-01-02", 64, 2);
  auto ncs = [](const std::string& masks) {
    return "model:\n  type: ncs\n  embedding_dim: 4\n  shared: [12, 6]\n  tower: []\n"
           "  tables: {user: {rows: 50}, item: {rows: 50}}\n"
           "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n" + masks +
           "optimizer: {type: adam, lr: 0.01}\nsparse_optimizer: {type: adagrad, lr: 0.05}\n"
           "train: {batch_size: 16}\n";
  };
  // Two mask files of different random masks for the model's shared layers.
  int64_t rows = 0;
  const DataSchema schema = read_shard_schema((scratch.path / "day=2026-01-01/part-0000.h5").string(), &rows);
  auto mask_file = [&](const std::string& name, uint64_t seed) {
    const TrainConfig c = parse_train_config(data_yaml({scratch.path / "day=2026-01-01"}) + ncs(""), "m.yaml");
    MultiTaskModel m(c.model, schema, DType::F32, 1);
    for (int t = 0; t < 2; ++t)
      for (int l = 0; l < m.num_masked_layers(); ++l) {
        const BitMask& shape = m.mask(t, l);
        m.set_mask(t, l, testing::random_mask(shape.rows, shape.cols, 0.5, seed + static_cast<uint64_t>(10 * t + l)));
      }
    const fs::path path = scratch.path / name;
    write_mask_file(path.string(), m);
    return path;
  };
  const fs::path first = mask_file("first.h5", 100), second = mask_file("second.h5", 200);
  auto comm = make_local_communicator();
  auto run = [&](const std::string& day, const std::string& masks, const std::string& init, const std::string& dir) {
    const std::string yaml = data_yaml({scratch.path / ("day=" + day)}) + ncs(masks) + init;
    run_training(parse_train_config(yaml, dir + ".yaml"), yaml, (scratch.path / dir).string(), *comm);
    return h5::File::open_read((scratch.path / dir / "checkpoints/final/rank-0.h5").string());
  };
  auto masks_of = [&](const h5::File& f) {
    std::vector<std::vector<uint8_t>> out;
    for (const char* task : {"ctr", "cvr"})
      for (int l = 0; l < 2; ++l) out.push_back(f.read_u8(std::string("mask/") + task + "/shared." + std::to_string(l)));
    return out;
  };
  const auto a = masks_of(run("2026-01-01", "  masks: {file: \"" + first.string() + "\"}\n", "", "a"));
  const auto in_second = masks_of(h5::File::open_read(second.string()));
  ASSERT_NE(a, in_second) << "the two files hold different masks";
  const std::string from = "init: {from: \"" + (scratch.path / "a/checkpoints/final").string() + "\"";
  // The config of day B names the second file; A's masks stay.
  const std::string b_model = "  masks: {file: \"" + second.string() + "\"}\n";
  EXPECT_EQ(masks_of(run("2026-01-02", b_model, from + "}\n", "b")), a) << "day B kept day A's masks";
  EXPECT_EQ(masks_of(run("2026-01-02", b_model, from + ", masks: false}\n", "b_new")), in_second)
      << "init.masks: false applies the config's masks";
}

TEST(InitFrom, DayFillsTheDataPathsAndBadDaysAreRefused) {
  ScratchDir scratch("init_day_cli");
  write_day(scratch.path / "day=2026-01-31", 96, 1);
  write_day(scratch.path / "day=2026-02-01", 48, 2);
  const fs::path config = scratch.path / "daily.yaml";
  std::ofstream(config) << "data: {train: [\"" << (scratch.path / "day={day}").string() << "\"], eval: [\""
                        << (scratch.path / "day={next_day}").string() << "\"]}\n"
                        << kModel << "train: {batch_size: 16}\n";
  const std::string base = "train --config " + shell_quoted(config.string()) + " --run-dir " +
                           shell_quoted((scratch.path / "run").string());
  const auto no_day = run_ncsrec(base);
  EXPECT_EQ(no_day.exit_code, 2) << no_day.output;
  EXPECT_NE(no_day.output.find("give --day"), std::string::npos) << no_day.output;
  const auto bad = run_ncsrec(base + " --day 2026-02-30");
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("YYYY-MM-DD"), std::string::npos) << bad.output;

  const auto ok = run_ncsrec(base + " --day 2026-01-31");
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(ok.output.find("eval on 48 rows"), std::string::npos) << "{next_day} of 01-31 is 02-01: " << ok.output;
  EXPECT_EQ(read_checkpoint_meta((scratch.path / "run/checkpoints/final").string()).day, "2026-01-31");
  std::ifstream saved(scratch.path / "run/config.yaml");
  const std::string text((std::istreambuf_iterator<char>(saved)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("day=2026-01-31"), std::string::npos) << "the run's config records the paths it used";

  const auto next = run_ncsrec("train --config " + shell_quoted(config.string()) + " --day 2026-02-01 --init-from " +
                               shell_quoted((scratch.path / "run/checkpoints/final").string()) + " --run-dir " +
                               shell_quoted((scratch.path / "run2").string()) + " --set data.eval=[]");
  ASSERT_EQ(next.exit_code, 0) << next.output;
  EXPECT_NE(next.output.find("progressive eval"), std::string::npos) << next.output;
  EXPECT_NE(next.output.find("steps 7-9"), std::string::npos) << next.output;
}

}  // namespace
}  // namespace ncsrec

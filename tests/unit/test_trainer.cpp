// The training loop as a whole, on a tiny data set: where the data stands in the checkpoint
// after a partial and a whole epoch, and data problems caught before any training is done.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/data/hdf5_shard.h"
#include "core/error.h"
#include "core/random.h"
#include "dist/communicator.h"
#include "scratch_dir.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace ncsrec {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

// A day folder of `rows` random impressions with labels click/conversion and two slots.
void write_day(const fs::path& dir, int64_t rows, uint64_t seed, bool with_conversion = true) {
  DataSchema s;
  s.tasks = with_conversion ? std::vector<std::string>{"click", "conversion"} : std::vector<std::string>{"click"};
  s.slots = {"user", "item"};
  s.meta = {"user_id"};
  Block b = Block::with_schema(s);
  Rng rng(seed);
  b.rows = rows;
  for (int64_t r = 0; r < rows; ++r) {
    const float click = rng.bernoulli(0.3) ? 1.0f : 0.0f;
    b.labels[0].push_back(click);
    if (with_conversion) b.labels[1].push_back(click > 0 && rng.bernoulli(0.4) ? 1.0f : 0.0f);
    for (int k = 0; k < 2; ++k) {
      b.sparse[static_cast<size_t>(k)].ids.push_back(static_cast<int64_t>(rng.below(50)));
      b.sparse[static_cast<size_t>(k)].offsets.push_back(r + 1);
    }
    b.meta[0].push_back(static_cast<int64_t>(rng.below(10)));
  }
  fs::create_directories(dir);
  write_shard((dir / "part-0000.h5").string(), b);
  std::ofstream(dir / "_DONE").close();
}

TrainConfig tiny_config(const fs::path& train, const fs::path& eval, const std::string& extra = "") {
  const std::string yaml = "data: {train: [\"" + train.string() + "\"], eval: [\"" + eval.string() + "\"]}\n" +
                           "model:\n  type: esmm\n  embedding_dim: 4\n  tower: [8]\n"
                           "  tables: {user: {rows: 50}, item: {rows: 50}}\n"
                           "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n"
                           "train: {batch_size: 16, log_every: 5" + extra + "}\n";
  return parse_train_config(yaml, "tiny.yaml");
}

TEST(Trainer, ACheckpointMidEpochRecordsThatEpochAndThePositionsConsumed) {
  ScratchDir scratch("trainer_mid_epoch");
  write_day(scratch.path / "train", 100, 1);  // 6 steps of 16 per epoch, 4 rows dropped
  write_day(scratch.path / "eval", 40, 2);
  auto comm = make_local_communicator();
  run_training(tiny_config(scratch.path / "train", scratch.path / "eval", ", max_steps: 4"), "x: 1",
               (scratch.path / "run").string(), *comm);
  const CheckpointMeta m = read_checkpoint_meta((scratch.path / "run/checkpoints/final").string());
  EXPECT_EQ(m.step, 4);
  EXPECT_EQ(m.epoch, 0);
  EXPECT_EQ(m.data_position, 4 * 16);
}

TEST(Trainer, ACheckpointAfterWholeEpochsPointsAtTheStartOfTheNext) {
  ScratchDir scratch("trainer_whole_epochs");
  write_day(scratch.path / "train", 100, 1);
  write_day(scratch.path / "eval", 40, 2);
  auto comm = make_local_communicator();
  const TrainSummary s = run_training(tiny_config(scratch.path / "train", scratch.path / "eval", ", epochs: 2"), "x: 1",
                                      (scratch.path / "run").string(), *comm);
  EXPECT_EQ(s.steps, 12);
  const CheckpointMeta m = read_checkpoint_meta((scratch.path / "run/checkpoints/final").string());
  EXPECT_EQ(m.epoch, 2);
  EXPECT_EQ(m.data_position, 0);
  EXPECT_EQ(s.eval.rows, 40);
}

TEST(Trainer, EvalDataTheModelCannotReadFailsBeforeTrainingAndLeavesNoRunFolder) {
  ScratchDir scratch("trainer_bad_eval");
  write_day(scratch.path / "train", 100, 1);
  write_day(scratch.path / "eval", 40, 2, /*with_conversion=*/false);
  auto comm = make_local_communicator();
  try {
    run_training(tiny_config(scratch.path / "train", scratch.path / "eval"), "x: 1", (scratch.path / "run").string(),
                 *comm);
    ADD_FAILURE() << "training ran with eval data lacking the conversion label";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("data.eval"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("conversion"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(scratch.path / "run"));
}

TEST(Trainer, GaucSurvivesBatchesInWhichAViewHasNoRows) {
  // One-row eval batches: the CVR view (clicked rows only) is empty in most of them.
  ScratchDir scratch("trainer_gauc");
  write_day(scratch.path / "train", 100, 1);
  write_day(scratch.path / "eval", 60, 3);
  auto comm = make_local_communicator();
  const TrainSummary s = run_training(
      tiny_config(scratch.path / "train", scratch.path / "eval", ", eval_batch_size: 1"), "x: 1",
      (scratch.path / "run").string(), *comm);
  for (const auto& v : s.eval.views) {
    if (v.name == "cvr") EXPECT_FALSE(std::isnan(v.metrics.gauc)) << "cvr GAUC lost";
  }
}

}  // namespace
}  // namespace ncsrec

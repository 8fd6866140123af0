// The training loop as a whole, on a tiny data set: where the data stands in the checkpoint
// after a partial and a whole epoch, and data problems caught before any training is done.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "core/data/hdf5_shard.h"
#include "core/lr_schedule.h"
#include "core/error.h"
#include "core/random.h"
#include "dist/communicator.h"
#include "scratch_dir.h"
#include "tiny_data.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace ncsrec {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;
using testing::write_day;

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

// ---- a run with every knob ------------------------------------------------------------------

// The number after "key": in a metrics.jsonl line (NaN when absent or null).
double json_number(const std::string& line, const std::string& key) {
  const size_t at = line.find("\"" + key + "\": ");
  if (at == std::string::npos) return std::nan("");
  const std::string rest = line.substr(at + key.size() + 4);
  if (rest.rfind("null", 0) == 0) return std::nan("");
  return std::stod(rest);
}

TEST(ScheduledTraining, WarmupCosineClipAndWeightDecayTrainAndLogRateAndGradNorm) {
  ScratchDir scratch("schedule_run");
  write_day(scratch.path / "train", 100, 1);  // 6 steps of 16 per epoch
  const std::string yaml =
      "data: {train: [\"" + (scratch.path / "train").string() + "\"]}\n"
      "model:\n  type: esmm\n  embedding_dim: 4\n  tower: [8]\n  tables: {user: {rows: 50}}\n"
      "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n"
      "optimizer: {type: adam, lr: 0.01, weight_decay: 0.01}\n"
      "sparse_optimizer: {type: adagrad, lr: 0.05}\n"
      "train: {batch_size: 16, epochs: 2, log_every: 1, clip_grad_norm: 0.01,\n"
      "        lr_schedule: {warmup_steps: 3, decay: cosine, decay_steps: 6, min_ratio: 0.1}}\n";
  const TrainConfig config = parse_train_config(yaml, "run.yaml");
  auto comm = make_local_communicator();
  const TrainSummary summary = run_training(config, yaml, (scratch.path / "run").string(), *comm);
  ASSERT_EQ(summary.steps, 12);

  std::ifstream in(scratch.path / "run/metrics.jsonl");
  std::map<int64_t, std::string> lines;  // train lines by step
  for (std::string line; std::getline(in, line);)
    if (line.find("\"event\": \"train\"") != std::string::npos)
      lines[static_cast<int64_t>(json_number(line, "step"))] = line;
  ASSERT_EQ(lines.size(), 12u);
  int64_t clipped = 0;
  for (const auto& [step, line] : lines) {
    const double factor = lr_factor(config.train.lr_schedule, step);
    EXPECT_NEAR(json_number(line, "lr"), 0.01 * factor, 1e-9 * 0.01) << line;
    EXPECT_NEAR(json_number(line, "sparse_lr"), 0.05 * factor, 1e-9 * 0.05) << line;
    const double norm = json_number(line, "grad_norm");
    EXPECT_TRUE(std::isfinite(norm) && norm > 0) << line;
    clipped += static_cast<int64_t>(json_number(line, "clipped_steps"));
  }
  EXPECT_NEAR(json_number(lines[1], "lr"), 0.01 / 3, 1e-12) << "warm-up starts at lr / warmup_steps";
  EXPECT_NEAR(json_number(lines[3], "lr"), 0.01, 1e-12) << "warm-up ends at lr";
  EXPECT_NEAR(json_number(lines[9], "lr"), 0.001, 1e-12) << "cosine ends at min_ratio · lr";
  EXPECT_NEAR(json_number(lines[12], "lr"), 0.001, 1e-12);
  EXPECT_GT(clipped, 0) << "clip_grad_norm 0.01 clipped no step";
}


TEST(Trainer, AnMmoeWithLearnedLossWeightsLogsTheWeightsAtEveryLineAndAtEval) {
  ScratchDir scratch("trainer_zoo");
  write_day(scratch.path / "train", 100, 1);
  write_day(scratch.path / "eval", 40, 2);
  const std::string yaml =
      "data: {train: [\"" + (scratch.path / "train").string() + "\"], eval: [\"" + (scratch.path / "eval").string() + "\"]}\n"
      "model:\n  type: mmoe\n  esmm: true\n  embedding_dim: 4\n  tower: [8]\n  tables: {user: {rows: 50}, item: {rows: 50}}\n"
      "  experts: {count: 3, sizes: [8]}\n  layers: {norm: batch, dropout: 0.1}\n  loss_weighting: uncertainty\n"
      "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n"
      "train: {batch_size: 16, epochs: 2, log_every: 4}\n";
  const TrainConfig config = parse_train_config(yaml, "zoo.yaml");
  auto comm = make_local_communicator();
  const TrainSummary summary = run_training(config, yaml, (scratch.path / "run").string(), *comm);
  ASSERT_EQ(summary.steps, 12);
  std::ifstream in(scratch.path / "run/metrics.jsonl");
  int train_lines = 0, eval_lines = 0;
  double last_ctr_weight = 0;
  for (std::string line; std::getline(in, line);) {
    const bool train = line.find("\"event\": \"train\"") != std::string::npos;
    const bool eval = line.find("\"event\": \"eval\"") != std::string::npos;
    if (!train && !eval) continue;
    const size_t at = line.find("\"loss_weights\": ");
    ASSERT_NE(at, std::string::npos) << line;
    const double ctr = json_number(line.substr(at), "ctr"), ctcvr = json_number(line.substr(at), "ctcvr");
    EXPECT_TRUE(ctr > 0 && ctcvr > 0) << line;
    EXPECT_NE(ctr, 0.5) << "log σ moved off its start: " << line;
    last_ctr_weight = ctr;
    train_lines += train;
    eval_lines += eval;
  }
  EXPECT_EQ(train_lines, 3);
  EXPECT_EQ(eval_lines, 1);
  EXPECT_GT(last_ctr_weight, 0);
  EXPECT_GT(summary.eval.rows, 0);
}

TEST(Trainer, AStudentDistilsFromItsTeachersCheckpointAndAMissingTeacherStopsBeforeTraining) {
  ScratchDir scratch("trainer_dmmp");
  write_day(scratch.path / "train", 100, 1);
  write_day(scratch.path / "eval", 40, 2);
  auto comm = make_local_communicator();
  const std::string data =
      "data: {train: [\"" + (scratch.path / "train").string() + "\"], eval: [\"" + (scratch.path / "eval").string() + "\"]}\n";
  const std::string teacher_yaml = data +
      "model:\n  type: ple\n  esmm: true\n  embedding_dim: 4\n  tower: [8]\n  tables: {user: {rows: 50}, item: {rows: 50}}\n"
      "  experts: {levels: 1, task_experts: 1, shared_experts: 2, sizes: [8]}\n"
      "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n"
      "train: {batch_size: 16, epochs: 1, log_every: 2}\n";
  run_training(parse_train_config(teacher_yaml, "teacher.yaml"), teacher_yaml, (scratch.path / "teacher").string(), *comm);

  auto student_yaml = [&](const std::string& teacher) {
    return data +
           "model:\n  type: three_tower\n  embedding_dim: 4\n  tables: {user: {rows: 50}, item: {rows: 50}}\n"
           "  towers: {user: {slots: [user], sizes: [8, 4]}, item: {slots: [item], sizes: [8, 4]}}\n"
           "  distill: {teacher: \"" + teacher + "\"}\n"
           "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n"
           "train: {batch_size: 16, epochs: 1, log_every: 2}\n";
  };
  const std::string yaml = student_yaml((scratch.path / "teacher/checkpoints/final").string());
  const TrainSummary s = run_training(parse_train_config(yaml, "student.yaml"), yaml, (scratch.path / "student").string(), *comm);
  EXPECT_EQ(s.steps, 6);
  std::ifstream in(scratch.path / "student/metrics.jsonl");
  int kd_lines = 0;
  for (std::string line; std::getline(in, line);)
    if (line.find("\"event\": \"train\"") != std::string::npos) {
      EXPECT_TRUE(std::isfinite(json_number(line, "kd_ctcvr"))) << line;
      ++kd_lines;
    }
  EXPECT_EQ(kd_lines, 3);
  std::vector<std::string> views;
  for (const auto& v : s.eval.views) views.push_back(v.name);
  EXPECT_EQ(views, (std::vector<std::string>{"ctr", "ctcvr"}));

  const std::string missing = student_yaml((scratch.path / "no_teacher").string());
  EXPECT_THROW(run_training(parse_train_config(missing, "student.yaml"), missing, (scratch.path / "student2").string(), *comm),
               ConfigError);
  EXPECT_FALSE(fs::exists(scratch.path / "student2")) << "the run folder was made before the teacher was found";
}

}  // namespace
}  // namespace ncsrec

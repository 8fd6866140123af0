// Resume and preemption: a run stopped at a step boundary and resumed from its checkpoint ends
// bit-identical to one that ran through (weights, optimizer state, embedding rows and their
// state, masks, BatchNorm statistics), for several models, optimizers and schedules; periodic
// checkpoints keep the newest K; a run folder without a checkpoint, or whose newest checkpoint
// is corrupt, is refused.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "core/error.h"
#include "core/hdf5_util.h"
#include "dist/communicator.h"
#include "scratch_dir.h"
#include "tiny_data.h"
#include "train/checkpoint.h"
#include "train/trainer.h"
#include "tests/unit/route_scope.h"

namespace ncsrec {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;
using testing::write_day;

// Every dataset of an HDF5 file, as doubles (exact for f32 and for int64 below 2^53), by path.
std::map<std::string, std::vector<double>> all_datasets(const std::string& path) {
  h5::File f = h5::File::open_read(path);
  std::vector<std::string> names;
  auto visit = [](hid_t group, const char* name, const H5L_info_t*, void* out) -> herr_t {
    H5O_info_t info;
#if H5_VERSION_GE(1, 12, 0)
    if (H5Oget_info_by_name3(group, name, &info, H5O_INFO_BASIC, H5P_DEFAULT) < 0) return -1;
#else
    if (H5Oget_info_by_name(group, name, &info, H5P_DEFAULT) < 0) return -1;
#endif
    if (info.type == H5O_TYPE_DATASET) static_cast<std::vector<std::string>*>(out)->push_back(name);
    return 0;
  };
  EXPECT_GE(H5Lvisit(f.id(), H5_INDEX_NAME, H5_ITER_INC, visit, &names), 0) << path;
  std::map<std::string, std::vector<double>> out;
  for (const std::string& n : names) out[n] = f.read_f64(n);
  return out;
}

// Bitwise equality of two checkpoints' rank-0 files, dataset by dataset.
void expect_same_checkpoint(const fs::path& a, const fs::path& b) {
  const auto da = all_datasets((a / "rank-0.h5").string());
  const auto db = all_datasets((b / "rank-0.h5").string());
  ASSERT_GT(da.size(), 3u);
  ASSERT_EQ(da.size(), db.size());
  for (const auto& [name, va] : da) {
    ASSERT_TRUE(db.count(name)) << name << " missing from " << b;
    const auto& vb = db.at(name);
    ASSERT_EQ(va.size(), vb.size()) << name;
    EXPECT_EQ(std::memcmp(va.data(), vb.data(), va.size() * sizeof(double)), 0) << name << " differs";
  }
  const CheckpointMeta ma = read_checkpoint_meta(a.string()), mb = read_checkpoint_meta(b.string());
  EXPECT_EQ(ma.step, mb.step);
  EXPECT_EQ(ma.epoch, mb.epoch);
  EXPECT_EQ(ma.data_position, mb.data_position);
}

std::string yaml_for(const fs::path& train, const std::string& model, const std::string& rest) {
  return "data: {train: [\"" + train.string() + "\"]}\n" + model + rest;
}

struct Case {
  const char* name;
  std::string model;  // the model: section and optimizers
  std::string train;  // extra train: keys
  MaskedRoute route = MaskedRoute::Auto;  // the masked layers' route (set by the command, not the library)
};

class ResumeEquals : public ::testing::TestWithParam<Case> {};

// 100 rows, 6 steps of 16 per epoch, 3 epochs; the stop at step 8 is in the middle of epoch 1.
TEST_P(ResumeEquals, AnUninterruptedRun) {
  const Case& c = GetParam();
  testing::RouteScope route(c.route);
  ScratchDir scratch(std::string("resume_") + c.name);
  write_day(scratch.path / "train", 100, 1);
  const std::string yaml = yaml_for(scratch.path / "train", c.model,
                                    "train: {batch_size: 16, epochs: 3, log_every: 4" + c.train + "}\n");
  const TrainConfig config = parse_train_config(yaml, "resume.yaml");
  auto comm = make_local_communicator();

  const TrainSummary through = run_training(config, yaml, (scratch.path / "through").string(), *comm);
  ASSERT_EQ(through.steps, 18);

  TrainOptions stop_at_8;
  stop_at_8.after_step = [](int64_t step) {
    if (step == 8) request_training_stop();
  };
  const TrainSummary first = run_training(config, yaml, (scratch.path / "stopped").string(), *comm, stop_at_8);
  EXPECT_TRUE(first.preempted);
  EXPECT_EQ(first.steps, 8);
  EXPECT_TRUE(fs::exists(scratch.path / "stopped/checkpoints/step-8"));
  EXPECT_FALSE(fs::exists(scratch.path / "stopped/checkpoints/final"));
  EXPECT_FALSE(fs::exists(scratch.path / "stopped/summary.json"));
  const CheckpointMeta at8 = read_checkpoint_meta((scratch.path / "stopped/checkpoints/step-8").string());
  EXPECT_EQ(at8.epoch, 1);
  EXPECT_EQ(at8.data_position, 2 * 16);

  TrainOptions resume;
  resume.resume = true;
  const TrainSummary second = run_training(config, yaml, (scratch.path / "stopped").string(), *comm, resume);
  EXPECT_FALSE(second.preempted);
  EXPECT_EQ(second.resumed_from_step, 8);
  EXPECT_EQ(second.steps, 18);
  EXPECT_EQ(second.samples, 10 * 16);
  expect_same_checkpoint(scratch.path / "through/checkpoints/final", scratch.path / "stopped/checkpoints/final");

  // The log tells the story: the preemption, then the resume.
  std::ifstream in(scratch.path / "stopped/metrics.jsonl");
  std::string log((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t preempted = log.find("\"event\": \"preempted\", \"step\": 8");
  const size_t resumed = log.find("\"event\": \"resume\", \"step\": 8");
  EXPECT_NE(preempted, std::string::npos) << log;
  EXPECT_NE(resumed, std::string::npos) << log;
  EXPECT_LT(preempted, resumed);
}

INSTANTIATE_TEST_SUITE_P(
    Models, ResumeEquals,
    ::testing::Values(
        Case{"esmm_adam_adagrad_schedule",
             "model:\n  type: esmm\n  embedding_dim: 4\n  tower: [8]\n  tables: {user: {rows: 50}, item: {rows: 50}}\n"
             "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n"
             "optimizer: {type: adam, lr: 0.01, weight_decay: 0.01}\nsparse_optimizer: {type: adagrad, lr: 0.05}\n",
             ", clip_grad_norm: 0.05, lr_schedule: {warmup_steps: 3, decay: cosine, decay_steps: 12}"},
        Case{"mmoe_batchnorm_dropout_uncertainty_lazy_adam",
             "model:\n  type: mmoe\n  esmm: true\n  embedding_dim: 4\n  tower: [8]\n"
             "  tables: {user: {rows: 50}, item: {rows: 50}}\n"
             "  experts: {count: 3, sizes: [8]}\n  layers: {norm: batch, dropout: 0.2}\n  loss_weighting: uncertainty\n"
             "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n"
             "optimizer: {type: adam, lr: 0.01}\nsparse_optimizer: {type: adam, lr: 0.01}\n",
             ""},
        Case{"ncs_learned_masks_alternating",
             "model:\n  type: ncs\n  embedding_dim: 4\n  shared: [16, 8]\n  tower: []\n"
             "  tables: {user: {rows: 50}, item: {rows: 50}}\n  masks: {find: learned, final_density: 0.5}\n"
             "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n"
             "optimizer: {type: adam, lr: 0.01}\nsparse_optimizer: {type: adagrad, lr: 0.05}\n",
             ", schedule: alternating"},
        // The masked MLP chained on the CPU's sparse route (where the CPU has AVX-512F).
        Case{"ncs_fused_route_chain_joint",
             "model:\n  type: ncs\n  embedding_dim: 4\n  shared: [16, 8]\n  tower: []\n"
             "  tables: {user: {rows: 50}, item: {rows: 50}}\n"
             "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n"
             "optimizer: {type: adam, lr: 0.01}\nsparse_optimizer: {type: adagrad, lr: 0.05}\n",
             "", MaskedRoute::Fused},
        // user: 50 ids in 30 rows, admitted after 2 reads: pending ids and evictions are state too.
        Case{"hash_tables_admission_eviction_lazy_adam",
             "model:\n  type: esmm\n  embedding_dim: 4\n  tower: [8]\n"
             "  tables: {user: {capacity: 30, admit_after: 2, evict_when_full: true}, item: {capacity: 100}}\n"
             "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n"
             "optimizer: {type: adam, lr: 0.01}\nsparse_optimizer: {type: adam, lr: 0.01}\n",
             ""}),
    [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

TrainConfig tiny(const fs::path& train, const std::string& extra) {
  const std::string yaml = yaml_for(train,
                                    "model:\n  type: esmm\n  embedding_dim: 4\n  tower: [8]\n"
                                    "  tables: {user: {rows: 50}, item: {rows: 50}}\n"
                                    "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n",
                                    "train: {batch_size: 16, epochs: 2" + extra + "}\n");
  return parse_train_config(yaml, "tiny.yaml");
}

TEST(Checkpoints, EveryNStepsKeepsTheNewestKBesideFinal) {
  ScratchDir scratch("resume_keep");
  write_day(scratch.path / "train", 100, 1);
  auto comm = make_local_communicator();
  run_training(tiny(scratch.path / "train", ", checkpoint_every: 2, keep_checkpoints: 2"), "x: 1",
               (scratch.path / "run").string(), *comm);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(scratch.path / "run/checkpoints")) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"final", "step-10", "step-8"}));
  EXPECT_EQ(read_checkpoint_meta((scratch.path / "run/checkpoints/step-10").string()).step, 10);
  EXPECT_EQ(newest_checkpoint((scratch.path / "run/checkpoints").string()),
            (scratch.path / "run/checkpoints/final").string());
}

TEST(Checkpoints, ResumeWithoutACheckpointSaysWhereItLooked) {
  ScratchDir scratch("resume_none");
  write_day(scratch.path / "train", 100, 1);
  auto comm = make_local_communicator();
  TrainOptions resume;
  resume.resume = true;
  try {
    run_training(tiny(scratch.path / "train", ""), "x: 1", (scratch.path / "run").string(), *comm, resume);
    ADD_FAILURE() << "resumed from nothing";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("checkpoints holds no checkpoint"), std::string::npos) << e.what();
  }
}

TEST(Checkpoints, ACorruptNewestCheckpointIsRefusedNotSkipped) {
  ScratchDir scratch("resume_corrupt");
  write_day(scratch.path / "train", 100, 1);
  auto comm = make_local_communicator();
  TrainOptions stop_at_5;
  stop_at_5.after_step = [](int64_t step) {
    if (step == 5) request_training_stop();
  };
  const TrainConfig config = tiny(scratch.path / "train", ", checkpoint_every: 2");
  run_training(config, "x: 1", (scratch.path / "run").string(), *comm, stop_at_5);
  const fs::path victim = scratch.path / "run/checkpoints/step-5/rank-0.h5";
  ASSERT_TRUE(fs::exists(victim));
  {
    std::fstream f(victim, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(victim) / 2));
    char c = 0;
    f.read(&c, 1);
    f.seekp(static_cast<std::streamoff>(fs::file_size(victim) / 2));
    c = static_cast<char>(c ^ 0x5a);
    f.write(&c, 1);
  }
  TrainOptions resume;
  resume.resume = true;
  try {
    run_training(config, "x: 1", (scratch.path / "run").string(), *comm, resume);
    ADD_FAILURE() << "resumed from a corrupt checkpoint";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("step-5"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("CRC32C"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(scratch.path / "run/checkpoints/final")) << "no training from a corrupt checkpoint";
}

TEST(Checkpoints, TheNewestCheckpointIsRecoveredFromWhatACrashMidSaveLeft) {
  ScratchDir scratch("resume_recover");
  write_day(scratch.path / "train", 100, 1);
  auto comm = make_local_communicator();
  run_training(tiny(scratch.path / "train", ", checkpoint_every: 2, max_steps: 6"), "x: 1",
               (scratch.path / "run").string(), *comm);
  const fs::path dir = scratch.path / "run/checkpoints";
  // A crash between the save's two renames: step-4 complete but still named step-4.tmp.
  fs::rename(dir / "step-4", dir / "step-4.tmp");
  fs::remove_all(dir / "final");
  EXPECT_EQ(newest_checkpoint(dir.string()), (dir / "step-4").string());
  EXPECT_TRUE(fs::exists(dir / "step-4/manifest"));
  // A half-written one (no manifest) is never taken.
  fs::create_directories(dir / "step-6.tmp");
  std::ofstream(dir / "step-6.tmp/rank-0.h5") << "half";
  EXPECT_EQ(newest_checkpoint(dir.string()), (dir / "step-4").string());
}

TEST(Checkpoints, ANewRunNeverWritesOverAnotherRunsCheckpoints) {
  ScratchDir scratch("resume_no_overwrite");
  write_day(scratch.path / "train", 100, 1);
  auto comm = make_local_communicator();
  const std::string run = (scratch.path / "run").string();
  run_training(tiny(scratch.path / "train", ", max_steps: 3"), "first: 1", run, *comm);
  try {
    run_training(tiny(scratch.path / "train", ""), "second: 1", run, *comm);
    ADD_FAILURE() << "a new run trained into a folder holding checkpoints";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("--resume"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_checkpoint_meta(run + "/checkpoints/final").step, 3);
  std::ifstream cfg(run + "/config.yaml");
  std::string first_line;
  std::getline(cfg, first_line);
  EXPECT_EQ(first_line, "first: 1") << "the first run's config.yaml was rewritten";
}

TEST(Checkpoints, ARefusedResumeLeavesTheRunFolderAsItWas) {
  ScratchDir scratch("resume_refused_clean");
  write_day(scratch.path / "train", 100, 1);
  auto comm = make_local_communicator();
  const std::string run = (scratch.path / "run").string();
  run_training(tiny(scratch.path / "train", ", max_steps: 3"), "first: 1", run, *comm);  // position 48
  const auto log_size = fs::file_size(run + "/metrics.jsonl");
  TrainOptions resume;
  resume.resume = true;
  TrainConfig bigger_batch = tiny(scratch.path / "train", ", max_steps: 5");
  bigger_batch.train.batch_size = 32;  // 48 is no multiple of 32
  EXPECT_THROW(run_training(bigger_batch, "second: 1", run, *comm, resume), UserError);
  std::ifstream cfg(run + "/config.yaml");
  std::string first_line;
  std::getline(cfg, first_line);
  EXPECT_EQ(first_line, "first: 1");
  EXPECT_EQ(fs::file_size(run + "/metrics.jsonl"), log_size);
}

TEST(Checkpoints, AStopRequestedBeforeTrainingStartsStopsItAtTheFirstStep) {
  ScratchDir scratch("resume_early_stop");
  write_day(scratch.path / "train", 100, 1);
  auto comm = make_local_communicator();
  request_training_stop();  // as a SIGTERM during start-up would
  const TrainSummary s = run_training(tiny(scratch.path / "train", ""), "x: 1", (scratch.path / "run").string(), *comm);
  EXPECT_TRUE(s.preempted);
  EXPECT_EQ(s.steps, 1);
  // The request is used up: the next run goes through.
  const TrainSummary again = run_training(tiny(scratch.path / "train", ""), "x: 1",
                                          (scratch.path / "run2").string(), *comm);
  EXPECT_FALSE(again.preempted);
  EXPECT_EQ(again.steps, 12);
}

}  // namespace
}  // namespace ncsrec

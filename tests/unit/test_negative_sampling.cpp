// Negative downsampling of the training data and its calibration corrections: which rows the
// reader keeps (a pure function of seed, epoch and row), the weight column of the weight
// correction, the config rules of the logit correction, and that a model trained on
// downsampled data predicts calibrated probabilities with either correction and not without.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include "core/data/hdf5_shard.h"
#include "core/data/reader.h"
#include "core/error.h"
#include "core/random.h"
#include "dist/communicator.h"
#include "models/multitask_model.h"
#include "scratch_dir.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace ncsrec {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

// A day of impressions whose click rate depends on the user (4% or 12%), conversions on 30%
// of clicks; `with_weight`: a weight column of 2 on even rows, 1 on odd rows.
void write_day(const fs::path& dir, int64_t rows, uint64_t seed, bool with_weight = false) {
  DataSchema s;
  s.tasks = {"click", "conversion"};
  s.slots = {"user", "item"};
  s.meta = {"user_id"};
  s.has_weight = with_weight;
  Block b = Block::with_schema(s);
  Rng rng(seed);
  b.rows = rows;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t user = static_cast<int64_t>(rng.below(40)), item = static_cast<int64_t>(rng.below(30));
    const float click = rng.bernoulli(user % 2 ? 0.12 : 0.04) ? 1.0f : 0.0f;
    b.labels[0].push_back(click);
    b.labels[1].push_back(click > 0 && rng.bernoulli(0.3) ? 1.0f : 0.0f);
    b.sparse[0].ids.push_back(user);
    b.sparse[0].offsets.push_back(r + 1);
    b.sparse[1].ids.push_back(item);
    b.sparse[1].offsets.push_back(r + 1);
    b.meta[0].push_back(user);
    if (with_weight) b.weight.push_back(r % 2 ? 1.0f : 2.0f);
  }
  fs::create_directories(dir);
  write_shard((dir / "part-0000.h5").string(), b);
  std::ofstream(dir / "_DONE").close();
}

ReaderOptions sampling_options(const fs::path& file, int64_t batch, int rank, int world, double rate, double weight,
                               int64_t epoch = 0) {
  ReaderOptions o;
  o.files = {file.string()};
  o.batch_size = batch;
  o.rank = rank;
  o.world_size = world;
  o.seed = 7;
  o.epoch = epoch;
  o.window_rows = 64;
  o.negative_label = "click";
  o.negative_rate = rate;
  o.negative_weight = weight;
  return o;
}

// Every row the reader yields, identified by its user id and item id (unique enough to
// compare row sets here: they are compared as multisets), with its click label and weight.
struct Seen {
  std::multiset<std::tuple<int64_t, int64_t, float, float>> rows;
  int64_t positives = 0, negatives = 0, batches = 0;
};

void read_all(Reader& reader, Seen& seen) {
  Block b;
  while (reader.next(b)) {
    ++seen.batches;
    for (int64_t i = 0; i < b.rows; ++i) {
      const float w = b.weight.empty() ? 1.0f : b.weight[static_cast<size_t>(i)];
      const float click = b.labels[0][static_cast<size_t>(i)];
      seen.rows.emplace(b.sparse[0].ids[static_cast<size_t>(i)], b.sparse[1].ids[static_cast<size_t>(i)], click, w);
      (click > 0.5f ? seen.positives : seen.negatives) += 1;
    }
  }
}

TEST(NegativeSampling, KeepsEveryPositiveAndAboutRateOfTheNegatives) {
  ScratchDir scratch("negsample_rate");
  write_day(scratch.path / "day", 20000, 1);
  const fs::path file = scratch.path / "day/part-0000.h5";
  Seen all, sampled;
  {
    ReaderOptions o = sampling_options(file, 500, 0, 1, 1.0, 0.0);
    o.negative_label.clear();
    Reader r(o);
    read_all(r, all);
  }
  Reader r(sampling_options(file, 500, 0, 1, 0.25, 0.0));
  read_all(r, sampled);
  EXPECT_EQ(sampled.positives, all.positives);
  EXPECT_EQ(sampled.batches, all.batches);  // positions still count every row
  // Binomial(n, 0.25): 5 standard deviations.
  const double n = static_cast<double>(all.negatives), sd = std::sqrt(n * 0.25 * 0.75);
  EXPECT_NEAR(static_cast<double>(sampled.negatives), 0.25 * n, 5 * sd);
  for (const auto& row : sampled.rows) EXPECT_EQ(std::get<3>(row), 1.0f);  // no correction weight asked for
}

TEST(NegativeSampling, TwoRanksKeepExactlyTheRowsOneRankKeepsAndAResumedReaderTheRowsItWouldHaveRead) {
  ScratchDir scratch("negsample_ranks");
  write_day(scratch.path / "day", 3000, 2);
  const fs::path file = scratch.path / "day/part-0000.h5";
  Seen one, two;
  {
    Reader r(sampling_options(file, 200, 0, 1, 0.3, 0.0));
    read_all(r, one);
  }
  for (int rank = 0; rank < 2; ++rank) {
    Reader r(sampling_options(file, 100, rank, 2, 0.3, 0.0));
    read_all(r, two);
  }
  EXPECT_EQ(one.rows, two.rows);
  EXPECT_EQ(one.batches, two.batches / 2);

  // Resume at position 1200: the rest of the epoch is the batches an uninterrupted reader reads.
  std::vector<Block> straight, resumed;
  Block b;
  {
    Reader r(sampling_options(file, 200, 0, 1, 0.3, 0.0));
    for (int k = 0; r.next(b); ++k)
      if (k >= 6) straight.push_back(b);
  }
  ReaderOptions o = sampling_options(file, 200, 0, 1, 0.3, 0.0);
  o.start_position = 1200;
  Reader r(o);
  while (r.next(b)) resumed.push_back(b);
  ASSERT_EQ(straight.size(), resumed.size());
  for (size_t k = 0; k < straight.size(); ++k) {
    EXPECT_EQ(straight[k].labels, resumed[k].labels);
    EXPECT_EQ(straight[k].sparse[0].ids, resumed[k].sparse[0].ids);
  }
}

TEST(NegativeSampling, EachEpochDrawsItsOwnNegatives) {
  ScratchDir scratch("negsample_epochs");
  write_day(scratch.path / "day", 4000, 3);
  const fs::path file = scratch.path / "day/part-0000.h5";
  int64_t kept_in_both = 0, kept_in_0 = 0;
  for (int64_t row = 0; row < 4000; ++row) {
    const bool k0 = keeps_negative(7, 0, row, 0.3), k1 = keeps_negative(7, 1, row, 0.3);
    kept_in_0 += k0;
    kept_in_both += k0 && k1;
  }
  // Independent draws: about 0.3 of epoch 0's kept negatives are kept again in epoch 1.
  EXPECT_NEAR(static_cast<double>(kept_in_both) / static_cast<double>(kept_in_0), 0.3, 0.06);
  EXPECT_TRUE(keeps_negative(7, 0, 123, 1.0));
}

TEST(NegativeSampling, TheWeightCorrectionWeighsKeptNegativesByOneOverTheRateTimesTheDataWeight) {
  ScratchDir scratch("negsample_weight");
  write_day(scratch.path / "plain", 1000, 4);
  write_day(scratch.path / "weighted", 1000, 4, true);
  for (const char* which : {"plain", "weighted"}) {
    Reader r(sampling_options(scratch.path / which / "part-0000.h5", 100, 0, 1, 0.25, 4.0));
    EXPECT_TRUE(r.schema().has_weight);
    Block b;
    int64_t rows = 0;
    while (r.next(b)) {
      ASSERT_TRUE(b.schema.has_weight);
      ASSERT_EQ(static_cast<int64_t>(b.weight.size()), b.rows);
      for (int64_t i = 0; i < b.rows; ++i) {
        const bool negative = b.labels[0][static_cast<size_t>(i)] <= 0.5f;
        const float w = b.weight[static_cast<size_t>(i)];
        if (std::string(which) == "plain") {
          EXPECT_EQ(w, negative ? 4.0f : 1.0f);
        } else {
          EXPECT_TRUE(negative ? (w == 4.0f || w == 8.0f) : (w == 1.0f || w == 2.0f)) << w;
        }
      }
      rows += b.rows;
    }
    EXPECT_GT(rows, 0);
  }
}

TEST(NegativeSampling, ALabelTheDataLacksIsAClearError) {
  ScratchDir scratch("negsample_label");
  write_day(scratch.path / "day", 100, 5);
  ReaderOptions o = sampling_options(scratch.path / "day/part-0000.h5", 10, 0, 1, 0.5, 0.0);
  o.negative_label = "purchase";
  try {
    Reader r(o);
    FAIL() << "expected a UserError";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("purchase"), std::string::npos) << e.what();
  }
}

std::string model_yaml(const std::string& type_and_tasks) {
  return "model:\n  " + type_and_tasks +
         "\n  embedding_dim: 4\n  tower: [8]\n  tables: {user: {rows: 40}, item: {rows: 30}}\n";
}

std::string config_error(const std::string& yaml) {
  try {
    parse_train_config(yaml, "neg.yaml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(NegativeSamplingConfig, TheLogitCorrectionOffsetsTheTasksOfTheSampledLabelOnly) {
  const std::string data = "data: {train: [x], negative_sampling: {label: click, rate: 0.1}}\n";
  const TrainConfig esmm = parse_train_config(
      data + model_yaml("type: esmm\n  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}"), "n.yaml");
  EXPECT_EQ(esmm.data.negative_correction, "logit");
  EXPECT_DOUBLE_EQ(esmm.model.tasks[0].logit_offset, std::log(0.1));
  EXPECT_EQ(esmm.model.tasks[1].logit_offset, 0.0);
  const TrainConfig sb = parse_train_config(
      data + model_yaml("type: shared_embedding\n  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}"),
      "n.yaml");
  EXPECT_DOUBLE_EQ(sb.model.tasks[0].logit_offset, std::log(0.1));
  EXPECT_EQ(sb.model.tasks[1].logit_offset, 0.0);  // trained on clicked rows: none was dropped
  const TrainConfig weighted = parse_train_config(
      "data: {train: [x], negative_sampling: {label: click, rate: 0.1, correction: weight}}\n" +
          model_yaml("type: shared_embedding\n  tasks: {ctr: {label: click}, buy: {label: conversion}}"),
      "n.yaml");
  EXPECT_EQ(weighted.model.tasks[0].logit_offset, 0.0);
  const ReaderOptions ro = training_reader_options(weighted, {"x.h5"}, 0, 1, 0);
  EXPECT_EQ(ro.negative_label, "click");
  EXPECT_DOUBLE_EQ(ro.negative_weight, 10.0);
}

TEST(NegativeSamplingConfig, MistakesNameTheKeyAndWhatToDo) {
  const std::string two = model_yaml("type: shared_embedding\n  tasks: {ctr: {label: click}, buy: {label: conversion}}");
  // A task over every impression with another label cannot be corrected by an offset.
  std::string e = config_error("data: {train: [x], negative_sampling: {label: click, rate: 0.1}}\n" + two);
  EXPECT_NE(e.find("data.negative_sampling.correction: logit"), std::string::npos) << e;
  EXPECT_NE(e.find("task buy"), std::string::npos) << e;
  EXPECT_NE(e.find("correction: weight"), std::string::npos) << e;
  e = config_error("data: {train: [x], negative_sampling: {label: click}}\n" + two);
  EXPECT_NE(e.find("data.negative_sampling.rate"), std::string::npos) << e;
  e = config_error("data: {train: [x], negative_sampling: {label: click, rate: 0}}\n" + two);
  EXPECT_NE(e.find("data.negative_sampling.rate"), std::string::npos) << e;
  e = config_error("data: {train: [x], negative_sampling: {label: click, rate: 1.5}}\n" + two);
  EXPECT_NE(e.find("data.negative_sampling.rate"), std::string::npos) << e;
  e = config_error("data: {train: [x], negative_sampling: {label: click, rate: 0.5, correction: log}}\n" + two);
  EXPECT_NE(e.find("data.negative_sampling.correction"), std::string::npos) << e;
  e = config_error("data: {train: [x], negative_sampling: {rate: 0.5}}\n" + two);
  EXPECT_NE(e.find("data.negative_sampling.label"), std::string::npos) << e;
  e = config_error("data: {train: [x], negative_sampling: {label: click, rate: 0.5, rat: 1}}\n" + two);
  EXPECT_NE(e.find("data.negative_sampling.rat"), std::string::npos) << e;
  e = config_error("data: {train: [x], negative_sampling: {label: click, rate: 0.5}}\n" +
                   model_yaml("type: shared_embedding\n  tasks: {ctr: {label: click, loss: mse}}"));
  EXPECT_NE(e.find("mse"), std::string::npos) << e;
}

TEST(NegativeSamplingModel, PredictAddsTheLogitOffsetBeforeTheSigmoid) {
  ScratchDir scratch("negsample_offset");
  write_day(scratch.path / "day", 64, 6);
  Block batch;
  read_shard_rows((scratch.path / "day/part-0000.h5").string(), 0, 64, batch);
  TrainConfig c = parse_train_config(
      "data: {train: [x]}\n" +
          model_yaml("type: esmm\n  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}"),
      "n.yaml");
  MultiTaskModel plain(c.model, batch.schema, DType::F32, 3);
  c.model.tasks[0].logit_offset = std::log(0.2);
  MultiTaskModel shifted(c.model, batch.schema, DType::F32, 3);
  std::vector<std::vector<float>> p, q;
  plain.predict(batch, p);
  shifted.predict(batch, q);
  for (int64_t i = 0; i < batch.rows; ++i) {
    const double pi = p[0][static_cast<size_t>(i)];
    const double expected = 1.0 / (1.0 + std::exp(-(std::log(pi / (1 - pi)) + std::log(0.2))));
    EXPECT_NEAR(q[0][static_cast<size_t>(i)], expected, 1e-6);
    EXPECT_NE(q[0][static_cast<size_t>(i)], p[0][static_cast<size_t>(i)]);
    EXPECT_EQ(q[1][static_cast<size_t>(i)], p[1][static_cast<size_t>(i)]);  // pCVR untouched
  }
}

// A calibration of 1 is mean prediction = mean label on data that was not downsampled.
TEST(NegativeSamplingTraining, BothCorrectionsPredictCalibratedProbabilitiesAndNoCorrectionDoesNot) {
  ScratchDir scratch("negsample_train");
  write_day(scratch.path / "train", 40000, 11);
  write_day(scratch.path / "eval", 20000, 12);
  auto comm = make_local_communicator();
  std::map<std::string, double> calibration;
  for (const std::string correction : {"logit", "weight", "none", "off"}) {
    const std::string sampling =
        correction == "off" ? "" : ", negative_sampling: {label: click, rate: 0.2, correction: " + correction + "}";
    const std::string yaml =
        "run: {threads: 1}\n"
        "data: {train: [\"" + (scratch.path / "train").string() + "\"], eval: [\"" + (scratch.path / "eval").string() +
        "\"]" + sampling + "}\n" +
        model_yaml("type: shared_embedding\n  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}") +
        "optimizer: {lr: 0.03}\ntrain: {batch_size: 256, epochs: 2, log_every: 1000}\n";
    const TrainSummary s = run_training(parse_train_config(yaml, "n.yaml"), yaml,
                                        (scratch.path / ("run-" + correction)).string(), *comm);
    calibration[correction] = s.eval.views.at(0).metrics.calibration;
    if (correction == "off") {
      EXPECT_EQ(s.trained_rows, s.samples);
    } else {
      // Kept: every positive (about 8%) and a fifth of the negatives.
      EXPECT_LT(static_cast<double>(s.trained_rows), 0.35 * static_cast<double>(s.samples));
    }
  }
  // The corrected models are as calibrated as the one trained on every row (which is itself
  // off by the eval day's sampling noise and the short training).
  EXPECT_NEAR(calibration["off"], 1.0, 0.15);
  EXPECT_NEAR(calibration["logit"], calibration["off"], 0.06);
  EXPECT_NEAR(calibration["weight"], calibration["off"], 0.06);
  EXPECT_GT(calibration["none"], 2.5 * calibration["off"]);
}

}  // namespace
}  // namespace ncsrec

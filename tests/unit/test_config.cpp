// Specification tests for the strict configuration reader (core/config.h,
// train/train_config.h, models/multitask_model.h): every kind of mistake in a config file is a
// ConfigError whose message names the file and the full key path; `--set` overrides change
// nested values and an override of an unknown key is rejected like a typo in the file; a
// model whose labels or slots are not in the data is rejected naming the key and the names
// the data does have.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/data/block.h"
#include "core/error.h"
#include "core/random.h"
#include "models/multitask_model.h"
#include "train/train_config.h"

#include "scratch_dir.h"

namespace ncsrec {
namespace {

namespace fs = std::filesystem;

using testing::ScratchDir;

// A valid config touching every section.
const char* kValidConfig = R"(run:
  seed: 3
  threads: 1
data:
  train: ["data/day=1"]
  eval: ["data/day=2"]
model:
  type: esmm
  embedding_dim: 4
  tables:
    user_id: {rows: 100}
    item_id: {rows: 50, slots: [item_id, item_tags], pooling: mean}
  tower: [8, 4]
  tasks:
    ctr: {label: click}
    cvr: {label: conversion, given: ctr}
optimizer: {type: adam, lr: 0.001}
sparse_optimizer: {type: adagrad, lr: 0.05}
train:
  batch_size: 64
  epochs: 2
)";

std::string emit(const YAML::Node& root) {
  YAML::Emitter out;
  out << root;
  return out.c_str();
}

// The valid config with one edit applied to its YAML tree.
std::string edited(const std::function<void(YAML::Node&)>& edit) {
  YAML::Node root = YAML::Load(kValidConfig);
  edit(root);
  return emit(root);
}

// Runs parse_train_config and returns the ConfigError's message ("" if nothing was thrown).
std::string config_error(const std::string& text, const std::string& file) {
  try {
    parse_train_config(text, file);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(TrainConfig, TheValidBaseConfigParsesToItsValues) {
  const TrainConfig c = parse_train_config(kValidConfig, "base.yaml");
  EXPECT_EQ(c.seed, 3u);
  EXPECT_EQ(c.data.train, std::vector<std::string>{"data/day=1"});
  EXPECT_EQ(c.model.type, "esmm");
  ASSERT_EQ(c.model.tasks.size(), 2u);
  EXPECT_EQ(c.model.tasks[1].given, "ctr");
  EXPECT_EQ(c.model.tasks[1].tower, (std::vector<int64_t>{8, 4}));
  ASSERT_EQ(c.model.tables.size(), 2u);
  EXPECT_EQ(c.model.tables[1].slots, (std::vector<std::string>{"item_id", "item_tags"}));
  EXPECT_EQ(c.model.tables[1].pooling, Pooling::Mean);
  EXPECT_EQ(c.dense_optimizer.type, "adam");
  EXPECT_EQ(c.sparse_optimizer.type, "adagrad");
  EXPECT_EQ(c.train.batch_size, 64);
  EXPECT_EQ(c.train.epochs, 2);
}

// The valid config's model as a DMMP student (type three_tower).
void make_three_tower(YAML::Node& r) {
  YAML::Node m = r["model"];
  m["type"] = "three_tower";
  m.remove("tower");
  m["towers"] = YAML::Load("{user: {slots: [user_id], sizes: [8, 4]}, item: {slots: [item_id, item_tags], sizes: [8, 4]}}");
}

TEST(TrainConfig, AThreeTowerStudentParsesWithLearnedLossWeightsByDefault) {
  const TrainConfig c = parse_train_config(edited(make_three_tower), "student.yaml");
  EXPECT_EQ(c.model.type, "three_tower");
  EXPECT_EQ(c.model.loss_weighting, "uncertainty");
  EXPECT_EQ(c.model.three_tower.item.slots, (std::vector<std::string>{"item_id", "item_tags"}));
  EXPECT_TRUE(c.model.three_tower.gate);
  EXPECT_EQ(c.model.three_tower.mix_targets, (std::vector<double>{0.5, 0.5}));
  EXPECT_EQ(c.model.three_tower.teacher, "");
}

TEST(TrainConfig, EveryShippedTrainingConfigParses) {
  int checked = 0;
  for (const char* folder : {"/configs", "/configs/census"})
    for (const auto& entry : fs::directory_iterator(std::string(NCSREC_SOURCE_DIR) + folder)) {
      if (entry.path().extension() != ".yaml") continue;
      std::string resolved;
      EXPECT_NO_THROW(load_train_config(entry.path().string(), {}, &resolved)) << entry.path();
      ++checked;
    }
  EXPECT_GE(checked, 10);
}

// configs/ncs_paper.yaml is the paper's base network: 20 fields of dim 16, the full F×F dot
// products with the flat embeddings (320 + 400 = 720 inputs), masked shared layers 512-256-128,
// a linear head per task, CTR focal, CVR MSE on positives weighted 1.5. Built with its tables
// cut to 100 rows (the real ones are 25M rows: the bench's business, not a unit test's).
TEST(TrainConfig, ThePapersConfigBuildsThePapersNetwork) {
  TrainConfig c = load_train_config(std::string(NCSREC_SOURCE_DIR) + "/configs/ncs_paper.yaml", {});
  for (auto& t : c.model.tables) t.rows = 100;
  DataSchema schema;
  schema.tasks = {"click", "conversion"};
  for (int f = 0; f < 20; ++f) schema.slots.push_back((f < 10 ? "f0" : "f") + std::to_string(f));
  MultiTaskModel model(c.model, schema, DType::F32, 1);
  EXPECT_EQ(model.input_dim(), 720);
  ASSERT_EQ(model.num_masked_layers(), 3);
  const std::vector<std::vector<int64_t>> shapes = {{720, 512}, {512, 256}, {256, 128}};
  for (int l = 0; l < 3; ++l) {
    EXPECT_EQ(model.mask(0, l).rows * model.mask(0, l).cols, shapes[static_cast<size_t>(l)][0] * shapes[static_cast<size_t>(l)][1])
        << model.masked_layer_name(l);
  }
  ASSERT_EQ(c.model.tasks.size(), 2u);
  EXPECT_EQ(c.model.tasks[0].loss, "focal");
  EXPECT_EQ(c.model.tasks[1].loss, "mse");
  EXPECT_EQ(c.model.tasks[1].loss_weight, 1.5);
  EXPECT_EQ(c.model.embedding_dim, 16);
}

struct BadConfigCase {
  std::string name;      // what is wrong
  std::string key_path;  // what the message must name
  std::function<void(YAML::Node&)> edit;
};

TEST(TrainConfig, EveryMistakeIsAConfigErrorNamingTheFileAndTheFullKeyPath) {
  Rng rng(2024);
  const int64_t bad_batch = -static_cast<int64_t>(rng.below(1000));  // 0 or negative
  const double bad_lr = -rng.uniform(0.001, 100.0);
  const std::vector<BadConfigCase> cases = {
      {"unknown top-level key", "trian", [](YAML::Node& r) { r["trian"]["batch_size"] = 1; }},
      {"unknown key in a section", "train.batch_sise", [](YAML::Node& r) { r["train"]["batch_sise"] = 1; }},
      {"unknown key in a task", "model.tasks.ctr.lable", [](YAML::Node& r) { r["model"]["tasks"]["ctr"]["lable"] = "click"; }},
      {"unknown key in a table", "model.tables.user_id.rowz", [](YAML::Node& r) { r["model"]["tables"]["user_id"]["rowz"] = 5; }},
      {"unknown key in the optimizer", "optimizer.learning_rate", [](YAML::Node& r) { r["optimizer"]["learning_rate"] = 0.1; }},
      {"wrong type", "train.batch_size", [](YAML::Node& r) { r["train"]["batch_size"] = "abc"; }},
      {"wrong type in a list", "model.tower[1]", [](YAML::Node& r) { r["model"]["tower"][1] = "wide"; }},
      {"a map where a number belongs", "train.epochs", [](YAML::Node& r) { r["train"]["epochs"] = YAML::Load("{n: 1}"); }},
      {"a scalar where a section belongs", "model.tasks.cvr", [](YAML::Node& r) { r["model"]["tasks"]["cvr"] = "conversion"; }},
      {"a number where a table belongs", "model.tables.user_id", [](YAML::Node& r) { r["model"]["tables"]["user_id"] = 100; }},
      {"batch_size out of range", "train.batch_size", [&](YAML::Node& r) { r["train"]["batch_size"] = bad_batch; }},
      {"optimizer.lr out of range", "optimizer.lr", [&](YAML::Node& r) { r["optimizer"]["lr"] = bad_lr; }},
      {"rows out of range", "model.tables.item_id.rows", [](YAML::Node& r) { r["model"]["tables"]["item_id"]["rows"] = 0; }},
      {"bad choice", "model.type", [](YAML::Node& r) { r["model"]["type"] = "foo"; }},
      {"bad optimizer choice", "sparse_optimizer.type", [](YAML::Node& r) { r["sparse_optimizer"]["type"] = "rmsprop"; }},
      {"missing required data.train", "data.train", [](YAML::Node& r) { r["data"].remove("train"); }},
      {"missing required task label", "model.tasks.ctr.label", [](YAML::Node& r) { r["model"]["tasks"]["ctr"].remove("label"); }},
      {"given names no task", "model.tasks.cvr.given", [](YAML::Node& r) { r["model"]["tasks"]["cvr"]["given"] = "ctx"; }},
      {"esmm without a CTR loss", "model.tasks.ctr.loss_weight", [](YAML::Node& r) { r["model"]["tasks"]["ctr"]["loss_weight"] = 0; }},
      {"slot read by two tables", "model.tables.item_id.slots", [](YAML::Node& r) { r["model"]["tables"]["item_id"]["slots"].push_back("user_id"); }},
      // The multi-gate zoo.
      {"experts on a model without experts", "model.experts", [](YAML::Node& r) { r["model"]["experts"]["sizes"].push_back(4); }},
      {"mmoe without expert sizes", "model.experts.sizes", [](YAML::Node& r) { r["model"]["type"] = "mmoe"; r["model"]["experts"]["count"] = 2; }},
      {"a ple key on mmoe", "model.experts.levels", [](YAML::Node& r) { r["model"]["type"] = "mmoe"; r["model"]["experts"] = YAML::Load("{sizes: [4], levels: 2}"); }},
      {"masked experts on a deep ple", "model.experts.masked", [](YAML::Node& r) { r["model"]["type"] = "ple"; r["model"]["experts"] = YAML::Load("{sizes: [4], levels: 2, masked: true}"); }},
      {"bad norm", "model.layers.norm", [](YAML::Node& r) { r["model"]["layers"]["norm"] = "group"; }},
      {"dropout out of range", "model.layers.dropout", [](YAML::Node& r) { r["model"]["layers"]["dropout"] = 1.0; }},
      {"apg in an unknown place", "model.apg.in", [](YAML::Node& r) { r["model"]["apg"]["in"].push_back("heads"); }},
      {"apg overparam below rank", "model.apg.overparam", [](YAML::Node& r) { r["model"]["apg"] = YAML::Load("{in: [towers], rank: 8, overparam: 4}"); }},
      {"apg in a bottom that is not there", "model.apg", [](YAML::Node& r) { r["model"]["apg"]["in"].push_back("bottom"); }},
      {"esmm switched off on type esmm", "model.esmm", [](YAML::Node& r) { r["model"]["esmm"] = false; }},
      {"bad loss weighting", "model.loss_weighting", [](YAML::Node& r) { r["model"]["loss_weighting"] = "gradnorm"; }},
      // The DMMP student.
      {"three_tower keys on another type", "model.towers", [](YAML::Node& r) { r["model"]["towers"]["user"]["sizes"].push_back(4); }},
      {"towers of different widths", "model.towers.item.sizes", [](YAML::Node& r) { make_three_tower(r); r["model"]["towers"]["item"]["sizes"][1] = 6; }},
      {"a slot on both sides", "model.towers.item.slots", [](YAML::Node& r) { make_three_tower(r); r["model"]["towers"]["item"]["slots"].push_back("user_id"); }},
      {"a tower slot no table reads", "model.towers", [](YAML::Node& r) { make_three_tower(r); r["model"]["towers"]["user"]["slots"].push_back("hour"); }},
      {"a table slot no tower reads", "model.towers", [](YAML::Node& r) { make_three_tower(r); r["model"]["towers"]["item"]["slots"] = YAML::Load("[item_id]"); }},
      {"a per-task tower on three_tower", "model.tower", [](YAML::Node& r) { make_three_tower(r); r["model"]["tower"] = YAML::Load("[4]"); }},
      {"mix targets not one per task", "model.mix.targets", [](YAML::Node& r) { make_three_tower(r); r["model"]["mix"]["targets"] = YAML::Load("[1.0]"); }},
      {"an unknown distill key", "model.distill.teachr", [](YAML::Node& r) { make_three_tower(r); r["model"]["distill"]["teachr"] = "x"; }},
      {"three_tower on the alternating schedule", "train.schedule", [](YAML::Node& r) { make_three_tower(r); r["train"]["schedule"] = "alternating"; }},
  };
  for (const auto& c : cases) {
    const std::string file = "configs/case_" + std::to_string(&c - cases.data()) + ".yaml";
    const std::string message = config_error(edited(c.edit), file);
    ASSERT_FALSE(message.empty()) << c.name << ": no ConfigError was thrown";
    EXPECT_NE(message.find(file), std::string::npos) << c.name << ": the message does not name the file: " << message;
    EXPECT_NE(message.find(c.key_path + ":"), std::string::npos)
        << c.name << ": the message does not name " << c.key_path << ": " << message;
  }
}

TEST(TrainConfig, AYamlSyntaxErrorNamesTheFileAndTheLine) {
  // Line 4 opens a flow sequence that is never closed.
  const std::string text = "run:\n  seed: 1\ndata:\n  train: [a, b\nmodel: {}\n";
  const std::string message = config_error(text, "configs/broken.yaml");
  ASSERT_FALSE(message.empty());
  EXPECT_NE(message.find("configs/broken.yaml"), std::string::npos) << message;
  EXPECT_NE(message.find("line "), std::string::npos) << message;
  EXPECT_NE(message.find("syntax"), std::string::npos) << message;
}

TEST(TrainConfig, ATopLevelThatIsNotAMapIsRejectedNamingTheFile) {
  const std::string message = config_error("- a\n- b\n", "configs/list.yaml");
  EXPECT_NE(message.find("configs/list.yaml"), std::string::npos) << message;
}

TEST(ApplyOverride, ChangesANestedValueAndLeavesTheRestAlone) {
  YAML::Node root = YAML::Load(kValidConfig);
  Rng rng(5);
  const int64_t size = 1 + static_cast<int64_t>(rng.below(4096));
  apply_override(root, "train.batch_size=" + std::to_string(size));
  apply_override(root, "model.tasks.cvr.tower=[7, 3]");
  apply_override(root, "model.tables.user_id.pooling=mean");
  const TrainConfig c = parse_train_config(emit(root), "overridden.yaml");
  EXPECT_EQ(c.train.batch_size, size);
  EXPECT_EQ(c.model.tasks[1].tower, (std::vector<int64_t>{7, 3}));
  EXPECT_EQ(c.model.tasks[0].tower, (std::vector<int64_t>{8, 4}));
  EXPECT_EQ(c.model.tables[0].pooling, Pooling::Mean);
  EXPECT_EQ(c.train.epochs, 2);
  EXPECT_EQ(c.model.tables[1].rows, 50);
}

TEST(ApplyOverride, MalformedAssignmentsAreConfigErrors) {
  YAML::Node root = YAML::Load(kValidConfig);
  EXPECT_THROW(apply_override(root, "train.batch_size"), ConfigError);       // no '='
  EXPECT_THROW(apply_override(root, "=3"), ConfigError);                     // no key
  EXPECT_THROW(apply_override(root, "train..epochs=3"), ConfigError);        // empty key
  EXPECT_THROW(apply_override(root, "train.epochs.x=3"), ConfigError);       // through a scalar
  EXPECT_THROW(apply_override(root, "train.epochs=[1, 2"), ConfigError);     // bad YAML value
}

TEST(LoadTrainConfig, SetOverridesApplyAndTheResolvedYamlCarriesThem) {
  ScratchDir dir("load");
  const std::string path = (dir.path / "run.yaml").string();
  std::ofstream(path) << kValidConfig;
  std::string resolved;
  const TrainConfig c = load_train_config(path, {"train.epochs=9", "model.embedding_dim=16"}, &resolved);
  EXPECT_EQ(c.train.epochs, 9);
  EXPECT_EQ(c.model.embedding_dim, 16);
  // The resolved YAML is the config as run: parsing it again gives the same values.
  const TrainConfig again = parse_train_config(resolved, "resolved.yaml");
  EXPECT_EQ(again.train.epochs, 9);
  EXPECT_EQ(again.model.embedding_dim, 16);
}

TEST(LoadTrainConfig, AnOverrideOfAnUnknownKeyIsRejectedNamingTheKeyPath) {
  ScratchDir dir("unknown_override");
  const std::string path = (dir.path / "run.yaml").string();
  std::ofstream(path) << kValidConfig;
  // (override, the unknown key's path): a new section is reported at its own name.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"train.epocs", "train.epocs"}, {"model.tasks.ctr.lable", "model.tasks.ctr.lable"}, {"optimiser.lr", "optimiser"}};
  for (const auto& [key, key_path] : cases) {
    try {
      load_train_config(path, {key + "=2"});
      ADD_FAILURE() << "--set " << key << "=2 was accepted";
    } catch (const ConfigError& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(key_path + ": unknown key"), std::string::npos) << message;
      EXPECT_NE(message.find(path), std::string::npos) << message;
    }
  }
}

TEST(LoadTrainConfig, AMissingFileIsAConfigErrorNamingIt) {
  const std::string path = ::testing::TempDir() + "/ncsrec_no_such_config_" + std::to_string(::getpid()) + ".yaml";
  try {
    load_train_config(path, {});
    ADD_FAILURE() << "no error for a missing file";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

DataSchema click_conversion_schema() {
  DataSchema s;
  s.tasks = {"click", "conversion"};
  s.dense_dim = 2;
  s.slots = {"user_id", "item_id", "item_tags"};
  return s;
}

// Builds the model of the valid config on `schema`; returns the ConfigError message ("" if none).
std::string model_error(const std::function<void(YAML::Node&)>& edit, const DataSchema& schema) {
  const TrainConfig c = parse_train_config(edited(edit), "model.yaml");
  try {
    MultiTaskModel model(c.model, schema, DType::F32, 1);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(TrainConfig, TheZooKeysParse) {
  const TrainConfig c = parse_train_config(edited([](YAML::Node& r) {
    r["model"]["type"] = "ple";
    r["model"]["esmm"] = true;
    r["model"]["experts"] = YAML::Load("{sizes: [16, 8], levels: 2, task_experts: 3, shared_experts: 1}");
    r["model"]["layers"] = YAML::Load("{norm: batch, momentum: 0.9, dropout: 0.1}");
    r["model"]["apg"] = YAML::Load("{in: [towers, experts], rank: 4, overparam: 16, hyper_hidden: [8], generate_bias: true}");
    r["model"]["loss_weighting"] = "uncertainty";
  }), "zoo.yaml");
  EXPECT_EQ(c.model.type, "ple");
  EXPECT_TRUE(c.model.esmm);
  EXPECT_EQ(c.model.experts.sizes, (std::vector<int64_t>{16, 8}));
  EXPECT_EQ(c.model.experts.levels, 2);
  EXPECT_EQ(c.model.experts.task_experts, 3);
  EXPECT_EQ(c.model.layers.norm, Norm::Batch);
  EXPECT_DOUBLE_EQ(c.model.layers.dropout, 0.1);
  EXPECT_EQ(c.model.apg.options.overparam, 16);
  EXPECT_TRUE(c.model.apg.options.generate_bias);
  EXPECT_EQ(c.model.loss_weighting, "uncertainty");
  MultiTaskModel model(c.model, click_conversion_schema(), DType::F32, 1);
  EXPECT_EQ(model.loss_names(), (std::vector<std::string>{"ctr", "ctcvr"}));
}

TEST(MultiTaskModelConfig, ALabelMissingFromTheDataNamesTheKeyPathAndTheAvailableLabels) {
  const std::string message =
      model_error([](YAML::Node& r) { r["model"]["tasks"]["cvr"]["label"] = "purchase"; }, click_conversion_schema());
  ASSERT_FALSE(message.empty());
  EXPECT_NE(message.find("model.tasks.cvr.label"), std::string::npos) << message;
  EXPECT_NE(message.find("purchase"), std::string::npos) << message;
  EXPECT_NE(message.find("click, conversion"), std::string::npos) << message;
}

TEST(MultiTaskModelConfig, ASlotMissingFromTheDataNamesTheKeyPathAndTheAvailableSlots) {
  const std::string message = model_error(
      [](YAML::Node& r) { r["model"]["tables"]["item_id"]["slots"] = std::vector<std::string>{"item_id", "item_tagz"}; },
      click_conversion_schema());
  ASSERT_FALSE(message.empty());
  EXPECT_NE(message.find("model.tables.item_id.slots"), std::string::npos) << message;
  EXPECT_NE(message.find("item_tagz"), std::string::npos) << message;
  EXPECT_NE(message.find("user_id, item_id, item_tags"), std::string::npos) << message;

  // A table named after a slot reads that slot by default: a missing one is named too.
  const std::string by_name =
      model_error([](YAML::Node& r) { r["model"]["tables"]["device"]["rows"] = 4; }, click_conversion_schema());
  EXPECT_NE(by_name.find("model.tables.device.slots"), std::string::npos) << by_name;
}

TEST(MultiTaskModelConfig, AModelMatchingTheDataBuilds) {
  EXPECT_EQ(model_error([](YAML::Node&) {}, click_conversion_schema()), "");
}

}  // namespace
}  // namespace ncsrec

namespace ncsrec {
namespace {

TEST(TrainConfig, AKeyWrittenTwiceIsAConfigErrorNamingIt) {
  const std::string yaml =
      "data: {train: [x]}\n"
      "model:\n  tables: {user: {rows: 5}}\n"
      "  tasks:\n    ctr: {label: click}\n    cvr: {label: conversion, given: ctr}\n    cvr: {label: click}\n";
  try {
    parse_train_config(yaml, "twice.yaml");
    ADD_FAILURE() << "a duplicate key was accepted";
  } catch (const ConfigError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("twice.yaml"), std::string::npos) << m;
    EXPECT_NE(m.find("model.tasks.cvr"), std::string::npos) << m;
    EXPECT_NE(m.find("appears twice"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace ncsrec

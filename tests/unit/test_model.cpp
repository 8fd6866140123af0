// Specification tests for the multi-task models (models/multitask_model.h), in double
// precision: for every model type the gradients train_step leaves (dense parameters in
// params().grads(), embedding rows in sparse_grads()) are the derivatives of StepLoss.total,
// checked against central differences of total over every dense parameter and every table
// element (rows outside the batch must have zero gradient); single_task owns one set of
// tables per task while the shared models own one; a task "given" another learns nothing
// from rows whose given label is 0.
#include <gtest/gtest.h>

#include <functional>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/random.h"
#include "gradcheck.h"
#include "models/multitask_model.h"

namespace ncsrec {
namespace {

DataSchema test_schema() {
  DataSchema s;
  s.tasks = {"click", "conversion"};
  s.has_weight = true;
  s.dense_dim = 2;
  s.slots = {"user", "item", "tags"};
  return s;
}

// Tiny tables, one of them read by two slots with mean pooling.
ModelConfig model_config(const std::string& type, double ctr_weight = 1.3, double cvr_weight = 0.7) {
  ModelConfig m;
  m.type = type;
  m.embedding_dim = 3;
  m.embedding_init = 0.5;  // large enough that embeddings move the logits visibly
  const std::vector<int64_t> tower = type == "shared_bottom" ? std::vector<int64_t>{3} : std::vector<int64_t>{4, 3};
  m.tasks = {TaskSpec{"ctr", "click", "", tower, ctr_weight}, TaskSpec{"cvr", "conversion", "ctr", tower, cvr_weight}};
  m.tables = {TableSpec{"user_t", 7, {"user"}, Pooling::Sum}, TableSpec{"item_t", 9, {"item", "tags"}, Pooling::Mean}};
  if (type == "shared_bottom") m.bottom = {5};
  if (type == "ncs") {
    m.shared = {5, 4};
    m.masks.layers = {0, 1};
  }
  return m;
}

// Random rows: conversion implies click; 0-3 ids per multi-hot row (some rows empty), ids
// beyond the table size and negative (they map modulo the rows).
Block random_batch(const DataSchema& schema, int64_t rows, uint64_t seed) {
  Rng rng(seed);
  Block b = Block::with_schema(schema);
  b.rows = rows;
  for (int64_t r = 0; r < rows; ++r) {
    const bool click = r < 2 || (r > 2 && rng.bernoulli(0.5));  // rows 0, 1 click, row 2 does not
    const bool conversion = click && (r == 0 || (r > 1 && rng.bernoulli(0.5)));
    b.labels[0].push_back(click ? 1.0f : 0.0f);
    b.labels[1].push_back(conversion ? 1.0f : 0.0f);
    b.weight.push_back(static_cast<float>(rng.uniform(0.5, 2.0)));
    for (int64_t j = 0; j < schema.dense_dim; ++j) b.dense.push_back(static_cast<float>(rng.normal()));
    for (size_t s = 0; s < b.sparse.size(); ++s) {
      const int64_t n = s == 2 ? static_cast<int64_t>(rng.below(4)) : 1;
      for (int64_t k = 0; k < n; ++k) b.sparse[s].ids.push_back(static_cast<int64_t>(rng.below(41)) - 10);
      b.sparse[s].offsets.push_back(static_cast<int64_t>(b.sparse[s].ids.size()));
    }
  }
  b.validate("random_batch");
  return b;
}

double total_loss(MultiTaskModel& model, const Block& batch, const std::vector<double>& normalizers, int only_task) {
  model.params().zero_grad();  // train_step accumulates; the value of total does not depend on it
  return model.train_step(batch, normalizers, only_task).total;
}

// The whole-model check: every dense parameter and every table element.
// `only_task` >= 0 checks a single-task step (the alternating schedule); `prepare` may change
// the model first (set masks).
void check_model_gradients(const ModelConfig& config, uint64_t seed, int only_task = -1,
                           const std::function<void(MultiTaskModel&)>& prepare = {}) {
  const DataSchema schema = test_schema();
  MultiTaskModel model(config, schema, DType::F64, seed);
  if (prepare) prepare(model);
  // Biases start at 0, where a hidden unit fed by an all-zero ReLU output sits exactly on the
  // ReLU's kink and has no derivative: move them off it.
  Rng rng(seed + 2);
  for (Param& p : model.params().params())
    if (p.name.size() > 5 && p.name.compare(p.name.size() - 5, 5, ".bias") == 0) testing::fill_uniform(p.value, rng.next(), -0.5, 0.5);
  const Block batch = random_batch(schema, 12, seed + 1);
  const std::vector<double> normalizers = model.local_normalizers(batch);

  model.params().zero_grad();
  const StepLoss loss = model.train_step(batch, normalizers, only_task);
  ASSERT_TRUE(std::isfinite(loss.total));
  double weighted = 0;
  for (size_t t = 0; t < loss.per_task.size(); ++t)
    if (only_task < 0 || static_cast<int>(t) == only_task) weighted += config.tasks[t].loss_weight * loss.per_task[t];
    else EXPECT_TRUE(std::isnan(loss.per_task[t])) << "a task not stepped reports NaN";
  EXPECT_NEAR(loss.total, weighted, 1e-12 * std::max(1.0, std::abs(weighted)));

  const Tensor dense_grads = model.params().grads().clone();
  std::vector<std::vector<double>> table_grads;  // dense [rows * dim] expansion of each sparse gradient
  for (size_t t = 0; t < model.tables().size(); ++t) {
    const EmbeddingTable& table = model.tables()[t];
    const SparseGrad& g = model.sparse_grads()[t];
    std::vector<double> full(static_cast<size_t>(table.rows() * table.dim()), 0.0);
    ASSERT_TRUE(std::is_sorted(g.rows.begin(), g.rows.end()));
    for (size_t i = 0; i < g.rows.size(); ++i)
      for (int64_t j = 0; j < table.dim(); ++j)
        full[static_cast<size_t>(g.rows[i] * table.dim() + j)] = g.values.data<double>()[i * static_cast<size_t>(table.dim()) + static_cast<size_t>(j)];
    table_grads.push_back(full);
  }

  auto f = [&] { return total_loss(model, batch, normalizers, only_task); };
  EXPECT_TRUE(testing::check_gradient(config.type + " dense parameters", f, model.params().values().data<double>(),
                                      dense_grads.data<double>(), model.params().numel()));
  for (size_t t = 0; t < model.tables().size(); ++t) {
    EmbeddingTable& table = model.tables()[t];
    EXPECT_TRUE(testing::check_gradient(config.type + " table " + table.name(), f, table.values().data<double>(),
                                        table_grads[t].data(), table.values().numel()));
  }
}

TEST(MultiTaskModel, SingleTaskGradientsAreTheDerivativesOfTheTotalLoss) {
  check_model_gradients(model_config("single_task"), 101);
}

TEST(MultiTaskModel, SharedBottomGradientsAreTheDerivativesOfTheTotalLoss) {
  check_model_gradients(model_config("shared_bottom"), 202);
}

TEST(MultiTaskModel, EsmmGradientsAreTheDerivativesOfTheTotalLoss) {
  check_model_gradients(model_config("esmm"), 303);
  check_model_gradients(model_config("esmm", 1.0, 1.0), 304);
}

TEST(MultiTaskModel, SharedEmbeddingGradientsAreTheDerivativesOfTheTotalLoss) {
  ModelConfig m = model_config("shared_embedding");
  m.tasks[1].given = "";  // independent tasks over all rows, as in the Census configs
  check_model_gradients(m, 606);
}

TEST(MultiTaskModel, GradientsIncludeThePairwiseInteractionForEveryType) {
  // The embeddings reach the loss directly and through their dot products.
  for (const std::string type : {"single_task", "shared_embedding", "shared_bottom", "esmm"}) {
    ModelConfig m = model_config(type);
    m.interaction = "dot";
    check_model_gradients(m, 707);
  }
}

void random_masks(MultiTaskModel& model) {
  Rng rng(77);
  for (int t = 0; t < 2; ++t)
    for (int l = 0; l < model.num_masked_layers(); ++l) {
      BitMask m = model.mask(t, l);
      for (int64_t i = 0; i < m.size(); ++i) m.set(i, rng.bernoulli(0.6));
      model.set_mask(t, l, m);
    }
}

TEST(MultiTaskModel, NcsGradientsThroughEachTasksMasksAreTheDerivativesOfTheLoss) {
  // Joint: the shared weights' gradient is the sum of the tasks' masked gradients.
  check_model_gradients(model_config("ncs"), 808, -1, random_masks);
  ModelConfig dot = model_config("ncs");
  dot.interaction = "dot";
  check_model_gradients(dot, 809, -1, random_masks);
  // One task at a time (the alternating schedule), with each of the losses NCS4CVR uses.
  for (const std::string loss : {"bce", "focal", "mse"}) {
    ModelConfig m = model_config("ncs");
    for (auto& t : m.tasks) t.loss = loss;
    check_model_gradients(m, 810, 0, random_masks);
    check_model_gradients(m, 811, 1, random_masks);
  }
}

TEST(MultiTaskModel, GradientsMatchTheTotalLossForAnyLossWeights) {
  Rng rng(9);
  for (const std::string type : {"single_task", "shared_bottom", "esmm"})
    for (int i = 0; i < 2; ++i) check_model_gradients(model_config(type, rng.uniform(0.1, 3.0), rng.uniform(0.0, 3.0)), 400 + i);
}

TEST(MultiTaskModel, AZeroLossWeightRemovesExactlyThatTasksTerm) {
  for (const std::string type : {"single_task", "shared_bottom", "esmm"}) check_model_gradients(model_config(type, 1.0, 0.0), 501);
  for (const std::string type : {"single_task", "shared_bottom"}) check_model_gradients(model_config(type, 0.0, 1.0), 502);
}

TEST(MultiTaskModel, EsmmWithoutACtrLossIsAConfigError) {
  // The CTCVR loss alone determines only pCTR·pCVR (and used to give all-zero gradients).
  try {
    MultiTaskModel model(model_config("esmm", 0.0, 1.0), test_schema(), DType::F64, 1);
    ADD_FAILURE() << "esmm with CTR loss weight 0 was built";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("model.tasks.ctr.loss_weight"), std::string::npos) << e.what();
  }
}

std::vector<std::string> table_names(const std::string& type) {
  MultiTaskModel model(model_config(type), test_schema(), DType::F64, 1);
  std::vector<std::string> names;
  for (const auto& t : model.tables()) names.push_back(t.name());
  return names;
}

TEST(MultiTaskModel, SingleTaskHasOneSetOfTablesPerTaskAndSharedModelsOneSet) {
  EXPECT_EQ(table_names("single_task"), (std::vector<std::string>{"ctr.user_t", "ctr.item_t", "cvr.user_t", "cvr.item_t"}));
  EXPECT_EQ(table_names("shared_bottom"), (std::vector<std::string>{"user_t", "item_t"}));
  EXPECT_EQ(table_names("esmm"), (std::vector<std::string>{"user_t", "item_t"}));

  // In single_task a task's loss reaches only its own tables: with the CVR loss weighted 0,
  // the cvr.* tables get exactly zero gradient and the ctr.* tables do not.
  const DataSchema schema = test_schema();
  MultiTaskModel model(model_config("single_task", 1.0, 0.0), schema, DType::F64, 7);
  const Block batch = random_batch(schema, 16, 8);
  model.train_step(batch, model.local_normalizers(batch));
  for (size_t t = 0; t < model.tables().size(); ++t) {
    const Tensor& g = model.sparse_grads()[t].values;
    double max_abs = 0;
    for (int64_t i = 0; i < g.numel(); ++i) max_abs = std::max(max_abs, std::abs(g.data<double>()[i]));
    if (model.tables()[t].name().rfind("cvr.", 0) == 0) EXPECT_EQ(max_abs, 0.0) << model.tables()[t].name();
    else EXPECT_GT(max_abs, 0.0) << model.tables()[t].name();
  }
}

// The gradients of the parameters named tower.cvr.*, by name.
std::vector<std::pair<std::string, std::vector<double>>> cvr_tower_grads(MultiTaskModel& model) {
  std::vector<std::pair<std::string, std::vector<double>>> out;
  for (const Param& p : model.params().params())
    if (p.name.rfind("tower.cvr.", 0) == 0)
      out.emplace_back(p.name, std::vector<double>(p.grad.data<double>(), p.grad.data<double>() + p.grad.numel()));
  return out;
}

TEST(MultiTaskModel, AGivenTaskLearnsNothingFromRowsWhoseGivenLabelIsZero) {
  for (const std::string type : {"single_task", "shared_bottom"}) {
    const DataSchema schema = test_schema();
    MultiTaskModel model(model_config(type), schema, DType::F64, 11);
    const Block batch = random_batch(schema, 24, 12);
    int64_t clicks = 0;
    for (float c : batch.labels[0]) clicks += c > 0.5f;
    const std::vector<double> normalizers = model.local_normalizers(batch);
    EXPECT_EQ(normalizers[0], 24.0);
    EXPECT_EQ(normalizers[1], static_cast<double>(clicks)) << type << ": the CVR loss is a mean over clicked rows";

    model.params().zero_grad();
    const StepLoss loss = model.train_step(batch, normalizers);
    const auto grads = cvr_tower_grads(model);

    // Rows without a click get a conversion label and new features: nothing of CVR changes.
    Block changed = batch;
    Rng rng(13);
    for (int64_t r = 0; r < batch.rows; ++r) {
      if (batch.labels[0][static_cast<size_t>(r)] > 0.5f) continue;
      changed.labels[1][static_cast<size_t>(r)] = 1.0f;
      for (int64_t j = 0; j < schema.dense_dim; ++j) changed.dense[static_cast<size_t>(r * schema.dense_dim + j)] = static_cast<float>(3 * rng.normal());
    }
    model.params().zero_grad();
    const StepLoss loss_changed = model.train_step(changed, model.local_normalizers(changed));
    EXPECT_EQ(loss_changed.per_task[1], loss.per_task[1]) << type;
    EXPECT_NE(loss_changed.per_task[0], loss.per_task[0]) << type << ": the CTR loss does see those rows";
    const auto grads_changed = cvr_tower_grads(model);
    ASSERT_EQ(grads_changed.size(), grads.size());
    for (size_t i = 0; i < grads.size(); ++i)
      for (size_t k = 0; k < grads[i].second.size(); ++k)
        EXPECT_NEAR(grads_changed[i].second[k], grads[i].second[k], 1e-14) << type << " " << grads[i].first << "[" << k << "]";

    // And the CVR loss and its tower's gradients equal those of the clicked rows alone.
    Block clicked = Block::with_schema(schema);
    for (int64_t r = 0; r < batch.rows; ++r)
      if (batch.labels[0][static_cast<size_t>(r)] > 0.5f) clicked.append_row(batch, r);
    model.params().zero_grad();
    const StepLoss loss_clicked = model.train_step(clicked, model.local_normalizers(clicked));
    EXPECT_NEAR(loss_clicked.per_task[1], loss.per_task[1], 1e-13) << type;
    const auto grads_clicked = cvr_tower_grads(model);
    for (size_t i = 0; i < grads.size(); ++i)
      for (size_t k = 0; k < grads[i].second.size(); ++k)
        EXPECT_NEAR(grads_clicked[i].second[k], grads[i].second[k], 1e-13) << type << " " << grads[i].first << "[" << k << "]";
  }
}

}  // namespace
}  // namespace ncsrec

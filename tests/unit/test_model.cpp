// Specification tests for the multi-task models (models/multitask_model.h), in double
// precision: for every model type the gradients train_step leaves (dense parameters in
// params().grads(), embedding rows in sparse_grads()) are the derivatives of StepLoss.total,
// checked against central differences of total over every dense parameter and every table
// element (rows outside the batch must have zero gradient); single_task owns one set of
// tables per task while the shared models own one; a task "given" another learns nothing
// from rows whose given label is 0.
#include <gtest/gtest.h>
#include <omp.h>

#include <functional>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/hdf5_util.h"
#include "core/random.h"
#include "gradcheck.h"
#include "tests/model_inputs.h"
#include "core/ops.h"
#include "models/multitask_model.h"
#include "models/serving.h"

namespace ncsrec {
namespace {

using testing::model_config;
using testing::random_batch;
using testing::test_schema;

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
  // The ranges the step declares final (the trainer starts their all-reduce there) are final:
  // nothing writes them afterwards, and they cover the gradient buffer once, back to front.
  std::vector<std::pair<int64_t, int64_t>> ready;
  std::vector<std::vector<double>> at_ready;
  model.set_gradient_ready([&](int64_t begin, int64_t end) {
    ready.emplace_back(begin, end);
    const double* g = model.params().grads().data<double>();
    at_ready.emplace_back(g + begin, g + end);
  });
  const StepLoss loss = model.train_step(batch, normalizers, only_task);
  model.set_gradient_ready(nullptr);
  ASSERT_FALSE(ready.empty()) << config.type;
  int64_t expected_end = model.params().numel();
  for (size_t r = 0; r < ready.size(); ++r) {
    EXPECT_EQ(ready[r].second, expected_end) << config.type << ": range " << r << " does not follow the last";
    expected_end = ready[r].first;
    const double* g = model.params().grads().data<double>();
    for (int64_t i = ready[r].first; i < ready[r].second; ++i)
      ASSERT_EQ(g[i], at_ready[r][static_cast<size_t>(i - ready[r].first)])
          << config.type << ": gradient element " << i << " changed after its range [" << ready[r].first << ", "
          << ready[r].second << ") was declared final";
  }
  EXPECT_EQ(expected_end, 0) << config.type << ": the ranges do not reach the buffer's start";
  ASSERT_TRUE(std::isfinite(loss.total));
  double weighted = 0;
  for (size_t t = 0; t < loss.per_task.size() && t < config.tasks.size(); ++t)
    if (only_task < 0 || static_cast<int>(t) == only_task) weighted += config.tasks[t].loss_weight * loss.per_task[t];
    else EXPECT_TRUE(std::isnan(loss.per_task[t])) << "a task not stepped reports NaN";
  if (config.loss_weighting == "fixed" && config.type != "three_tower") EXPECT_NEAR(loss.total, weighted, 1e-12 * std::max(1.0, std::abs(weighted)));

  const Tensor dense_grads = model.params().grads().clone();
  std::vector<std::vector<double>> table_grads;  // dense [rows * dim] expansion of each sparse gradient
  for (size_t t = 0; t < model.tables().size(); ++t) {
    const EmbeddingTable& table = model.tables()[t].shard();
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
    EmbeddingTable& table = model.tables()[t].shard();
    EXPECT_TRUE(testing::check_gradient(config.type + " table " + table.name(), f, table.values().data<double>(),
                                        table_grads[t].data(), table.values().numel()));
  }
}

TEST(MultiTaskModel, SingleTaskGradientsAreTheDerivativesOfTheTotalLoss) {
  check_model_gradients(model_config("single_task"), 101);
}

// The tables' gradients of a batch large enough that the tables run in parallel (two tables,
// 300 rows): the same rows and bits on one thread as on two, for a model of each kind. (The
// gradient checks above use 12 rows, where the same loop runs on the calling thread.)
TEST(MultiTaskModel, TableGradientsAreBitIdenticalOnOneAndTwoThreads) {
  const DataSchema schema = test_schema();
  const Block batch = random_batch(schema, 300, 91);
  for (const std::string type : {"shared_bottom", "esmm", "ncs"}) {
    SCOPED_TRACE(type);
    std::vector<std::vector<SparseGrad>> grads;
    const int saved = omp_get_max_threads();
    for (int threads = 1; threads <= 2; ++threads) {
      omp_set_num_threads(threads);
      MultiTaskModel model(model_config(type), schema, DType::F32, 92);
      model.train_step(batch, model.local_normalizers(batch));
      grads.push_back(model.sparse_grads());
    }
    omp_set_num_threads(saved);
    ASSERT_EQ(grads[0].size(), 2u);
    for (size_t t = 0; t < grads[0].size(); ++t) {
      const SparseGrad &a = grads[0][t], &b = grads[1][t];
      ASSERT_FALSE(a.rows.empty()) << "table " << t;
      EXPECT_EQ(a.rows, b.rows) << "table " << t;
      ASSERT_EQ(a.values.numel(), b.values.numel()) << "table " << t;
      EXPECT_EQ(std::memcmp(a.values.raw(), b.values.raw(), a.values.nbytes()), 0) << "table " << t;
    }
  }
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

// A features file of `ncsrec history` (train/history.h) for slot "user"'s ids -10..30: K = 2
// snapshots of dim-3 random vectors, some absent.
std::string write_history_file(const std::string& name) {
  const std::string path = ::testing::TempDir() + name + ".features.h5";
  h5::File f = h5::File::create(path);
  f.set_attr("/", "format", std::string("ncsrec-history"));
  f.set_attr("/", "format_version", int64_t{1});
  f.set_attr("/", "version", std::string("test@1"));
  std::vector<int64_t> keys;
  std::vector<float> values;
  std::vector<uint8_t> present;
  Rng rng(55);
  for (int64_t id = -10; id <= 30; ++id) {
    keys.push_back(id);
    for (int k = 0; k < 2; ++k) {
      present.push_back(k == 0 || id % 3 != 0 ? 1 : 0);
      for (int j = 0; j < 3; ++j) values.push_back(static_cast<float>(rng.uniform(-1, 1)));
    }
  }
  f.write("tables/u/keys", keys.data(), {keys.size()});
  f.write("tables/u/values", values.data(), {keys.size(), 2, 3});
  f.write("tables/u/present", present.data(), {keys.size(), 2});
  f.set_attr("tables/u", "kind", std::string("hash"));
  f.set_attr("tables/u", "rows", int64_t{100});
  f.set_attr("tables/u", "dim", int64_t{3});
  f.close();
  return path;
}

TEST(MultiTaskModel, HistoryFeaturesInTheInputAndInTheInteractionGiveTheQueryItsDerivative) {
  // Attention over the snapshots (the query is a parameter), after the dense features, then
  // as a field of the dot products (its gradient arrives through them too).
  for (const bool interact : {false, true}) {
    ModelConfig m = model_config("esmm");
    m.interaction = "dot";
    m.history.file = write_history_file(interact ? "interact" : "plain");
    m.history.aggregate = "attention";
    m.history.features = {{"u", "user"}};
    m.history.interact = interact;
    check_model_gradients(m, 808, -1, [](MultiTaskModel& model) {
      testing::fill_uniform(model.params().find("history.u.query")->value, 9, -0.5, 0.5);
    });
    MultiTaskModel model(m, test_schema(), DType::F64, 1);
    EXPECT_EQ(model.history_col(), interact ? 9 : 11) << "3 slots of 3, then (interact) history or dense";
    EXPECT_EQ(model.interaction_fields(), interact ? 4 : 3);
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


// --- The multi-gate zoo (issue: MMoE, PLE, APG, normalisation, loss weighting) -------------

ModelConfig zoo_config(const std::string& type) {
  ModelConfig m = model_config(type == "mmoe" || type == "ple" ? "shared_embedding" : type);
  m.type = type;
  m.experts.sizes = {5, 4};
  m.experts.count = 3;
  m.experts.levels = 2;
  m.experts.task_experts = 2;
  m.experts.shared_experts = 1;
  return m;
}

TEST(ZooModel, MmoeAndPleGradientsAreTheDerivativesOfTheTotalLoss) {
  for (const std::string type : {"mmoe", "ple"}) {
    check_model_gradients(zoo_config(type), 900);
    check_model_gradients(zoo_config(type), 901, 0);  // one task alone (alternating schedule)
    check_model_gradients(zoo_config(type), 902, 1);
    ModelConfig dot = zoo_config(type);
    dot.interaction = "dot";
    check_model_gradients(dot, 903);
  }
  ModelConfig one_level = zoo_config("ple");
  one_level.experts.levels = 1;
  check_model_gradients(one_level, 904);
  ModelConfig no_task_experts = zoo_config("ple");
  no_task_experts.experts.task_experts = 0;
  no_task_experts.experts.shared_experts = 2;
  check_model_gradients(no_task_experts, 905);
  ModelConfig three_levels = zoo_config("ple");
  three_levels.experts.levels = 3;
  three_levels.experts.task_experts = 1;
  three_levels.experts.shared_experts = 2;
  check_model_gradients(three_levels, 906, 1);
}

TEST(ZooModel, PleWithUnequalExpertCountsIndexesExpertsByTaskAndNumber) {
  // 3 task experts and 1 shared: a gate over [own; shared] has 4 weights, the shared gate 7.
  ModelConfig m = zoo_config("ple");
  m.experts.task_experts = 3;
  m.experts.shared_experts = 1;
  MultiTaskModel model(m, test_schema(), DType::F64, 1);
  EXPECT_EQ(model.params().find("ple.0.ctr.gate.weight")->shape[1], 4);
  EXPECT_EQ(model.params().find("ple.0.shared.gate.weight")->shape[1], 7);
  EXPECT_EQ(model.params().find("ple.1.shared.gate.weight"), nullptr) << "the final level has no shared gate";
  EXPECT_NE(model.params().find("ple.1.cvr.expert.2.1.weight"), nullptr);
  check_model_gradients(m, 907);
}

TEST(ZooModel, MaskedExpertsCombineMasksAndGates) {
  ModelConfig mmoe = zoo_config("mmoe");
  mmoe.experts.masked = true;
  mmoe.masks.layers = {0, 1};
  {
    MultiTaskModel model(mmoe, test_schema(), DType::F64, 1);
    ASSERT_EQ(model.num_masked_layers(), 6);  // 3 experts x 2 layers
    EXPECT_EQ(model.masked_layer_name(3), "expert.1.1");
  }
  check_model_gradients(mmoe, 910, -1, random_masks);
  check_model_gradients(mmoe, 911, 1, random_masks);
  ModelConfig cgc = zoo_config("ple");
  cgc.experts.levels = 1;
  cgc.experts.masked = true;
  cgc.masks.layers = {1};
  {
    MultiTaskModel model(cgc, test_schema(), DType::F64, 1);
    ASSERT_EQ(model.num_masked_layers(), 1);
    EXPECT_EQ(model.masked_layer_name(0), "ple.0.shared.expert.0.1");
  }
  check_model_gradients(cgc, 912, -1, random_masks);
  check_model_gradients(cgc, 913, 0, random_masks);
}

TEST(ZooModel, LearnedMasksOnMaskedExpertsKeepTheirBudgetAndGetScoreGradients) {
  ModelConfig m = zoo_config("mmoe");
  m.experts.masked = true;
  m.masks.layers = {0, 1};
  m.masks.find = "learned";
  m.masks.final_density = 0.4;
  const DataSchema schema = test_schema();
  MultiTaskModel model(m, schema, DType::F64, 5);
  const Block batch = random_batch(schema, 16, 6);
  model.train_step(batch, model.local_normalizers(batch));
  for (int t = 0; t < 2; ++t)
    for (int l = 0; l < model.num_masked_layers(); ++l) {
      const BitMask& mask = model.mask(t, l);
      EXPECT_EQ(mask.count(), std::llround(0.4 * static_cast<double>(mask.size()))) << model.masked_layer_name(l);
      const Param* score = model.params().find("mask_score." + m.tasks[static_cast<size_t>(t)].name + "." +
                                               model.masked_layer_name(l));
      ASSERT_NE(score, nullptr);
      EXPECT_EQ(score->task, t);
      double norm = 0;
      for (int64_t i = 0; i < score->grad.numel(); ++i) norm += std::abs(score->grad.data<double>()[i]);
      EXPECT_GT(norm, 0) << score->name;
    }
}

TEST(ZooModel, EsmmHeadsOnAnySharedBlock) {
  for (const std::string type : {"shared_bottom", "ncs", "mmoe", "ple"}) {
    ModelConfig m = zoo_config(type);
    m.esmm = true;
    MultiTaskModel model(m, test_schema(), DType::F64, 1);
    EXPECT_EQ(model.loss_names(), (std::vector<std::string>{"ctr", "ctcvr"})) << type;
    check_model_gradients(m, 920, -1, type == "ncs" ? random_masks : std::function<void(MultiTaskModel&)>());
  }
}

TEST(ZooModel, NormalisationAndDropoutInTowersBottomsAndExperts) {
  for (const Norm norm : {Norm::Batch, Norm::Layer})
    for (const std::string type : {"shared_bottom", "mmoe", "ple"}) {
      ModelConfig m = zoo_config(type);
      m.layers.norm = norm;
      m.layers.dropout = 0.3;  // a fixed step: the same masks at every evaluation of the loss
      check_model_gradients(m, 930 + static_cast<uint64_t>(norm));
    }
}

TEST(ZooModel, DropoutMasksArePerStepAndOffAtPrediction) {
  ModelConfig m = zoo_config("shared_bottom");
  m.layers.dropout = 0.5;
  const DataSchema schema = test_schema();
  MultiTaskModel model(m, schema, DType::F64, 3);
  const Block batch = random_batch(schema, 16, 4);
  const auto norms = model.local_normalizers(batch);
  model.set_step(1);
  const double a = model.train_step(batch, norms).total;
  const double a_again = model.train_step(batch, norms).total;
  model.set_step(2);
  const double b = model.train_step(batch, norms).total;
  EXPECT_EQ(a, a_again) << "dropout masks are a function of the step";
  EXPECT_NE(a, b) << "another step draws other masks";
  std::vector<std::vector<float>> p1, p2;
  model.set_step(5);
  model.predict(batch, p1);
  model.set_step(6);
  model.predict(batch, p2);
  EXPECT_EQ(p1, p2) << "no dropout at prediction";
}

TEST(ZooModel, BatchNormStatisticsAreStateNotTrainedAndPredictionUsesThem) {
  ModelConfig m = zoo_config("shared_bottom");
  m.layers.norm = Norm::Batch;
  const DataSchema schema = test_schema();
  MultiTaskModel model(m, schema, DType::F64, 3);
  const Param* mean = model.params().find("bottom.0.bn.running_mean");
  ASSERT_NE(mean, nullptr);
  EXPECT_FALSE(mean->trainable);
  ASSERT_NE(model.params().trainable_mask(), nullptr);
  for (int task = -1; task < 2; ++task) {
    const uint8_t* u = model.update_mask(task);
    for (int64_t e = 0; e < mean->value.numel(); ++e) EXPECT_EQ(u[mean->offset + e], 0) << "task " << task;
  }
  // Prediction normalises by the running statistics, so a single row predicts the same alone
  // as inside a batch (batch statistics would make it depend on its neighbours).
  const Block batch = random_batch(schema, 16, 4);
  model.train_step(batch, model.local_normalizers(batch));
  std::vector<std::vector<float>> all, one;
  model.predict(batch, all);
  Block first = Block::with_schema(schema);
  first.append_row(batch, 3);
  model.predict(first, one);
  EXPECT_FLOAT_EQ(one[0][0], all[0][3]);
  EXPECT_FLOAT_EQ(one[1][0], all[1][3]);
}

TEST(ZooModel, ApgLayersInTowersBottomsAndExperts) {
  ApgOptions apg;
  apg.rank = 2;
  apg.hyper_hidden = {3};
  for (const std::string type : {"shared_bottom", "mmoe"}) {
    ModelConfig m = zoo_config(type);
    m.apg.in = {"towers", type == "mmoe" ? "experts" : "bottom"};
    m.apg.options = apg;
    check_model_gradients(m, 940);
    m.apg.options.overparam = 3;
    m.apg.options.generate_bias = true;
    check_model_gradients(m, 941);
  }
  // Group-wise: the towers' condition is the user slot's embedding; its gradient reaches the
  // user table through that condition as well as through the input.
  ModelConfig g = zoo_config("shared_embedding");
  g.apg.in = {"towers"};
  g.apg.options = apg;
  g.apg.condition = {"user"};
  check_model_gradients(g, 942);
  ModelConfig bad = zoo_config("mmoe");
  bad.apg.in = {"experts"};
  bad.apg.condition = {"user"};
  EXPECT_THROW(MultiTaskModel(bad, test_schema(), DType::F64, 1), ConfigError);
  bad.apg.in = {"towers"};
  bad.apg.condition = {"nope"};
  EXPECT_THROW(MultiTaskModel(bad, test_schema(), DType::F64, 1), ConfigError);
}

TEST(ZooModel, TheServingFormFoldsApgFactorsAndPredictsTheSame) {
  ModelConfig m = zoo_config("mmoe");
  m.apg.in = {"towers", "experts"};
  m.apg.options.rank = 2;
  m.apg.options.overparam = 4;
  m.apg.options.hyper_hidden = {3};
  m.layers.norm = Norm::Batch;
  const DataSchema schema = test_schema();
  MultiTaskModel trained(m, schema, DType::F32, 21);
  for (int step = 1; step <= 3; ++step) {  // move every parameter and the BatchNorm statistics off their start
    const Block batch = random_batch(schema, 32, 30 + static_cast<uint64_t>(step));
    trained.params().zero_grad();
    trained.train_step(batch, trained.local_normalizers(batch));
    ops::axpy(trained.params().values(), -0.5, trained.params().grads());
  }
  MultiTaskModel serving(serving_config(m), schema, DType::F32, 99);
  EXPECT_NE(serving.params().find("expert.0.0.U"), nullptr);
  EXPECT_EQ(serving.params().find("expert.0.0.U_l"), nullptr);
  EXPECT_LT(serving.params().numel(), trained.params().numel());
  copy_for_serving(trained, serving);
  const Block batch = random_batch(schema, 64, 40);
  std::vector<std::vector<float>> a, b;
  trained.predict(batch, a);
  serving.predict(batch, b);
  for (size_t t = 0; t < a.size(); ++t)
    for (size_t i = 0; i < a[t].size(); ++i) EXPECT_NEAR(b[t][i], a[t][i], 1e-5) << "task " << t << " row " << i;
}

TEST(ZooModel, UncertaintyWeightsAreLearnedWithTheirOwnGradient) {
  for (const std::string type : {"mmoe", "esmm"}) {
    ModelConfig m = zoo_config(type);
    m.loss_weighting = "uncertainty";
    // Move log σ off 0 so that the weights differ from 1/2.
    check_model_gradients(m, 950, -1, [](MultiTaskModel& model) {
      for (Param& p : model.params().params())
        if (p.name.find("log_sigma") != std::string::npos) p.value.data<double>()[0] = p.name.find("ctr") ? 0.3 : -0.4;
    });
    const DataSchema schema = test_schema();
    MultiTaskModel model(m, schema, DType::F64, 5);
    model.params().find("loss_weight." + model.loss_names()[0] + ".log_sigma")->value.data<double>()[0] = 0.25;
    const Block batch = random_batch(schema, 16, 6);
    const StepLoss loss = model.train_step(batch, model.local_normalizers(batch));
    const auto weights = model.loss_weights();
    EXPECT_NEAR(weights[0].second, m.tasks[0].loss_weight * std::exp(-0.5) / 2, 1e-15);
    EXPECT_NEAR(weights[1].second, m.tasks[1].loss_weight / 2, 1e-15);
    EXPECT_NEAR(loss.total, weights[0].second * loss.per_task[0] + weights[1].second * loss.per_task[1] + 0.25, 1e-12);
  }
}

TEST(ZooModel, ATasksStepLeavesTheOtherTasksGatesAndExpertsAlone) {
  ModelConfig m = zoo_config("ple");
  m.loss_weighting = "uncertainty";
  MultiTaskModel model(m, test_schema(), DType::F64, 1);
  const uint8_t* ctr = model.update_mask(0);
  const uint8_t* joint = model.update_mask(-1);
  for (const Param& p : model.params().params()) {
    const bool cvr_owned = p.name.find(".cvr.") != std::string::npos || p.name.rfind("tower.cvr.", 0) == 0 ||
                           p.name == "loss_weight.cvr.log_sigma";
    EXPECT_EQ(p.task, cvr_owned ? 1 : (p.name.find("ctr") != std::string::npos ? 0 : -1)) << p.name;
    EXPECT_EQ(ctr[p.offset], cvr_owned ? 0 : 1) << p.name;
    EXPECT_EQ(joint[p.offset], 1) << p.name;
  }
}

TEST(ZooModel, CostCountsEveryBlock) {
  ModelConfig m = zoo_config("mmoe");
  MultiTaskModel model(m, test_schema(), DType::F64, 1);
  const int64_t in = model.input_dim();
  // experts: 3 x (in·5 + 5·4); gates: 2 x (in·3 + 3·4); towers: 2 x (4·4 + 4·3 + 3·1)
  EXPECT_EQ(model.multiply_adds_per_sample(), 3 * (in * 5 + 20) + 2 * (in * 3 + 12) + 2 * (16 + 12 + 3));
}

// The DMMP student over the test schema: the user side reads `user` and dense column 0, the
// item side `item`, `tags` and dense column 1.
ModelConfig three_tower_config(bool gate = true, const std::string& teacher = "") {
  ModelConfig m = model_config("shared_embedding");
  m.type = "three_tower";
  m.three_tower.user = TowerSpec{{"user"}, {0}, {5, 3}};
  m.three_tower.item = TowerSpec{{"item", "tags"}, {1}, {4, 3}};
  m.three_tower.gate = gate;
  m.three_tower.gate_sizes = {4};
  m.three_tower.mix_weight = 0.8;
  m.three_tower.mix_targets = {0.3, 0.7};
  m.three_tower.teacher = teacher;
  m.three_tower.distill_weight = 0.6;
  return m;
}

TEST(ThreeTower, GradientsAreTheDerivativesOfTheTotalLoss) {
  check_model_gradients(three_tower_config(true), 1201);
  check_model_gradients(three_tower_config(false), 1202);
  ModelConfig two_tower = three_tower_config(true);
  two_tower.tasks.resize(1);  // CTR only: one item tower, no gate, no mixed score
  two_tower.three_tower.mix_targets = {1.0};
  check_model_gradients(two_tower, 1203);
  ModelConfig learned = three_tower_config(true);
  learned.loss_weighting = "uncertainty";
  check_model_gradients(learned, 1204, -1, [](MultiTaskModel& model) {
    double v = -0.3;
    for (Param& p : model.params().params())
      if (p.name.find("log_sigma") != std::string::npos) p.value.data<double>()[0] = (v += 0.2);
  });
}

TEST(ThreeTower, DistillationGradientsIncludeTheTeachersTargets) {
  const DataSchema schema = test_schema();
  MultiTaskModel teacher(model_config("esmm"), schema, DType::F64, 77);
  check_model_gradients(three_tower_config(true, "teacher"), 1205, -1,
                        [&](MultiTaskModel& model) { model.set_teacher(&teacher); });
}

TEST(ThreeTower, LossesAreTheHardLabelsTheTeachersProbabilitiesAndTheMixedTarget) {
  const DataSchema schema = test_schema();
  MultiTaskModel teacher(model_config("esmm"), schema, DType::F64, 77);
  ModelConfig m = three_tower_config(true, "teacher");
  MultiTaskModel model(m, schema, DType::F64, 5);
  model.set_teacher(&teacher);
  EXPECT_EQ(model.loss_names(), (std::vector<std::string>{"ctr", "ctcvr", "kd_ctr", "kd_ctcvr", "mix"}));
  const Block batch = random_batch(schema, 20, 6);
  const StepLoss loss = model.train_step(batch, model.local_normalizers(batch));
  std::vector<std::vector<float>> p, tp;
  model.predict(batch, p);  // σ(l_ctr), σ(l_ctcvr)
  teacher.predict(batch, tp);
  std::vector<float> mixed;
  Tensor user;
  model.retrieval_user(batch, user, &mixed);
  double W = 0;
  for (float w : batch.weight) W += w;
  auto bce = [](double q, double y) { return -(y * std::log(q) + (1 - y) * std::log(1 - q)); };
  std::vector<double> expect(5, 0.0);
  for (size_t i = 0; i < static_cast<size_t>(batch.rows); ++i) {
    const double w = batch.weight[i] / static_cast<double>(batch.rows);
    const double click = batch.labels[0][i], ctcvr = click * batch.labels[1][i];
    expect[0] += w * bce(p[0][i], click);
    expect[1] += w * bce(p[1][i], ctcvr);
    expect[2] += w * bce(p[0][i], tp[0][i]);
    expect[3] += w * bce(p[1][i], static_cast<double>(tp[0][i]) * tp[1][i]);
    expect[4] += w * bce(1 / (1 + std::exp(-static_cast<double>(mixed[i]))), 0.3 * click + 0.7 * ctcvr);
  }
  for (size_t k = 0; k < 5; ++k) EXPECT_NEAR(loss.per_task[k], expect[k], 2e-6) << model.loss_names()[k];
  // Fixed weights: the tasks' own, the distillation weight twice, the mix weight.
  EXPECT_NEAR(loss.total, 1.3 * expect[0] + 0.7 * expect[1] + 0.6 * (expect[2] + expect[3]) + 0.8 * expect[4], 1e-5);
}

TEST(ThreeTower, TheServingInnerProductIsTheMixedScore) {
  const DataSchema schema = test_schema();
  MultiTaskModel model(three_tower_config(true), schema, DType::F32, 9);
  // Move the gate off uniform so that the scaling of the user side matters, and the biases off 0.
  model.params().find("logit_bias.ctr")->value.data<float>()[0] = -2.5f;
  model.params().find("logit_bias.cvr")->value.data<float>()[0] = 1.5f;
  for (Param& p : model.params().params())
    if (p.name.rfind("user_gate.", 0) == 0) {
      const std::vector<float> v = testing::uniform_f(static_cast<size_t>(p.value.numel()), 31, -1.0, 1.0);
      std::copy(v.begin(), v.end(), p.value.data<float>());
    }
  const Block batch = random_batch(schema, 40, 10);
  Tensor user, items;
  std::vector<float> mixed;
  model.retrieval_user(batch, user, &mixed);
  model.retrieval_items(batch, items);
  ASSERT_EQ(user.dim(1), model.retrieval_dim());
  ASSERT_EQ(items.dim(1), 2 * 3 + 1);
  const int64_t n = user.dim(1);
  double spread = 0;
  for (int64_t r = 0; r < batch.rows; ++r) {
    double ip = 0;
    for (int64_t j = 0; j < n; ++j) ip += user.data<float>()[r * n + j] * items.data<float>()[r * n + j];
    EXPECT_NEAR(ip, mixed[static_cast<size_t>(r)], 1e-5 * std::max(1.0, std::abs(ip))) << "row " << r;
    spread += std::abs(ip);
  }
  EXPECT_GT(spread, 1e-3) << "all scores zero: the test would prove nothing";

  // Each side reads only its own inputs: change every item input and the user side stays.
  Block other = random_batch(schema, 40, 11);
  other.sparse[0] = batch.sparse[0];  // the same users
  for (int64_t r = 0; r < batch.rows; ++r) other.dense[static_cast<size_t>(r * 2)] = batch.dense[static_cast<size_t>(r * 2)];
  Tensor user2;
  model.retrieval_user(other, user2);
  for (int64_t i = 0; i < user.numel(); ++i) ASSERT_EQ(user.data<float>()[i], user2.data<float>()[i]) << i;
  Tensor items2;
  model.retrieval_items(other, items2);
  bool items_changed = false;
  for (int64_t i = 0; i < items.numel(); ++i) items_changed |= items.data<float>()[i] != items2.data<float>()[i];
  EXPECT_TRUE(items_changed);
}

TEST(ThreeTower, ATeacherWithoutTheStudentsEventsIsRefused) {
  const DataSchema schema = test_schema();
  ModelConfig t = model_config("shared_embedding");
  t.tasks[1].given = "";  // the teacher's conversion task is not post-click: a different event
  MultiTaskModel teacher(t, schema, DType::F64, 1);
  MultiTaskModel model(three_tower_config(true, "teacher"), schema, DType::F64, 2);
  EXPECT_THROW(model.set_teacher(&teacher), ConfigError);
  MultiTaskModel no_teacher(three_tower_config(true, "teacher"), schema, DType::F64, 2);
  const Block batch = random_batch(schema, 8, 3);
  EXPECT_THROW(no_teacher.train_step(batch, no_teacher.local_normalizers(batch)), UserError);
}

}  // namespace
}  // namespace ncsrec

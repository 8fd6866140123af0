// evaluate_retrieval (train/retrieval_eval.h) on a small generated data set: its numbers are
// recomputed here from the exported serving form, the generator's truth and retrieval_at_k;
// the export's inner products are the model's mixed scores; a generator.h5 of other data and a
// model that is not a retrieval model are refused.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/data/generator_truth.h"
#include "core/data/hdf5_shard.h"
#include "core/data/synthetic.h"
#include "core/error.h"
#include "core/hdf5_util.h"
#include "core/metrics/metrics.h"
#include "models/multitask_model.h"
#include "train/retrieval_eval.h"

#include "scratch_dir.h"

namespace ncsrec {
namespace {

using testing::ScratchDir;

class RetrievalEvalTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir("retrieval_eval");
    GeneratorConfig c;
    c.users = 2000;
    c.items = 500;
    c.days = 2;
    c.rows_per_day = 3000;
    c.ads_fraction = 0.1;
    c.shard_rows = 3000;
    generate_dataset(c, (dir_->path / "a").string());
    c.seed = 7;  // other data, same shapes
    generate_dataset(c, (dir_->path / "b").string());
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::vector<std::string> eval_files() {
    return list_day_shards((dir_->path / "a" / "content" / "day=2026-01-02").string());
  }
  static ModelConfig student(int tasks) {
    ModelConfig m;
    m.type = "three_tower";
    m.embedding_dim = 4;
    m.embedding_init = 0.5;
    m.tables = {TableSpec{"user_id", 2000, {"user_id"}, Pooling::Sum}, TableSpec{"hour", 24, {"hour"}, Pooling::Sum},
                TableSpec{"item_id", 500, {"item_id"}, Pooling::Sum},
                TableSpec{"item_category", 64, {"item_category"}, Pooling::Sum},
                TableSpec{"item_tags", 256, {"item_tags"}, Pooling::Mean}};
    m.tasks = {TaskSpec{"ctr", "click", "", {}, 1.0}, TaskSpec{"cvr", "conversion", "ctr", {}, 1.0}};
    m.tasks.resize(static_cast<size_t>(tasks));
    m.three_tower.user = TowerSpec{{"user_id", "hour"}, {1}, {8, 4}};
    m.three_tower.item = TowerSpec{{"item_id", "item_category", "item_tags"}, {0, 3}, {8, 4}};
    m.three_tower.gate_sizes = {4};
    m.three_tower.mix_targets = std::vector<double>(static_cast<size_t>(tasks), 1.0 / tasks);
    return m;
  }
  static ScratchDir* dir_;
};
ScratchDir* RetrievalEvalTest::dir_ = nullptr;

TEST_F(RetrievalEvalTest, TheReportIsTheMeanOverRequestsOfTheExportedScoresAgainstTheTruth) {
  int64_t rows = 0;
  const DataSchema schema = read_shard_schema(eval_files().front(), &rows);
  MultiTaskModel model(student(2), schema, DType::F32, 3);
  // A gate off uniform, so that the mixed list differs from an even blend.
  for (Param& p : model.params().params())
    if (p.name.rfind("user_gate.", 0) == 0)
      for (int64_t i = 0; i < p.value.numel(); ++i) p.value.data<float>()[i] = std::sin(static_cast<float>(i) + 0.3f);
  RetrievalOptions options;
  options.generator = (dir_->path / "a" / "generator.h5").string();
  options.queries = 40;
  options.ks = {5, 20};
  options.export_path = (dir_->path / "serving.h5").string();
  const RetrievalReport report = evaluate_retrieval(model, eval_files(), options);
  EXPECT_EQ(report.queries, 40);
  EXPECT_EQ(report.day, "20260102");
  ASSERT_EQ(report.lists.size(), 6u);  // mixed, ctr, ctcvr × click, conversion

  const GeneratorTruth g = GeneratorTruth::load(options.generator);
  const h5::File f = h5::File::open_read(options.export_path);
  const std::vector<int64_t> ids = f.read_i64("items/id"), users = f.read_i64("queries/user_id");
  const std::vector<float> index = f.read_f32("items/index"), query = f.read_f32("queries/vector");
  const std::vector<float> ctcvr_items = f.read_f32("items/cvr");
  const int64_t I = static_cast<int64_t>(ids.size()), n = static_cast<int64_t>(index.size()) / I, d = 4;
  EXPECT_EQ(report.items, I);
  for (int64_t i : ids) EXPECT_LE(g.item_birth_day(i), 1) << "an item not born by the eval day is in the catalog";
  int64_t born = 0;
  for (int64_t i = 0; i < g.items(); ++i) born += g.item_birth_day(i) <= 1 ? 1 : 0;
  EXPECT_EQ(I, born);
  EXPECT_EQ(n, 2 * d + 1);

  // The requests: the first row of each distinct user of the eval day, in file order.
  Block b;
  read_shard_rows(eval_files().front(), 0, rows, b);
  const int us = schema.slot_index("user_id"), hs = schema.slot_index("hour"), ds = schema.slot_index("device");
  std::vector<int64_t> seen;
  std::vector<int64_t> request_rows;
  for (int64_t r = 0; r < b.rows && static_cast<int64_t>(request_rows.size()) < 40; ++r) {
    const int64_t u = b.sparse[static_cast<size_t>(us)].ids[static_cast<size_t>(r)];
    if (std::find(seen.begin(), seen.end(), u) != seen.end()) continue;
    seen.push_back(u);
    request_rows.push_back(r);
  }
  ASSERT_EQ(users, seen);

  // Recompute: mixed list (all columns) and the ctcvr list (u·v_cvr) for both relevances.
  std::vector<double> mixed_click(2, 0), mixed_conv(2, 0), ctcvr_conv(2, 0), ndcg_mixed_conv(2, 0);
  std::vector<float> s_mixed(static_cast<size_t>(I)), s_cvr(static_cast<size_t>(I));
  std::vector<double> click(static_cast<size_t>(I)), conv(static_cast<size_t>(I));
  for (size_t q = 0; q < users.size(); ++q) {
    const int64_t r = request_rows[q];
    g.truth_for_items(users[q], 1, static_cast<int>(b.sparse[static_cast<size_t>(hs)].ids[static_cast<size_t>(r)]),
                      static_cast<int>(b.sparse[static_cast<size_t>(ds)].ids[static_cast<size_t>(r)]), 0, false,
                      ids.data(), I, click.data(), conv.data());
    for (int64_t i = 0; i < I; ++i) {
      conv[static_cast<size_t>(i)] *= click[static_cast<size_t>(i)];
      double sm = 0, sc = 0;
      for (int64_t j = 0; j < n; ++j) sm += double(query[q * static_cast<size_t>(n) + static_cast<size_t>(j)]) * index[static_cast<size_t>(i * n + j)];
      for (int64_t j = 0; j < d; ++j) sc += double(query[q * static_cast<size_t>(n) + static_cast<size_t>(d + j)]) * ctcvr_items[static_cast<size_t>(i * d + j)];
      s_mixed[static_cast<size_t>(i)] = static_cast<float>(sm);
      s_cvr[static_cast<size_t>(i)] = static_cast<float>(sc);
    }
    const auto a = retrieval_at_k(s_mixed.data(), click.data(), I, {5, 20});
    const auto c = retrieval_at_k(s_mixed.data(), conv.data(), I, {5, 20});
    const auto e = retrieval_at_k(s_cvr.data(), conv.data(), I, {5, 20});
    for (size_t k = 0; k < 2; ++k) {
      mixed_click[k] += a[k].recall / 40;
      mixed_conv[k] += c[k].recall / 40;
      ndcg_mixed_conv[k] += c[k].ndcg / 40;
      ctcvr_conv[k] += e[k].recall / 40;
    }
  }
  auto find = [&](const std::string& list, const std::string& rel) -> const RetrievalList& {
    for (const auto& l : report.lists)
      if (l.list == list && l.relevance == rel) return l;
    throw std::runtime_error("no list " + list + "/" + rel);
  };
  // float vs double scoring may swap a near-tie: one item of one request moves recall by 1/(K·40).
  for (size_t k = 0; k < 2; ++k) {
    const double tol = 1.0 / (static_cast<double>(options.ks[k]) * 40) + 1e-12;
    EXPECT_NEAR(find("mixed", "click").at_k[k].recall, mixed_click[k], tol);
    EXPECT_NEAR(find("mixed", "conversion").at_k[k].recall, mixed_conv[k], tol);
    EXPECT_NEAR(find("mixed", "conversion").at_k[k].ndcg, ndcg_mixed_conv[k], 0.01);
    EXPECT_NEAR(find("ctcvr", "conversion").at_k[k].recall, ctcvr_conv[k], tol);
  }
  EXPECT_GT(mixed_click[1], 0.0) << "nothing of the true top 20 retrieved: the comparison would prove nothing";
}

TEST_F(RetrievalEvalTest, TheGeneratorFileOfOtherDataIsRefused) {
  int64_t rows = 0;
  const DataSchema schema = read_shard_schema(eval_files().front(), &rows);
  MultiTaskModel model(student(1), schema, DType::F32, 3);
  RetrievalOptions options;
  options.generator = (dir_->path / "b" / "generator.h5").string();
  options.queries = 10;
  try {
    evaluate_retrieval(model, eval_files(), options);
    FAIL() << "no error";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("generator.h5 written with this data"), std::string::npos) << e.what();
  }
}

TEST_F(RetrievalEvalTest, ARankingModelIsNotARetrievalModel) {
  int64_t rows = 0;
  const DataSchema schema = read_shard_schema(eval_files().front(), &rows);
  ModelConfig m = student(2);
  m.type = "esmm";
  m.esmm = true;
  m.tasks[0].tower = m.tasks[1].tower = {4};
  MultiTaskModel model(m, schema, DType::F32, 3);
  RetrievalOptions options;
  options.generator = (dir_->path / "a" / "generator.h5").string();
  EXPECT_THROW(evaluate_retrieval(model, eval_files(), options), ConfigError);
}

}  // namespace
}  // namespace ncsrec

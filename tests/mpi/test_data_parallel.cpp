// Data parallelism is exact (run under mpirun -np 2 and -np 4):
//  - k steps on n ranks × batch B change the parameters as 1 process × batch nB does, with
//    row-sharded (and table-wise, replicated) embeddings: the updates Δθ = θ_k − θ₀ of the
//    dense parameters and of every embedding row agree to 1e-10 (f64, Adam/Adagrad) or 1e-5
//    (f32, SGD), relative to the largest update. Each rank checks the rows it holds against a
//    one-process model it trains itself on the whole global batch.
//  - A deliberately wrong variant (each rank's loss normalised by its own slice, so the reduced
//    gradient is a sum of means instead of the global mean) fails the same comparison.
//  - The same with the ranks' dense layers on a (stand-in) device: the dense gradient is staged
//    through host memory for the MPI all-reduce.
//  - Training and evaluating on n ranks gives exactly the eval metrics (AUC, GAUC, logloss per
//    task, over the whole eval set) one process gives on the same checkpoint and data, scored
//    one row a batch on both sides so that every score is the same bits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

#include <unistd.h>

#include "core/data/hdf5_shard.h"
#include "core/error.h"
#include "core/random.h"
#include "dist/communicator.h"
#include "models/multitask_model.h"
#include "tests/model_inputs.h"
#include "tests/random_inputs.h"
#include "tests/unit/fake_device.h"
#include "train/checkpoint.h"
#include "train/replicas.h"
#include "train/evaluate.h"
#include "train/step.h"
#include "train/trainer.h"

namespace ncsrec {
namespace {

namespace fs = std::filesystem;
Communicator* g_comm = nullptr;

// Forwards every collective to `inner` except the first f64 sum of each step, the loss
// normalisers, which stays local: the deliberately wrong variant.
class LocalNormalizers final : public Communicator {
 public:
  explicit LocalNormalizers(Communicator& inner) : inner_(inner) {}
  int rank() const override { return inner_.rank(); }
  int world_size() const override { return inner_.world_size(); }
  const char* kind() const override { return "local-normalizers"; }
  void new_step() { skip_next_ = true; }

 protected:
  void do_all_reduce(void* data, int64_t n, DType dtype, bool max) override {
    if (skip_next_ && dtype == DType::F64 && !max) {
      skip_next_ = false;
      return;
    }
    if (max) inner_.all_reduce_max(static_cast<double*>(data), n);
    else inner_.all_reduce_sum(data, n, dtype);
  }
  void do_all_to_all_v(const void* send, const int64_t* sc, void* recv, const int64_t* rc, DType dtype) override {
    inner_.all_to_all_v(send, sc, recv, rc, dtype);
  }
  void do_all_gather(const void* send, int64_t count, void* recv, DType dtype) override {
    inner_.all_gather(send, count, recv, dtype);
  }
  void do_broadcast(void* data, int64_t n, DType dtype, int root) override { inner_.broadcast(data, n, dtype, root); }
  void do_barrier() override { inner_.barrier(); }

 private:
  Communicator& inner_;
  bool skip_next_ = false;
};

struct Case {
  std::string type;  // esmm | ncs
  DType dtype;
  std::string dense_opt, sparse_opt;
  double rtol;
  std::string user_placement = "row_wise", item_placement = "row_wise";
  Device device = Device::CPU;  // the ranks' dense layers: CUDA is the stand-in device of fake_device.h
};

std::vector<double> as_doubles(const Tensor& device_tensor) {
  const Tensor t = device_tensor.to(Device::CPU);
  std::vector<double> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i)
    v[static_cast<size_t>(i)] = t.dtype() == DType::F32 ? t.data<float>()[i] : t.data<double>()[i];
  return v;
}

Block slice_rows(const Block& global, int64_t begin, int64_t end) {
  Block b = Block::with_schema(global.schema);
  for (int64_t r = begin; r < end; ++r) b.append_row(global, r);
  return b;
}

OptimizerConfig optimizer(const std::string& type, double lr) {
  OptimizerConfig c;
  c.type = type;
  c.lr = lr;
  return c;
}

struct Updates {
  double dense_error = 0, dense_scale = 0;  // max |Δd − Δr|, max |Δr| (over all ranks)
  double table_error = 0, table_scale = 0;
  double loss_error = 0;                    // max relative difference of the step losses
};

// Trains `steps` steps on this rank's slices (through `comm`) and on the whole batches in one
// process, and measures how far the updates differ.
Updates compare_updates(const Case& c, Communicator& comm, LocalNormalizers* wrong, int steps = 3, int64_t B = 8) {
  const DataSchema schema = testing::test_schema();
  ModelConfig mc = testing::model_config(c.type);
  mc.tables[0].placement = c.user_placement;
  mc.tables[1].placement = c.item_placement;
  if (c.item_placement == "table_wise") mc.tables[1].table_rank = comm.world_size() - 1;
  const uint64_t seed = 11;
  std::unique_ptr<testing::FakeDevice> device;
  if (c.device != Device::CPU) device = std::make_unique<testing::FakeDevice>();
  MultiTaskModel dist(mc, schema, c.dtype, seed, &comm, c.device);
  MultiTaskModel ref(mc, schema, c.dtype, seed);
  if (c.type == "ncs")
    for (int t = 0; t < 2; ++t)
      for (int l = 0; l < ref.num_masked_layers(); ++l) {
        const BitMask& m = ref.mask(t, l);
        const BitMask r = testing::random_mask(m.rows, m.cols, 0.6, 100 + 10 * t + l);
        ref.set_mask(t, l, r);
        dist.set_mask(t, l, r);
      }
  Optimizers od = make_optimizers(optimizer(c.dense_opt, 0.01), optimizer(c.sparse_opt, 0.05), dist);
  Optimizers orf = make_optimizers(optimizer(c.dense_opt, 0.01), optimizer(c.sparse_opt, 0.05), ref);
  auto local = make_local_communicator();

  const std::vector<double> dense0 = as_doubles(ref.params().values());
  std::vector<std::vector<double>> tables0;
  for (auto& t : ref.tables()) tables0.push_back(as_doubles(t.shard().values()));

  const int n = comm.world_size(), r = comm.rank();
  Updates u;
  for (int s = 1; s <= steps; ++s) {
    const Block global = testing::random_batch(schema, n * B, 1000 + static_cast<uint64_t>(s));
    const Block mine = slice_rows(global, r * B, (r + 1) * B);
    if (wrong) wrong->new_step();
    const StepLoss ld = train_one_step(dist, od, mine, -1, s, true, wrong ? static_cast<Communicator&>(*wrong) : comm);
    const StepLoss lr = train_one_step(ref, orf, global, -1, s, true, *local);
    u.loss_error = std::max(u.loss_error, std::abs(ld.total - lr.total) / std::abs(lr.total));
  }

  // Dense: identical on every rank, compared whole.
  const std::vector<double> dd = as_doubles(dist.params().values()), dr = as_doubles(ref.params().values());
  for (size_t i = 0; i < dr.size(); ++i) {
    u.dense_scale = std::max(u.dense_scale, std::abs(dr[i] - dense0[i]));
    u.dense_error = std::max(u.dense_error, std::abs((dd[i] - dense0[i]) - (dr[i] - dense0[i])));
  }
  // Tables: this rank's rows against the same global rows of the one-process table.
  for (size_t t = 0; t < ref.tables().size(); ++t) {
    const ShardedTable& st = dist.tables()[t];
    const std::vector<double> vd = as_doubles(st.shard().values()), vr = as_doubles(ref.tables()[t].shard().values());
    const int64_t dim = st.dim();
    for (size_t i = 0; i < st.shard_rows().size(); ++i) {
      const size_t g = static_cast<size_t>(st.shard_rows()[i]);
      for (int64_t d = 0; d < dim; ++d) {
        const size_t at = g * static_cast<size_t>(dim) + static_cast<size_t>(d);
        const double delta_r = vr[at] - tables0[t][at];
        const double delta_d = vd[i * static_cast<size_t>(dim) + static_cast<size_t>(d)] - tables0[t][at];
        u.table_scale = std::max(u.table_scale, std::abs(delta_r));
        u.table_error = std::max(u.table_error, std::abs(delta_d - delta_r));
      }
    }
  }
  double all[5] = {u.dense_error, u.dense_scale, u.table_error, u.table_scale, u.loss_error};
  comm.all_reduce_max(all, 5);
  return {all[0], all[1], all[2], all[3], all[4]};
}

class Equivalence : public ::testing::TestWithParam<Case> {};

TEST_P(Equivalence, NRanksTimesBMoveTheParametersAsOneProcessTimesNB) {
  const Case& c = GetParam();
  const Updates u = compare_updates(c, *g_comm, nullptr);
  ASSERT_GT(u.dense_scale, 0.0);
  ASSERT_GT(u.table_scale, 0.0);
  EXPECT_LE(u.dense_error, c.rtol * u.dense_scale) << "dense Δθ differs (largest update " << u.dense_scale << ")";
  EXPECT_LE(u.table_error, c.rtol * u.table_scale) << "embedding Δθ differs (largest update " << u.table_scale << ")";
  EXPECT_LE(u.loss_error, c.rtol);
}

TEST_P(Equivalence, TheSumOfPerRankMeansInsteadOfTheGlobalMeanFails) {
  const Case& c = GetParam();
  LocalNormalizers wrong(*g_comm);
  const Updates u = compare_updates(c, *g_comm, &wrong);
  EXPECT_GT(u.dense_error, c.rtol * u.dense_scale) << "the comparison cannot tell a sum from a mean";
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  return c.type + "_" + (c.dtype == DType::F64 ? "f64_" : "f32_") + c.dense_opt + "_" + c.sparse_opt + "_" +
         c.user_placement + "_" + c.item_placement + (c.device == Device::CPU ? "" : "_device");
}

INSTANTIATE_TEST_SUITE_P(
    Models, Equivalence,
    ::testing::Values(Case{"esmm", DType::F64, "adam", "adagrad", 1e-10}, Case{"ncs", DType::F64, "adam", "adagrad", 1e-10},
                      Case{"esmm", DType::F64, "adagrad", "adam", 1e-10}, Case{"ncs", DType::F64, "adagrad", "adam", 1e-10},
                      Case{"esmm", DType::F32, "sgd", "sgd", 1e-5}, Case{"ncs", DType::F32, "sgd", "sgd", 1e-5},
                      Case{"esmm", DType::F64, "adam", "adagrad", 1e-10, "replicated", "table_wise"},
                      Case{"ncs", DType::F64, "adam", "adagrad", 1e-10, "row_wise", "row_wise", Device::CUDA},
                      Case{"esmm", DType::F32, "sgd", "sgd", 1e-5, "row_wise", "table_wise", Device::CUDA}),
    case_name);

TEST(DataParallel, ABatchWithNoRowsForATaskGivesLossZeroNotNaN) {
  // No clicks anywhere in the global batch: the CVR task (given a click) has no rows on any
  // rank, so its summed normaliser is 0; one rank alone has clicks in the second step.
  const DataSchema schema = testing::test_schema();
  MultiTaskModel model(testing::model_config("shared_bottom"), schema, DType::F64, 5, g_comm);
  Optimizers o = make_optimizers(optimizer("adam", 0.01), optimizer("adagrad", 0.05), model);
  for (int s = 1; s <= 2; ++s) {
    Block b = testing::random_batch(schema, 6, 40 + static_cast<uint64_t>(g_comm->rank()));
    for (size_t r = 0; r < b.labels[0].size(); ++r)
      if (s == 1 || g_comm->rank() != 0) b.labels[0][r] = b.labels[1][r] = 0.0f;
    StepStats stats;
    const StepLoss loss = train_one_step(model, o, b, -1, s, true, *g_comm, &stats);
    ASSERT_EQ(loss.per_task.size(), 2u);
    EXPECT_TRUE(std::isfinite(loss.per_task[0]));
    EXPECT_TRUE(std::isfinite(loss.per_task[1])) << "step " << s;
    if (s == 1) EXPECT_EQ(loss.per_task[1], 0.0);
    EXPECT_TRUE(std::isfinite(stats.grad_norm));
  }
}

TEST(DataParallel, RowShardedTablesSpreadTheRowsAndNoRankHoldsAWholeTable) {
  const DataSchema schema = testing::test_schema();
  ModelConfig mc = testing::model_config("esmm");
  mc.tables[0].rows = 4000;
  MultiTaskModel model(mc, schema, DType::F32, 3, g_comm);
  int64_t rows = model.tables()[0].shard().rows();
  g_comm->all_reduce_sum(&rows, 1);
  EXPECT_EQ(rows, 4000);
  EXPECT_LT(model.tables()[0].shard().rows(), 4000 * 3 / (2 * g_comm->world_size()) + 1);
}

// The replica check (run every step in debug builds and at every log line): equal replicas
// pass; one rank's dense weight or one mask bit changed fails it on every rank, naming the step.
TEST(DataParallel, TheReplicaCheckFiresOnEveryRankWhenOneRankDiverges) {
  const DataSchema schema = testing::test_schema();
  MultiTaskModel model(testing::model_config("ncs"), schema, DType::F32, 5, g_comm);
  ASSERT_GT(model.num_masked_layers(), 0);
  EXPECT_NO_THROW(check_replicas_agree(model, *g_comm, 1));
  auto expect_fires = [&](const char* what) {
    try {
      check_replicas_agree(model, *g_comm, 7);
      ADD_FAILURE() << what << " on rank 1 went unnoticed on rank " << g_comm->rank();
    } catch (const InternalError& e) {
      EXPECT_NE(std::string(e.what()).find("after step 7"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("the replicas diverged"), std::string::npos) << e.what();
    }
  };
  float& w = model.params().values().data<float>()[0];
  const float saved = w;
  if (g_comm->rank() == 1) w = std::nextafter(w, 1.0f);  // one ulp
  expect_fires("a dense weight one ulp off");
  w = saved;
  EXPECT_NO_THROW(check_replicas_agree(model, *g_comm, 8));
  BitMask m = model.mask(0, 0);
  if (g_comm->rank() == 1) m.bits[0] ^= 1;
  model.set_mask(0, 0, m);
  expect_fires("a mask bit flipped");
}

// A day folder of random impressions: two slots, a user id for GAUC.
void write_day(const fs::path& dir, int64_t rows, uint64_t seed) {
  DataSchema s;
  s.tasks = {"click", "conversion"};
  s.slots = {"user", "item"};
  s.meta = {"user_id"};
  Block b = Block::with_schema(s);
  Rng rng(seed);
  b.rows = rows;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t user = static_cast<int64_t>(rng.below(40)), item = static_cast<int64_t>(rng.below(60));
    const bool click = rng.bernoulli((user % 3 == 0 ? 0.5 : 0.2) + (item % 4 == 0 ? 0.2 : 0.0));
    b.labels[0].push_back(click ? 1.0f : 0.0f);
    b.labels[1].push_back(click && rng.bernoulli(item % 2 ? 0.8 : 0.1) ? 1.0f : 0.0f);
    b.sparse[0].ids.push_back(user);
    b.sparse[0].offsets.push_back(r + 1);
    b.sparse[1].ids.push_back(item);
    b.sparse[1].offsets.push_back(r + 1);
    b.meta[0].push_back(user);
  }
  fs::create_directories(dir);
  write_shard((dir / "part-0000.h5").string(), b);
  std::ofstream(dir / "_DONE").close();
}

// Hash tables (ids admitted after 3 reads, summed over ranks) over n ranks: every row lives on
// one rank and moves as on one process; a checkpoint the n ranks write loads on one process by
// id, and one a single process writes loads on n ranks.
TEST(DataParallel, HashTablesMoveAsOneProcessAndCheckpointsReloadByIdOnAnyRankCount) {
  Communicator& comm = *g_comm;
  const DataSchema schema = testing::test_schema();
  ModelConfig mc = testing::model_config("esmm");
  for (TableSpec& t : mc.tables) {
    t.rows = 0;
    t.capacity = 1000;
    t.admit_after = 3;
  }
  MultiTaskModel dist(mc, schema, DType::F64, 11, &comm);
  MultiTaskModel ref(mc, schema, DType::F64, 11);
  Optimizers od = make_optimizers(optimizer("adam", 0.01), optimizer("adagrad", 0.05), dist);
  Optimizers orf = make_optimizers(optimizer("adam", 0.01), optimizer("adagrad", 0.05), ref);
  auto local = make_local_communicator();
  const int n = comm.world_size(), r = comm.rank();
  const int64_t B = 8;
  for (int s = 1; s <= 3; ++s) {
    const Block global = testing::random_batch(schema, n * B, 1000 + static_cast<uint64_t>(s));
    train_one_step(dist, od, slice_rows(global, r * B, (r + 1) * B), -1, s, true, comm);
    train_one_step(ref, orf, global, -1, s, true, *local);
  }
  double error = 0, scale = 0;
  for (size_t t = 0; t < ref.tables().size(); ++t) {
    const ShardedTable& st = dist.tables()[t];
    const ShardedTable& rt = ref.tables()[t];
    int64_t rows = st.shard().rows();
    comm.all_reduce_sum(&rows, 1);
    EXPECT_EQ(rows, rt.shard().rows()) << st.name();  // each row on exactly one rank
    EXPECT_GT(rt.shard().rows(), 0) << st.name() << ": no id admitted";
    EXPECT_GT(rt.pending().size(), 0u) << st.name() << ": every id admitted, admission untested";
    for (int64_t i = 0; i < st.shard().rows(); ++i) {
      const int64_t id = st.shard_rows()[static_cast<size_t>(i)];
      const int64_t j = rt.shard_index(id);
      ASSERT_GE(j, 0) << "id " << id << " has a row on rank " << r << " but not on one process";
      EXPECT_EQ(st.shard().count()[static_cast<size_t>(i)], rt.shard().count()[static_cast<size_t>(j)]) << "id " << id;
      EXPECT_EQ(st.shard().updated_step()[static_cast<size_t>(i)], rt.shard().updated_step()[static_cast<size_t>(j)]);
      for (int64_t d = 0; d < st.dim(); ++d) {
        const double a = st.shard().values().data<double>()[i * st.dim() + d];
        const double b = rt.shard().values().data<double>()[j * st.dim() + d];
        error = std::max(error, std::abs(a - b));
        scale = std::max(scale, std::abs(b));
      }
    }
  }
  EXPECT_LE(error, 1e-10 * scale);

  const fs::path root = fs::temp_directory_path() / ("ncsrec_dp_hash_" + std::to_string(::getppid()));
  if (r == 0) fs::remove_all(root);
  comm.barrier();
  auto state = [](MultiTaskModel& m, Optimizers& o) {
    TrainingState st{&m, o.dense.get(), {}};
    for (auto& sp : o.sparse) st.sparse_optimizers.push_back(sp.get());
    return st;
  };
  CheckpointMeta meta;
  meta.world_size = n;
  save_checkpoint((root / "by_ranks").string(), state(dist, od), meta, comm);
  if (r == 0) {
    meta.world_size = 1;
    save_checkpoint((root / "by_one").string(), state(ref, orf), meta, *local);
  }
  comm.barrier();
  // n ranks -> one process: the rows by id, optimizer state and counters included.
  if (r == 0) {
    MultiTaskModel one(mc, schema, DType::F64, 11);
    Optimizers oo = make_optimizers(optimizer("adam", 0.01), optimizer("adagrad", 0.05), one);
    load_table_rows((root / "by_ranks").string(), n, one.tables(), state(one, oo).sparse_optimizers);
    for (size_t t = 0; t < ref.tables().size(); ++t) {
      const ShardedTable& ot = one.tables()[t];
      const ShardedTable& rt = ref.tables()[t];
      ASSERT_EQ(ot.shard().rows(), rt.shard().rows());
      for (int64_t i = 0; i < ot.shard().rows(); ++i) {
        const int64_t j = rt.shard_index(ot.shard_rows()[static_cast<size_t>(i)]);
        ASSERT_GE(j, 0);
        EXPECT_EQ(ot.shard().count()[static_cast<size_t>(i)], rt.shard().count()[static_cast<size_t>(j)]);
        for (int64_t d = 0; d < ot.dim(); ++d)
          EXPECT_NEAR(ot.shard().values().data<double>()[i * ot.dim() + d],
                      rt.shard().values().data<double>()[j * rt.dim() + d], 1e-10 * scale);
      }
      EXPECT_EQ(ot.pending().size(), rt.pending().size()) << "ids read once";
    }
  }
  // One process -> n ranks: each rank takes the ids it owns, bit for bit.
  MultiTaskModel back(mc, schema, DType::F64, 11, &comm);
  load_table_rows((root / "by_one").string(), 1, back.tables(), {});
  for (size_t t = 0; t < ref.tables().size(); ++t) {
    const ShardedTable& bt = back.tables()[t];
    int64_t rows = bt.shard().rows(), pending = static_cast<int64_t>(bt.pending().size());
    for (int64_t i = 0; i < bt.shard().rows(); ++i) {
      const int64_t id = bt.shard_rows()[static_cast<size_t>(i)];
      EXPECT_EQ(bt.owner(id), r);
      const int64_t j = ref.tables()[t].shard_index(id);
      ASSERT_GE(j, 0);
      EXPECT_EQ(std::memcmp(bt.shard().values().data<double>() + i * bt.dim(),
                            ref.tables()[t].shard().values().data<double>() + j * bt.dim(), bt.dim() * sizeof(double)), 0);
    }
    comm.all_reduce_sum(&rows, 1);
    comm.all_reduce_sum(&pending, 1);
    EXPECT_EQ(rows, ref.tables()[t].shard().rows());
    EXPECT_EQ(pending, static_cast<int64_t>(ref.tables()[t].pending().size()));
  }
  comm.barrier();
  if (r == 0) fs::remove_all(root);
}

TEST(DataParallel, EvalMetricsOverRanksEqualOneProcessOnTheSameCheckpoint) {
  Communicator& comm = *g_comm;
  const fs::path root = fs::temp_directory_path() / ("ncsrec_dp_eval_" + std::to_string(::getppid()));
  if (comm.rank() == 0) {
    fs::remove_all(root);
    write_day(root / "train", 4096, 1);
    write_day(root / "eval", 1001, 2);  // not a multiple of the ranks or the batch
  }
  comm.barrier();
  const std::string yaml = "data: {train: [\"" + (root / "train").string() + "\"], eval: [\"" + (root / "eval").string() +
                           "\"]}\n"
                           "model:\n  type: esmm\n  embedding_dim: 4\n  tower: [8]\n"
                           "  tables: {user: {rows: 40}, item: {rows: 64, placement: replicated}}\n"
                           "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n"
                           "optimizer: {type: adam, lr: 0.01}\n"
                           "train: {batch_size: 64, epochs: 3, eval_batch_size: 100, log_every: 1000}\n";
  TrainConfig config = parse_train_config(yaml, "dp.yaml");
  // The final evaluation one row a batch, on the ranks as in one process: every row's score
  // comes from the same one-row products, so the metrics must agree exactly.
  config.train.eval_batch_size = 1;
  const TrainSummary s = run_training(config, yaml, (root / "run").string(), comm);
  ASSERT_EQ(s.eval.rows, 1001);

  // One process, the checkpoint the ranks wrote (its rows found by key in every rank's file).
  int64_t rows = 0;
  MultiTaskModel one(config.model, read_shard_schema((root / "train/part-0000.h5").string(), &rows), DType::F32,
                     config.seed);
  load_checkpoint((root / "run/checkpoints/final").string(), TrainingState{&one, nullptr, {}});
  auto local = make_local_communicator();
  const EvalReport e = evaluate(one, {(root / "eval/part-0000.h5").string()}, config, *local);
  ASSERT_EQ(e.views.size(), s.eval.views.size());
  for (size_t v = 0; v < e.views.size(); ++v) {
    SCOPED_TRACE(e.views[v].name);
    EXPECT_EQ(s.eval.views[v].metrics.count, e.views[v].metrics.count);
    EXPECT_GT(e.views[v].metrics.auc, 0.55);
    EXPECT_EQ(s.eval.views[v].metrics.auc, e.views[v].metrics.auc);
    EXPECT_EQ(s.eval.views[v].metrics.gauc, e.views[v].metrics.gauc);
    EXPECT_EQ(s.eval.views[v].metrics.logloss, e.views[v].metrics.logloss);
  }
  // The tasks keep their own state: CTR and CVR AUCs are different numbers.
  EXPECT_NE(s.eval.views[0].metrics.auc, s.eval.views[1].metrics.auc);
  comm.barrier();
  if (comm.rank() == 0) fs::remove_all(root);
}

}  // namespace
}  // namespace ncsrec

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto comm = ncsrec::make_default_communicator();
  ncsrec::g_comm = comm.get();
  if (comm->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  // Every rank's verdict: one failing rank fails the job.
  int64_t failed = rc != 0 ? 1 : 0;
  comm->all_reduce_sum(&failed, 1);
  if (comm->rank() == 0 && failed > 0) std::fprintf(stderr, "%lld rank(s) failed\n", static_cast<long long>(failed));
  return failed > 0 ? 1 : 0;
}

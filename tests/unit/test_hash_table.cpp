// Hash embedding tables (open vocabulary): rows inserted as ids arrive, each initialised from
// (seed, table, id) alone; admission after a count summed over ranks; inference never inserts;
// TTL and capacity eviction; untouched rows bit-identical; sharded over ranks exactly as on
// one process.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/random.h"
#include "embedding/sharded_table.h"
#include "scratch_dir.h"
#include "tests/thread_communicator.h"
#include "tiny_data.h"
#include "train/train_config.h"
#include "train/trainer.h"

namespace ncsrec {
namespace {

using testing::run_ranks;

constexpr int64_t kDim = 4;
constexpr uint64_t kSeed = 11;
constexpr double kScale = 0.1;

HashOptions hash(int64_t capacity, int64_t admit_after = 1, int64_t ttl_days = 0, bool evict = false) {
  HashOptions h;
  h.capacity = capacity;
  h.admit_after = admit_after;
  h.ttl_days = ttl_days;
  h.evict_when_full = evict;
  return h;
}

ShardedTable make(const HashOptions& h, Placement p = Placement::RowWise, int rank = 0, int world = 1) {
  return ShardedTable("items", 0, kDim, DType::F64, kSeed, kScale, p, 0, rank, world, &h);
}

// One training (or inference) read of `ids` (one id per sample) on one process.
ShardedTable::Lookup read(ShardedTable& t, const std::vector<int64_t>& ids, bool training = true) {
  ShardedTable::Lookup lookup;
  t.lookup({{ids.data(), static_cast<int64_t>(ids.size())}}, nullptr, &lookup, training);
  return lookup;
}

std::vector<double> row_of(const ShardedTable& t, int64_t id) {
  const int64_t r = t.shard_index(id);
  if (r < 0) return {};
  const double* v = t.shard().values().data<double>() + r * kDim;
  return std::vector<double>(v, v + kDim);
}

// The value an id reads in `lookup` (of ids read in that order).
std::vector<double> value_read(const ShardedTable::Lookup& lookup, size_t position) {
  const double* v = lookup.values.data<double>() + lookup.ids[0][position] * kDim;
  return std::vector<double>(v, v + kDim);
}

// A gradient of 1 + position for every id read in `lookup`, reduced to the table's rows.
SparseGrad unit_gradient(const ShardedTable& t, const ShardedTable::Lookup& lookup, Communicator* comm) {
  const int64_t unique = static_cast<int64_t>(lookup.rows.size());
  SparseGrad g;
  g.values = Tensor::empty({unique, kDim}, DType::F64);
  for (int64_t i = 0; i < unique; ++i) {
    g.rows.push_back(i);
    for (int64_t d = 0; d < kDim; ++d) g.values.data<double>()[i * kDim + d] = 1.0 + static_cast<double>(i);
  }
  return t.reduce_gradient(lookup, g, comm);
}

TEST(HashTable, ARowDependsOnTheSeedTableAndIdAloneNotOnArrivalOrder) {
  ShardedTable a = make(hash(100)), b = make(hash(100));
  read(a, {5, 900, -3});
  read(b, {-3});
  read(b, {77, 900, 5});
  const EmbeddingTable fixed("items", std::vector<int64_t>{5, 900, -3}, kDim, DType::F64, kSeed, kScale);
  for (int64_t i = 0; i < 3; ++i) {
    const int64_t id = fixed.keys()[static_cast<size_t>(i)];
    const std::vector<double> expect(fixed.values().data<double>() + i * kDim, fixed.values().data<double>() + (i + 1) * kDim);
    EXPECT_EQ(row_of(a, id), expect) << "id " << id;
    EXPECT_EQ(row_of(b, id), expect) << "id " << id;
  }
  EXPECT_NE(row_of(a, 5), row_of(a, 900));
  EXPECT_EQ(a.shard().rows(), 3);
  EXPECT_EQ(b.shard().rows(), 4);
}

TEST(HashTable, AnIdGetsARowOnlyOnceReadAdmitAfterTimes) {
  ShardedTable t = make(hash(100, 3));
  ShardedTable::Lookup first = read(t, {7, 7, 8});
  EXPECT_EQ(t.shard().rows(), 0);
  EXPECT_EQ(value_read(first, 0), std::vector<double>(kDim, 0.0));  // not admitted: reads zeros
  EXPECT_TRUE(unit_gradient(t, first, nullptr).rows.empty());      // and learns nothing
  const auto pending = t.pending();
  ASSERT_EQ(pending.size(), 2u);
  EXPECT_EQ(pending[0].first, 7);
  EXPECT_EQ(pending[0].second.count, 2);
  EXPECT_EQ(pending[1].second.count, 1);

  ShardedTable::Lookup second = read(t, {7, 8});  // 7: the third read
  ASSERT_EQ(t.shard().rows(), 1);
  EXPECT_EQ(t.shard().keys()[0], 7);
  EXPECT_EQ(t.shard().count()[0], 3);
  EXPECT_EQ(value_read(second, 0), row_of(t, 7));
  EXPECT_NE(value_read(second, 0), std::vector<double>(kDim, 0.0));
  EXPECT_EQ(value_read(second, 1), std::vector<double>(kDim, 0.0));
  const SparseGrad g = unit_gradient(t, second, nullptr);
  EXPECT_EQ(g.rows, std::vector<int64_t>{0});
  EXPECT_EQ(t.pending().size(), 1u);  // 8, read twice
}

TEST(HashTable, InferenceNeverInsertsOrCounts) {
  ShardedTable t = make(hash(100, 2));
  read(t, {1, 1, 2});
  ASSERT_EQ(t.shard().rows(), 1);
  const RowColumn count = t.shard().count();
  ShardedTable::Lookup eval = read(t, {1, 2, 3, 3, 3}, false);
  EXPECT_EQ(value_read(eval, 0), row_of(t, 1));
  for (size_t k = 1; k < 5; ++k) EXPECT_EQ(value_read(eval, k), std::vector<double>(kDim, 0.0)) << k;
  EXPECT_EQ(t.shard().rows(), 1);
  EXPECT_EQ(t.shard().count(), count);
  ASSERT_EQ(t.pending().size(), 1u);
  EXPECT_EQ(t.pending()[0].second.count, 1);
}

TEST(HashTable, AStepLeavesUntouchedRowsAndTheirStateBitIdentical) {
  ShardedTable t = make(hash(1000));
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 60; ++i) ids.push_back(i * 7919);
  read(t, ids);
  OptimizerConfig c;
  c.type = "adam";
  c.lr = 0.1;
  auto adam = make_sparse_optimizer(c, t.shard());
  const ShardedTable::Lookup lookup = read(t, {7919 * 3, 7919 * 40, 123456});  // 123456 is new
  const Tensor values = t.shard().values().clone();
  std::vector<Tensor> state;
  for (auto& [name, s] : adam->state()) state.push_back(s->clone());
  const RowColumn count = t.shard().count();
  const SparseGrad g = unit_gradient(t, lookup, nullptr);
  ASSERT_EQ(g.rows.size(), 3u);
  adam->step(t.shard(), g);
  for (int64_t r = 0; r < t.shard().rows(); ++r) {
    const bool touched = std::find(g.rows.begin(), g.rows.end(), r) != g.rows.end();
    const bool same = std::memcmp(values.data<double>() + r * kDim, t.shard().values().data<double>() + r * kDim,
                                  kDim * sizeof(double)) == 0;
    EXPECT_EQ(same, !touched) << "row " << r;
    for (size_t s = 0; s < state.size(); ++s) {
      const Tensor& now = *adam->state()[s].second;
      const size_t bytes = now.nbytes() / static_cast<size_t>(now.dim(0));
      const bool state_same = std::memcmp(static_cast<const char*>(state[s].raw()) + r * bytes,
                                          static_cast<const char*>(now.raw()) + r * bytes, bytes) == 0;
      EXPECT_EQ(state_same, !touched) << adam->state()[s].first << " row " << r;
    }
    EXPECT_EQ(count[static_cast<size_t>(r)], t.shard().count()[static_cast<size_t>(r)]);
  }
}

TEST(HashTable, StartDayDropsRowsAndPendingIdsNotSeenForMoreThanTtlDays) {
  ShardedTable t = make(hash(100, 1, 2));
  t.start_day(100);
  read(t, {1, 2, 3});
  t.start_day(101);
  read(t, {2});
  const std::vector<double> two = row_of(t, 2), three = row_of(t, 3);
  t.start_day(102);  // 1 and 3 last seen 2 days ago: kept
  EXPECT_EQ(t.shard().rows(), 3);
  t.start_day(103);  // 3 days: dropped; 2 (2 days) kept, bit-identical
  EXPECT_EQ(t.shard().rows(), 1);
  EXPECT_EQ(t.shard_index(1), -1);
  EXPECT_EQ(t.shard_index(3), -1);
  EXPECT_EQ(row_of(t, 2), two);
  EXPECT_EQ(t.shard().last_seen_day()[0], 101);
  EXPECT_EQ(t.hash_stats().evicted_ttl, 2);
  read(t, {3});  // a dropped id comes back as a new row, from its initial value
  EXPECT_NE(row_of(t, 3), std::vector<double>{});
  EXPECT_EQ(row_of(t, 3), three);  // never stepped: still its initial value

  ShardedTable p = make(hash(100, 5, 1));
  p.start_day(10);
  read(p, {4});
  p.start_day(12);
  EXPECT_TRUE(p.pending().empty());
}

TEST(HashTable, AFullTableStopsWithAClearError) {
  ShardedTable t = make(hash(4));
  read(t, {0, 1, 2});
  try {
    read(t, {3, 4});
    FAIL() << "no error";
  } catch (const UserError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("hash table items is full"), std::string::npos) << m;
    EXPECT_NE(m.find("capacity"), std::string::npos) << m;
    EXPECT_NE(m.find("evict_when_full"), std::string::npos) << m;
  }
}

TEST(HashTable, AFullTableWithEvictionDropsTheLeastRecentlySeenRowsNotInTheBatch) {
  ShardedTable t = make(hash(10, 1, 0, true));
  t.start_day(1);
  read(t, {0, 1, 2, 3, 4, 5});
  t.start_day(2);
  read(t, {3, 6, 7, 8, 9});
  ASSERT_EQ(t.shard().rows(), 10);
  const std::vector<double> five = row_of(t, 5);
  t.start_day(3);
  read(t, {0, 10});  // needs 1 row: evicts 1 + capacity / 10 = 2, the oldest not read now
  EXPECT_EQ(t.shard().rows(), 9);
  EXPECT_EQ(t.shard_index(1), -1);
  EXPECT_EQ(t.shard_index(2), -1);
  for (int64_t id : {0, 3, 4, 5, 6, 7, 8, 9, 10}) EXPECT_GE(t.shard_index(id), 0) << id;
  EXPECT_EQ(row_of(t, 5), five);
  EXPECT_EQ(t.hash_stats().evicted_full, 2);
}

// Eviction cannot help a batch that reads most of a full table: a UserError that says how many
// new ids the batch brings and how few rows it leaves unread.
TEST(HashTable, EvictionThatCannotMakeRoomSaysWhy) {
  ShardedTable t = make(hash(4, 1, 0, true));
  t.start_day(1);
  read(t, {0, 1, 2, 3});
  try {
    read(t, {0, 1, 2, 3, 4, 5});
    ADD_FAILURE() << "a batch reading every row of a full table, with new ids, was accepted";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot evict enough rows for this batch: it brings 2 new ids, and only 0 "
                                         "of the rank's 4 rows are not read by it"),
              std::string::npos)
        << e.what();
  }
}

TEST(HashTable, ReplicatedHashTablesAreRefused) {
  const HashOptions h = hash(10);
  EXPECT_THROW(ShardedTable("t", 0, kDim, DType::F64, kSeed, kScale, Placement::Replicated, 0, 0, 2, &h), InternalError);
}

// Two training steps (SGD) on W ranks: what each sample read, and every row by id afterwards.
struct Outcome {
  std::vector<std::vector<double>> read;     // per global sample, step 1 then step 2
  std::map<int64_t, std::vector<double>> rows;
  std::map<int64_t, int64_t> count;
};

Outcome run(int world, Placement p, const std::vector<std::vector<int64_t>>& steps) {
  Outcome out;
  std::vector<std::map<int64_t, std::vector<double>>> rows(static_cast<size_t>(world));
  std::vector<std::map<int64_t, int64_t>> counts(static_cast<size_t>(world));
  std::vector<std::vector<std::vector<double>>> reads(static_cast<size_t>(world));
  run_ranks(world, [&](Communicator& comm) {
    const int rank = comm.rank();
    const HashOptions h = hash(1000, 2);
    ShardedTable t("items", 0, kDim, DType::F64, kSeed, kScale, p, world - 1, rank, world, &h);
    OptimizerConfig c;
    c.type = "sgd";
    c.lr = 0.5;
    auto sgd = make_sparse_optimizer(c, t.shard());
    for (const auto& all : steps) {
      const int64_t n = static_cast<int64_t>(all.size()) / world;  // rank r reads slice r
      const std::vector<int64_t> ids(all.begin() + rank * n, all.begin() + (rank + 1) * n);
      ShardedTable::Lookup lookup;
      t.lookup({{ids.data(), n}}, world > 1 ? &comm : nullptr, &lookup, true);
      for (int64_t k = 0; k < n; ++k) reads[static_cast<size_t>(rank)].push_back(value_read(lookup, static_cast<size_t>(k)));
      // d loss / d read = the global sample index + 1, summed per row
      SparseGrad local;
      local.values = Tensor::zeros({static_cast<int64_t>(lookup.rows.size()), kDim}, DType::F64);
      for (size_t i = 0; i < lookup.rows.size(); ++i) local.rows.push_back(static_cast<int64_t>(i));
      for (int64_t k = 0; k < n; ++k)
        for (int64_t d = 0; d < kDim; ++d)
          local.values.data<double>()[lookup.ids[0][static_cast<size_t>(k)] * kDim + d] += static_cast<double>(rank * n + k + 1);
      const SparseGrad g = t.reduce_gradient(lookup, local, world > 1 ? &comm : nullptr);
      if (!g.rows.empty()) sgd->step(t.shard(), g);
    }
    for (int64_t r = 0; r < t.shard().rows(); ++r) {
      const int64_t id = t.shard().keys()[static_cast<size_t>(r)];
      rows[static_cast<size_t>(rank)][id] = row_of(t, id);
      counts[static_cast<size_t>(rank)][id] = t.shard().count()[static_cast<size_t>(r)];
    }
  });
  const size_t per_step = steps[0].size() / static_cast<size_t>(world);
  for (size_t s = 0; s < steps.size(); ++s)
    for (int r = 0; r < world; ++r)
      for (size_t k = 0; k < per_step; ++k) out.read.push_back(reads[static_cast<size_t>(r)][s * per_step + k]);
  for (int r = 0; r < world; ++r) {
    for (const auto& [id, v] : rows[static_cast<size_t>(r)]) EXPECT_TRUE(out.rows.emplace(id, v).second) << "id " << id << " on two ranks";
    for (const auto& [id, c] : counts[static_cast<size_t>(r)]) out.count[id] = c;
  }
  return out;
}

TEST(HashTable, ShardedOverRanksItEqualsOneProcessExactly) {
  // Admission after 2 reads: 40 is read once by each of two ranks in step 1, so it is admitted
  // there, as on one process; 41 only in step 2.
  std::vector<std::vector<int64_t>> steps = {{40, 1, 2, 3, 40, 5, 6, 7, 8, 9, 10, 11},
                                             {41, 1, 1, 3, 5, 5, 41, 7, 99, 9, 10, 40}};
  const Outcome one = run(1, Placement::RowWise, steps);
  ASSERT_TRUE(one.rows.count(40));
  ASSERT_TRUE(one.rows.count(41));
  EXPECT_FALSE(one.rows.count(2));  // read once
  for (Placement p : {Placement::RowWise, Placement::TableWise})
    for (int world : {2, 3}) {
      SCOPED_TRACE(std::string(placement_name(p)) + " over " + std::to_string(world));
      const Outcome many = run(world, p, steps);
      EXPECT_EQ(many.read, one.read);
      EXPECT_EQ(many.rows, one.rows);
      EXPECT_EQ(many.count, one.count);
    }
}

std::string config_error(const std::string& tables, const std::string& extra = "") {
  const std::string yaml = "data: {train: [\"x\"]}\nmodel:\n  type: esmm\n  tower: [8]\n  tables: " + tables +
                           "\n  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n" + extra;
  try {
    parse_train_config(yaml, "hash.yaml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(HashTable, TheConfigTakesRowsOrCapacityAndHashKeysOnlyWithCapacity) {
  EXPECT_NE(config_error("{user: {rows: 10, capacity: 10}, item: {rows: 5}}").find("either rows"), std::string::npos);
  EXPECT_NE(config_error("{user: {slots: [user]}, item: {rows: 5}}").find("either rows"), std::string::npos);
  EXPECT_NE(config_error("{user: {rows: 10, ttl_days: 3}, item: {rows: 5}}").find("ttl_days is for hash tables"),
            std::string::npos);
  EXPECT_NE(config_error("{user: {capacity: 10, placement: replicated}, item: {rows: 5}}").find("cannot be replicated"),
            std::string::npos);
  EXPECT_NE(config_error("{user: {capacity: 10, admit_after: 0}, item: {rows: 5}}").find("admit_after"), std::string::npos);
  EXPECT_EQ(config_error("{user: {capacity: 10, admit_after: 3, ttl_days: 7, evict_when_full: true}, item: {rows: 5}}"), "");
}

TEST(HashTable, TrainingWithTtlDaysNeedsTheDay) {
  testing::ScratchDir scratch("hash_ttl_day");
  testing::write_day(scratch.path / "train", 64, 1);
  const std::string yaml = "data: {train: [\"" + (scratch.path / "train").string() + "\"]}\n"
                           "model:\n  type: esmm\n  embedding_dim: 4\n  tower: [8]\n"
                           "  tables: {user: {capacity: 100, ttl_days: 3}, item: {rows: 50}}\n"
                           "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n"
                           "train: {batch_size: 16, epochs: 1}\n";
  const TrainConfig config = parse_train_config(yaml, "hash.yaml");
  auto comm = make_local_communicator();
  try {
    run_training(config, yaml, (scratch.path / "run").string(), *comm);
    FAIL() << "trained without a day";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("ttl_days needs the day of the data"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(scratch.path / "run/checkpoints"));
  TrainOptions day;
  day.day = "2026-03-01";
  const TrainSummary s = run_training(config, yaml, (scratch.path / "run2").string(), *comm, day);
  EXPECT_EQ(s.steps, 4);
}

}  // namespace
}  // namespace ncsrec

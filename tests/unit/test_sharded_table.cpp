// Embedding placement over ranks, checked against one process holding the whole table: ranks
// are threads (tests/thread_communicator.h), batches are random with duplicates within and
// across ranks, out-of-range and negative ids, and empty batches.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <vector>

#include <gtest/gtest.h>

#include "core/error.h"
#include "core/random.h"
#include "embedding/sharded_table.h"
#include "tests/thread_communicator.h"

namespace ncsrec {
namespace {

using testing::run_ranks;

constexpr int kSlots = 2;  // slot 0 sum-pooled, slot 1 mean-pooled, both reading the table
constexpr int64_t kDim = 4;
constexpr uint64_t kSeed = 17;
constexpr double kScale = 0.1;
const char* const kTable = "item";
const Placement kPlacements[] = {Placement::RowWise, Placement::TableWise, Placement::Replicated};
const DType kDTypes[] = {DType::F32, DType::F64};

Pooling pooling_of(int slot) { return slot == 0 ? Pooling::Sum : Pooling::Mean; }
int table_rank_for(int world) { return world - 1 - (world > 2 ? 1 : 0); }  // not always rank 0

struct Batch {
  int64_t size = 0;
  std::vector<int64_t> offsets[kSlots], ids[kSlots];
};

// The last rank's batch is empty (no samples); with 3+ ranks, rank 1 has samples with no ids.
// Ids: hot ids shared by every rank, out-of-range and negative ids (mapped modulo rows).
// `repeat` repeats every id inside its bag, which changes no unique row.
Batch make_batch(int rank, int world, int64_t rows, int64_t samples, uint64_t seed, int repeat = 1) {
  Batch b;
  const bool no_samples = world > 1 && rank == world - 1, no_ids = world > 2 && rank == 1;
  b.size = no_samples ? 0 : samples + rank;
  Rng rng(hash_combine(seed, static_cast<uint64_t>(rank)));
  for (int s = 0; s < kSlots; ++s) {
    b.offsets[s].assign(1, 0);
    for (int64_t r = 0; r < b.size; ++r) {
      const int64_t bag = no_ids ? 0 : static_cast<int64_t>(rng.below(6));
      for (int64_t k = 0; k < bag; ++k) {
        const double u = rng.uniform();
        int64_t id;
        if (u < 0.5) id = static_cast<int64_t>(rng.below(8));                                     // hot
        else if (u < 0.65) id = rows + static_cast<int64_t>(rng.below(static_cast<uint64_t>(3 * rows)));  // out of range
        else if (u < 0.75) id = -1 - static_cast<int64_t>(rng.below(static_cast<uint64_t>(2 * rows)));    // negative
        else id = static_cast<int64_t>(rng.below(static_cast<uint64_t>(rows)));
        for (int t = 0; t < repeat; ++t) b.ids[s].push_back(id);
      }
      b.offsets[s].push_back(static_cast<int64_t>(b.ids[s].size()));
    }
  }
  return b;
}

std::vector<Batch> make_batches(int world, int64_t rows, int64_t samples, uint64_t seed, int repeat = 1) {
  std::vector<Batch> out;
  for (int r = 0; r < world; ++r) out.push_back(make_batch(r, world, rows, samples, seed, repeat));
  return out;
}

Batch concatenate(const std::vector<Batch>& batches) {
  Batch all;
  for (int s = 0; s < kSlots; ++s) all.offsets[s].assign(1, 0);
  for (const Batch& b : batches) {
    for (int s = 0; s < kSlots; ++s) {
      const int64_t base = static_cast<int64_t>(all.ids[s].size());
      all.ids[s].insert(all.ids[s].end(), b.ids[s].begin(), b.ids[s].end());
      for (int64_t r = 1; r <= b.size; ++r) all.offsets[s].push_back(base + b.offsets[s][static_cast<size_t>(r)]);
    }
    all.size += b.size;
  }
  return all;
}

std::vector<SlotInput> slot_inputs(const Batch& b, const std::vector<std::vector<int64_t>>* ids = nullptr) {
  std::vector<SlotInput> out;
  for (int s = 0; s < kSlots; ++s)
    out.push_back({b.offsets[s].data(), ids ? (*ids)[static_cast<size_t>(s)].data() : b.ids[s].data(), s * kDim,
                   pooling_of(s)});
  return out;
}

double at(const Tensor& t, int64_t i) {
  return t.dtype() == DType::F32 ? static_cast<double>(t.data<float>()[i]) : t.data<double>()[i];
}

Tensor random_tensor(Shape shape, DType dtype, uint64_t seed, bool absolute = false) {
  Tensor t = Tensor::empty(std::move(shape), dtype);
  Rng rng(seed);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double v = (rng.bernoulli(0.5) && !absolute ? -1.0 : 1.0) * rng.uniform(0.05, 1.0);
    if (dtype == DType::F32) t.data<float>()[i] = static_cast<float>(v);
    else t.data<double>()[i] = v;
  }
  return t;
}

bool bit_equal(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         (a.nbytes() == 0 || std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0);
}

// What each rank saw and produced in one forward/backward (and optionally one optimizer step).
struct RankRun {
  std::vector<int64_t> shard_rows;
  int64_t lookup_rows = 0;
  Tensor pooled;   // [B, kSlots * kDim]
  SparseGrad grad; // of the shard, rows = shard rows
  Tensor stepped;  // shard values after one optimizer step
  CommStats lookup_stats, reduce_stats;
};

struct Options {
  int64_t rows = 61;
  int64_t samples = 12;
  int repeat = 1;
  int omp_threads = 0;  // 0: leave as is
  const OptimizerConfig* optimizer = nullptr;
};

std::vector<RankRun> run_sharded(int world, Placement placement, DType dtype, const std::vector<Batch>& batches,
                                 const Tensor& dout_all, const Options& o) {
  std::vector<RankRun> runs(static_cast<size_t>(world));
  std::vector<int64_t> first_sample(static_cast<size_t>(world), 0);
  for (int r = 1; r < world; ++r)
    first_sample[static_cast<size_t>(r)] = first_sample[static_cast<size_t>(r) - 1] + batches[static_cast<size_t>(r) - 1].size;
  run_ranks(world, [&](Communicator& comm) {
    if (o.omp_threads > 0) omp_set_num_threads(o.omp_threads);
    const int rank = comm.rank();
    const Batch& b = batches[static_cast<size_t>(rank)];
    RankRun& run = runs[static_cast<size_t>(rank)];
    ShardedTable table(kTable, o.rows, kDim, dtype, kSeed, kScale, placement, table_rank_for(world), rank, world);
    run.shard_rows.assign(table.shard_rows().begin(), table.shard_rows().end());

    std::vector<ShardedTable::IdsView> views;
    for (int s = 0; s < kSlots; ++s) views.push_back({b.ids[s].data(), static_cast<int64_t>(b.ids[s].size())});
    ShardedTable::Lookup lookup;
    comm.reset_stats();
    table.lookup(views, &comm, &lookup, false);
    run.lookup_stats = comm.stats();
    run.lookup_rows = static_cast<int64_t>(lookup.rows.size());

    run.pooled = Tensor::zeros({b.size, kSlots * kDim}, dtype);
    for (int s = 0; s < kSlots; ++s)
      embedding_bag_forward(run.pooled, s * kDim, lookup.values, b.offsets[s].data(), lookup.ids[static_cast<size_t>(s)].data(),
                            b.size, pooling_of(s));
    const int64_t begin = first_sample[static_cast<size_t>(rank)];
    const Tensor dout = dout_all.slice_rows(begin, begin + b.size);
    const SparseGrad compact = embedding_bag_backward(dout, slot_inputs(b, &lookup.ids), b.size, lookup.values.dim(0), kDim);
    comm.reset_stats();
    run.grad = table.reduce_gradient(lookup, compact, &comm);
    run.reduce_stats = comm.stats();

    if (o.optimizer) {
      auto optimizer = make_sparse_optimizer(*o.optimizer, table.shard());
      optimizer->step(table.shard(), run.grad);
      run.stepped = table.shard().values().clone();
    }
  });
  return runs;
}

// The single process: the whole table, the concatenation of every rank's batch.
struct Reference {
  SparseGrad grad, magnitude;  // magnitude: the same sums over |dout|, a bound on rounding
  Tensor stepped;
};

Reference reference(DType dtype, const std::vector<Batch>& batches, const Tensor& dout_all, const Tensor& abs_dout,
                    const Options& o) {
  const Batch all = concatenate(batches);
  Reference ref;
  ref.grad = embedding_bag_backward(dout_all, slot_inputs(all), all.size, o.rows, kDim);
  ref.magnitude = embedding_bag_backward(abs_dout, slot_inputs(all), all.size, o.rows, kDim);
  if (o.optimizer) {
    EmbeddingTable full(kTable, o.rows, kDim, dtype, kSeed, kScale);
    make_sparse_optimizer(*o.optimizer, full)->step(full, ref.grad);
    ref.stepped = full.values().clone();
  }
  return ref;
}

std::string describe(int world, Placement p, DType dtype) {
  return std::to_string(world) + " ranks, " + placement_name(p) + ", " + dtype_name(dtype);
}

TEST(ShardedTable, ParsePlacementKnowsThreeNamesAndRejectsOthers) {
  for (Placement p : kPlacements) EXPECT_EQ(parse_placement(placement_name(p)), p);
  EXPECT_THROW(parse_placement("rowwise"), UserError);
  EXPECT_THROW(parse_placement(""), UserError);
}

TEST(ShardedTable, ShardRowsAreTheUnshardedTableRows) {
  for (DType dtype : kDTypes) {
    const EmbeddingTable full(kTable, 61, kDim, dtype, kSeed, kScale);
    for (int world = 1; world <= 4; ++world)
      for (Placement p : kPlacements)
        for (int rank = 0; rank < world; ++rank) {
          SCOPED_TRACE(describe(world, p, dtype) + ", rank " + std::to_string(rank));
          const ShardedTable t(kTable, 61, kDim, dtype, kSeed, kScale, p, table_rank_for(world), rank, world);
          const RowColumn& rows = t.shard_rows();
          ASSERT_EQ(t.shard().rows(), static_cast<int64_t>(rows.size()));
          EXPECT_TRUE(std::is_sorted(rows.begin(), rows.end()));
          const size_t row_bytes = kDim * dtype_size(dtype);
          for (size_t i = 0; i < rows.size(); ++i) {
            EXPECT_EQ(t.owner(rows[i]), rank);
            EXPECT_EQ(t.shard_index(rows[i]), static_cast<int64_t>(i));
            EXPECT_EQ(std::memcmp(static_cast<const char*>(t.shard().values().raw()) + i * row_bytes,
                                  static_cast<const char*>(full.values().raw()) + rows[i] * row_bytes, row_bytes),
                      0)
                << "row " << rows[i];
          }
          bool identity = static_cast<int64_t>(rows.size()) == 61;
          for (size_t i = 0; identity && i < rows.size(); ++i) identity = rows[i] == static_cast<int64_t>(i);
          EXPECT_EQ(t.holds_all_rows(), identity);
        }
  }
}

TEST(ShardedTable, RowWiseShardsPartitionTheRowsAndStaySmall) {
  const int64_t rows = 1000;
  for (int world = 1; world <= 4; ++world) {
    int64_t total = 0;
    std::set<int64_t> seen;
    for (int rank = 0; rank < world; ++rank) {
      const ShardedTable t(kTable, rows, kDim, DType::F32, kSeed, kScale, Placement::RowWise, 0, rank, world);
      total += t.shard().rows();
      seen.insert(t.shard_rows().begin(), t.shard_rows().end());
      if (world == 4) EXPECT_LT(t.shard().rows(), rows * 4 / 10) << "rank " << rank;  // expected rows / 4
      if (world > 1) EXPECT_FALSE(t.holds_all_rows());
    }
    EXPECT_EQ(total, rows) << world << " ranks";
    EXPECT_EQ(static_cast<int64_t>(seen.size()), rows) << world << " ranks";
  }
  // More ranks than rows: some shards are empty, and still valid tables.
  for (int rank = 0; rank < 4; ++rank) {
    const ShardedTable t(kTable, 2, kDim, DType::F64, kSeed, kScale, Placement::RowWise, 0, rank, 4);
    EXPECT_EQ(t.shard().values().dim(1), kDim);
  }
}

TEST(ShardedTable, TableWiseOwnerHoldsEveryRowOthersNone) {
  for (int world = 2; world <= 4; ++world)
    for (int rank = 0; rank < world; ++rank) {
      const int owner = table_rank_for(world);
      const ShardedTable t(kTable, 61, kDim, DType::F64, kSeed, kScale, Placement::TableWise, owner, rank, world);
      EXPECT_EQ(t.shard().rows(), rank == owner ? 61 : 0);
      EXPECT_EQ(t.holds_all_rows(), rank == owner);
      EXPECT_EQ(t.owner(60), owner);
    }
  EXPECT_THROW(ShardedTable(kTable, 61, kDim, DType::F64, kSeed, kScale, Placement::TableWise, 3, 0, 3), InternalError);
}

TEST(ShardedTable, PooledForwardEqualsTheUnshardedTableExactly) {
  for (DType dtype : kDTypes) {
    const EmbeddingTable full(kTable, 61, kDim, dtype, kSeed, kScale);
    for (int world = 1; world <= 4; ++world)
      for (Placement p : kPlacements) {
        SCOPED_TRACE(describe(world, p, dtype));
        const Options o;
        const std::vector<Batch> batches = make_batches(world, o.rows, o.samples, 5 + world);
        const Tensor dout = random_tensor({concatenate(batches).size, kSlots * kDim}, dtype, 9);
        const std::vector<RankRun> runs = run_sharded(world, p, dtype, batches, dout, o);
        for (int r = 0; r < world; ++r) {
          const Batch& b = batches[static_cast<size_t>(r)];
          Tensor want = Tensor::zeros({b.size, kSlots * kDim}, dtype);
          for (int s = 0; s < kSlots; ++s)
            embedding_bag_forward(want, s * kDim, full.values(), b.offsets[s].data(), b.ids[s].data(), b.size,
                                  pooling_of(s));
          EXPECT_TRUE(bit_equal(runs[static_cast<size_t>(r)].pooled, want)) << "rank " << r;
        }
      }
  }
}

TEST(ShardedTable, ReducedGradientEqualsTheSingleProcessGradient) {
  for (DType dtype : kDTypes) {
    const double rtol = dtype == DType::F64 ? 1e-12 : 1e-5;
    for (int world = 1; world <= 4; ++world)
      for (Placement p : kPlacements) {
        SCOPED_TRACE(describe(world, p, dtype));
        const Options o;
        const std::vector<Batch> batches = make_batches(world, o.rows, o.samples, 31 + world);
        const int64_t samples = concatenate(batches).size;
        const Tensor dout = random_tensor({samples, kSlots * kDim}, dtype, 10);
        const Tensor abs_dout = random_tensor({samples, kSlots * kDim}, dtype, 10, /*absolute=*/true);
        const std::vector<RankRun> runs = run_sharded(world, p, dtype, batches, dout, o);
        const Reference ref = reference(dtype, batches, dout, abs_dout, o);

        // Global row -> (rank, row of that rank's gradient); each row once across owners.
        std::map<int64_t, std::pair<int, int64_t>> got;
        for (int r = 0; r < world; ++r) {
          const RankRun& run = runs[static_cast<size_t>(r)];
          if (p == Placement::Replicated && r > 0) {  // every rank holds the identical full gradient
            EXPECT_EQ(run.grad.rows, runs[0].grad.rows);
            EXPECT_TRUE(bit_equal(run.grad.values, runs[0].grad.values)) << "rank " << r;
            continue;
          }
          EXPECT_TRUE(std::is_sorted(run.grad.rows.begin(), run.grad.rows.end()));
          // Compact: one row of values per row the batch touched on this owner, never a dense
          // gradient of the shard (let alone of the table).
          const auto touched = static_cast<int64_t>(run.grad.rows.size());
          EXPECT_GE(run.grad.values.dim(0), touched);
          EXPECT_LE(run.grad.values.dim(0), std::max<int64_t>(touched, 1));
          EXPECT_EQ(run.grad.values.dim(1), kDim);
          if (world > 1 && p == Placement::RowWise)
            EXPECT_LT(touched, o.rows) << "rank " << r << " reduced every row";
          for (size_t i = 0; i < run.grad.rows.size(); ++i) {
            const int64_t global = run.shard_rows[static_cast<size_t>(run.grad.rows[i])];
            EXPECT_TRUE(got.emplace(global, std::make_pair(r, static_cast<int64_t>(i))).second)
                << "row " << global << " reduced on two ranks";
          }
        }
        ASSERT_EQ(got.size(), ref.grad.rows.size());
        for (size_t i = 0; i < ref.grad.rows.size(); ++i) {
          const auto it = got.find(ref.grad.rows[i]);
          ASSERT_NE(it, got.end()) << "row " << ref.grad.rows[i] << " missing";
          const Tensor& values = runs[static_cast<size_t>(it->second.first)].grad.values;
          for (int64_t d = 0; d < kDim; ++d) {
            const int64_t e = static_cast<int64_t>(i) * kDim + d;
            EXPECT_LE(std::abs(at(values, it->second.second * kDim + d) - at(ref.grad.values, e)),
                      rtol * at(ref.magnitude.values, e))
                << "row " << ref.grad.rows[i] << " column " << d;
          }
        }
        if (world == 1) {
          EXPECT_EQ(runs[0].grad.rows, ref.grad.rows);  // one rank: the same sums in the same order
          EXPECT_TRUE(bit_equal(runs[0].grad.values, ref.grad.values));
        }
      }
  }
}

TEST(ShardedTable, OptimizerStepOnShardsEqualsOneStepOnTheFullTable) {
  for (const char* type : {"adagrad", "adam"}) {
    OptimizerConfig config;
    config.type = type;
    config.lr = 0.01;
    for (int world = 1; world <= 4; ++world)
      for (Placement p : kPlacements) {
        SCOPED_TRACE(describe(world, p, DType::F64) + ", " + type);
        Options o;
        o.optimizer = &config;
        const std::vector<Batch> batches = make_batches(world, o.rows, o.samples, 77 + world);
        const int64_t samples = concatenate(batches).size;
        const Tensor dout = random_tensor({samples, kSlots * kDim}, DType::F64, 11);
        const Tensor abs_dout = random_tensor({samples, kSlots * kDim}, DType::F64, 11, true);
        const std::vector<RankRun> runs = run_sharded(world, p, DType::F64, batches, dout, o);
        const Reference ref = reference(DType::F64, batches, dout, abs_dout, o);
        int64_t rows_seen = 0;
        for (int r = 0; r < world; ++r) {
          const RankRun& run = runs[static_cast<size_t>(r)];
          rows_seen += static_cast<int64_t>(run.shard_rows.size());
          for (size_t i = 0; i < run.shard_rows.size(); ++i)
            for (int64_t d = 0; d < kDim; ++d) {
              const double want = at(ref.stepped, run.shard_rows[i] * kDim + d);
              EXPECT_NEAR(at(run.stepped, static_cast<int64_t>(i) * kDim + d), want, 1e-12 * (std::abs(want) + config.lr))
                  << "rank " << r << " row " << run.shard_rows[i];
            }
          if (p == Placement::Replicated) EXPECT_TRUE(bit_equal(run.stepped, runs[0].stepped)) << "rank " << r;
        }
        EXPECT_EQ(rows_seen, p == Placement::Replicated ? world * o.rows : o.rows);
      }
  }
}

// Bytes a rank sends, as documented in embedding/sharded_table.h, computed here from the batches.
TEST(ShardedTable, BytesMovedFollowTheFormulaAndIgnoreDuplicateIds) {
  for (DType dtype : kDTypes)
    for (int world = 1; world <= 4; ++world)
      for (Placement p : kPlacements) {
        SCOPED_TRACE(describe(world, p, dtype));
        Options o;
        const std::vector<Batch> batches = make_batches(world, o.rows, o.samples, 3 + world);
        const Tensor dout = random_tensor({concatenate(batches).size, kSlots * kDim}, dtype, 12);
        const std::vector<RankRun> runs = run_sharded(world, p, dtype, batches, dout, o);

        o.repeat = 10;
        const std::vector<Batch> repeated = make_batches(world, o.rows, o.samples, 3 + world, o.repeat);
        ASSERT_GT(concatenate(repeated).ids[0].size(), 9 * concatenate(batches).ids[0].size());
        const std::vector<RankRun> runs10 = run_sharded(world, p, dtype, repeated, dout, o);

        // Unique rows each rank reads, and who owns them.
        std::vector<std::set<int64_t>> read(static_cast<size_t>(world));
        for (int r = 0; r < world; ++r)
          for (int s = 0; s < kSlots; ++s)
            for (int64_t id : batches[static_cast<size_t>(r)].ids[s]) read[static_cast<size_t>(r)].insert(embedding_row(id, o.rows));
        auto owner = [&](int64_t row) { return p == Placement::TableWise ? table_rank_for(world) : row_owner(row, world); };
        const int64_t W = world, D = kDim, S = static_cast<int64_t>(dtype_size(dtype));
        for (int r = 0; r < world; ++r) {
          SCOPED_TRACE("rank " + std::to_string(r));
          const RankRun& run = runs[static_cast<size_t>(r)];
          const int64_t U = static_cast<int64_t>(read[static_cast<size_t>(r)].size());
          EXPECT_EQ(run.lookup_rows, U);
          int64_t R = 0, Q = 0;  // rows read from others; rows others read from this rank
          for (int64_t row : read[static_cast<size_t>(r)]) R += owner(row) != r;
          for (int q = 0; q < world; ++q)
            for (int64_t row : read[static_cast<size_t>(q)]) Q += q != r && owner(row) == r;
          int64_t lookup_a2a = 0, reduce_a2a = 0, reduce_gather = 0;
          if (world > 1 && p != Placement::Replicated) {
            lookup_a2a = 8 * (W - 1) + 8 * R + D * S * Q;
            reduce_a2a = 8 * (W - 1) + D * S * R;
          } else if (world > 1) {
            reduce_gather = 16 * (W - 1);
            reduce_a2a = (W - 1) * U * (8 + D * S);
          }
          EXPECT_EQ(run.lookup_stats.all_to_all_bytes, lookup_a2a);
          EXPECT_EQ(run.lookup_stats.total_bytes(), lookup_a2a);
          EXPECT_EQ(run.reduce_stats.all_to_all_bytes, reduce_a2a);
          EXPECT_EQ(run.reduce_stats.all_gather_bytes, reduce_gather);
          EXPECT_EQ(run.reduce_stats.total_bytes(), reduce_a2a + reduce_gather);
          if (world > 1 && p != Placement::Replicated) {
            EXPECT_EQ(run.lookup_stats.all_to_all_calls, 3);  // counts, row ids, values
            EXPECT_EQ(run.reduce_stats.all_to_all_calls, 3);  // counts, row ids (none here), values
          }
          const RankRun& run10 = runs10[static_cast<size_t>(r)];
          EXPECT_EQ(run10.lookup_stats.total_bytes(), run.lookup_stats.total_bytes());
          EXPECT_EQ(run10.reduce_stats.total_bytes(), run.reduce_stats.total_bytes());
        }
      }
}

// A gradient that leaves out some looked-up rows: the owners get those rows' positions, so
// only rows with a gradient are updated, summed in rank order.
TEST(ShardedTable, PartialGradientReachesOnlyItsRows) {
  for (int world = 2; world <= 4; ++world)
    for (Placement p : kPlacements) {
      SCOPED_TRACE(describe(world, p, DType::F64));
      const std::vector<Batch> batches = make_batches(world, 61, 12, 99 + world);
      std::vector<std::map<int64_t, std::vector<double>>> sent(static_cast<size_t>(world));  // global row -> grad
      std::vector<std::vector<int64_t>> rows_got(static_cast<size_t>(world));
      std::vector<std::vector<double>> values_got(static_cast<size_t>(world));
      std::vector<std::vector<int64_t>> shard_rows(static_cast<size_t>(world));
      std::vector<CommStats> stats(static_cast<size_t>(world));
      std::vector<std::vector<int64_t>> looked_up(static_cast<size_t>(world));
      run_ranks(world, [&](Communicator& comm) {
        const int rank = comm.rank();
        const Batch& b = batches[static_cast<size_t>(rank)];
        ShardedTable table(kTable, 61, kDim, DType::F64, kSeed, kScale, p, table_rank_for(world), rank, world);
        shard_rows[static_cast<size_t>(rank)].assign(table.shard_rows().begin(), table.shard_rows().end());
        std::vector<ShardedTable::IdsView> views;
        for (int s = 0; s < kSlots; ++s) views.push_back({b.ids[s].data(), static_cast<int64_t>(b.ids[s].size())});
        ShardedTable::Lookup lookup;
        table.lookup(views, &comm, &lookup, false);
        looked_up[static_cast<size_t>(rank)] = lookup.rows;
        SparseGrad partial;  // every third looked-up row
        for (int64_t i = 0; i < static_cast<int64_t>(lookup.rows.size()); i += 3) partial.rows.push_back(i);
        partial.values = random_tensor({static_cast<int64_t>(partial.rows.size()), kDim}, DType::F64, 50 + rank);
        for (size_t i = 0; i < partial.rows.size(); ++i) {
          const double* v = partial.values.data<double>() + i * kDim;
          sent[static_cast<size_t>(rank)][lookup.rows[static_cast<size_t>(partial.rows[i])]] = std::vector<double>(v, v + kDim);
        }
        comm.reset_stats();
        const SparseGrad g = table.reduce_gradient(lookup, partial, &comm);
        stats[static_cast<size_t>(rank)] = comm.stats();
        rows_got[static_cast<size_t>(rank)] = g.rows;
        values_got[static_cast<size_t>(rank)].assign(g.values.data<double>(), g.values.data<double>() + g.values.numel());
      });
      std::map<int64_t, std::vector<double>> want;  // summed in rank order, as the owners do
      for (int r = 0; r < world; ++r)
        for (const auto& [row, v] : sent[static_cast<size_t>(r)]) {
          std::vector<double>& w = want.emplace(row, std::vector<double>(kDim, 0.0)).first->second;
          for (int64_t d = 0; d < kDim; ++d) w[static_cast<size_t>(d)] += v[static_cast<size_t>(d)];
        }
      std::map<int64_t, std::vector<double>> got;
      for (int r = 0; r < world; ++r) {
        if (p == Placement::Replicated && r > 0) continue;
        for (size_t i = 0; i < rows_got[static_cast<size_t>(r)].size(); ++i) {
          const int64_t global = shard_rows[static_cast<size_t>(r)][static_cast<size_t>(rows_got[static_cast<size_t>(r)][i])];
          const double* v = values_got[static_cast<size_t>(r)].data() + i * kDim;
          got[global] = std::vector<double>(v, v + kDim);
        }
      }
      EXPECT_EQ(got, want);  // bit for bit: the same additions in the same order
      if (p == Placement::Replicated) continue;
      // Bytes: per owner, the values of the rows with a gradient, and their request positions
      // only where that owner served rows without a gradient.
      int64_t ids_sent = 0;
      for (int r = 0; r < world; ++r) {
        std::vector<int64_t> requested(static_cast<size_t>(world), 0), with_grad(static_cast<size_t>(world), 0);
        for (int64_t row : looked_up[static_cast<size_t>(r)]) {
          const int o = p == Placement::TableWise ? table_rank_for(world) : row_owner(row, world);
          ++requested[static_cast<size_t>(o)];
          with_grad[static_cast<size_t>(o)] += sent[static_cast<size_t>(r)].count(row) > 0;
        }
        int64_t want_bytes = 8 * (world - 1);
        for (int o = 0; o < world; ++o) {
          if (o == r) continue;
          const int64_t g = with_grad[static_cast<size_t>(o)];
          const int64_t ids = g == requested[static_cast<size_t>(o)] ? 0 : g;
          want_bytes += 8 * ids + kDim * 8 * g;
          ids_sent += ids;
        }
        EXPECT_EQ(stats[static_cast<size_t>(r)].all_to_all_bytes, want_bytes) << "rank " << r;
      }
      EXPECT_GT(ids_sent, 0);  // the test exercises the row-id path
    }
}

TEST(ShardedTable, EveryRankWithAnEmptyBatchStillCompletesTheStep) {
  for (Placement p : kPlacements)
    run_ranks(3, [&](Communicator& comm) {
      ShardedTable table(kTable, 61, kDim, DType::F32, kSeed, kScale, p, 1, comm.rank(), 3);
      ShardedTable::Lookup lookup;
      table.lookup({{nullptr, 0}, {nullptr, 0}}, &comm, &lookup, false);
      EXPECT_TRUE(lookup.rows.empty());
      ASSERT_EQ(lookup.values.dim(0), 1);  // one zero row, so the embedding bag runs unchanged
      EXPECT_EQ(lookup.values.data<float>()[0], 0.0f);
      const int64_t offsets[1] = {0};
      const SparseGrad compact = embedding_bag_backward(Tensor::zeros({0, kDim}, DType::F32),
                                                        {{offsets, nullptr, 0, Pooling::Sum}}, 0, 1, kDim);
      const SparseGrad g = table.reduce_gradient(lookup, compact, &comm);
      EXPECT_TRUE(g.rows.empty());
      EXPECT_EQ(g.values.dim(0), 0);
    });
}

TEST(ShardedTable, ResultsAreBitIdenticalForAnyThreadCount) {
  for (Placement p : kPlacements) {
    SCOPED_TRACE(placement_name(p));
    Options o;
    o.rows = 3000;
    o.samples = 400;  // enough unique rows for the parallel paths
    const std::vector<Batch> batches = make_batches(3, o.rows, o.samples, 123);
    const Tensor dout = random_tensor({concatenate(batches).size, kSlots * kDim}, DType::F32, 13);
    o.omp_threads = 1;
    const std::vector<RankRun> one = run_sharded(3, p, DType::F32, batches, dout, o);
    o.omp_threads = 4;
    const std::vector<RankRun> four = run_sharded(3, p, DType::F32, batches, dout, o);
    for (size_t r = 0; r < one.size(); ++r) {
      EXPECT_TRUE(bit_equal(one[r].pooled, four[r].pooled)) << "rank " << r;
      EXPECT_EQ(one[r].grad.rows, four[r].grad.rows) << "rank " << r;
      EXPECT_TRUE(bit_equal(one[r].grad.values, four[r].grad.values)) << "rank " << r;
    }
  }
}

TEST(ShardedTable, WrongCommunicatorIsRefused) {
  run_ranks(2, [](Communicator& comm) {
    ShardedTable table(kTable, 61, kDim, DType::F32, kSeed, kScale, Placement::RowWise, 0, comm.rank(), 3);
    ShardedTable::Lookup lookup;
    EXPECT_THROW(table.lookup({}, &comm, &lookup, false), InternalError);
  });
}

TEST(ThreadCommunicator, CollectivesMatchTheirDefinitions) {
  run_ranks(3, [](Communicator& comm) {
    const int r = comm.rank(), n = comm.world_size();
    EXPECT_STREQ(comm.kind(), "thread");
    double sum[2] = {1.0 + r, 0.5 * r};
    comm.all_reduce_sum(sum, 2);
    EXPECT_EQ(sum[0], 6.0);
    EXPECT_EQ(sum[1], 1.5);
    int64_t isum = r;
    comm.all_reduce_sum(&isum, 1);
    EXPECT_EQ(isum, 3);
    double mx = r == 1 ? 7.0 : -1.0;
    comm.all_reduce_max(&mx, 1);
    EXPECT_EQ(mx, 7.0);
    comm.all_reduce_sum(static_cast<double*>(nullptr), 0);

    // Rank r sends (r + d) copies of 100 r + d to rank d.
    std::vector<int64_t> send, send_counts, recv_counts;
    for (int d = 0; d < n; ++d) {
      send_counts.push_back(r + d);
      recv_counts.push_back(d + r);
      for (int k = 0; k < r + d; ++k) send.push_back(100 * r + d);
    }
    std::vector<int64_t> recv(static_cast<size_t>(3 * r + 3));
    comm.all_to_all_v(send.data(), send_counts.data(), recv.data(), recv_counts.data(), DType::I64);
    std::vector<int64_t> want;
    for (int s = 0; s < n; ++s)
      for (int k = 0; k < s + r; ++k) want.push_back(100 * s + r);
    EXPECT_EQ(recv, want);

    const float mine[2] = {static_cast<float>(r), static_cast<float>(-r)};
    std::vector<float> gathered(static_cast<size_t>(2 * n));
    comm.all_gather(mine, 2, gathered.data(), DType::F32);
    EXPECT_EQ(gathered, (std::vector<float>{0, 0, 1, -1, 2, -2}));

    std::vector<int64_t> counts;
    const std::vector<double> v = all_gather_v(comm, std::vector<double>(static_cast<size_t>(r), 1.0 * r), &counts);
    EXPECT_EQ(v, (std::vector<double>{1, 2, 2}));
    EXPECT_EQ(counts, (std::vector<int64_t>{0, 1, 2}));

    double b[2] = {r == 2 ? 4.0 : 0.0, r == 2 ? 5.0 : 0.0};
    comm.broadcast(b, 2, DType::F64, 2);
    EXPECT_EQ(b[0], 4.0);
    EXPECT_EQ(b[1], 5.0);
    comm.barrier();
    EXPECT_EQ(comm.stats().barrier_calls, 1);
  });
}

TEST(ThreadCommunicator, AFailingRankStopsTheOthersAndItsErrorIsRethrown) {
  EXPECT_THROW(run_ranks(3,
                         [](Communicator& comm) {
                           if (comm.rank() == 1) throw UserError("rank 1 fails");
                           comm.barrier();
                         }),
               UserError);
}

TEST(ThreadCommunicator, ARankSkippingACollectiveIsReported) {
  EXPECT_THROW(run_ranks(2,
                         [](Communicator& comm) {
                           if (comm.rank() == 0) comm.barrier();
                         }),
               CommTimeout);
  EXPECT_THROW(run_ranks(2,
                         [](Communicator& comm) {
                           const int64_t counts[2] = {1, 1}, wrong[2] = {2, 2};
                           int64_t send[2] = {0, 0}, recv[4];
                           comm.all_to_all_v(send, counts, recv, comm.rank() == 0 ? wrong : counts, DType::I64);
                         }),
               InternalError);
}

}  // namespace
}  // namespace ncsrec

// Tests of the streaming Reader (core/data/reader.h): every row once per epoch, the order a
// pure function of (seed, epoch, position), rank slices that add up to the single-rank batch,
// resumption from a position, drop_last, errors from the reader thread, and the promise that
// memory stays bounded by one window whatever the data size.
#include <gtest/gtest.h>
#include <malloc.h>

#include <algorithm>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>

#include "core/data/block.h"
#include "core/data/hdf5_shard.h"
#include "core/data/reader.h"
#include "core/error.h"
#include "core/random.h"

#include "scratch_dir.h"

namespace ncsrec {
namespace {

namespace fs = std::filesystem;

using testing::ScratchDir;

DataSchema reader_schema(int64_t dense_dim = 3) {
  DataSchema s;
  s.tasks = {"click", "conv"};
  s.has_weight = true;
  s.dense_dim = dense_dim;
  s.slots = {"item", "tags"};
  s.meta = {"row_id"};
  return s;
}

// The ids of a row are derived from its global index, so a batch row can be checked intact.
int64_t tag_count(int64_t row) { return row % 4; }
int64_t tag_id(int64_t row, int64_t k) { return row * 7 + k; }

// Writes shards of the given sizes whose meta/row_id is the global row index.
std::vector<std::string> write_rows(const fs::path& dir, const std::vector<int64_t>& sizes, uint64_t seed,
                                    int64_t dense_dim = 3, int64_t extra_ids = 0, int64_t first_row = 0) {
  Rng rng(seed);
  std::vector<std::string> files;
  int64_t row = first_row;
  for (size_t f = 0; f < sizes.size(); ++f) {
    Block b = Block::with_schema(reader_schema(dense_dim));
    b.rows = sizes[f];
    for (int64_t r = 0; r < sizes[f]; ++r, ++row) {
      b.labels[0].push_back(static_cast<float>(rng.bernoulli(0.4)));
      b.labels[1].push_back(static_cast<float>(rng.uniform()));
      b.weight.push_back(static_cast<float>(rng.uniform(0.5, 1.5)));
      for (int64_t j = 0; j < dense_dim; ++j) b.dense.push_back(static_cast<float>(rng.normal()));
      b.sparse[0].ids.push_back(row + 1000);
      b.sparse[0].offsets.push_back(static_cast<int64_t>(b.sparse[0].ids.size()));
      for (int64_t k = 0; k < tag_count(row) + extra_ids; ++k) b.sparse[1].ids.push_back(tag_id(row, k));
      b.sparse[1].offsets.push_back(static_cast<int64_t>(b.sparse[1].ids.size()));
      b.meta[0].push_back(row);
    }
    files.push_back((dir / ("part-" + std::to_string(1000 + f) + ".h5")).string());
    write_shard(files.back(), b);
  }
  return files;
}

struct Batch {
  int64_t first_position = 0;
  std::vector<int64_t> rows;
};

// Reads to the end (or `limit` batches), checking each row's columns belong together.
std::vector<Batch> read_batches(const ReaderOptions& options, size_t limit = SIZE_MAX,
                                int64_t* position_after = nullptr) {
  Reader reader(options);
  std::vector<Batch> out;
  Block block;
  while (out.size() < limit && reader.next(block)) {
    block.validate("batch");
    Batch b{block.first_position, block.meta[0]};
    for (int64_t i = 0; i < block.rows; ++i) {
      const int64_t row = block.meta[0][i];
      EXPECT_EQ(block.sparse[0].ids[block.sparse[0].offsets[i]], row + 1000);
      EXPECT_EQ(block.sparse[1].offsets[i + 1] - block.sparse[1].offsets[i], tag_count(row));
      if (tag_count(row) > 0) EXPECT_EQ(block.sparse[1].ids[block.sparse[1].offsets[i]], tag_id(row, 0));
    }
    out.push_back(std::move(b));
  }
  if (position_after) *position_after = reader.position();
  return out;
}

std::vector<int64_t> flatten(const std::vector<Batch>& batches) {
  std::vector<int64_t> rows;
  for (const auto& b : batches) rows.insert(rows.end(), b.rows.begin(), b.rows.end());
  return rows;
}

std::vector<int64_t> iota_rows(int64_t n) {
  std::vector<int64_t> v(n);
  std::iota(v.begin(), v.end(), 0);
  return v;
}

ReaderOptions base_options(const std::vector<std::string>& files) {
  ReaderOptions o;
  o.files = files;
  o.batch_size = 8;
  o.window_rows = 32;
  o.seed = 42;
  o.queue_batches = 2;
  return o;
}

class ReaderTest : public ::testing::Test {
 protected:
  ReaderTest() : scratch_(::testing::UnitTest::GetInstance()->current_test_info()->name()), dir_(scratch_.path) {
    // 226 rows; windows of 32 span file boundaries, one file is empty, the last window is partial.
    files_ = write_rows(dir_, {37, 50, 0, 13, 100, 26}, 9);
  }
  ScratchDir scratch_;
  const fs::path dir_;
  std::vector<std::string> files_;
  const int64_t total_ = 226;
};

TEST_F(ReaderTest, EveryRowOncePerEpoch) {
  for (bool shuffle : {false, true}) {
    ReaderOptions o = base_options(files_);
    o.shuffle = shuffle;
    o.drop_last = false;
    int64_t position = 0;
    const auto batches = read_batches(o, SIZE_MAX, &position);
    std::vector<int64_t> rows = flatten(batches);
    ASSERT_EQ(static_cast<int64_t>(rows.size()), total_);
    EXPECT_EQ(position, total_);
    if (!shuffle) EXPECT_EQ(rows, iota_rows(total_));
    if (shuffle) EXPECT_NE(rows, iota_rows(total_));
    std::sort(rows.begin(), rows.end());
    EXPECT_EQ(rows, iota_rows(total_)) << "shuffle " << shuffle;
    for (size_t g = 0; g < batches.size(); ++g) EXPECT_EQ(batches[g].first_position, static_cast<int64_t>(g) * 8);
  }
}

TEST_F(ReaderTest, RowAtIsABijectionForAnyWindowSize) {
  for (int64_t window : {1, 7, 32, 64, 225, 226, 1000}) {
    for (bool shuffle : {false, true}) {
      ReaderOptions o = base_options(files_);
      o.window_rows = window;
      o.shuffle = shuffle;
      o.drop_last = false;
      Reader reader(o);
      std::vector<int64_t> rows;
      for (int64_t p = 0; p < total_; ++p) rows.push_back(reader.row_at(p));
      // Rows of one window stay together, so the reader holds one window at a time.
      for (int64_t p = 1; p < total_; ++p) {
        if (shuffle && rows[p] / window != rows[p - 1] / window)
          for (int64_t q = p + 1; q < total_; ++q) ASSERT_NE(rows[q] / window, rows[p - 1] / window);
      }
      // Batches deliver exactly row_at order.
      const std::vector<int64_t> read = flatten(read_batches(o));
      EXPECT_EQ(read, rows) << "window " << window << " shuffle " << shuffle;
      std::sort(rows.begin(), rows.end());
      EXPECT_EQ(rows, iota_rows(total_)) << "window " << window << " shuffle " << shuffle;
    }
  }
}

TEST_F(ReaderTest, OrderIsAPureFunctionOfSeedAndEpoch) {
  ReaderOptions o = base_options(files_);
  const auto first = flatten(read_batches(o));
  EXPECT_EQ(flatten(read_batches(o)), first);
  ReaderOptions other_epoch = o;
  other_epoch.epoch = 1;
  EXPECT_NE(flatten(read_batches(other_epoch)), first);
  ReaderOptions other_seed = o;
  other_seed.seed = 43;
  EXPECT_NE(flatten(read_batches(other_seed)), first);
  // The queue depth and the consumer's speed do not change the order.
  ReaderOptions deep_queue = o;
  deep_queue.queue_batches = 50;
  EXPECT_EQ(flatten(read_batches(deep_queue)), first);
}

TEST_F(ReaderTest, TwoRanksSeeWhatOneRankSees) {
  for (bool drop_last : {true, false}) {
    for (bool shuffle : {true, false}) {
      ReaderOptions one = base_options(files_);
      one.batch_size = 16;
      one.drop_last = drop_last;
      one.shuffle = shuffle;
      const auto single = read_batches(one);
      std::vector<std::vector<Batch>> ranks;
      for (int r = 0; r < 2; ++r) {
        ReaderOptions o = one;
        o.batch_size = 8;
        o.world_size = 2;
        o.rank = r;
        ranks.push_back(read_batches(o));
      }
      ASSERT_EQ(ranks[0].size(), single.size());
      ASSERT_EQ(ranks[1].size(), single.size());  // ranks stay in step, even on a final partial batch
      for (size_t g = 0; g < single.size(); ++g) {
        std::vector<int64_t> joined = ranks[0][g].rows;
        joined.insert(joined.end(), ranks[1][g].rows.begin(), ranks[1][g].rows.end());
        EXPECT_EQ(joined, single[g].rows) << "global batch " << g;
        EXPECT_EQ(ranks[1][g].first_position, std::min<int64_t>(g * 16 + 8, drop_last ? 224 : total_));
      }
    }
  }
}

TEST_F(ReaderTest, ResumeFromPositionGivesTheSameRemainingSequence) {
  ReaderOptions o = base_options(files_);
  o.world_size = 2;
  o.rank = 1;
  const auto full = read_batches(o);
  int64_t position = 0;
  const auto head = read_batches(o, 5, &position);
  ASSERT_EQ(head.size(), 5u);
  EXPECT_EQ(position, 5 * 16);
  ReaderOptions resumed = o;
  resumed.start_position = position;
  const auto tail = read_batches(resumed);
  ASSERT_EQ(head.size() + tail.size(), full.size());
  for (size_t i = 0; i < tail.size(); ++i) {
    EXPECT_EQ(tail[i].rows, full[head.size() + i].rows);
    EXPECT_EQ(tail[i].first_position, full[head.size() + i].first_position);
  }
  ReaderOptions misaligned = o;
  misaligned.start_position = 24;
  EXPECT_THROW(Reader{misaligned}, UserError);
  ReaderOptions past_end = o;
  past_end.start_position = 16 * 100;
  EXPECT_THROW(Reader{past_end}, UserError);
}

TEST_F(ReaderTest, DropLastSemantics) {
  ReaderOptions o = base_options(files_);
  o.batch_size = 10;
  o.world_size = 3;  // global batch 30: 226 = 7 x 30 + 16
  int64_t position = 0;
  for (int rank = 0; rank < 3; ++rank) {
    o.rank = rank;
    o.drop_last = true;
    auto batches = read_batches(o, SIZE_MAX, &position);
    EXPECT_EQ(batches.size(), 7u);
    EXPECT_EQ(position, 210);
    for (const auto& b : batches) EXPECT_EQ(b.rows.size(), 10u);

    o.drop_last = false;
    batches = read_batches(o, SIZE_MAX, &position);
    ASSERT_EQ(batches.size(), 8u);
    EXPECT_EQ(position, total_);
    const size_t expected_last[] = {10, 6, 0};  // the remaining 16 split in rank order
    EXPECT_EQ(batches.back().rows.size(), expected_last[rank]) << "rank " << rank;
  }
}

TEST_F(ReaderTest, SchemaMismatchNamesBothFiles) {
  const fs::path other = dir_ / "other";
  fs::create_directories(other);
  const auto odd = write_rows(other, {5}, 1, /*dense_dim=*/4);
  ReaderOptions o = base_options({files_[0], odd[0]});
  try {
    Reader reader(o);
    FAIL() << "expected a UserError";
  } catch (const UserError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(files_[0]), std::string::npos) << message;
    EXPECT_NE(message.find(odd[0]), std::string::npos) << message;
  }
}

TEST_F(ReaderTest, ErrorOnTheReaderThreadIsRethrownFromNext) {
  ReaderOptions o = base_options(files_);
  o.shuffle = false;
  o.queue_batches = 1;
  o.window_rows = 8;
  Reader reader(o);
  // The thread is at most a couple of windows ahead, far from the last file.
  std::ofstream(files_.back(), std::ios::trunc) << "corrupted after the reader started";
  Block block;
  try {
    while (reader.next(block)) {
    }
    FAIL() << "expected a UserError";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find(files_.back()), std::string::npos) << e.what();
  }
}

TEST_F(ReaderTest, StoppingEarlyJoinsCleanly) {
  for (int taken = 0; taken < 3; ++taken) {
    ReaderOptions o = base_options(files_);
    o.queue_batches = 1;
    Reader reader(o);
    Block block;
    for (int i = 0; i < taken; ++i) ASSERT_TRUE(reader.next(block));
  }  // destructors return while the thread waits on a full queue
}

// ---- memory bound ------------------------------------------------------------------------

int64_t status_kib(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(field, 0) == 0) return std::stoll(line.substr(std::string(field).size()));
  return -1;
}

TEST(ReaderMemory, PeakGrowthIsBoundedByTheWindow) {
  const ScratchDir scratch("memory");
  const fs::path& dir = scratch.path;
  constexpr int64_t kShards = 8, kShardRows = 40000, kDense = 32;
  int64_t data_bytes = 0;
  for (int64_t s = 0; s < kShards; ++s) {  // one shard at a time: the writer's memory stays small
    const auto written = write_rows(dir, {kShardRows}, 100 + s, kDense, /*extra_ids=*/4, s * kShardRows);
    fs::rename(written[0], dir / ("part-" + std::to_string(s) + ".h5"));
  }
  std::vector<std::string> files;
  for (int64_t s = 0; s < kShards; ++s) {
    files.push_back((dir / ("part-" + std::to_string(s) + ".h5")).string());
    Block probe;
    read_shard_rows(files.back(), 0, 1000, probe);
    data_bytes += static_cast<int64_t>(probe.bytes()) * kShardRows / 1000;
  }
  const int64_t total_rows = kShards * kShardRows;
  const int64_t window_rows = 16000;
  const int64_t window_bytes = data_bytes * window_rows / total_rows;
  const int64_t bound = 3 * window_bytes + (int64_t{16} << 20);
  ASSERT_GT(data_bytes, 2 * bound) << "the data set must dwarf the bound, or the test cannot fail";

  malloc_trim(0);
  // Writing 5 to clear_refs resets VmHWM (Linux >= 4.0); without it, fall back to sampling VmRSS.
  const bool hwm_reset = static_cast<bool>(std::ofstream("/proc/self/clear_refs") << "5");
  const int64_t baseline_kib = status_kib("VmRSS:");
  int64_t sampled_peak_kib = baseline_kib, rows_seen = 0, row_sum = 0;
  {
    ReaderOptions o;
    o.files = files;
    o.batch_size = 512;
    o.window_rows = window_rows;
    o.shuffle = true;
    o.drop_last = false;
    Reader reader(o);
    Block block;
    while (reader.next(block)) {
      rows_seen += block.rows;
      for (int64_t v : block.meta[0]) row_sum += v;
      sampled_peak_kib = std::max(sampled_peak_kib, status_kib("VmRSS:"));
    }
  }
  const int64_t hwm_kib = status_kib("VmHWM:");
  const int64_t peak_kib = hwm_reset && hwm_kib >= baseline_kib ? std::max(hwm_kib, sampled_peak_kib) : sampled_peak_kib;
  const int64_t growth = (peak_kib - baseline_kib) * 1024;
  std::cout << "[ memory ] data " << (data_bytes >> 20) << " MiB, window " << (window_bytes >> 20) << "."
            << (window_bytes % (1 << 20)) * 10 / (1 << 20) << " MiB, bound " << (bound >> 20) << " MiB, peak RSS growth "
            << (growth >> 20) << " MiB (" << (hwm_reset ? "VmHWM reset + sampled VmRSS" : "sampled VmRSS") << ")\n";
  EXPECT_EQ(rows_seen, total_rows);
  EXPECT_EQ(row_sum, total_rows * (total_rows - 1) / 2);
  EXPECT_LT(growth, bound);
}

}  // namespace
}  // namespace ncsrec

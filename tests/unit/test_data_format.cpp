// Tests of the HDF5 shard format (core/data/hdf5_shard.h, core/data/block.h): a Block with
// every column kind survives a write/read round trip, interior row ranges read correctly,
// on-disk dtypes are the documented ones, and bad files or folders give UserErrors that name
// the path instead of crashing.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/data/block.h"
#include "core/data/hdf5_shard.h"
#include "core/error.h"
#include "core/random.h"

#include "scratch_dir.h"

namespace ncsrec {
namespace {

namespace fs = std::filesystem;

using testing::ScratchDir;

// Names are deliberately not in alphabetical order: the schema's order must survive.
DataSchema full_schema() {
  DataSchema s;
  s.tasks = {"click", "a_rating"};
  s.has_weight = true;
  s.dense_dim = 5;
  s.slots = {"zeta_tags", "alpha_user"};
  s.meta = {"ts", "uid"};
  s.truth = {"click"};
  return s;
}

Block random_block(const DataSchema& schema, int64_t rows, uint64_t seed) {
  Rng rng(seed);
  Block b = Block::with_schema(schema);
  b.rows = rows;
  for (size_t t = 0; t < schema.tasks.size(); ++t)
    for (int64_t r = 0; r < rows; ++r)  // task 0 binary (stored uint8), the others graded (float32)
      b.labels[t].push_back(t == 0 ? static_cast<float>(rng.bernoulli(0.3)) : static_cast<float>(rng.uniform(0, 5)));
  if (schema.has_weight)
    for (int64_t r = 0; r < rows; ++r) b.weight.push_back(static_cast<float>(rng.uniform(0.5, 2.0)));
  for (int64_t i = 0; i < rows * schema.dense_dim; ++i) b.dense.push_back(static_cast<float>(rng.normal()));
  for (auto& col : b.sparse)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t n = static_cast<int64_t>(rng.below(4));  // 0..3 ids: some rows empty
      for (int64_t k = 0; k < n; ++k) col.ids.push_back(static_cast<int64_t>(rng.next() >> 2));
      col.offsets.push_back(static_cast<int64_t>(col.ids.size()));
    }
  for (auto& m : b.meta)
    for (int64_t r = 0; r < rows; ++r) m.push_back(static_cast<int64_t>(rng.next()) - (int64_t{1} << 40));
  for (auto& t : b.truth)
    for (int64_t r = 0; r < rows; ++r) t.push_back(static_cast<float>(rng.uniform()));
  b.validate("random_block");
  return b;
}

Block row_range(const Block& src, int64_t begin, int64_t end) {
  Block out = Block::with_schema(src.schema);
  for (int64_t r = begin; r < end; ++r) out.append_row(src, r);
  return out;
}

void expect_same_rows(const Block& expected, const Block& got) {
  ASSERT_EQ(expected.schema, got.schema);
  ASSERT_EQ(expected.rows, got.rows);
  EXPECT_EQ(expected.labels, got.labels);
  EXPECT_EQ(expected.weight, got.weight);
  EXPECT_EQ(expected.dense, got.dense);
  ASSERT_EQ(expected.sparse.size(), got.sparse.size());
  for (size_t s = 0; s < expected.sparse.size(); ++s) {
    EXPECT_EQ(expected.sparse[s].offsets, got.sparse[s].offsets) << "slot " << s;
    EXPECT_EQ(expected.sparse[s].ids, got.sparse[s].ids) << "slot " << s;
  }
  EXPECT_EQ(expected.meta, got.meta);
  EXPECT_EQ(expected.truth, got.truth);
}

// The HDF5 class and byte size of a dataset, read with the C API to check the documented dtypes.
std::pair<H5T_class_t, size_t> dataset_type(const std::string& path, const std::string& name) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t dset = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
  const hid_t type = H5Dget_type(dset);
  std::pair<H5T_class_t, size_t> out{H5Tget_class(type), H5Tget_size(type)};
  H5Tclose(type);
  H5Dclose(dset);
  H5Fclose(file);
  return out;
}

template <class F>
std::string user_error_message(F&& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a UserError";
  return "";
}

TEST(DataFormat, RoundTripEveryColumnKind) {
  const ScratchDir scratch("roundtrip");
  const fs::path& dir = scratch.path;
  const std::string path = (dir / "part-0000.h5").string();
  const Block block = random_block(full_schema(), 57, 11);
  write_shard(path, block);
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  int64_t rows = -1;
  EXPECT_EQ(read_shard_schema(path, &rows), full_schema());
  EXPECT_EQ(rows, 57);

  Block all;
  read_shard_rows(path, 0, 57, all);
  expect_same_rows(block, all);

  Block interior;
  read_shard_rows(path, 13, 41, interior);
  EXPECT_EQ(interior.sparse[0].offsets.front(), 0);  // rebased
  expect_same_rows(row_range(block, 13, 41), interior);

  Block empty_range;
  read_shard_rows(path, 20, 20, empty_range);
  EXPECT_EQ(empty_range.rows, 0);
  EXPECT_EQ(empty_range.sparse[1].offsets, std::vector<int64_t>{0});

  EXPECT_EQ(dataset_type(path, "labels/click"), std::make_pair(H5T_INTEGER, size_t{1}));
  EXPECT_EQ(dataset_type(path, "labels/a_rating"), std::make_pair(H5T_FLOAT, size_t{4}));
  EXPECT_EQ(dataset_type(path, "dense"), std::make_pair(H5T_FLOAT, size_t{4}));
  EXPECT_EQ(dataset_type(path, "sparse/alpha_user/ids"), std::make_pair(H5T_INTEGER, size_t{8}));
  EXPECT_EQ(dataset_type(path, "meta/uid"), std::make_pair(H5T_INTEGER, size_t{8}));
}

TEST(DataFormat, MinimalSchemaAndEmptyShard) {
  const ScratchDir scratch("minimal");
  const fs::path& dir = scratch.path;
  DataSchema s;
  s.tasks = {"click"};
  s.slots = {"item"};
  const Block block = random_block(s, 9, 5);
  write_shard((dir / "a.h5").string(), block);
  Block back;
  read_shard_rows((dir / "a.h5").string(), 2, 9, back);
  expect_same_rows(row_range(block, 2, 9), back);

  const Block empty = Block::with_schema(full_schema());
  write_shard((dir / "empty.h5").string(), empty);
  int64_t rows = -1;
  EXPECT_EQ(read_shard_schema((dir / "empty.h5").string(), &rows), full_schema());
  EXPECT_EQ(rows, 0);
}

TEST(DataFormat, RowRangeOutsideShardIsUserError) {
  const ScratchDir scratch("range");
  const fs::path& dir = scratch.path;
  const std::string path = (dir / "p.h5").string();
  write_shard(path, random_block(full_schema(), 10, 3));
  Block out;
  EXPECT_NE(user_error_message([&] { read_shard_rows(path, 5, 11, out); }).find(path), std::string::npos);
  EXPECT_THROW(read_shard_rows(path, 6, 5, out), UserError);
}

TEST(DataFormat, TruncatedShardIsUserErrorNamingThePath) {
  const ScratchDir scratch("truncated");
  const fs::path& dir = scratch.path;
  const std::string path = (dir / "part-0000.h5").string();
  write_shard(path, random_block(full_schema(), 2000, 7));
  fs::resize_file(path, fs::file_size(path) / 2);
  Block out;
  const std::string message = user_error_message([&] {
    int64_t rows = 0;
    read_shard_schema(path, &rows);
    read_shard_rows(path, 0, rows, out);
  });
  EXPECT_NE(message.find(path), std::string::npos) << message;
}

TEST(DataFormat, NonHdf5FilesAreUserErrorsNamingThePath) {
  const ScratchDir scratch("garbage");
  const fs::path& dir = scratch.path;
  const std::string text = (dir / "notes.h5").string(), empty = (dir / "empty.h5").string();
  std::ofstream(text) << "this is not an HDF5 file\n";
  std::ofstream{empty};
  const std::string missing = (dir / "missing.h5").string();
  for (const std::string& path : {text, empty, missing}) {
    const std::string message = user_error_message([&] { read_shard_schema(path, nullptr); });
    EXPECT_NE(message.find(path), std::string::npos) << message;
  }
}

// Damaged bytes anywhere in the metadata must be caught (the format's checksums), not crash HDF5.
TEST(DataFormat, CorruptedBytesGiveUserErrorsNotCrashes) {
  const ScratchDir scratch("corrupt");
  const fs::path& dir = scratch.path;
  const std::string good = (dir / "good.h5").string(), bad = (dir / "bad.h5").string();
  write_shard(good, random_block(full_schema(), 300, 17));
  const auto size = static_cast<uint64_t>(fs::file_size(good));
  Rng rng(23);
  int errors = 0;
  const ssize_t open_before = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
  for (int trial = 0; trial < 200; ++trial) {
    fs::copy_file(good, bad, fs::copy_options::overwrite_existing);
    {
      std::fstream f(bad, std::ios::in | std::ios::out | std::ios::binary);
      for (int k = 0; k < 4; ++k) {
        f.seekp(static_cast<std::streamoff>(rng.below(std::min<uint64_t>(size, 8192))));
        f.put(static_cast<char>(rng.next()));
      }
    }
    try {
      int64_t rows = 0;
      read_shard_schema(bad, &rows);
      Block out;
      read_shard_rows(bad, 0, rows, out);
    } catch (const UserError& e) {
      ++errors;
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    }
  }
  EXPECT_GT(errors, 50);  // most damage lands in metadata and is detected
  // Error paths close what they opened. (HDF5 itself leaks a few bytes on some corrupt headers.)
  EXPECT_EQ(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL), open_before);
}

TEST(DataFormat, ShardWithInconsistentRowsIsUserError) {
  const ScratchDir scratch("inconsistent");
  const fs::path& dir = scratch.path;
  const std::string path = (dir / "bad.h5").string();
  write_shard(path, random_block(full_schema(), 12, 3));
  {  // Replace labels/a_rating by a 10-row dataset behind the writer's back.
    const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    ASSERT_GE(H5Ldelete(file, "labels/a_rating", H5P_DEFAULT), 0);
    const hsize_t dims[1] = {10};
    const hid_t space = H5Screate_simple(1, dims, nullptr);
    const hid_t dset = H5Dcreate2(file, "labels/a_rating", H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(dset);
    H5Sclose(space);
    H5Fclose(file);
  }
  const std::string message = user_error_message([&] { read_shard_schema(path, nullptr); });
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("labels/a_rating has 10 rows but the shard has 12"), std::string::npos) << message;
}

TEST(DataFormat, BadColumnNameIsRejected) {
  const ScratchDir scratch("names");
  const fs::path& dir = scratch.path;
  DataSchema s;
  s.tasks = {"click,view"};
  EXPECT_THROW(write_shard((dir / "x.h5").string(), Block::with_schema(s)), UserError);
  EXPECT_FALSE(fs::exists(dir / "x.h5.tmp"));
}

TEST(DataFormat, BlockValidateCatchesBrokenOffsets) {
  Block b = random_block(full_schema(), 6, 9);
  b.sparse[0].offsets[3] = b.sparse[0].offsets[2] - 1;
  EXPECT_THROW(b.validate("test"), UserError);
  Block c = random_block(full_schema(), 6, 9);
  c.labels[1].pop_back();
  EXPECT_THROW(c.validate("test"), UserError);
  EXPECT_GT(random_block(full_schema(), 100, 1).bytes(), 100 * (2 + 1 + 5 + 2 + 1) * sizeof(float));
}

TEST(DataFormat, ListDayShards) {
  const ScratchDir scratch("day");
  const fs::path day = scratch.path / "day=2026-11-21";
  fs::create_directories(day);
  const Block block = random_block(full_schema(), 4, 1);
  for (const char* name : {"part-0002.h5", "part-0000.h5", "part-0001.h5"}) write_shard((day / name).string(), block);
  std::ofstream(day / "part-0003.h5.tmp") << "half-written";
  std::ofstream(day / "README") << "not a shard";

  const std::string message = user_error_message([&] { list_day_shards(day.string()); });
  EXPECT_NE(message.find("day folder " + day.string() + " is incomplete (no _DONE marker)"), std::string::npos)
      << message;

  std::ofstream{day / "_DONE"};
  const std::vector<std::string> expected = {(day / "part-0000.h5").string(), (day / "part-0001.h5").string(),
                                             (day / "part-0002.h5").string()};
  EXPECT_EQ(list_day_shards(day.string()), expected);

  const fs::path empty_day = day.parent_path() / "day=2026-11-22";
  fs::create_directories(empty_day);
  std::ofstream{empty_day / "_DONE"};
  EXPECT_THROW(list_day_shards(empty_day.string()), UserError);
  EXPECT_THROW(list_day_shards((day.parent_path() / "day=1999-01-01").string()), UserError);
}

}  // namespace
}  // namespace ncsrec

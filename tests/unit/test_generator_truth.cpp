// Specification tests for GeneratorTruth (core/data/generator_truth.h): generator.h5 read back
// gives, for every row the generator wrote, the row's stored truth/click and truth/conversion
// (both domains, every day, to float32 rounding) and the row's item and user features; the
// batched call equals the single call and does not depend on threads; meta/day maps to day
// indices; a missing, corrupt, incomplete or other-version generator.h5 is a UserError naming
// the path.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "core/data/block.h"
#include "core/data/generator_truth.h"
#include "core/data/hdf5_shard.h"
#include "core/data/synthetic.h"
#include "core/error.h"
#include "core/hdf5_util.h"
#include "core/random.h"

#include "scratch_dir.h"

namespace ncsrec {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

// One small data set shared by the tests of this file (generation is most of their time).
class GeneratorTruthTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir("generator_truth");
    config_.users = 2000;
    config_.items = 500;
    config_.days = 2;
    config_.rows_per_day = 3000;
    config_.ads_fraction = 0.1;
    config_.shard_rows = 3000;
    generate_dataset(config_, dir_->path.string());
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string generator_path() { return (dir_->path / "generator.h5").string(); }
  static std::vector<std::string> shards(const std::string& domain) {
    std::vector<std::string> out;
    for (const char* day : {"day=2026-01-01", "day=2026-01-02"})
      for (const auto& s : list_day_shards((dir_->path / domain / day).string())) out.push_back(s);
    return out;
  }
  static Block read_all(const std::string& shard) {
    int64_t n = 0;
    read_shard_schema(shard, &n);
    Block b;
    read_shard_rows(shard, 0, n, b);
    return b;
  }

  static ScratchDir* dir_;
  static GeneratorConfig config_;
};
ScratchDir* GeneratorTruthTest::dir_ = nullptr;
GeneratorConfig GeneratorTruthTest::config_;

bool close_relative(double computed, float stored, double tolerance) {
  return std::fabs(computed - stored) <= tolerance * std::fabs(static_cast<double>(stored));
}

TEST_F(GeneratorTruthTest, SizesAndDaysAreTheGeneratorConfig) {
  const GeneratorTruth g = GeneratorTruth::load(generator_path());
  EXPECT_EQ(g.users(), 2000);
  EXPECT_EQ(g.items(), 500);
  EXPECT_EQ(g.days(), 2);
  EXPECT_EQ(g.start_day(), "2026-01-01");
  EXPECT_EQ(g.latent_dim(), 8);
  EXPECT_EQ(g.hours(), 24);
  EXPECT_EQ(g.devices(), 4);
  EXPECT_EQ(g.positions(), 10);
  EXPECT_EQ(g.day_index(20260101), 0);
  EXPECT_EQ(g.day_index(20260102), 1);
  EXPECT_THROW(g.day_index(20251231), UserError);
  EXPECT_THROW(g.day_index(20260103), UserError);
  EXPECT_THROW(g.day_index(20260230), UserError);  // no such date
  EXPECT_THROW(g.day_index(2026010), UserError);
}

// The property the class exists for: every stored row's truth, recomputed from generator.h5.
TEST_F(GeneratorTruthTest, TruthReproducesEveryStoredRow) {
  const GeneratorTruth g = GeneratorTruth::load(generator_path());
  int64_t rows = 0, bit_exact = 0;
  for (const char* domain : {"content", "ads"}) {
    for (const std::string& shard : shards(domain)) {
      const Block b = read_all(shard);
      const DataSchema& s = b.schema;
      const int user_slot = s.slot_index("user_id");
      const int item = s.slot_index("item_id"), hour = s.slot_index("hour"), device = s.slot_index("device");
      const int position = s.slot_index("position"), segment = s.slot_index("user_segment");
      const int category = s.slot_index("item_category"), tags = s.slot_index("item_tags");
      const int m_user = s.meta_index("user_id"), m_day = s.meta_index("day"), m_domain = s.meta_index("domain");
      const int t_click = s.truth_index("click"), t_conv = s.truth_index("conversion");
      ASSERT_TRUE(user_slot >= 0 && item >= 0 && hour >= 0 && device >= 0 && position >= 0 && segment >= 0 &&
                  category >= 0 && tags >= 0 && m_user >= 0 && m_day >= 0 && m_domain >= 0 && t_click >= 0 &&
                  t_conv >= 0)
          << shard;
      for (int64_t r = 0; r < b.rows; ++r) {
        const int64_t u = b.meta[m_user][r], i = b.sparse[item].ids[r];
        const int day = g.day_index(b.meta[m_day][r]);
        const bool ads = b.meta[m_domain][r] == 1;
        EXPECT_EQ(ads, std::string(domain) == "ads");
        const auto p = g.truth(u, i, day, static_cast<int>(b.sparse[hour].ids[r]),
                               static_cast<int>(b.sparse[device].ids[r]), static_cast<int>(b.sparse[position].ids[r]),
                               ads);
        const float click = b.truth[t_click][r], conv = b.truth[t_conv][r];
        ASSERT_TRUE(close_relative(p.click, click, 1e-5))
            << shard << " row " << r << ": p(click) " << p.click << " vs stored " << click;
        ASSERT_TRUE(close_relative(p.conversion_given_click, conv, 1e-5))
            << shard << " row " << r << ": p(conv|click) " << p.conversion_given_click << " vs stored " << conv;
        bit_exact += static_cast<float>(p.click) == click && static_cast<float>(p.conversion_given_click) == conv;
        ++rows;

        // The features read back are the row's.
        ASSERT_EQ(b.sparse[user_slot].ids[r], u);
        ASSERT_EQ(g.user_segment(u), b.sparse[segment].ids[r]);
        ASSERT_EQ(g.item_category(i), b.sparse[category].ids[r]);
        ASSERT_EQ(static_cast<float>(g.item_log_price(i)), b.dense[r * s.dense_dim + 0]);
        ASSERT_EQ(static_cast<float>(g.user_activity(u)), b.dense[r * s.dense_dim + 1]);
        ASSERT_LE(g.item_birth_day(i), day);
        ASSERT_LE(g.user_birth_day(u), day);
        int64_t n_tags = 0;
        const int64_t* t = g.item_tags(i, &n_tags);
        const SparseColumn& col = b.sparse[tags];
        ASSERT_EQ(n_tags, col.offsets[r + 1] - col.offsets[r]);
        for (int64_t j = 0; j < n_tags; ++j) ASSERT_EQ(t[j], col.ids[col.offsets[r] + j]);
      }
    }
  }
  // Both days of both domains: 2 x (3000 + 300) rows.
  EXPECT_EQ(rows, 6600);
  // Same arithmetic as the generator: on one machine the float32 results are the stored ones.
  EXPECT_EQ(bit_exact, rows);
}

// truth() is truth_for_items() with one item; the batched call gives the same numbers whatever
// the number of threads, also when the day tables are first built by concurrent callers.
TEST_F(GeneratorTruthTest, BatchedEqualsSingleAndIsThreadSafe) {
  const GeneratorTruth g = GeneratorTruth::load(generator_path());
  std::vector<int64_t> items(g.items());
  for (int64_t i = 0; i < g.items(); ++i) items[i] = i;
  const int64_t users = 64;
  std::vector<double> click(users * g.items()), conv(users * g.items());
  auto context = [](int64_t u, int* day, int* hour, int* device, int* position, bool* ads) {
    Rng r(hash_combine(7, static_cast<uint64_t>(u)));
    *day = static_cast<int>(r.below(2));
    *hour = static_cast<int>(r.below(24));
    *device = static_cast<int>(r.below(4));
    *position = static_cast<int>(r.below(10));
    *ads = r.uniform() < 0.5;
  };
#pragma omp parallel for schedule(dynamic, 1) num_threads(4)
  for (int64_t u = 0; u < users; ++u) {
    int day, hour, device, position;
    bool ads;
    context(u, &day, &hour, &device, &position, &ads);
    g.truth_for_items(u * 31, day, hour, device, position, ads, items.data(), g.items(), &click[u * g.items()],
                      &conv[u * g.items()]);
  }
  for (int64_t u = 0; u < users; ++u) {
    int day, hour, device, position;
    bool ads;
    context(u, &day, &hour, &device, &position, &ads);
    for (int64_t i = 0; i < g.items(); i += 7) {
      const auto p = g.truth(u * 31, i, day, hour, device, position, ads);
      ASSERT_EQ(p.click, click[u * g.items() + i]) << "user " << u * 31 << " item " << i;
      ASSERT_EQ(p.conversion_given_click, conv[u * g.items() + i]) << "user " << u * 31 << " item " << i;
      ASSERT_TRUE(p.click > 0 && p.click < 1 && p.conversion_given_click > 0 && p.conversion_given_click < 1);
    }
  }
}

TEST_F(GeneratorTruthTest, OutOfRangeArgumentsAreUserErrors) {
  const GeneratorTruth g = GeneratorTruth::load(generator_path());
  EXPECT_THROW(g.truth(2000, 0, 0, 0, 0, 0), UserError);
  EXPECT_THROW(g.truth(0, 500, 0, 0, 0, 0), UserError);
  EXPECT_THROW(g.truth(0, 0, 2, 0, 0, 0), UserError);
  EXPECT_THROW(g.truth(0, 0, 0, 24, 0, 0), UserError);
  EXPECT_THROW(g.truth(0, 0, 0, 0, 4, 0), UserError);
  EXPECT_THROW(g.truth(0, 0, 0, 0, 0, 10), UserError);
  const int64_t items[2] = {0, -1};
  double p[2] = {-1, -1};
  EXPECT_THROW(g.truth_for_items(0, 0, 0, 0, 0, false, items, 2, p, nullptr), UserError);
  EXPECT_EQ(p[0], -1);  // nothing written
}

// The message of a UserError thrown by f(), or "" if none was thrown.
template <class F>
std::string user_error_of(F f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

TEST_F(GeneratorTruthTest, BadGeneratorFileIsUserErrorNamingThePath) {
  ScratchDir dir("generator_truth_bad");
  // Missing.
  const std::string missing = (dir.path / "missing" / "generator.h5").string();
  std::string msg = user_error_of([&] { GeneratorTruth::load(missing); });
  EXPECT_NE(msg.find(missing), std::string::npos) << msg;

  // Not HDF5 (a truncated copy).
  const std::string corrupt = (dir.path / "corrupt.h5").string();
  {
    std::ifstream in(generator_path(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream out(corrupt, std::ios::binary);
    out.write(bytes.data() + 512, 4096);
  }
  msg = user_error_of([&] { GeneratorTruth::load(corrupt); });
  EXPECT_NE(msg.find(corrupt), std::string::npos) << msg;

  // HDF5, but not a generator file: the missing attribute is named.
  const std::string empty = (dir.path / "empty.h5").string();
  {
    h5::File f = h5::File::create(empty);
    f.close();
  }
  msg = user_error_of([&] { GeneratorTruth::load(empty); });
  EXPECT_NE(msg.find(empty), std::string::npos) << msg;
  EXPECT_NE(msg.find("generator_version"), std::string::npos) << msg;

  // Another generator version.
  const std::string newer = (dir.path / "newer.h5").string();
  {
    h5::File f = h5::File::create(newer);
    f.set_attr("/", "generator_version", static_cast<int64_t>(kGeneratorVersion + 1));
    f.close();
  }
  msg = user_error_of([&] { GeneratorTruth::load(newer); });
  EXPECT_NE(msg.find(newer), std::string::npos) << msg;
  EXPECT_NE(msg.find("generator_version"), std::string::npos) << msg;

  // Right version and attributes, a dataset missing: copy generator.h5 and unlink one dataset.
  const std::string partial = (dir.path / "partial.h5").string();
  fs::copy_file(generator_path(), partial);
  {
    h5::silence_errors();
    const hid_t f = H5Fopen(partial.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    ASSERT_GE(H5Ldelete(f, "component2/item_bias", H5P_DEFAULT), 0);
    H5Fclose(f);
  }
  msg = user_error_of([&] { GeneratorTruth::load(partial); });
  EXPECT_NE(msg.find(partial), std::string::npos) << msg;
  EXPECT_NE(msg.find("component2/item_bias"), std::string::npos) << msg;
}

}  // namespace
}  // namespace ncsrec

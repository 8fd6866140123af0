// Tiny day folders of random impressions for tests of whole training runs.
#pragma once

#include <filesystem>
#include <fstream>
#include <vector>

#include "core/data/hdf5_shard.h"
#include "core/random.h"

namespace ncsrec::testing {

// A day folder of `rows` random impressions with labels click/conversion and two slots.
inline void write_day(const std::filesystem::path& dir, int64_t rows, uint64_t seed, bool with_conversion = true) {
  DataSchema s;
  s.tasks = with_conversion ? std::vector<std::string>{"click", "conversion"} : std::vector<std::string>{"click"};
  s.slots = {"user", "item"};
  s.meta = {"user_id"};
  Block b = Block::with_schema(s);
  Rng rng(seed);
  b.rows = rows;
  for (int64_t r = 0; r < rows; ++r) {
    const float click = rng.bernoulli(0.3) ? 1.0f : 0.0f;
    b.labels[0].push_back(click);
    if (with_conversion) b.labels[1].push_back(click > 0 && rng.bernoulli(0.4) ? 1.0f : 0.0f);
    for (int k = 0; k < 2; ++k) {
      b.sparse[static_cast<size_t>(k)].ids.push_back(static_cast<int64_t>(rng.below(50)));
      b.sparse[static_cast<size_t>(k)].offsets.push_back(r + 1);
    }
    b.meta[0].push_back(static_cast<int64_t>(rng.below(10)));
  }
  std::filesystem::create_directories(dir);
  write_shard((dir / "part-0000.h5").string(), b);
  std::ofstream(dir / "_DONE").close();
}

// A batch of `rows` random impressions in memory: labels click and conversion (conversions only
// on clicks), the slots `slots` with one id each in [0, ids) (slot index `multi`: 1 to 3 ids),
// `dense` features uniform in [-1, 1).
inline Block random_block(int64_t rows, uint64_t seed, const std::vector<std::string>& slots, int64_t dense,
                          int64_t ids, int multi = -1) {
  DataSchema s;
  s.tasks = {"click", "conversion"};
  s.slots = slots;
  s.dense_dim = dense;
  Block b = Block::with_schema(s);
  Rng rng(seed);
  b.rows = rows;
  for (int64_t r = 0; r < rows; ++r) {
    const float click = rng.bernoulli(0.4) ? 1.0f : 0.0f;
    b.labels[0].push_back(click);
    b.labels[1].push_back(click > 0 && rng.bernoulli(0.5) ? 1.0f : 0.0f);
    for (size_t k = 0; k < slots.size(); ++k) {
      const int64_t n = static_cast<int>(k) == multi ? 1 + static_cast<int64_t>(rng.below(3)) : 1;
      for (int64_t i = 0; i < n; ++i) b.sparse[k].ids.push_back(static_cast<int64_t>(rng.below(static_cast<uint64_t>(ids))));
      b.sparse[k].offsets.push_back(static_cast<int64_t>(b.sparse[k].ids.size()));
    }
    for (int64_t j = 0; j < dense; ++j) b.dense.push_back(static_cast<float>(rng.uniform(-1, 1)));
  }
  return b;
}

}  // namespace ncsrec::testing

// The schema of `ncsrec convert` (docs/data.md): how the columns of a CSV/TSV (or the
// key:value pairs of an Ali-CCP style line) become labels, dense features, sparse slots, meta
// columns and a weight. Parsed from YAML through the strict ConfigNode into the plain structs
// below; every mistake is a ConfigError naming the file and the key path. Also the two pure
// functions the docs promise: the categorical id of a value and the split part of a row.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/data/block.h"
#include "core/random.h"

namespace ncsrec {

// Where a value comes from: a column (by name), or in `format: kv` also a key of the pairs.
struct ValueSource {
  std::string column;  // one of the two is set
  std::string key;
  std::string describe() const { return column.empty() ? "key '" + key + "'" : "column '" + column + "'"; }
};

enum class LabelRule { equals, in_set, threshold, value };

struct LabelSpec {
  std::string name;
  ValueSource source;
  LabelRule rule = LabelRule::equals;
  std::vector<std::string> positives;  // equals (one) / in (several)
  std::vector<std::string> negatives;  // optional: then any other value is a bad row
  double threshold = 0;                // threshold: label = value > threshold
};

struct DenseSpec {
  std::string name;
  ValueSource source;
  bool has_fill = false;  // missing -> fill (else a missing value is a bad row)
  double fill = 0;
  bool has_clip_min = false, has_clip_max = false;
  double clip_min = 0, clip_max = 0;
  bool log1p = false;
  bool standardize = false;
};

struct SlotSpec {
  std::string name;
  ValueSource source;
  std::string salt;     // default: the slot name
  char separator = 0;   // a column holding several values; 0 = single-valued
  bool multi = false;   // several values per row (a separator, or `multi: true` for a key)
  uint64_t salt_hash = 0;
};

enum class MetaType { integer, hash, date };

struct MetaSpec {
  std::string name;
  ValueSource source;
  MetaType type = MetaType::integer;
  bool has_fill = false;
  int64_t fill = 0;
  uint64_t salt_hash = 0;  // type hash: hash_string(name)
};

struct WeightSpec {
  bool present = false;
  ValueSource source;
  bool has_fill = false;
  double fill = 1;
};

struct SplitSpec {
  bool present = false;
  uint64_t seed = 0;
  std::vector<std::pair<std::string, double>> parts;  // in file order
  std::vector<double> cumulative;                     // upper bounds in [0, 1]; the last is 1
  std::string stats_from;                             // "" = all rows
};

enum class InputFormat { csv, kv };

struct InputSpec {
  InputFormat format = InputFormat::csv;
  char delimiter = ',';
  char quote = '"';
  bool trim = false;
  bool header = false;
  std::vector<std::string> columns;  // headerless files: the names in order; kv: the fixed prefix
  std::vector<std::string> ignore;   // columns read but not used
  std::vector<std::string> missing = {"", "?"};
  char kv_separator = ':';           // kv: between key and value
  bool ignore_unknown_keys = false;  // kv: a key no slot asks for is a bad row unless true
};

struct ConvertSchema {
  std::string file;  // for messages
  InputSpec input;
  std::vector<LabelSpec> labels;
  WeightSpec weight;
  std::vector<DenseSpec> dense;
  std::vector<SlotSpec> slots;
  std::vector<MetaSpec> meta;
  SplitSpec split;
  int64_t shard_rows = 200000;  // rows per shard file: memory is about one shard per split part

  // The HDF5 schema of the shards this produces.
  DataSchema data_schema() const;
  bool needs_statistics() const;
  // Every column the schema reads, in first-use order (csv format; kv: prefix columns used).
  std::vector<std::string> used_columns() const;
};

ConvertSchema load_convert_schema(const std::string& path);
ConvertSchema parse_convert_schema(const std::string& yaml_text, const std::string& file,
                                   const std::string& base_dir = ".");

// FNV-1a + mix64 over bytes: equals hash_string(std::string(s)), without the copy.
inline uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ULL;
  return mix64(h);
}

// The id of categorical value `value` in a slot with salt hash `salt_hash` = hash_string(salt):
//   id = mix64(hash_combine(hash_string(salt), hash_string(value))) & INT64_MAX
// A missing value is hashed as the empty string.
inline int64_t categorical_id(uint64_t salt_hash, std::string_view value) {
  return static_cast<int64_t>(mix64(hash_combine(salt_hash, hash_bytes(value))) & 0x7fffffffffffffffULL);
}

// The split part of data row `row` (0-based over all input files, header and blank lines not
// counted): u = to_unit(hash_combine(seed, row)); the first part whose cumulative fraction
// exceeds u.
inline int split_part(const SplitSpec& split, int64_t row) {
  if (!split.present) return 0;
  const double u = to_unit(hash_combine(split.seed, static_cast<uint64_t>(row)));
  for (size_t i = 0; i + 1 < split.cumulative.size(); ++i)
    if (u < split.cumulative[i]) return static_cast<int>(i);
  return static_cast<int>(split.cumulative.size()) - 1;
}

}  // namespace ncsrec

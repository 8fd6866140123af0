// One record of text -> one row of a Block, under a ConvertSchema (docs/data.md): the label
// rules, the numeric transforms, the categorical hash, the meta types. A row that breaks a rule
// is not half-written: the parser reports why (reason, column, value) and appends nothing.
//
// A RowParser is used by one thread at a time (it owns scratch buffers); `convert` keeps one per
// OpenMP thread. Parsing a row is a pure function of the record, so the rows come out the same
// whatever the thread count.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/data/block.h"
#include "core/data/convert_schema.h"
#include "core/data/csv_reader.h"

namespace ncsrec {

// Where each source of the schema sits in one input file: column index, or key index (kv).
struct FileLayout {
  std::string path;
  std::vector<std::string> columns;
  size_t field_count = 0;  // csv: exact; kv: the fixed prefix (pairs follow)
  std::vector<int> label, dense, slot, meta;  // >= 0: column; < 0: key -(k + 1)
  int weight = 0;
  std::vector<std::string> keys;  // kv: the keys the schema asks for, sorted
};

// Resolves the schema's columns against a file's column names (its header, or input.columns).
// A used column that the file lacks is a UserError naming the file, the column and the entry.
FileLayout resolve_layout(const ConvertSchema& schema, const std::vector<std::string>& columns,
                          const std::string& path);

// Standardisation: x -> (x - mean) / scale per dense column (scale = std, or 1 when std is 0).
struct DenseStats {
  std::vector<double> mean, scale, std;
  std::vector<int64_t> count;
};

struct BadRow {
  std::string reason;  // a short fixed phrase: the key of the per-reason counts
  std::string where;   // "column 'age'", "key '210'" or "" for the whole row
  std::string value;   // the offending text (clipped to 200 bytes)
  std::string detail;  // said instead of the value when set ("expected 42 fields, found 41")
};

class RowParser {
 public:
  RowParser(const ConvertSchema& schema, const FileLayout& layout, const DenseStats* stats);
  // Parses `record` and appends it to `out` (labels, weight, dense, sparse, meta). With `out`
  // null (the statistics pass), only its dense values before standardisation are appended to
  // `raw_dense`. False (nothing appended, `bad` filled) for a bad row.
  bool parse(std::string_view record, Block* out, std::vector<double>* raw_dense, BadRow& bad);
  // kv with unknown_keys: ignore: pairs dropped so far.
  int64_t ignored_pairs() const { return ignored_pairs_; }

 private:
  bool fail(BadRow& bad, const char* reason, int source, std::string_view value);
  // The single value of a source; `missing` when absent or a missing marker. False: several.
  bool single(int source, std::string_view& value, bool& missing) const;
  bool is_missing(std::string_view v) const;
  std::string describe(int source) const;

  const ConvertSchema& schema_;
  const FileLayout& layout_;
  const DenseStats* stats_;
  CsvFormat format_;
  std::vector<std::string_view> fields_;
  std::string scratch_;
  std::vector<std::vector<std::string_view>> key_values_;  // kv: values per key of the layout
  std::vector<float> labels_;
  std::vector<double> dense_;
  std::vector<int64_t> meta_;
  int64_t ignored_pairs_ = 0;
};

// Days since 1970-01-01 of a YYYY-MM-DD date; false if `s` is not one.
bool parse_iso_date(std::string_view s, int64_t& days);

}  // namespace ncsrec

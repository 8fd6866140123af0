// `ncsrec convert`: CSV/TSV/key:value text (gzip or plain) -> HDF5 shards (docs/data-format.md)
// under a schema (docs/data.md, core/data/convert_schema.h).
//
// Streaming, in at most two passes over the input: a first pass computes the statistics of
// standardised numeric columns (Welford, in double, in row order), the second writes the shards.
// A background thread reads and decompresses chunks of records; OpenMP threads parse a chunk's
// rows; this thread routes good rows to their split part and writes full shards. Memory is a
// few chunks plus one shard per split part, whatever the input's size; the output is the same
// for any thread count.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/data/convert_schema.h"

namespace ncsrec {

enum class BadRowPolicy { fail, skip };

struct ConvertProgress {
  int pass = 1, passes = 1;
  int64_t rows = 0;       // data rows read so far in this pass
  double seconds = 0;     // since this pass began
  std::string file;       // the input being read
};

struct ConvertOptions {
  std::vector<std::string> inputs;
  std::string out_dir;
  BadRowPolicy policy = BadRowPolicy::fail;
  std::string rejects_path;                 // skip: default <out_dir>/rejects.txt
  size_t chunk_bytes = size_t(4) << 20;     // records handed to the parser at once
  std::function<void(const ConvertProgress&)> progress;  // called after each chunk
};

struct ConvertSummary {
  int64_t rows_read = 0, rows_written = 0, rows_rejected = 0, blank_lines = 0, ignored_pairs = 0;
  std::vector<std::string> parts;                  // split parts ("" without a split)
  std::vector<int64_t> part_rows, part_shards;     // per part
  std::vector<std::string> part_dirs;              // per part: the folder of its shards
  std::map<std::string, int64_t> rejected_by_reason;
  std::map<std::string, std::string> first_rejected;  // reason -> "file line N: column 'x': 'value'"
  std::vector<std::string> labels;
  std::vector<double> label_sums;                  // over written rows: rate = sum / rows_written
  std::vector<std::string> dense;                  // dense column names, in order
  std::vector<double> dense_mean, dense_std;       // statistics of standardised columns (else 0, 1)
  std::string rejects_path, stats_path;            // "" when not written
  double seconds = 0;
  int threads = 1;
};

// Converts; throws ConfigError (bad schema or options) or UserError (bad data, with the file,
// line, column and value under BadRowPolicy::fail; unreadable or truncated input).
ConvertSummary convert(const ConvertSchema& schema, const ConvertOptions& options);

// The summary as printed by `ncsrec convert`.
std::string format_convert_summary(const ConvertSummary& summary);

}  // namespace ncsrec

// The conversion pipeline: passes over the input, split routing, shard and rejects output,
// statistics, and the summary. Row parsing lives in convert_row.cpp, reading in csv_reader.cpp.
#include "core/data/convert.h"

#include <omp.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <sstream>

#include "core/data/convert_row.h"
#include "core/data/csv_reader.h"
#include "core/data/hdf5_shard.h"
#include "core/error.h"

namespace ncsrec {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// The rows of one slice of a chunk, parsed by one thread.
struct ParsedRange {
  std::vector<Block> parts;         // good rows by split part, in record order
  std::vector<int64_t> row;         // pass 1: the data row numbers of the good rows
  std::vector<double> raw_dense;    // pass 1: dense values before standardisation, [good row][D]
  std::vector<std::pair<size_t, BadRow>> rejects;  // (record index in the chunk, why)
  int64_t ignored_pairs = 0;
};

using ConsumeChunk = std::function<void(const RecordChunk&, std::vector<ParsedRange>&, const FileLayout&)>;

std::string where_text(const FileLayout& layout, const RecordChunk& chunk, size_t record, const BadRow& bad) {
  std::string s = layout.path + " line " + std::to_string(chunk.records[record].line);
  if (!bad.where.empty()) s += ", " + bad.where;
  s += ": " + bad.reason + ": " + (bad.detail.empty() ? "'" + bad.value + "'" : bad.detail);
  return s;
}

[[noreturn]] void fail_on(const FileLayout& layout, const RecordChunk& chunk, size_t record, const BadRow& bad) {
  throw UserError(where_text(layout, chunk, record, bad) + " (with --policy skip such rows are set aside)");
}

// One pass over every input: chunks from the reader thread, rows parsed in parallel, then
// `consume` on this thread, in order. Returns the number of data rows read.
int64_t scan_inputs(const ConvertSchema& schema, const ConvertOptions& options, const DenseStats* stats,
                    bool want_raw, int pass, int passes, std::string* first_header, int64_t* blank_lines,
                    const ConsumeChunk& consume) {
  RecordReaderOptions ro;
  ro.files = options.inputs;
  ro.header = schema.input.format == InputFormat::csv && schema.input.header;
  ro.quote = schema.input.quote;
  ro.trim = schema.input.trim;
  ro.delimiter = schema.input.delimiter;
  ro.chunk_bytes = options.chunk_bytes;
  RecordReader reader(ro);
  const CsvFormat format{schema.input.delimiter, schema.input.quote, schema.input.trim};
  const DataSchema data_schema = schema.data_schema();
  const int threads = std::max(1, omp_get_max_threads());
  const size_t parts = schema.split.present ? schema.split.parts.size() : 1;

  std::unique_ptr<FileLayout> layout;
  std::vector<std::unique_ptr<RowParser>> parsers;
  std::vector<ParsedRange> ranges;
  RecordChunk chunk;
  int64_t row = 0;
  const auto start = Clock::now();
  while (reader.next(chunk)) {
    if (chunk.first_of_file) {
      std::vector<std::string> columns = schema.input.columns;
      if (ro.header) {
        std::vector<std::string_view> fields;
        std::string scratch;
        if (!split_fields(chunk.header, format, fields, scratch))
          throw UserError("input file " + options.inputs[static_cast<size_t>(chunk.file)] +
                          ": the header line has malformed quotes");
        columns.assign(fields.begin(), fields.end());
        if (first_header && first_header->empty()) *first_header = chunk.header;
      }
      parsers.clear();
      layout = std::make_unique<FileLayout>(
          resolve_layout(schema, columns, options.inputs[static_cast<size_t>(chunk.file)]));
      for (int t = 0; t < threads; ++t) parsers.push_back(std::make_unique<RowParser>(schema, *layout, stats));
    }
    *blank_lines += chunk.blank_lines;
    const size_t n = chunk.records.size();
    const size_t count = std::max<size_t>(1, std::min<size_t>(n, static_cast<size_t>(threads) * 4));
    ranges.resize(count);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (size_t r = 0; r < count; ++r) {
      ParsedRange& range = ranges[r];
      range.parts.resize(parts);
      for (Block& b : range.parts) {
        if (b.schema != data_schema || b.labels.size() != data_schema.tasks.size()) b = Block::with_schema(data_schema);
        b.clear();
      }
      range.row.clear();
      range.raw_dense.clear();
      range.rejects.clear();
      RowParser& parser = *parsers[static_cast<size_t>(omp_get_thread_num())];
      const int64_t ignored_before = parser.ignored_pairs();
      BadRow bad;
      for (size_t i = n * r / count; i < n * (r + 1) / count; ++i) {
        const int64_t data_row = row + static_cast<int64_t>(i);
        Block* out = want_raw ? nullptr : &range.parts[static_cast<size_t>(split_part(schema.split, data_row))];
        if (!parser.parse(chunk.record(i), out, &range.raw_dense, bad))
          range.rejects.emplace_back(i, bad);
        else if (want_raw)
          range.row.push_back(data_row);
      }
      range.ignored_pairs = parser.ignored_pairs() - ignored_before;
    }
    consume(chunk, ranges, *layout);
    row += static_cast<int64_t>(n);
    if (options.progress) {
      ConvertProgress p;
      p.pass = pass;
      p.passes = passes;
      p.rows = row;
      p.seconds = std::chrono::duration<double>(Clock::now() - start).count();
      p.file = options.inputs[static_cast<size_t>(chunk.file)];
      options.progress(p);
    }
  }
  return row;
}

// Pass 1: Welford mean and variance, in double and in row order, of the standardised columns.
DenseStats compute_statistics(const ConvertSchema& schema, const ConvertOptions& options, int passes) {
  const size_t d = schema.dense.size();
  std::vector<double> mean(d, 0), m2(d, 0);
  int64_t n = 0;
  int64_t blank = 0;
  int stats_part = -1;
  for (size_t p = 0; p < schema.split.parts.size(); ++p)
    if (schema.split.parts[p].first == schema.split.stats_from) stats_part = static_cast<int>(p);
  const int64_t rows = scan_inputs(schema, options, nullptr, true, 1, passes, nullptr, &blank,
              [&](const RecordChunk& chunk, std::vector<ParsedRange>& ranges, const FileLayout& layout) {
                for (const ParsedRange& range : ranges) {
                  if (options.policy == BadRowPolicy::fail && !range.rejects.empty())
                    fail_on(layout, chunk, range.rejects[0].first, range.rejects[0].second);
                  for (size_t k = 0; k < range.row.size(); ++k) {
                    if (stats_part >= 0 && split_part(schema.split, range.row[k]) != stats_part) continue;
                    ++n;
                    const double* x = &range.raw_dense[k * d];
                    for (size_t j = 0; j < d; ++j) {
                      const double delta = x[j] - mean[j];
                      mean[j] += delta / static_cast<double>(n);
                      m2[j] += delta * (x[j] - mean[j]);
                    }
                  }
                }
              });
  if (rows == 0) throw UserError("the input holds no data rows");
  if (n == 0)
    throw UserError("no good rows" + (stats_part >= 0 ? " in split part '" + schema.split.stats_from + "'" : std::string()) +
                    " to compute the statistics of the standardised columns from");
  DenseStats stats;
  for (size_t j = 0; j < d; ++j) {
    const bool on = schema.dense[j].standardize;
    const double sd = std::sqrt(m2[j] / static_cast<double>(n));
    stats.mean.push_back(on ? mean[j] : 0.0);
    stats.std.push_back(on ? sd : 1.0);
    stats.scale.push_back(on && sd > 0 ? sd : 1.0);
    stats.count.push_back(n);
  }
  return stats;
}

// Appends rows [begin, end) of `from` to `to` (same schema), column by column.
void append_rows(Block& to, const Block& from, int64_t begin, int64_t end) {
  const auto b = static_cast<size_t>(begin), e = static_cast<size_t>(end);
  for (size_t t = 0; t < to.labels.size(); ++t)
    to.labels[t].insert(to.labels[t].end(), from.labels[t].begin() + b, from.labels[t].begin() + e);
  if (to.schema.has_weight) to.weight.insert(to.weight.end(), from.weight.begin() + b, from.weight.begin() + e);
  const auto d = static_cast<size_t>(to.schema.dense_dim);
  to.dense.insert(to.dense.end(), from.dense.begin() + b * d, from.dense.begin() + e * d);
  for (size_t s = 0; s < to.sparse.size(); ++s) {
    const SparseColumn& src = from.sparse[s];
    SparseColumn& dst = to.sparse[s];
    const int64_t shift = static_cast<int64_t>(dst.ids.size()) - src.offsets[b];
    dst.ids.insert(dst.ids.end(), src.ids.begin() + src.offsets[b], src.ids.begin() + src.offsets[e]);
    for (size_t r = b + 1; r <= e; ++r) dst.offsets.push_back(src.offsets[r] + shift);
  }
  for (size_t m = 0; m < to.meta.size(); ++m)
    to.meta[m].insert(to.meta[m].end(), from.meta[m].begin() + b, from.meta[m].begin() + e);
  to.rows += end - begin;
}

bool folder_is_empty(const std::string& dir) {
  std::error_code ec;
  return !fs::exists(dir, ec) || (fs::is_directory(dir, ec) && fs::directory_iterator(dir) == fs::directory_iterator());
}

void write_text_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  f.close();
  if (!f) throw UserError("cannot write " + path + " (disk full?)");
}

std::string stats_yaml(const ConvertSchema& schema, const ConvertOptions& options, const ConvertSummary& s,
                       const DenseStats& stats) {
  YAML::Emitter e;
  e.SetDoublePrecision(17);
  e << YAML::BeginMap;
  e << YAML::Key << "schema" << YAML::Value << schema.file;
  e << YAML::Key << "inputs" << YAML::Value << YAML::Flow << options.inputs;
  e << YAML::Key << "rows_read" << YAML::Value << s.rows_read;
  e << YAML::Key << "rows_written" << YAML::Value << s.rows_written;
  e << YAML::Key << "rows_rejected" << YAML::Value << s.rows_rejected;
  e << YAML::Key << "parts" << YAML::Value << YAML::BeginMap;
  for (size_t p = 0; p < s.parts.size(); ++p) {
    e << YAML::Key << (s.parts[p].empty() ? std::string(".") : s.parts[p]) << YAML::Value << YAML::Flow
      << YAML::BeginMap << YAML::Key << "rows" << YAML::Value << s.part_rows[p] << YAML::Key << "shards"
      << YAML::Value << s.part_shards[p] << YAML::EndMap;
  }
  e << YAML::EndMap;
  e << YAML::Key << "dense" << YAML::Value << YAML::BeginSeq;
  for (size_t j = 0; j < schema.dense.size(); ++j) {
    const DenseSpec& d = schema.dense[j];
    e << YAML::Flow << YAML::BeginMap << YAML::Key << "name" << YAML::Value << d.name;
    e << YAML::Key << "log1p" << YAML::Value << d.log1p << YAML::Key << "standardize" << YAML::Value << d.standardize;
    if (d.standardize) {
      e << YAML::Key << "mean" << YAML::Value << stats.mean[j] << YAML::Key << "std" << YAML::Value << stats.std[j]
        << YAML::Key << "count" << YAML::Value << stats.count[j];
    }
    e << YAML::EndMap;
  }
  e << YAML::EndSeq;
  if (schema.split.present && !schema.split.stats_from.empty())
    e << YAML::Key << "statistics_from" << YAML::Value << schema.split.stats_from;
  e << YAML::EndMap;
  return "# written by ncsrec convert: dense columns in shard order; standardised x = (v - mean) / std\n" +
         std::string(e.c_str()) + "\n";
}

ConvertSummary run_convert(const ConvertSchema& schema, const ConvertOptions& options) {
  const auto start = Clock::now();
  ConvertSummary s;
  s.threads = std::max(1, omp_get_max_threads());
  const int passes = schema.needs_statistics() ? 2 : 1;
  DenseStats stats;
  if (passes == 2) {
    stats = compute_statistics(schema, options, passes);
  } else {
    stats.mean.assign(schema.dense.size(), 0.0);
    stats.std.assign(schema.dense.size(), 1.0);
    stats.scale.assign(schema.dense.size(), 1.0);
    stats.count.assign(schema.dense.size(), 0);
  }

  // ---- outputs: one folder (and one open Block) per split part
  if (schema.split.present) {
    for (const auto& p : schema.split.parts) s.parts.push_back(p.first);
  } else {
    s.parts.push_back("");
  }
  const size_t parts = s.parts.size();
  for (const auto& p : s.parts) {
    s.part_dirs.push_back(p.empty() ? options.out_dir : (fs::path(options.out_dir) / p).string());
    std::error_code ec;
    fs::create_directories(s.part_dirs.back(), ec);
    if (ec) throw UserError("cannot create the output folder " + s.part_dirs.back() + ": " + ec.message());
  }
  s.part_rows.assign(parts, 0);
  s.part_shards.assign(parts, 0);
  const DataSchema data_schema = schema.data_schema();
  std::vector<Block> open(parts, Block::with_schema(data_schema));
  for (const auto& l : schema.labels) s.labels.push_back(l.name);
  s.label_sums.assign(schema.labels.size(), 0.0);
  for (const auto& d : schema.dense) s.dense.push_back(d.name);
  s.dense_mean = stats.mean;
  s.dense_std = stats.std;

  // A full shard is written on its own thread while parsing goes on; one write in flight at a
  // time, so memory stays at one shard per part plus one being written.
  std::future<void> writing;
  Block being_written;
  auto flush = [&](size_t p) {
    Block& b = open[p];
    if (b.rows == 0 && s.part_shards[p] > 0) return;
    if (s.part_shards[p] >= 10000)
      throw UserError("more than 10000 shards in " + s.part_dirs[p] + ": raise output.shard_rows");
    char name[32];
    std::snprintf(name, sizeof name, "part-%04lld.h5", static_cast<long long>(s.part_shards[p]));
    if (writing.valid()) writing.get();  // rethrows a failed write
    std::swap(being_written, b);
    if (b.schema != data_schema) b = Block::with_schema(data_schema);
    b.clear();
    writing = std::async(std::launch::async, [&being_written, path = (fs::path(s.part_dirs[p]) / name).string()] {
      write_shard(path, being_written);
    });
    ++s.part_shards[p];
  };

  std::ofstream rejects, rejects_log;
  std::string first_header;
  auto open_rejects = [&]() {
    if (rejects.is_open()) return;
    s.rejects_path = options.rejects_path.empty() ? (fs::path(options.out_dir) / "rejects.txt").string()
                                                  : options.rejects_path;
    rejects.open(s.rejects_path, std::ios::binary);
    rejects_log.open(s.rejects_path + ".log", std::ios::binary);
    if (!rejects || !rejects_log) throw UserError("cannot write the rejects file " + s.rejects_path);
    if (!first_header.empty()) rejects << first_header << '\n';
  };

  s.rows_read = scan_inputs(
      schema, options, &stats, false, passes, passes, &first_header, &s.blank_lines,
      [&](const RecordChunk& chunk, std::vector<ParsedRange>& ranges, const FileLayout& layout) {
        for (ParsedRange& range : ranges) {
          s.ignored_pairs += range.ignored_pairs;
          if (!range.rejects.empty()) {
            if (options.policy == BadRowPolicy::fail)
              fail_on(layout, chunk, range.rejects[0].first, range.rejects[0].second);
            open_rejects();
            for (const auto& [record, bad] : range.rejects) {
              rejects << chunk.record(record) << '\n';
              const std::string where = where_text(layout, chunk, record, bad);
              rejects_log << where << '\n';
              ++s.rows_rejected;
              if (s.rejected_by_reason[bad.reason]++ == 0) s.first_rejected[bad.reason] = where;
            }
          }
          for (size_t p = 0; p < parts; ++p) {
            const Block& from = range.parts[p];
            for (size_t t = 0; t < s.label_sums.size(); ++t)
              for (float v : from.labels[t]) s.label_sums[t] += v;
            s.part_rows[p] += from.rows;
            s.rows_written += from.rows;
            for (int64_t begin = 0; begin < from.rows;) {
              const int64_t end = std::min(from.rows, begin + schema.shard_rows - open[p].rows);
              append_rows(open[p], from, begin, end);
              begin = end;
              if (open[p].rows >= schema.shard_rows) flush(p);
            }
          }
        }
      });
  if (s.rows_read == 0) throw UserError("the input holds no data rows");
  for (size_t p = 0; p < parts; ++p) flush(p);  // the last partial shard (an empty one for an empty part)
  writing.get();
  if (rejects.is_open()) {
    rejects.close();
    rejects_log.close();
    if (!rejects || !rejects_log) throw UserError("cannot write the rejects file " + s.rejects_path + " (disk full?)");
  }
  s.stats_path = (fs::path(options.out_dir) / "stats.yaml").string();
  write_text_file(s.stats_path, stats_yaml(schema, options, s, stats));
  // _DONE last, each folder complete only once everything is in it.
  for (const auto& dir : s.part_dirs) write_text_file((fs::path(dir) / "_DONE").string(), "");
  s.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return s;
}

}  // namespace

ConvertSummary convert(const ConvertSchema& schema, const ConvertOptions& options) {
  if (options.inputs.empty()) throw ConfigError("no input files given");
  if (options.out_dir.empty()) throw ConfigError("no output folder given");
  if (!folder_is_empty(options.out_dir))
    throw UserError("the output folder " + options.out_dir + " is not empty: remove it or choose another");
  const bool created = !fs::exists(options.out_dir);
  const bool rejects_existed = !options.rejects_path.empty() && fs::exists(options.rejects_path);
  try {
    return run_convert(schema, options);
  } catch (...) {
    // Leave nothing half-written behind: the folder was empty (or absent) when we began.
    std::error_code ec;
    if (created) {
      fs::remove_all(options.out_dir, ec);
    } else {
      for (const auto& entry : fs::directory_iterator(options.out_dir, ec)) fs::remove_all(entry.path(), ec);
    }
    if (!options.rejects_path.empty() && !rejects_existed) {
      fs::remove(options.rejects_path, ec);
      fs::remove(options.rejects_path + ".log", ec);
    }
    throw;
  }
}

std::string format_convert_summary(const ConvertSummary& s) {
  std::ostringstream o;
  char buf[256];
  std::snprintf(buf, sizeof buf, "convert: %lld rows read in %.1f s (%.0f rows/s, %d threads)\n",
                static_cast<long long>(s.rows_read), s.seconds, s.seconds > 0 ? s.rows_read / s.seconds : 0.0,
                s.threads);
  o << buf;
  o << "  written: " << s.rows_written << " rows";
  for (size_t p = 0; p < s.parts.size(); ++p) {
    o << (p == 0 ? " (" : ", ");
    if (!s.parts[p].empty()) o << s.parts[p] << " ";
    o << s.part_rows[p] << " in " << s.part_shards[p] << (s.part_shards[p] == 1 ? " shard" : " shards") << " at "
      << s.part_dirs[p];
  }
  o << ")\n";
  o << "  rejected: " << s.rows_rejected;
  if (s.rows_rejected > 0) o << " (verbatim in " << s.rejects_path << ", why in " << s.rejects_path << ".log)";
  o << "\n";
  for (const auto& [reason, count] : s.rejected_by_reason)
    o << "    " << reason << ": " << count << " (first: " << s.first_rejected.at(reason) << ")\n";
  if (s.blank_lines > 0) o << "  blank lines skipped: " << s.blank_lines << "\n";
  if (s.ignored_pairs > 0) o << "  key:value pairs of unlisted keys ignored: " << s.ignored_pairs << "\n";
  o << "  labels (mean over written rows):";
  for (size_t t = 0; t < s.labels.size(); ++t) {
    std::snprintf(buf, sizeof buf, "%s %s %.4f", t ? "," : "", s.labels[t].c_str(),
                  s.rows_written > 0 ? s.label_sums[t] / static_cast<double>(s.rows_written) : 0.0);
    o << buf;
  }
  o << "\n";
  if (!s.stats_path.empty()) o << "  statistics: " << s.stats_path << "\n";
  return o.str();
}

}  // namespace ncsrec

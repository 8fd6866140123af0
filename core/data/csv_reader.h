// Reading delimited text (CSV, TSV, Ali-CCP's key:value lines) for `ncsrec convert`: files
// gzip-compressed or plain, cut into *records* (a CSV row; several physical lines when a quoted
// field holds a newline) and handed over in chunks by a background thread, so decompression
// overlaps parsing. Then one record is split into fields (RFC 4180 double quotes).
//
// What this file deliberately is not: it knows nothing of schemas, labels or HDF5; a record it
// cannot split cleanly is reported to the caller, who decides what a bad row means.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace ncsrec {

struct CsvFormat {
  char delimiter = ',';
  char quote = '"';   // 0: no quoting (a quote is an ordinary character)
  bool trim = false;  // strip spaces and tabs around each field (outside quotes)
};

// One record of a chunk: bytes [offset, offset + size) of RecordChunk::text, without the line
// end; `line` is the 1-based physical line of the file where it starts.
struct Record {
  size_t offset = 0;
  size_t size = 0;
  int64_t line = 0;
};

struct RecordChunk {
  int file = -1;                 // index into the reader's file list
  bool first_of_file = false;    // the first chunk of `file` (its header, if any, is below)
  std::string header;            // first_of_file with headers: the header record
  std::string text;              // the records' bytes
  std::vector<Record> records;   // in file order; blank lines are dropped and counted
  int64_t blank_lines = 0;
  std::string_view record(size_t i) const { return std::string_view(text).substr(records[i].offset, records[i].size); }
};

struct RecordReaderOptions {
  std::vector<std::string> files;
  bool header = false;                     // each file starts with a header record
  char quote = '"';                        // newlines inside quoted fields stay in the record
  bool trim = false;                       // spaces before an opening quote are allowed
  char delimiter = ',';
  size_t chunk_bytes = size_t(4) << 20;    // a chunk holds about this many bytes of records
  size_t queue_depth = 2;                  // chunks read ahead
  size_t max_record_bytes = size_t(64) << 20;  // longer: an unterminated quote, most likely
};

// Reads the files one after another on a background thread. Gzip or plain is decided by the
// content (zlib reads a plain file through unchanged). Errors (a missing file, an empty file, a
// truncated or corrupt gzip stream) are UserErrors naming the file, rethrown by `next`.
// Memory: at most queue_depth + 2 chunks.
class RecordReader {
 public:
  explicit RecordReader(RecordReaderOptions options);
  ~RecordReader();
  RecordReader(const RecordReader&) = delete;
  RecordReader& operator=(const RecordReader&) = delete;
  // The next chunk, in order; false after the last one.
  bool next(RecordChunk& out);

 private:
  void run();
  void push(RecordChunk&& chunk);
  RecordReaderOptions options_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<RecordChunk> queue_;
  bool done_ = false, stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

// Splits `record` into `fields`. Fields point into `record` or, where quotes had to be undone,
// into `scratch` (reserved here so the views stay valid). Returns false for a malformed quoted
// field (text after a closing quote, or no closing quote).
bool split_fields(std::string_view record, const CsvFormat& format, std::vector<std::string_view>& fields,
                  std::string& scratch);

// Strips spaces and tabs at both ends.
std::string_view trim_blanks(std::string_view s);

}  // namespace ncsrec

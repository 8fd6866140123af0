// Record reading (background thread, zlib) and field splitting. The record splitter follows
// quotes only where they open a field, as RFC 4180 has them, so a stray quote inside a plain
// field (`5" screen`) is an ordinary character and can never swallow the rest of a file.
#include "core/data/csv_reader.h"

#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace ncsrec {
namespace {

namespace fs = std::filesystem;

bool is_blank(char c) { return c == ' ' || c == '\t'; }

// Where the splitter stands inside a record, carried from one physical line to the next.
enum class QuoteState { field_start, unquoted, quoted, quote_seen };

QuoteState advance(QuoteState s, char c, char quote, char delimiter, bool trim) {
  switch (s) {
    case QuoteState::field_start:
      if (c == quote) return QuoteState::quoted;
      if (c == delimiter || (trim && is_blank(c))) return QuoteState::field_start;
      return QuoteState::unquoted;
    case QuoteState::unquoted:
      return c == delimiter ? QuoteState::field_start : QuoteState::unquoted;
    case QuoteState::quoted:
      return c == quote ? QuoteState::quote_seen : QuoteState::quoted;
    case QuoteState::quote_seen:
      if (c == quote) return QuoteState::quoted;  // "" inside quotes
      return c == delimiter ? QuoteState::field_start : QuoteState::unquoted;
  }
  return s;
}

// A gzFile closed on every path; the clean path checks the close status itself.
struct GzFile {
  gzFile file = nullptr;
  ~GzFile() {
    if (file) gzclose_r(file);
  }
};

std::string zlib_reason(gzFile file, int* errnum) {
  const char* message = gzerror(file, errnum);
  if (*errnum == Z_ERRNO) return std::strerror(errno);
  return message && *message ? message : "unknown zlib error";
}

}  // namespace

std::string_view trim_blanks(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && is_blank(s[b])) ++b;
  while (e > b && is_blank(s[e - 1])) --e;
  return s.substr(b, e - b);
}

bool split_fields(std::string_view record, const CsvFormat& format, std::vector<std::string_view>& fields,
                  std::string& scratch) {
  fields.clear();
  scratch.clear();
  scratch.reserve(record.size());  // unquoted text is never longer than the record: views stay valid
  const size_t n = record.size();
  size_t i = 0;
  for (;;) {
    size_t start = i;
    if (format.trim)
      while (start < n && is_blank(record[start])) ++start;
    if (format.quote && start < n && record[start] == format.quote) {
      const size_t out = scratch.size();
      bool closed = false;
      for (i = start + 1; i < n; ++i) {
        if (record[i] != format.quote) {
          scratch.push_back(record[i]);
        } else if (i + 1 < n && record[i + 1] == format.quote) {
          scratch.push_back(format.quote);
          ++i;
        } else {
          closed = true;
          ++i;
          break;
        }
      }
      if (!closed) return false;
      if (format.trim)
        while (i < n && is_blank(record[i])) ++i;
      if (i < n && record[i] != format.delimiter) return false;
      fields.emplace_back(scratch.data() + out, scratch.size() - out);
    } else {
      const void* hit = std::memchr(record.data() + i, format.delimiter, n - i);
      const size_t end = hit ? static_cast<size_t>(static_cast<const char*>(hit) - record.data()) : n;
      std::string_view field = record.substr(i, end - i);
      fields.push_back(format.trim ? trim_blanks(field) : field);
      i = end;
    }
    if (i >= n) return true;
    ++i;  // the delimiter; a record ending in one has an empty last field
  }
}

RecordReader::RecordReader(RecordReaderOptions options) : options_(std::move(options)) {
  if (options_.chunk_bytes == 0) options_.chunk_bytes = 1;
  if (options_.queue_depth == 0) options_.queue_depth = 1;
  thread_ = std::thread([this] { run(); });
}

RecordReader::~RecordReader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

bool RecordReader::next(RecordChunk& out) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return !queue_.empty() || done_; });
  if (!queue_.empty()) {
    out = std::move(queue_.front());
    queue_.pop_front();
    changed_.notify_all();
    return true;
  }
  if (error_) std::rethrow_exception(error_);
  return false;
}

void RecordReader::push(RecordChunk&& chunk) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return queue_.size() < options_.queue_depth || stop_; });
  if (stop_) return;
  queue_.push_back(std::move(chunk));
  changed_.notify_all();
}

void RecordReader::run() {
  try {
    constexpr unsigned kReadBytes = 1u << 20;
    const char quote = options_.quote, delimiter = options_.delimiter;
    for (size_t fi = 0; fi < options_.files.size(); ++fi) {
      const std::string& path = options_.files[fi];
      std::error_code ec;
      if (!fs::exists(path, ec)) throw UserError("input file " + path + " does not exist");
      if (fs::is_directory(path, ec)) throw UserError("input " + path + " is a folder, not a file");
      GzFile gz;
      gz.file = gzopen(path.c_str(), "rb");
      if (!gz.file) throw UserError("cannot open input file " + path + ": " + std::strerror(errno));
      gzbuffer(gz.file, 1u << 18);

      RecordChunk chunk;
      chunk.file = static_cast<int>(fi);
      chunk.first_of_file = true;
      bool need_header = options_.header, eof = false;
      size_t record_start = 0, cursor = 0;  // in chunk.text
      int64_t line = 1, record_line = 1, total_bytes = 0;
      QuoteState state = QuoteState::field_start;

      auto add_record = [&](size_t end) {
        size_t size = end - record_start;
        if (size > 0 && chunk.text[record_start + size - 1] == '\r') --size;
        if (size == 0) {
          ++chunk.blank_lines;
        } else if (need_header) {
          chunk.header.assign(chunk.text, record_start, size);
          need_header = false;
        } else {
          chunk.records.push_back(Record{record_start, size, record_line});
        }
      };
      auto emit = [&]() {
        RecordChunk next;
        next.file = chunk.file;
        next.text.assign(chunk.text, record_start, std::string::npos);
        chunk.text.resize(record_start);
        cursor -= record_start;
        record_start = 0;
        push(std::move(chunk));
        chunk = std::move(next);
      };

      while (!eof) {
        {
          std::lock_guard<std::mutex> lock(mutex_);
          if (stop_) return;
        }
        const size_t old = chunk.text.size();
        chunk.text.resize(old + kReadBytes);
        const int got = gzread(gz.file, &chunk.text[old], kReadBytes);
        int errnum = Z_OK;
        if (got < 0) {
          const std::string why = zlib_reason(gz.file, &errnum);
          throw UserError("input file " + path + ": cannot read it near line " + std::to_string(line) + ": " + why);
        }
        chunk.text.resize(old + static_cast<size_t>(got));
        total_bytes += got;
        if (got == 0) {
          // zlib reports a truncated stream as a short read with Z_BUF_ERROR set: check it.
          const std::string why = zlib_reason(gz.file, &errnum);
          if (errnum != Z_OK)
            throw UserError("input file " + path + ": the gzip data is truncated or corrupt after line " +
                            std::to_string(line - 1) + " (zlib: " + why + ")");
          eof = true;
        }
        const size_t end = chunk.text.size();
        // Cut complete records; a physical line is scanned only once its newline has arrived.
        while (cursor < end) {
          const void* hit = std::memchr(chunk.text.data() + cursor, '\n', end - cursor);
          if (!hit) break;
          const size_t nl = static_cast<size_t>(static_cast<const char*>(hit) - chunk.text.data());
          if (quote) {
            const bool has_quote =
                state == QuoteState::quoted || std::memchr(chunk.text.data() + cursor, quote, nl - cursor) != nullptr;
            if (has_quote) {
              for (size_t i = cursor; i < nl; ++i) state = advance(state, chunk.text[i], quote, delimiter, options_.trim);
            }
          }
          cursor = nl + 1;
          ++line;
          if (state == QuoteState::quoted) continue;  // a newline inside a quoted field
          add_record(nl);
          record_start = cursor;
          record_line = line;
          state = QuoteState::field_start;
        }
        if (end - record_start > options_.max_record_bytes)
          throw UserError("input file " + path + ": the record starting at line " + std::to_string(record_line) +
                          " is longer than " + std::to_string(options_.max_record_bytes >> 20) +
                          " MiB (an unterminated quote?)");
        if (eof && record_start < end) {  // a last line without a line end (or an unclosed quote)
          add_record(end);
          record_start = cursor = end;
        }
        if (record_start >= options_.chunk_bytes && !eof) emit();
      }
      int errnum = Z_OK;
      const int closed = gzclose_r(gz.file);
      gz.file = nullptr;
      if (closed != Z_OK) {
        errnum = closed;
        throw UserError("input file " + path + ": error while closing it (zlib status " + std::to_string(errnum) + ")");
      }
      if (total_bytes == 0) throw UserError("input file " + path + " is empty");
      if (need_header) throw UserError("input file " + path + " has no header line (it holds only blank lines)");
      chunk.text.resize(record_start);
      push(std::move(chunk));
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex_);
    error_ = std::current_exception();
  }
  std::lock_guard<std::mutex> lock(mutex_);
  done_ = true;
  changed_.notify_all();
}

}  // namespace ncsrec

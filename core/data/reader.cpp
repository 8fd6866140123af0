// The streaming reader: a background thread turns the epoch's order (reader.h) into this
// rank's batches, holding one window of rows at a time.
//
// The order is computed, never stored: a keyed Feistel network with cycle-walking gives a
// bijection over any size in O(1) per element, so row_at(p) is a pure function of
// (seed, epoch, p) and a resumed reader needs nothing but its position.
#include "core/data/reader.h"

#include <algorithm>

#include "core/data/hdf5_shard.h"
#include "core/error.h"
#include "core/random.h"

namespace ncsrec {
namespace {

// Tags that keep the window-order key and the in-window keys apart.
constexpr uint64_t kWindowOrderTag = 0x77696e646f77ULL;  // "window"
constexpr uint64_t kInWindowTag = 0x696e73696465ULL;     // "inside"
constexpr uint64_t kNegativeTag = 0x6e65676174ULL;       // "negat"

// A pseudo-random bijection of [0, n) keyed by `key`: a balanced Feistel network over the
// smallest even-bit power of two >= n, cycle-walked back into range (at most 4x the domain,
// so a couple of rounds on average).
class KeyedPermutation {
 public:
  KeyedPermutation(uint64_t n, uint64_t key) : n_(n), key_(key) {
    while ((uint64_t{1} << (2 * half_bits_)) < n_) ++half_bits_;
    mask_ = (uint64_t{1} << half_bits_) - 1;
  }
  uint64_t apply(uint64_t x) const {
    if (n_ <= 1) return x;
    do x = forward(x);
    while (x >= n_);
    return x;
  }
  uint64_t invert(uint64_t y) const {
    if (n_ <= 1) return y;
    do y = backward(y);
    while (y >= n_);
    return y;
  }

 private:
  static constexpr int kRounds = 6;
  uint64_t round_fn(uint64_t half, int round) const { return hash_combine(key_, round, half) & mask_; }
  uint64_t forward(uint64_t x) const {
    uint64_t left = x >> half_bits_, right = x & mask_;
    for (int r = 0; r < kRounds; ++r) {
      const uint64_t next_right = left ^ round_fn(right, r);
      left = right;
      right = next_right;
    }
    return (left << half_bits_) | right;
  }
  uint64_t backward(uint64_t y) const {
    uint64_t left = y >> half_bits_, right = y & mask_;
    for (int r = kRounds - 1; r >= 0; --r) {
      const uint64_t prev_left = right ^ round_fn(left, r);
      right = left;
      left = prev_left;
    }
    return (left << half_bits_) | right;
  }
  uint64_t n_, key_;
  int half_bits_ = 1;
  uint64_t mask_ = 1;
};

std::string describe(const DataSchema& s) {
  auto list = [](const std::vector<std::string>& v) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + v[i];
    return out + "]";
  };
  return "tasks " + list(s.tasks) + ", weight " + (s.has_weight ? "yes" : "no") + ", dense_dim " +
         std::to_string(s.dense_dim) + ", slots " + list(s.slots) + ", meta " + list(s.meta) + ", truth " +
         list(s.truth);
}

// Rows [begin, end) of the global row space, held as one Block per file they came from (a
// window may span files; keeping the parts avoids a second copy to concatenate them).
struct LoadedRows {
  int64_t begin = 0, end = 0;
  std::vector<int64_t> part_begin;  // global row of each part's first row
  std::vector<Block> parts;

  bool contains(int64_t row) const { return begin <= row && row < end; }
  void release() {
    begin = end = 0;
    part_begin.clear();
    parts.clear();
    parts.shrink_to_fit();
  }
  void append_to(Block& batch, int64_t row) const {
    const size_t part = part_of(row);
    batch.append_row(parts[part], row - part_begin[part]);
  }
  float label(int64_t row, int task) const {
    const size_t part = part_of(row);
    return parts[part].labels[static_cast<size_t>(task)][static_cast<size_t>(row - part_begin[part])];
  }
  size_t part_of(int64_t row) const {
    const auto it = std::upper_bound(part_begin.begin(), part_begin.end(), row);
    return static_cast<size_t>(it - part_begin.begin()) - 1;
  }
};

// Reads global rows [begin, end) from the files that hold them.
void load_rows(const std::vector<std::string>& files, const std::vector<int64_t>& file_begin, int64_t begin,
                      int64_t end, LoadedRows& out) {
  out.release();
  out.begin = begin;
  out.end = end;
  size_t f = static_cast<size_t>(std::upper_bound(file_begin.begin(), file_begin.end(), begin) - file_begin.begin()) - 1;
  for (int64_t row = begin; row < end; ++f) {
    const int64_t file_end = file_begin[f + 1];
    if (file_end <= row) continue;  // an empty file
    const int64_t take_end = std::min(end, file_end);
    out.part_begin.push_back(row);
    out.parts.emplace_back();
    read_shard_rows(files[f], row - file_begin[f], take_end - file_begin[f], out.parts.back());
    row = take_end;
  }
}

}  // namespace

bool keeps_negative(uint64_t seed, int64_t epoch, int64_t row, double rate) {
  if (rate >= 1.0) return true;
  return to_unit(hash_combine(hash_combine(seed, kNegativeTag), epoch, static_cast<uint64_t>(row))) < rate;
}

Reader::Reader(ReaderOptions options) : opt_(std::move(options)) {
  NCSREC_USER_CHECK(!opt_.files.empty(), "reader: no data files given");
  NCSREC_USER_CHECK(opt_.batch_size > 0, "reader: batch_size must be positive, got " << opt_.batch_size);
  NCSREC_USER_CHECK(opt_.world_size >= 1 && opt_.rank >= 0 && opt_.rank < opt_.world_size,
                    "reader: rank " << opt_.rank << " is not in a world of " << opt_.world_size);
  NCSREC_USER_CHECK(opt_.window_rows > 0, "reader: window_rows must be positive, got " << opt_.window_rows);
  NCSREC_USER_CHECK(opt_.queue_batches > 0, "reader: queue_batches must be positive, got " << opt_.queue_batches);

  file_begin_.reserve(opt_.files.size() + 1);
  file_begin_.push_back(0);
  for (size_t i = 0; i < opt_.files.size(); ++i) {
    int64_t rows = 0;
    DataSchema schema = read_shard_schema(opt_.files[i], &rows);
    if (i == 0) {
      schema_ = std::move(schema);
    } else if (schema != schema_) {
      throw UserError("data files " + opt_.files[0] + " and " + opt_.files[i] + " have different schemas: " +
                      describe(schema_) + " vs " + describe(schema));
    }
    file_begin_.push_back(file_begin_.back() + rows);
  }
  total_rows_ = file_begin_.back();
  file_schema_ = schema_;
  if (!opt_.negative_label.empty()) {
    negative_label_ = schema_.task_index(opt_.negative_label);
    NCSREC_USER_CHECK(negative_label_ >= 0, "reader: negative downsampling on label '"
                                                << opt_.negative_label << "', which " << opt_.files[0]
                                                << " does not have (labels: " << describe(schema_) << ")");
    NCSREC_USER_CHECK(opt_.negative_rate > 0 && opt_.negative_rate <= 1,
                      "reader: negative_rate must be in (0, 1], got " << opt_.negative_rate);
    NCSREC_USER_CHECK(opt_.negative_weight >= 0, "reader: negative_weight must be >= 0, got " << opt_.negative_weight);
    if (opt_.negative_weight > 0) schema_.has_weight = true;
  }

  const int64_t global_batch = opt_.batch_size * opt_.world_size;
  end_position_ = opt_.drop_last ? total_rows_ / global_batch * global_batch : total_rows_;
  NCSREC_USER_CHECK(opt_.start_position >= 0 && opt_.start_position % global_batch == 0,
                    "reader: start_position " << opt_.start_position << " is not a multiple of the global batch "
                                              << global_batch << " (world_size x batch_size)");
  NCSREC_USER_CHECK(opt_.start_position <= total_rows_, "reader: start_position " << opt_.start_position
                                                                                  << " is past the end of the epoch ("
                                                                                  << total_rows_ << " rows)");
  position_ = opt_.start_position;

  if (opt_.shuffle && total_rows_ > 0) {
    const int64_t windows = (total_rows_ + opt_.window_rows - 1) / opt_.window_rows;
    last_window_rows_ = total_rows_ - (windows - 1) * opt_.window_rows;
    const KeyedPermutation order(windows, hash_combine(opt_.seed, opt_.epoch, kWindowOrderTag));
    last_window_slot_ = static_cast<int64_t>(order.invert(windows - 1));
  }
  thread_ = std::thread([this] { run(); });
}

// The weight correction: kept negatives count 1 / rate times (times any weight the data has).
void Reader::apply_negative_weight(Block& batch, const std::vector<uint8_t>& negative) const {
  if (!batch.schema.has_weight) {
    batch.schema.has_weight = true;
    batch.weight.assign(static_cast<size_t>(batch.rows), 1.0f);
  }
  const auto w = static_cast<float>(opt_.negative_weight);
  for (size_t i = 0; i < negative.size(); ++i)
    if (negative[i]) batch.weight[i] *= w;
}

Reader::~Reader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

int64_t Reader::row_at(int64_t p) const {
  NCSREC_CHECK(p >= 0 && p < total_rows_, "row_at: position " << p << " outside [0, " << total_rows_ << ")");
  if (!opt_.shuffle) return p;
  // Windows are laid out in the permuted order; only the last (partial) window is shorter,
  // so positions after its slot are shifted back by the rows it lacks.
  const int64_t w_rows = opt_.window_rows;
  const int64_t partial_start = last_window_slot_ * w_rows;
  int64_t slot, offset;
  if (p < partial_start) {
    slot = p / w_rows;
    offset = p % w_rows;
  } else if (p < partial_start + last_window_rows_) {
    slot = last_window_slot_;
    offset = p - partial_start;
  } else {
    const int64_t after = p - partial_start - last_window_rows_;
    slot = last_window_slot_ + 1 + after / w_rows;
    offset = after % w_rows;
  }
  const int64_t windows = (total_rows_ + w_rows - 1) / w_rows;
  const KeyedPermutation order(windows, hash_combine(opt_.seed, opt_.epoch, kWindowOrderTag));
  const auto window = static_cast<int64_t>(order.apply(slot));
  const int64_t size = window == windows - 1 ? last_window_rows_ : w_rows;
  const KeyedPermutation inside(size, hash_combine(hash_combine(opt_.seed, opt_.epoch, kInWindowTag), window));
  return window * w_rows + static_cast<int64_t>(inside.apply(offset));
}

bool Reader::next(Block& batch) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return !queue_.empty() || done_; });
  if (queue_.empty()) {
    if (error_) std::rethrow_exception(error_);
    return false;
  }
  batch = std::move(queue_.front());
  queue_.pop_front();
  position_ = std::min(position_ + opt_.batch_size * opt_.world_size, end_position_);
  lock.unlock();
  cv_.notify_all();
  return true;
}

void Reader::run() {
  try {
    const int64_t batch = opt_.batch_size, global_batch = batch * opt_.world_size;
    LoadedRows loaded;
    for (int64_t g_start = opt_.start_position; g_start < end_position_; g_start += global_batch) {
      const int64_t first = std::min(g_start + opt_.rank * batch, end_position_);
      const int64_t last = std::min(first + batch, end_position_);
      Block out = Block::with_schema(file_schema_);
      out.first_position = first;
      std::vector<uint8_t> sampled_negative;  // per kept row, with negative_weight
      for (int64_t p = first; p < last; ++p) {
        const int64_t row = row_at(p);
        if (!loaded.contains(row)) {
          {
            std::lock_guard<std::mutex> lock(mu_);
            if (stop_) return;
          }
          int64_t begin, end;
          if (opt_.shuffle) {
            begin = row / opt_.window_rows * opt_.window_rows;
            end = std::min(begin + opt_.window_rows, total_rows_);
          } else {
            // Unshuffled, positions are rows: read only what this rank uses next, up to a window.
            begin = row;
            end = std::min(row + opt_.window_rows, opt_.world_size == 1 ? end_position_ : last);
          }
          load_rows(opt_.files, file_begin_, begin, end, loaded);
        }
        if (negative_label_ >= 0) {
          const bool negative = loaded.label(row, negative_label_) <= 0.5f;
          if (negative && !keeps_negative(opt_.seed, opt_.epoch, row, opt_.negative_rate)) continue;
          if (opt_.negative_weight > 0) sampled_negative.push_back(negative ? 1 : 0);
        }
        loaded.append_to(out, row);
      }
      if (opt_.negative_weight > 0) apply_negative_weight(out, sampled_negative);
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stop_ || static_cast<int>(queue_.size()) < opt_.queue_batches; });
      if (stop_) return;
      queue_.push_back(std::move(out));
      lock.unlock();
      cv_.notify_all();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = std::current_exception();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
  }
  cv_.notify_all();
}

}  // namespace ncsrec

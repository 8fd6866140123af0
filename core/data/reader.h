// Streaming reader over a list of shards, on a background thread.
//
// Order (DESIGN.md "Files/Order"): the epoch's sample order is a pure function of
// (seed, epoch, global row index). Global rows are the concatenation of the shards in the
// given order. With shuffling, rows are grouped in windows of `window_rows` consecutive
// global rows; the window order is a permutation keyed by (seed, epoch) and the order inside
// a window a permutation keyed by (seed, epoch, window). The reader therefore holds at most
// one window (plus the batches in its queue) in memory, whatever the data size.
// Rank r of n takes slice r of each global batch of n * batch_size positions, so 2 ranks x B
// see exactly the rows that 1 rank x 2B sees. `position()` is the number of global positions
// consumed (all ranks together); a resumed reader starts there.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/data/block.h"

namespace ncsrec {

struct ReaderOptions {
  std::vector<std::string> files;
  int64_t batch_size = 1024;      // per rank
  int rank = 0, world_size = 1;
  bool shuffle = true;
  uint64_t seed = 1;
  int64_t epoch = 0;
  int64_t window_rows = 1 << 18;  // rows held in memory at once when shuffling
  int64_t start_position = 0;     // global positions already consumed in this epoch
  bool drop_last = true;          // drop the final partial global batch (training)
  int queue_batches = 4;          // batches prepared ahead
  // Negative downsampling (training): a row whose label `negative_label` is 0 is kept with
  // probability `negative_rate`, drawn as a pure function of (seed, epoch, global row), so the
  // kept rows do not depend on ranks, resumes or threads, and each epoch draws afresh. Batches
  // then hold fewer rows than batch_size; positions still count every row. `negative_weight`
  // > 0: kept negatives' weights are multiplied by it (1 / rate: the weight correction) and
  // every batch carries a weight column. "" = off.
  std::string negative_label;
  double negative_rate = 1.0;
  double negative_weight = 0.0;
};

// Whether negative downsampling at `rate` keeps global row `row` of `epoch` (if it is a negative).
bool keeps_negative(uint64_t seed, int64_t epoch, int64_t row, double rate);

class Reader {
 public:
  explicit Reader(ReaderOptions options);
  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  // The batches' schema: the files' (plus a weight column with negative_weight > 0).
  const DataSchema& schema() const { return schema_; }
  int64_t total_rows() const { return total_rows_; }
  // Next batch of this rank; false at the end of the epoch. Errors on the reader thread are
  // re-thrown here. Every rank gets the same number of batches: with drop_last = false the
  // final partial global batch gives each rank its share, which may have 0 rows.
  bool next(Block& batch);
  int64_t position() const { return position_; }

  // The global row index at epoch position `p` (exposed for tests).
  int64_t row_at(int64_t p) const;

 private:
  void run();
  void apply_negative_weight(Block& batch, const std::vector<uint8_t>& negative) const;
  ReaderOptions opt_;
  DataSchema schema_, file_schema_;
  int negative_label_ = -1;  // index in the files' tasks, -1: no downsampling
  std::vector<int64_t> file_begin_;  // global index of each file's first row; back() == total
  int64_t total_rows_ = 0;
  int64_t position_ = 0;
  int64_t end_position_ = 0;
  // Shuffled layout: the last window may be partial; these locate it in the permuted order.
  int64_t last_window_rows_ = 0;
  int64_t last_window_slot_ = 0;

  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Block> queue_;
  bool done_ = false, stop_ = false;
  std::exception_ptr error_;
};

}  // namespace ncsrec

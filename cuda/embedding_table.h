// The GPU twin of an embedding table's training step on one rank (embedding/embedding_table.h,
// embedding/sharded_table.h, core/layers/embedding_bag.h): the pooled lookup of one slot of
// CSR bags, and its backward as a sorted segment sum fused with the sparse optimizer's update of
// the rows the batch touched. Two kinds of table:
//   fixed  `rows` rows; an id reads row id mod rows (the non-negative remainder), as on the CPU
//   hash   an int64 id to row index in device memory, for an open vocabulary: open addressing
//          with linear probing over a power-of-two number of slots (at least twice the
//          capacity); a new id claims an empty slot with atomicCAS, then takes the next row
//          number from an atomicAdd counter
// Every row is initialised on the device from (seed, table name, key) with core/random.h's
// generator, exactly as EmbeddingTable does on the CPU (key = the row of a fixed table, the id of
// a hash table), so neither the insertion order nor the thread schedule changes a row's values.
// A hash table's row numbers do depend on the schedule; nothing outside this class sees them
// (snapshot() is in key order).
//
// A training step is:
//   forward:  the batch's rows (fixed: id mod rows; hash: the id) sorted with their positions
//             (CUB radix sort, stable), unique keys found by a flag scan, each unique key's row
//             looked up (or, hash, inserted) by one thread, then every bag summed over its
//             positions in order (mean: times 1/count, as the CPU);
//   backward: per unique row, the sum of its positions' output gradients in position order (the
//             sorted segment sum: deterministic, no float atomics; mean: each times 1/count),
//             then the sparse optimizer on the row:
//               adagrad  acc += g²; w -= lr · g / (sqrt(acc) + eps)
//               adam     lazy: the row's own step t += 1, m and v moved, w -= lr · (m / (1 − β1^t))
//                        / (sqrt(v / (1 − β2^t)) + eps)
//             as embedding_table.cpp. No other row or state changes.
// Two runs on the same input give bit-identical tables; the CPU gives the same values up to
// the rounding of the device's math functions. The float arithmetic of sums and updates uses
// the _rn intrinsics, which are never fused into multiply-adds, so it rounds as the CPU's.
//
// Admission and eviction (hash tables, as embedding/sharded_table.h on one rank): with
// admit_after > 1 an id without a row counts its training reads in a second index on the device
// (pending ids: id, reads, last day read) and gets a row once they reach admit_after, its count
// then being every read so far. A batch whose admitted ids do not fit is a UserError, or with
// evict_when_full the least recently seen rows (by last_seen_day, updated_step, id) the batch does
// not read make room, a tenth of the capacity more than needed: the host picks them from the
// rows' counters (rare: once per a tenth of the capacity of new rows), the last rows move into
// their places and the index is rebuilt. Without either, a full table is a UserError and stays
// usable for reads. TTL is the host's (the model applies it to its host copy at a day's start
// and loads the table again).
//
// Scope: f32, one device. The id INT64_MIN is reserved as the empty-slot marker. Buffers are
// allocated when the table is built and grown only when a batch is larger than any before it;
// the pending ids' index grows (by rebuilding it) when a batch could fill it past half.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/device_table.h"

namespace ncsrec {

struct CudaEmbeddingOptions {
  std::string name;          // the table's name: part of each row's initialisation key
  bool hash = false;         // false: a fixed table of `rows` rows; true: a hash table of `rows` capacity
  int64_t rows = 0;
  int64_t dim = 0;
  bool mean_pooling = false; // false: sum
  uint64_t seed = 1;         // run.seed
  double init_scale = 0.01;  // rows start N(0, init_scale²)
  std::string optimizer = "adagrad";  // sgd | adagrad | adam (lazy)
  double lr = 0.05;
  double eps = 1e-10;
  double initial_accumulator = 0.0;  // adagrad
  double beta1 = 0.9, beta2 = 0.999;  // adam
  int64_t admit_after = 1;      // hash: training reads before an id gets a row
  bool evict_when_full = false; // hash: full: evict the least recently seen rows (else a UserError)
};

struct DeviceColumnView {
  void* data;
  size_t bytes;
};

class CudaEmbeddingTable {
 public:
  // Needs a GPU (cuda_register_if_available); throws InternalError from a failing CUDA call.
  explicit CudaEmbeddingTable(const CudaEmbeddingOptions& options);
  ~CudaEmbeddingTable();
  CudaEmbeddingTable(const CudaEmbeddingTable&) = delete;
  CudaEmbeddingTable& operator=(const CudaEmbeddingTable&) = delete;

  // Rows holding a key: every row of a fixed table, the rows inserted so far of a hash table.
  int64_t rows() const;
  int64_t dim() const { return options_.dim; }

  // One slot of `batch` bags in CSR form, DEVICE arrays: offsets [batch + 1] (offsets[0] = 0),
  // ids [nnz] with nnz = offsets[batch]. Writes out [batch, dim] (device), each bag pooled over
  // its ids' rows; a hash table's id without a row reads zeros. `training`: a hash table first
  // inserts its ids without a row (a UserError naming the table when it is full), and the batch
  // is kept for backward.
  void forward(const int64_t* offsets, const int64_t* ids, int64_t batch, int64_t nnz, float* out, bool training);
  // Several slots reading this table (as the CPU's slots of one table): each slot's bags pooled
  // into columns [col, col + dim) of out [batch, out_cols] (device); a row read by several slots
  // gets one update from the sum of their gradients (in slot order, as the CPU).
  struct Slot {
    const int64_t* offsets;  // device, [batch + 1]
    const int64_t* ids;      // device, [nnz]
    int64_t nnz;
    int64_t col;
    int mean = -1;  // 1: mean pooling, 0: sum, -1: the table's mean_pooling
  };
  void forward(const std::vector<Slot>& slots, int64_t batch, float* out, int64_t out_cols, bool training);
  // dout [batch, dim] (device): the gradient of the last training forward's output. The
  // optimizer's update of the rows that batch read; nothing else changes.
  void backward_update(const float* dout);
  // The same for a several-slot forward: dout [batch, dout_cols], each slot's gradient at its columns.
  void backward_update(const float* dout, int64_t dout_cols);

  // Sizes every buffer a forward and backward use for up to `slots` slots of `batch` bags and
  // `ids` ids in all, so that such batches allocate nothing (a larger one grows them by half
  // again at least).
  void reserve(int64_t slots, int64_t batch, int64_t ids);

  // The rate of the following backward_update calls.
  void set_lr(double lr);
  // The day of the following training forwards (each row read gets it as its last day seen)
  // and the step of the following backward_update calls (each row updated gets it).
  void set_day(int64_t day);
  void set_step(int64_t step);

  // Rows in and out, by column, as HOST arrays of rows in key order: "values" f32 [rows, dim];
  // the optimizer's "accumulator" (adagrad), or "m", "v" f32 [rows, dim] and "steps" int64
  // [rows] (adam); the counters "count", "last_seen_day", "updated_step" int64 [rows] (reads in
  // training, the day last read, the step last updated; 0, -1, -1 for a new row). An unknown
  // column: InternalError.
  // The key of each row, in row order (fixed: 0..rows-1; hash: the ids, as inserted).
  std::vector<int64_t> row_keys() const;
  // Replaces the rows: a fixed table takes all its rows (keys 0..rows-1); a hash table holds
  // exactly `keys` afterwards (unique, at most its capacity), row i being keys[i], and exactly
  // the pending ids `pending` (unique, none of them among `keys`).
  void load_rows(const std::vector<int64_t>& keys, const std::vector<std::pair<std::string, void*>>& columns,
                 const std::vector<PendingId>& pending = {});
  // rows() rows, in row_keys() order.
  void store_rows(const std::vector<std::pair<std::string, void*>>& columns) const;
  // A hash table's pending ids, in increasing id order.
  std::vector<PendingId> pending() const;
  // Rows inserted and evicted to make room since the table was built, and the ids pending now.
  DeviceHashCounts hash_counts() const;

  // Host copies of every row holding a key, in increasing key order: keys (fixed: the rows),
  // values [rows, dim], and the optimizer state by name ("accumulator", or "m", "v" [rows, dim]
  // and "steps" [rows] as floats).
  struct Snapshot {
    std::vector<int64_t> keys;
    std::vector<float> values;
    std::vector<std::pair<std::string, std::vector<float>>> state;
  };
  Snapshot snapshot() const;

 private:
  struct Buffers;
  void reserve_batch(int64_t slots, int64_t bags, int64_t ids);
  // Admission (training forward of a hash table with admit_after > 1 or evict_when_full): counts
  // the reads of the batch's ids without a row, marks those to admit (admit_reads) and makes room
  // for them.
  void count_pending_reads();
  void ensure_pending_room(int64_t more);
  void rebuild_pending(const unsigned long long* keys, const int64_t* count, const int64_t* seen, int64_t n,
                       int64_t live, int64_t more);
  void load_pending(const std::vector<PendingId>& pending);
  void make_room(int64_t wanted);
  void index_rows(const int64_t* keys, int64_t n);
  // The forward's admission path: admit_after > 1, evict_when_full, or pending ids loaded.
  bool admission() const;
  // A column's device memory (load_rows, store_rows).
  DeviceColumnView device_column(const std::string& name, int64_t rows) const;
  CudaEmbeddingOptions options_;
  int64_t day_ = -1, step_ = -1;
  uint64_t table_seed_ = 0;
  std::unique_ptr<Buffers> buffers_;
};

// Device buffers allocated by the CUDA backend's growable scratch so far (a test of a memory plan
// reads it before and after some steps).
int64_t cuda_device_buffer_allocations();

// The model's device table (core/device_table.h) on a CudaEmbeddingTable: the factory cuda/
// registers for Device::CUDA.
std::unique_ptr<DeviceTable> make_cuda_device_table(const DeviceTableSpec& spec);

}  // namespace ncsrec

// Embedding tables trained in a device's memory (the GPU twin of embedding/embedding_table.h's
// step on one process): the pooled lookup of a batch's CSR bags straight into the device-side
// input, and the backward as a segment sum over the batch's unique rows fused with the sparse
// optimizer's update of those rows. The embeddings and their gradient never cross the bus; only
// the batch's ids go up.
//
// A backend registers a factory for its device (cuda/ when a GPU is present); core never
// includes a CUDA header. The model (models/multitask_model.h) keeps the host tables as the
// copy that checkpoints, export and inspection read, and moves rows between the two with
// load/store: the host's are loaded before the first step after any change on the host, and
// stored back before the host's are read.
//
// Scope: f32 tables on one process, fixed-size or hash tables (admission after admit_after
// reads, and eviction of the least recently seen rows when full, as embedding/sharded_table.h);
// optimizers sgd, adagrad, adam (lazy), with the arithmetic of embedding_table.cpp. Row sharding
// stays on the host; a TTL drops rows and pending ids on the host copy at the start of a day, and
// the device's table is rebuilt from it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/optim.h"
#include "core/tensor.h"

namespace ncsrec {

struct DeviceTableSpec {
  std::string name;  // the table's name: part of each row's initialisation key
  bool hash = false;  // a hash table (rows: its capacity): ids are keys, inserted at their first training read
  int64_t rows = 0, dim = 0;
  uint64_t seed = 1;
  double init_scale = 0.01;
  OptimizerConfig optimizer;  // type sgd | adagrad | adam; lr is given to each backward
  // Hash tables (HashOptions of embedding/sharded_table.h): reads in training before an id gets
  // a row, and when full, evict the least recently seen rows (by last_seen_day, updated_step, id)
  // not read by the batch, a tenth of the capacity more than needed (else a UserError).
  int64_t admit_after = 1;
  bool evict_when_full = false;
};

// An id a hash table's training read but has not admitted yet: its reads so far and the day of
// the last (ShardedTable::Pending).
struct PendingId {
  int64_t id = 0, count = 0, last_seen_day = -1;
};

// What a hash table did since it was built (for the progress log and ShardedTable::hash_stats):
// rows inserted, rows evicted to make room, and the ids pending now.
struct DeviceHashCounts {
  int64_t inserted = 0, evicted_full = 0, pending = 0;
};

class DeviceTable {
 public:
  virtual ~DeviceTable() = default;

  // One slot of `batch` bags reading this table, as HOST arrays: offsets [batch + 1] (offsets[0]
  // = 0) and ids [nnz], nnz = offsets[batch]; an id reads row id mod rows (the non-negative
  // remainder) of a fixed table, the id's row of a hash table (zeros where it has none). Pooled
  // (sum, or mean when `mean`) into columns [col, col + dim) of the output.
  struct Slot {
    const int64_t* offsets;
    const int64_t* ids;
    int64_t nnz;
    int64_t col;
    bool mean;
  };
  // Sizes the per-batch buffers for `slots` slots of `batch` bags holding `ids` ids in all, so
  // that such a batch allocates nothing (a larger one grows them).
  virtual void reserve(int64_t slots, int64_t batch, int64_t ids) = 0;
  // out: f32 [batch, out_cols] in the device's memory; only the slots' columns are written.
  // `training`: a hash table counts the reads of the ids it has no row for and inserts those read
  // admit_after times in all (making room as the spec says when full, else a UserError naming the
  // table), every row read counts its reads and takes `day` as its last day seen, and the batch
  // is kept for backward_update.
  virtual void forward(const std::vector<Slot>& slots, int64_t batch, float* out, int64_t out_cols, bool training,
                       int64_t day) = 0;
  // dout: f32 [batch, dout_cols] in the device's memory, the gradient of the last training
  // forward's output (each slot's at its columns). The optimizer's update, at rate lr, of the
  // rows that batch read, each from the sum of its positions' gradients in (slot, row, id)
  // order, and takes `step` as its last updated step; no other row or state changes.
  virtual void backward_update(const float* dout, int64_t dout_cols, double lr, int64_t step) = 0;

  // Rows in and out as HOST columns, rows in the order of their keys: "values" [rows, dim] f32;
  // the optimizer's state by the names of embedding_table.cpp ("accumulator"; or "m", "v" f32
  // [rows, dim] and "steps" i64 [rows]); the counters "count", "last_seen_day", "updated_step"
  // i64 [rows].
  struct Column {
    std::string name;
    void* data;
  };
  // The rows the table holds, and the key of each (a fixed table: 0..rows-1; a hash table: its ids).
  virtual int64_t rows() const = 0;
  virtual std::vector<int64_t> keys() const = 0;
  // Replaces the rows with `keys` (a fixed table: all its rows, 0..rows-1) and the columns' values,
  // and a hash table's pending ids with `pending`.
  virtual void load(const std::vector<int64_t>& keys, const std::vector<Column>& columns,
                    const std::vector<PendingId>& pending) = 0;
  // Every row, in keys() order.
  virtual void store(const std::vector<Column>& columns) const = 0;
  // A hash table's pending ids, in increasing id order (a fixed table: none).
  virtual std::vector<PendingId> pending() const = 0;
  virtual DeviceHashCounts hash_counts() const = 0;
};

// Eviction's choice when a hash table is full (ShardedTable::make_room, and a device's table):
// of `rows` rows with these keys and counters, the `n` least recently seen (by last_seen_day,
// then updated_step, then key) whose keys are not in `kept` (sorted), as row indices; fewer when
// fewer rows are not kept.
std::vector<int64_t> least_recently_seen(const int64_t* keys, const int64_t* last_seen_day, const int64_t* updated_step,
                                         int64_t rows, const std::vector<int64_t>& kept, int64_t n);

using DeviceTableFactory = std::unique_ptr<DeviceTable> (*)(const DeviceTableSpec& spec);

// Installs the factory of a device's tables (null: none); a backend calls it with its kernels.
void register_device_tables(Device device, DeviceTableFactory factory);
// The device's factory, or null when its backend trains no table.
DeviceTableFactory device_table_factory(Device device);

}  // namespace ncsrec

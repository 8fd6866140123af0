// Placement of one embedding table over the ranks of a communicator, and the two exchanges of a
// step: the forward lookup (fetch the unique rows a batch reads from their owners) and the
// backward reduction (send each row's gradient back to its owner, summed in rank order).
//
//   RowWise:    row r lives on rank row_owner(r, world) = mix64(r) mod world; no rank ever holds
//               the full table or a dense gradient of it.
//   TableWise:  every row lives on rank `table_rank`; the other ranks hold an empty shard.
//   Replicated: every rank holds every row; gradients are all-gathered so every rank applies
//               the same update to the same values.
// With world size 1 every placement holds every row and nothing is exchanged.
//
// Only unique rows travel: a batch that reads a row a thousand times requests it once, gets
// it once and sends its gradient once. Bytes a rank sends per step (counters of dist/), with
// W ranks, D = dim, S = sizeof(dtype), R = unique rows this rank reads that another rank owns,
// Q = sum over the other ranks of the unique rows they read that this rank owns, G = rows of
// this rank's compact gradient:
//   RowWise, TableWise: lookup 8(W-1) + 8R + D·S·Q, reduce 8(W-1) + D·S·R (all-to-all bytes;
//                       plus 8 per gradient row sent to an owner when the gradient misses some
//                       row this rank read from that owner: never the case for a gradient from
//                       embedding_bag_backward over the lookup's ids, which has every row).
//   Replicated:         lookup 0; reduce 16(W-1) all-gather bytes + (W-1)·G·(8 + D·S)
//                       all-to-all bytes (all_gather_v of rows, then of values).
//
// Every rank must call lookup and reduce_gradient the same number of times, empty batch or not.
// Deterministic: results do not depend on thread count; the gradient of a row sums the ranks'
// contributions in rank order.
//
// Hash tables (open vocabulary): the "global row" of an id is the id itself (any int64), owned
// by rank mix64(id) mod W (RowWise) or table_rank (TableWise; Replicated is refused). A
// training lookup inserts ids on their owner once they have been read `admit_after` times
// (summed over ranks, so the same on any number of ranks); until then, and for any id a
// non-training lookup does not find, the id reads zeros and its gradient is dropped. A new
// row is initialised from (seed, table, id), so the insertion order, sharding and device do
// not change it. Full (each rank holds at most ceil(capacity / W) rows): a clear error, or with
// evict_when_full the least recently seen rows (by last_seen_day, updated_step, id) not read
// by the current batch make room, plus a tenth of the capacity so that eviction is rare.
// start_day() drops rows (and pending ids) not seen for more than ttl_days days. A training
// lookup sends each row's occurrence count with the request (8R more bytes) so that owners keep
// count and last_seen_day for every table.
//
// Not here: the sparse optimizer (embedding_table.h, stepped on shard()), checkpoints (keyed by
// global row or id: shard_rows()), CUDA.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/layers/embedding_bag.h"
#include "core/huge_pages.h"
#include "core/tensor.h"
#include "dist/communicator.h"
#include "embedding/embedding_table.h"

namespace ncsrec {

enum class Placement : uint8_t { RowWise, TableWise, Replicated };

struct HashOptions {
  int64_t capacity = 0;          // rows over all ranks; each rank holds at most ceil(capacity / W)
  int64_t admit_after = 1;       // occurrences in training batches before an id gets a row
  int64_t ttl_days = 0;          // start_day(d) drops rows last seen before d - ttl_days (0: never)
  bool evict_when_full = false;  // full: evict the least recently seen rows (else: a UserError)
};

// What a hash table holds and did, for the progress log (0 for fixed tables).
struct HashStats {
  int64_t rows = 0;            // rows on this rank
  int64_t pending = 0;         // ids seen but not admitted yet, on this rank
  int64_t inserted = 0;        // rows inserted since the table was built
  int64_t evicted_ttl = 0;     // rows dropped by start_day
  int64_t evicted_full = 0;    // rows dropped to make room
};

// "row_wise" | "table_wise" | "replicated"; throws UserError otherwise.
Placement parse_placement(const std::string& s);
const char* placement_name(Placement p);

// The rank that owns global row `row` of a RowWise table over `world_size` ranks.
int row_owner(int64_t row, int world_size);

class ShardedTable {
 public:
  // Values are those of EmbeddingTable(name, rows, dim, dtype, seed, init_scale) at the same
  // global rows. `table_rank` matters for TableWise only (it must still be a valid rank).
  // `hash`: a hash table (`rows` is ignored: it has no rows until ids arrive).
  ShardedTable(std::string name, int64_t rows, int64_t dim, DType dtype, uint64_t seed, double init_scale,
               Placement placement, int table_rank, int rank, int world_size, const HashOptions* hash = nullptr);

  const std::string& name() const { return shard_.name(); }
  int64_t rows() const { return rows_; }  // global rows (a hash table: its capacity)
  bool hashed() const { return hashed_; }
  const HashOptions& hash_options() const { return hash_; }
  int64_t dim() const { return dim_; }
  DType dtype() const { return dtype_; }
  Placement placement() const { return placement_; }
  int rank() const { return rank_; }
  int world_size() const { return world_; }
  // The rank holding `row` (0 <= row < rows(); a hash table: any id); for Replicated (and world 1):
  // the calling rank.
  int owner(int64_t row) const;

  // This rank's rows: of a fixed table in increasing global-row order, of a hash table in
  // insertion order (compacted by evictions).
  EmbeddingTable& shard() { return shard_; }
  const EmbeddingTable& shard() const { return shard_; }
  // Global row (hash table: id) of each shard row (size shard().rows()).
  const RowColumn& shard_rows() const { return shard_.keys(); }
  // True when shard row i is global row i for every row of the (fixed) table.
  bool holds_all_rows() const { return holds_all_rows_; }
  // Shard row of global `row` (hash table: id), or -1 when this rank does not hold it.
  int64_t shard_index(int64_t row) const;
  // Asks the cache for the hash index's first probe of `key` (the index of a large table is
  // gigabytes: probes of the ids kPrefetchAhead places ahead overlap their misses).
  void prefetch_index_slot(int64_t key) const;

  // The day (days since 1970-01-01) of the training batches that follow, for last_seen_day; a
  // hash table with ttl_days drops the rows and pending ids not seen since day - ttl_days.
  void start_day(int64_t day);
  int64_t day() const { return day_; }
  // Training on one process without lookup(): counts the ids' rows as read (count, last_seen_day).
  void count_reads(const int64_t* ids, int64_t n);
  // Checkpoint loading: gives a row to each id of `ids` this rank owns and does not hold, in the
  // order given (a hash table: initialised as on insertion; a UserError when they exceed the
  // capacity). Does nothing for a fixed table.
  void insert_owned(const std::vector<int64_t>& ids);
  // Ids seen in training but not admitted yet (this rank's, sorted): id, occurrences, last day seen.
  struct Pending {
    int64_t count = 0, last_seen_day = -1;
    friend bool operator==(const Pending& a, const Pending& b) {
      return a.count == b.count && a.last_seen_day == b.last_seen_day;
    }
  };
  // After a device-side copy of this (hash) table trained (core/device_table.h): this rank holds
  // the rows of exactly `ids` (those it lacks get rows as on insertion, those not among them were
  // evicted there and are dropped; their values come from the device after this) and exactly the
  // pending ids `pending`; `inserted` and `evicted_full` rows, what the device did since the last
  // call, count in hash_stats(). Does nothing for a fixed table.
  void adopt_trained(const std::vector<int64_t>& ids, const std::vector<std::pair<int64_t, Pending>>& pending,
                     int64_t inserted, int64_t evicted_full);
  std::vector<std::pair<int64_t, Pending>> pending() const;
  void set_pending(int64_t id, Pending p);  // ignored unless this rank owns `id`
  HashStats hash_stats() const;

  struct Lookup {
    std::vector<int64_t> rows;  // sorted unique global rows read by this rank (U of them)
    // [max(U, 1), dim]: the values of `rows`. An empty batch (U = 0) gets one zero row, so
    // embedding_bag_forward/backward (which need a table of at least one row) run unchanged.
    Tensor values;
    std::vector<std::vector<int64_t>> ids;  // per slot, the slot's ids as indices into `rows`
    // Exchange bookkeeping for the backward (empty when nothing is exchanged: world 1, Replicated).
    std::vector<int64_t> send_counts, recv_counts;  // per rank, in rows: requested from / by rank r
    std::vector<int64_t> send_order;  // request position (grouped by owner rank) -> index into `rows`
    // Owner side: the global rows every rank (this one included) requested from this rank, in
    // receive order (by requesting rank, then increasing row), and the same as shard rows (-1:
    // an id of a hash table without a row). One process: `rows` and their shard rows.
    std::vector<int64_t> requested;
    std::vector<int64_t> requested_shard_rows;
  };
  struct IdsView {
    const int64_t* ids;
    int64_t count;
  };
  // `slots[s]`: the ids of one slot reading this table on this rank (ids map to rows by
  // embedding_row(id, rows()); a hash table: the id itself). Then embedding_bag_forward(out, col,
  // lookup.values, offsets, lookup.ids[s].data(), ...) gives exactly the pooled embeddings of
  // the full table. `training`: count the reads, and insert (hash tables). `comm` may be null
  // on one process.
  void lookup(const std::vector<IdsView>& slots, Communicator* comm, Lookup* out, bool training);

  // `grad`: gradient over the lookup's compact rows (rows = sorted unique indices into
  // lookup.rows), e.g. embedding_bag_backward(dout, slots with lookup.ids, B, lookup.values.dim(0), dim).
  // Returns the gradient of this rank's shard (rows = sorted unique shard rows), each row
  // summed over every rank that read it, in rank order. Replicated: identical on every rank.
  // A hash table's ids without a row get no gradient.
  SparseGrad reduce_gradient(const Lookup& lookup, const SparseGrad& grad, Communicator* comm) const;

 private:
  void check_comm(const Communicator* comm, const char* call) const;
  int64_t row_bytes() const { return dim_ * static_cast<int64_t>(dtype_size(dtype_)); }
  int64_t row_of(int64_t id) const { return hashed_ ? id : embedding_row(id, rows_); }
  // Owner side of a lookup: the shard row of each requested key (-1: none), inserting admitted
  // ids and counting reads when training. `occurrences`: per key, or null.
  std::vector<int64_t> resolve(const std::vector<int64_t>& keys, const int64_t* occurrences, bool training);
  void make_room(int64_t wanted, const std::vector<int64_t>& protected_keys);
  void drop_rows(const std::vector<uint8_t>& drop);
  void rebuild_index();
  int64_t rank_capacity() const;

  int64_t rows_, dim_;
  DType dtype_;
  Placement placement_;
  int table_rank_, rank_, world_;
  bool holds_all_rows_;
  bool hashed_;
  HashOptions hash_;
  EmbeddingTable shard_;
  int64_t day_ = -1;
  // Hash tables: id -> shard row (open addressing, linear probing; row -1 = empty). A slot's
  // key and row sit side by side, so a probe reads one cache line.
  struct IndexSlot {
    int64_t key = 0, row = -1;
  };
  std::vector<IndexSlot, RandomAccessAllocator<IndexSlot>> index_;
  std::unordered_map<int64_t, Pending> pending_;
  HashStats stats_;
};

}  // namespace ncsrec

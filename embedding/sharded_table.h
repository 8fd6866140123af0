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
// Not here: the sparse optimizer (embedding_table.h, stepped on shard()), checkpoints (keyed by
// global row: shard_rows()), CUDA, open-vocabulary hash tables.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/layers/embedding_bag.h"
#include "core/tensor.h"
#include "dist/communicator.h"
#include "embedding/embedding_table.h"

namespace ncsrec {

enum class Placement : uint8_t { RowWise, TableWise, Replicated };

// "row_wise" | "table_wise" | "replicated"; throws UserError otherwise.
Placement parse_placement(const std::string& s);
const char* placement_name(Placement p);

// The rank that owns global row `row` of a RowWise table over `world_size` ranks.
int row_owner(int64_t row, int world_size);

class ShardedTable {
 public:
  // Values are those of EmbeddingTable(name, rows, dim, dtype, seed, init_scale) at the same
  // global rows. `table_rank` matters for TableWise only (it must still be a valid rank).
  ShardedTable(std::string name, int64_t rows, int64_t dim, DType dtype, uint64_t seed, double init_scale,
               Placement placement, int table_rank, int rank, int world_size);

  const std::string& name() const { return shard_.name(); }
  int64_t rows() const { return rows_; }  // global rows
  int64_t dim() const { return dim_; }
  DType dtype() const { return dtype_; }
  Placement placement() const { return placement_; }
  int rank() const { return rank_; }
  int world_size() const { return world_; }
  // The rank holding `row` (0 <= row < rows()); for Replicated (and world 1): the calling rank.
  int owner(int64_t row) const;

  EmbeddingTable& shard() { return shard_; }  // this rank's rows, in increasing global-row order
  const EmbeddingTable& shard() const { return shard_; }
  // Global row of each shard row (size shard().rows()), increasing.
  const std::vector<int64_t>& shard_rows() const { return shard_rows_; }
  // True when shard row i is global row i for every row of the table.
  bool holds_all_rows() const { return holds_all_rows_; }
  // Shard row of global `row`, or -1 when this rank does not hold it.
  int64_t shard_index(int64_t row) const;

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
    // receive order (by requesting rank, then increasing row), and the same as shard rows.
    std::vector<int64_t> requested;
    std::vector<int64_t> requested_shard_rows;
  };
  struct IdsView {
    const int64_t* ids;
    int64_t count;
  };
  // `slots[s]`: the ids of one slot reading this table on this rank (ids map to rows by
  // embedding_row(id, rows())). Then embedding_bag_forward(out, col, lookup.values, offsets,
  // lookup.ids[s].data(), ...) gives exactly the pooled embeddings of the full table.
  void lookup(const std::vector<IdsView>& slots, Communicator& comm, Lookup* out) const;

  // `grad`: gradient over the lookup's compact rows (rows = sorted unique indices into
  // lookup.rows), e.g. embedding_bag_backward(dout, slots with lookup.ids, B, lookup.values.dim(0), dim).
  // Returns the gradient of this rank's shard (rows = sorted unique shard rows), each row
  // summed over every rank that read it, in rank order. Replicated: identical on every rank.
  SparseGrad reduce_gradient(const Lookup& lookup, const SparseGrad& grad, Communicator& comm) const;

 private:
  void check_comm(const Communicator& comm, const char* call) const;
  int64_t row_bytes() const { return dim_ * static_cast<int64_t>(dtype_size(dtype_)); }

  int64_t rows_, dim_;
  DType dtype_;
  Placement placement_;
  int table_rank_, rank_, world_;
  bool holds_all_rows_;
  std::vector<int64_t> shard_rows_;
  EmbeddingTable shard_;
};

}  // namespace ncsrec

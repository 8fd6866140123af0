// Pooled embedding lookup over CSR multi-hot input, and its backward as a sorted segment sum.
//
// One slot: for row r, out[r, col : col + dim] = pool_{k in [offsets[r], offsets[r+1])} table[row(ids[k])]
// with pool = sum or mean (an empty row gives zeros). `row(id)` maps an id to a table row:
// ids are reduced modulo the table's rows (non-negative), so a fixed-size table behaves as a
// hashed table for out-of-range ids. Several slots may share one table: each slot writes its
// own column block of `out` [B, out_cols].
// Backward returns the gradient of the table as (sorted unique rows, grad rows [U, dim]),
// accumulated in row order of the batch, so it is deterministic; rows not in the batch are
// never touched.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace ncsrec {

enum class Pooling : uint8_t { Sum, Mean };

inline int64_t embedding_row(int64_t id, int64_t rows) {
  const int64_t r = id % rows;
  return r < 0 ? r + rows : r;
}

// out: [B, out_cols] (f32/f64); table: [V, dim] same dtype; writes columns [col, col + dim).
void embedding_bag_forward(Tensor& out, int64_t col, const Tensor& table, const int64_t* offsets,
                           const int64_t* ids, int64_t batch, Pooling pooling);

// Sparse gradient of one table, gathered over one or more slots.
struct SparseGrad {
  std::vector<int64_t> rows;  // sorted, unique table rows
  Tensor values;              // [rows.size(), dim], same dtype as the table
};

struct SlotInput {
  const int64_t* offsets;
  const int64_t* ids;
  int64_t col;  // column of this slot's block in dout
  Pooling pooling;
};

// The memory embedding_bag_backward reuses from call to call (grown, never shrunk), so that a
// training step after the first allocates none: the list of contributions and the radix sort's
// second copy of it, its segments, and the gradient's rows (the SparseGrad's values are a view
// of `values`).
struct EmbeddingBagWorkspace {
  // dout[batch_row, col : col + dim] / divisor goes into table_row (divisor: the bag's size for
  // mean pooling, 1 for sum).
  struct Contribution {
    int64_t table_row;
    int32_t batch_row, col, divisor;
  };
  std::vector<Contribution> contributions, sort_buffer;
  std::vector<int64_t> segment_begin;
  Tensor values;
};

// dout: [B, out_cols]. Builds the gradient of `table` from every slot in `slots` (all reading
// this table). Deterministic: each row's gradient sums contributions in (slot, row, k) order.
void embedding_bag_backward(SparseGrad& grad, EmbeddingBagWorkspace& workspace, const Tensor& dout,
                            const std::vector<SlotInput>& slots, int64_t batch, int64_t table_rows, int64_t dim);
// The same into fresh memory.
SparseGrad embedding_bag_backward(const Tensor& dout, const std::vector<SlotInput>& slots, int64_t batch,
                                  int64_t table_rows, int64_t dim);

}  // namespace ncsrec

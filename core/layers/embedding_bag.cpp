// CPU reference of the pooled embedding lookup and of its sparse backward.
//
// Determinism is the point of the backward's shape: contributions are listed in (slot, batch
// row, k) order, sorted by (table row, slot, batch row), then each unique row sums its own segment in that
// order. Threads split the work by output row (forward) or by unique table row (backward), so
// no two threads ever add into the same element and the result is bit-identical for any
// thread count. Not here: the table itself, sharding, or the optimizer (embedding/).
#include "core/layers/embedding_bag.h"

#include <algorithm>
#include <limits>

#include "core/error.h"
#include "core/huge_pages.h"
#include "core/layers/linear.h"

namespace ncsrec {
namespace {

constexpr int64_t kParallelMinRows = 256;  // below this, threads cost more than they save

void check_csr(const int64_t* offsets, const int64_t* ids, int64_t batch) {
  NCSREC_CHECK(offsets != nullptr && batch >= 0, "embedding bag: no offsets or negative batch " << batch);
  NCSREC_CHECK(offsets[0] == 0, "embedding bag: CSR offsets must start at 0, got " << offsets[0]);
  for (int64_t r = 0; r < batch; ++r)
    NCSREC_CHECK(offsets[r + 1] >= offsets[r], "embedding bag: CSR offsets decrease at row " << r);
  NCSREC_CHECK(offsets[batch] == 0 || ids != nullptr, "embedding bag: offsets without ids");
}

template <class T>
T pool_scale(Pooling pooling, int64_t count) {
  return (pooling == Pooling::Mean && count > 0) ? T(1) / static_cast<T>(count) : T(1);
}

template <class T>
void forward_t(T* out, int64_t out_cols, int64_t col, const T* table, int64_t rows, int64_t dim,
               const int64_t* offsets, const int64_t* ids, int64_t batch, Pooling pooling) {
#pragma omp parallel for schedule(static) if (batch >= kParallelMinRows)
  for (int64_t r = 0; r < batch; ++r) {
    T* o = out + r * out_cols + col;  // [dim]
    for (int64_t d = 0; d < dim; ++d) o[d] = T(0);
    for (int64_t k = offsets[r]; k < offsets[r + 1]; ++k) {
      if (k + kPrefetchAhead < offsets[batch])  // rows scattered over the table
        prefetch_row(table + embedding_row(ids[k + kPrefetchAhead], rows) * dim, static_cast<size_t>(dim) * sizeof(T));
      const T* e = table + embedding_row(ids[k], rows) * dim;
      for (int64_t d = 0; d < dim; ++d) o[d] += e[d];
    }
    const T s = pool_scale<T>(pooling, offsets[r + 1] - offsets[r]);
    if (s != T(1))
      for (int64_t d = 0; d < dim; ++d) o[d] *= s;
  }
}

using Contribution = EmbeddingBagWorkspace::Contribution;

// Stable LSD radix sort by table row, a byte per pass, as many passes as `max_row` has bytes:
// linear in the contributions (a comparison sort of them was 3% of the paper-sized NCS step).
void sort_by_row(std::vector<Contribution>& v, std::vector<Contribution>& buffer, int64_t max_row) {
  buffer.resize(v.size());
  for (int shift = 0; shift < 64 && (max_row >> shift) > 0; shift += 8) {
    size_t start[257] = {};
    for (const Contribution& c : v) ++start[((c.table_row >> shift) & 0xff) + 1];
    for (int d = 0; d < 256; ++d) start[d + 1] += start[d];
    for (const Contribution& c : v) buffer[start[(c.table_row >> shift) & 0xff]++] = c;
    v.swap(buffer);
  }
}

template <class T>
void segment_sum_t(T* values, int64_t dim, const T* dout, int64_t out_cols, const std::vector<Contribution>& sorted,
                   const std::vector<int64_t>& segment_begin) {
  const int64_t unique = static_cast<int64_t>(segment_begin.size()) - 1;
#pragma omp parallel for schedule(static) if (unique >= kParallelMinRows)
  for (int64_t u = 0; u < unique; ++u) {
    T* v = values + u * dim;  // [dim]
    for (int64_t d = 0; d < dim; ++d) v[d] = T(0);
    for (int64_t i = segment_begin[u]; i < segment_begin[u + 1]; ++i) {
      const Contribution& c = sorted[static_cast<size_t>(i)];
      const T* g = dout + c.batch_row * out_cols + c.col;
      const T s = pool_scale<T>(Pooling::Mean, c.divisor);  // same rounding as the forward
      for (int64_t d = 0; d < dim; ++d) v[d] += g[d] * s;
    }
  }
}

}  // namespace

void embedding_bag_forward(Tensor& out, int64_t col, const Tensor& table, const int64_t* offsets,
                           const int64_t* ids, int64_t batch, Pooling pooling) {
  NCSREC_CHECK(table.ndim() == 2 && table.dim(0) > 0, "embedding table must be [V > 0, dim], got " << table.describe());
  NCSREC_CHECK(out.ndim() == 2 && out.dim(0) >= batch, "embedding bag output " << out.describe() << " for batch "
                                                                               << batch);
  NCSREC_CHECK(out.dtype() == table.dtype(), "embedding bag output " << out.describe() << " vs table "
                                                                     << table.describe());
  NCSREC_CHECK(out.device() == Device::CPU && table.device() == Device::CPU,
               "the CPU embedding bag got " << out.describe() << " and " << table.describe());
  const int64_t dim = table.dim(1);
  NCSREC_CHECK(col >= 0 && col + dim <= out.dim(1),
               "embedding block [" << col << ", " << col + dim << ") outside output " << out.describe());
  check_csr(offsets, ids, batch);
  if (table.dtype() == DType::F32) {
    forward_t(out.data<float>(), out.dim(1), col, table.data<float>(), table.dim(0), dim, offsets, ids, batch,
              pooling);
  } else {
    forward_t(out.data<double>(), out.dim(1), col, table.data<double>(), table.dim(0), dim, offsets, ids, batch,
              pooling);
  }
}

void embedding_bag_backward(SparseGrad& grad, EmbeddingBagWorkspace& ws, const Tensor& dout,
                            const std::vector<SlotInput>& slots, int64_t batch, int64_t table_rows, int64_t dim) {
  NCSREC_CHECK(table_rows > 0 && dim > 0, "embedding bag backward for a table [" << table_rows << ", " << dim << "]");
  NCSREC_CHECK(dout.ndim() == 2 && dout.dim(0) >= batch, "embedding bag dout " << dout.describe() << " for batch "
                                                                               << batch);
  NCSREC_CHECK(dout.dtype() == DType::F32 || dout.dtype() == DType::F64, "embedding bag dout " << dout.describe());
  NCSREC_CHECK(dout.device() == Device::CPU, "the CPU embedding bag got " << dout.describe());
  const int64_t out_cols = dout.dim(1);
  constexpr int64_t kInt32 = std::numeric_limits<int32_t>::max();
  NCSREC_CHECK(batch <= kInt32 && out_cols <= kInt32 && static_cast<int64_t>(slots.size()) <= kInt32,
               "embedding bag backward: batch " << batch << " or dout " << dout.describe() << " beyond 2^31");

  // Contributions in (slot, batch row, k) order, then sorted stably by table row, so that every
  // row's sum runs in (slot, row, k) order.
  std::vector<Contribution>& contributions = ws.contributions;
  contributions.clear();
  for (const SlotInput& slot : slots) {
    NCSREC_CHECK(slot.col >= 0 && slot.col + dim <= out_cols,
                 "embedding block [" << slot.col << ", " << slot.col + dim << ") outside dout " << dout.describe());
    check_csr(slot.offsets, slot.ids, batch);
    contributions.reserve(contributions.size() + static_cast<size_t>(slot.offsets[batch]));
    for (int64_t r = 0; r < batch; ++r) {
      const int64_t begin = slot.offsets[r], end = slot.offsets[r + 1];
      NCSREC_CHECK(end - begin <= kInt32, "embedding bag backward: a bag of " << end - begin << " ids");
      const int32_t divisor = slot.pooling == Pooling::Mean ? static_cast<int32_t>(end - begin) : 1;
      for (int64_t k = begin; k < end; ++k)
        contributions.push_back({embedding_row(slot.ids[k], table_rows), static_cast<int32_t>(r),
                                 static_cast<int32_t>(slot.col), divisor});
    }
  }
  sort_by_row(contributions, ws.sort_buffer, table_rows - 1);

  grad.rows.clear();
  std::vector<int64_t>& segment_begin = ws.segment_begin;
  segment_begin.clear();
  for (size_t i = 0; i < contributions.size(); ++i) {
    if (i == 0 || contributions[i].table_row != contributions[i - 1].table_row) {
      grad.rows.push_back(contributions[i].table_row);
      segment_begin.push_back(static_cast<int64_t>(i));
    }
  }
  segment_begin.push_back(static_cast<int64_t>(contributions.size()));

  const int64_t unique = static_cast<int64_t>(grad.rows.size());
  grad.values = ensure_buffer(ws.values, unique, dim, dout.dtype(), Device::CPU);
  if (dout.dtype() == DType::F32) {
    segment_sum_t(grad.values.data<float>(), dim, dout.data<float>(), out_cols, contributions, segment_begin);
  } else {
    segment_sum_t(grad.values.data<double>(), dim, dout.data<double>(), out_cols, contributions, segment_begin);
  }
}

SparseGrad embedding_bag_backward(const Tensor& dout, const std::vector<SlotInput>& slots, int64_t batch,
                                  int64_t table_rows, int64_t dim) {
  SparseGrad grad;
  EmbeddingBagWorkspace workspace;
  embedding_bag_backward(grad, workspace, dout, slots, batch, table_rows, dim);
  return grad;
}

}  // namespace ncsrec

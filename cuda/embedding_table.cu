// The GPU embedding table (cuda/embedding_table.h): the hash index, row initialisation, pooled
// lookup and the fused segment-sum backward with the sparse optimizer's update.
//
// Float arithmetic that must match the CPU reference uses the _rn intrinsics (__fadd_rn,
// __fmul_rn, ...), which nvcc never contracts into fused multiply-adds: the sums and the
// optimizer updates then round exactly as embedding_bag.cpp and embedding_table.cpp do.
#include "cuda/embedding_table.h"

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/device_table.h"
#include "core/random.h"
#include "cuda/check.h"
#include "cuda/common.cuh"

namespace ncsrec {
namespace {

using namespace cuda_detail;

constexpr unsigned long long kEmptySlot = static_cast<unsigned long long>(INT64_MIN);

#define GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

__global__ void iota_kernel(int64_t* p, int64_t n) {
  GRID_STRIDE(i, n) p[i] = i;
}

__global__ void fill_i64_kernel(int64_t* p, int64_t n, int64_t v) {
  GRID_STRIDE(i, n) p[i] = v;
}

__global__ void fill_f32_kernel(float* p, int64_t n, float v) {
  GRID_STRIDE(i, n) p[i] = v;
}

// A fixed table's key of an id: its row, the non-negative remainder (embedding_row on the CPU).
__global__ void fixed_rows_kernel(const int64_t* ids, int64_t n, int64_t rows, int64_t* keys) {
  GRID_STRIDE(i, n) {
    const int64_t r = ids[i] % rows;
    keys[i] = r < 0 ? r + rows : r;
  }
}

// 1 where a run of equal keys starts in the sorted keys.
__global__ void run_start_flags_kernel(const int64_t* sorted, int64_t n, int32_t* flags) {
  GRID_STRIDE(i, n) flags[i] = (i == 0 || sorted[i] != sorted[i - 1]) ? 1 : 0;
}

// run_id1[i] = 1 + the unique index of sorted[i] (the inclusive scan of the flags): each run's
// key and its first position; run_begin[U] = n closes the last run.
__global__ void compact_runs_kernel(const int64_t* sorted, const int32_t* run_id1, int64_t n, int64_t* unique_keys,
                                    int64_t* run_begin) {
  GRID_STRIDE(i, n) {
    if (i == 0 || sorted[i] != sorted[i - 1]) {
      const int64_t u = run_id1[i] - 1;
      unique_keys[u] = sorted[i];
      run_begin[u] = i;
    }
    if (i == n - 1) run_begin[run_id1[i]] = n;
  }
}

__global__ void copy_i64_kernel(const int64_t* src, int64_t n, int64_t* dst) {
  GRID_STRIDE(i, n) dst[i] = src[i];
}

// Hash tables: one thread per unique id of the batch (so no two threads ever look for the same
// id): the row of the id, claiming a slot and a row for a new id when `insert` (and, when
// `admit` is not null, admit[u] > 0). row -1: no row (absent and not inserted, or the table is
// full: then *full is set).
__global__ void find_or_insert_kernel(const int64_t* unique_ids, int64_t U, unsigned long long* slot_keys,
                                      int64_t* slot_rows, uint64_t slot_mask, unsigned long long* row_count,
                                      int64_t capacity, int64_t* row_keys, int64_t* unique_rows, uint8_t* is_new,
                                      int* full, bool may_insert, const int64_t* admit) {
  GRID_STRIDE(u, U) {
    const bool insert = may_insert && (admit == nullptr || admit[u] > 0);
    const int64_t id = unique_ids[u];
    const auto want = static_cast<unsigned long long>(id);
    uint64_t slot = mix64(static_cast<uint64_t>(id)) & slot_mask;
    int64_t row = -1;
    uint8_t fresh = 0;
    bool settled = false;
    for (uint64_t probe = 0; probe <= slot_mask; ++probe, slot = (slot + 1) & slot_mask) {
      unsigned long long seen = reinterpret_cast<volatile unsigned long long*>(slot_keys)[slot];
      if (seen == kEmptySlot) {
        if (!insert) {
          settled = true;
          break;
        }
        const unsigned long long before = atomicCAS(&slot_keys[slot], kEmptySlot, want);
        if (before == kEmptySlot) {  // the slot is ours: take a row
          const unsigned long long r = atomicAdd(row_count, 1ULL);
          if (static_cast<int64_t>(r) < capacity) {
            row = static_cast<int64_t>(r);
            slot_rows[slot] = row;
            row_keys[row] = id;
            fresh = 1;
          } else {
            atomicExch(full, 1);  // the slot keeps row -1: the id reads zeros
          }
          settled = true;
          break;
        }
        seen = before;  // another id took it first: go on probing
      }
      if (seen == want) {  // inserted by an earlier batch (a batch's ids are unique)
        row = slot_rows[slot];
        settled = true;
        break;
      }
    }
    if (!settled && insert) atomicExch(full, 1);  // every slot probed
    unique_rows[u] = row;
    is_new[u] = fresh;
  }
}

// Rows from (table seed, key), as init_rows in embedding_table.cpp: one generator per row, drawn
// in element order. rows[u] receives keys[u] (when is_new is null, or is_new[u]).
__global__ void init_rows_kernel(const int64_t* keys, const int64_t* rows, const uint8_t* is_new, int64_t U,
                                 float* values, int64_t dim, uint64_t table_seed, double init_scale) {
  GRID_STRIDE(u, U) {
    if (is_new && !is_new[u]) continue;
    const int64_t row = rows ? rows[u] : u;
    Rng rng(hash_combine(table_seed, static_cast<uint64_t>(keys ? keys[u] : u)));
    for (int64_t d = 0; d < dim; ++d) values[row * dim + d] = static_cast<float>(init_scale * rng.normal());
  }
}

// A new row's optimizer state and counters, as EmbeddingTable::append gives them: rows[u] when
// is_new[u] (or every u when is_new is null).
struct RowState {
  float* acc;  // adagrad, else null
  float* m;    // adam, else null
  float* v;
  int64_t* steps;
  int64_t* count;
  int64_t* last_seen;
  int64_t* updated;
  float initial_accumulator;
};
__global__ void reset_rows_kernel(const int64_t* rows, const uint8_t* is_new, int64_t U, int64_t dim, RowState st) {
  GRID_STRIDE(u, U) {
    if (is_new && !is_new[u]) continue;
    const int64_t row = rows[u];
    if (row < 0) continue;
    for (int64_t d = 0; d < dim; ++d) {
      if (st.acc) st.acc[row * dim + d] = st.initial_accumulator;
      if (st.m) st.m[row * dim + d] = 0.0f;
      if (st.v) st.v[row * dim + d] = 0.0f;
    }
    if (st.steps) st.steps[row] = 0;
    st.count[row] = 0;
    st.last_seen[row] = -1;
    st.updated[row] = -1;
  }
}

// A training batch's reads: each unique row's count grows by its occurrences, and it was seen
// on `day` (ShardedTable::count_reads on the CPU).
__global__ void count_reads_kernel(const int64_t* unique_rows, const int64_t* run_begin, int64_t U, int64_t* count,
                                   int64_t* last_seen, int64_t day) {
  GRID_STRIDE(u, U) {
    const int64_t row = unique_rows[u];
    if (row < 0) continue;
    count[row] += run_begin[u + 1] - run_begin[u];
    last_seen[row] = day;
  }
}

__global__ void mark_updated_kernel(const int64_t* unique_rows, int64_t U, int64_t* updated, int64_t step) {
  GRID_STRIDE(u, U) {
    const int64_t row = unique_rows[u];
    if (row >= 0) updated[row] = step;
  }
}

// Loading a hash table: key u of `keys` (unique) gets row u.
__global__ void insert_keys_kernel(const int64_t* keys, int64_t n, unsigned long long* slot_keys, int64_t* slot_rows,
                                   uint64_t slot_mask, int64_t* row_keys) {
  GRID_STRIDE(u, n) {
    const int64_t id = keys[u];
    uint64_t slot = mix64(static_cast<uint64_t>(id)) & slot_mask;
    for (uint64_t probe = 0; probe <= slot_mask; ++probe, slot = (slot + 1) & slot_mask)
      if (atomicCAS(&slot_keys[slot], kEmptySlot, static_cast<unsigned long long>(id)) == kEmptySlot) {
        slot_rows[slot] = u;
        row_keys[u] = id;
        break;
      }
  }
}

// Admission: one thread per unique id of the batch. An id without a row adds its reads to its
// pending count; when they reach admit_after it leaves the pending ids and admit_reads[u] is
// its reads in all (else 0). With admit_after > 1 a new pending id claims a slot of the pending
// index (which the host keeps at most half full); with admit_after 1 the index (when there is
// one: pending ids loaded from a checkpoint) is only read. tally: [0] ids admitted, [1] slots
// holding an id, [2] ids pending. A slot whose count is 0 holds no pending id (admitted).
__global__ void pending_reads_kernel(const int64_t* unique_ids, const int64_t* unique_rows, const int64_t* run_begin,
                                     int64_t U, unsigned long long* pend_keys, int64_t* pend_count, int64_t* pend_seen,
                                     uint64_t pend_mask, bool use_index, int64_t admit_after, int64_t day,
                                     int64_t* admit_reads, unsigned long long* tally) {
  GRID_STRIDE(u, U) {
    admit_reads[u] = 0;
    if (unique_rows[u] >= 0) continue;
    const auto id = static_cast<unsigned long long>(unique_ids[u]);
    const bool claim = admit_after > 1;
    int64_t slot = -1, prior = 0;
    if (use_index) {
      for (uint64_t i = mix64(id) & pend_mask;; i = (i + 1) & pend_mask) {
        const unsigned long long key =
            claim ? atomicCAS(&pend_keys[i], kEmptySlot, id) : reinterpret_cast<volatile unsigned long long*>(pend_keys)[i];
        if (key == kEmptySlot) {
          if (claim) {
            atomicAdd(&tally[1], 1ULL);
            slot = static_cast<int64_t>(i);
          }
          break;
        }
        if (key == id) {
          slot = static_cast<int64_t>(i);
          break;
        }
      }
      if (slot >= 0) prior = pend_count[slot];
    }
    const int64_t reads = prior + (run_begin[u + 1] - run_begin[u]);
    if (reads >= admit_after) {
      admit_reads[u] = reads;
      if (prior > 0) {
        pend_count[slot] = 0;
        atomicAdd(&tally[2], ~0ULL);  // one pending id fewer
      }
      atomicAdd(&tally[0], 1ULL);
    } else {  // admit_after > 1: the id has its slot
      pend_count[slot] = reads;
      pend_seen[slot] = day;
      if (prior == 0) atomicAdd(&tally[2], 1ULL);
    }
  }
}

// The pending ids (count > 0) of `n` slots, put into a fresh pending index (empty slots, counts 0).
__global__ void rehash_pending_kernel(const unsigned long long* from_keys, const int64_t* from_count,
                                      const int64_t* from_seen, int64_t n, unsigned long long* keys, int64_t* count,
                                      int64_t* seen, uint64_t mask) {
  GRID_STRIDE(i, n) {
    const unsigned long long id = from_keys[i];
    if (id == kEmptySlot || from_count[i] <= 0) continue;
    uint64_t slot = mix64(id) & mask;
    while (atomicCAS(&keys[slot], kEmptySlot, id) != kEmptySlot) slot = (slot + 1) & mask;
    count[slot] = from_count[i];
    seen[slot] = from_seen[i];
  }
}

// An admitted id's row counts every read of the id, those before its admission included.
__global__ void admitted_counts_kernel(const int64_t* unique_rows, const uint8_t* is_new, const int64_t* admit_reads,
                                       int64_t U, int64_t* count) {
  GRID_STRIDE(u, U) {
    if (is_new[u] && unique_rows[u] >= 0) count[unique_rows[u]] = admit_reads[u];
  }
}

// Eviction: row from[i] moves into row to[i], in every column (a null column is skipped).
struct RowColumns {
  float* wide[4];       // [rows, dim]: values, accumulator, m, v
  int64_t* narrow[5];   // [rows]: steps, count, last_seen, updated, row_keys
};
__global__ void move_rows_kernel(const int64_t* from, const int64_t* to, int64_t n, int64_t dim, RowColumns c) {
  GRID_STRIDE(i, n) {
    const int64_t f = from[i], t = to[i];
    for (float* w : c.wide)
      if (w)
        for (int64_t d = 0; d < dim; ++d) w[t * dim + d] = w[f * dim + d];
    for (int64_t* x : c.narrow)
      if (x) x[t] = x[f];
  }
}

// The row each position of the batch reads.
__global__ void scatter_rows_kernel(const int64_t* sorted_positions, const int32_t* run_id1, const int64_t* unique_rows,
                                    int64_t n, int64_t* row_of_position) {
  GRID_STRIDE(i, n) row_of_position[sorted_positions[i]] = unique_rows[run_id1[i] - 1];
}

// Bags are numbered slot-major, bag = slot · batch + row. For one slot (its positions start at
// `base` in the concatenated ids): each position's bag, and each bag's first position and count.
__global__ void slot_bags_kernel(const int64_t* offsets, int64_t batch, int64_t slot, int64_t base,
                                 int64_t* bag_of_position, int64_t* bag_start, int64_t* bag_count) {
  GRID_STRIDE(r, batch) {
    const int64_t bag = slot * batch + r, begin = offsets[r], end = offsets[r + 1];
    bag_start[bag] = base + begin;
    bag_count[bag] = end - begin;
    for (int64_t k = begin; k < end; ++k) bag_of_position[base + k] = bag;
  }
}

// The pooling factor of a bag of `count` ids: 1 for sum, T(1)/count for mean (pool_scale on the CPU).
__device__ inline float pool_scale(bool mean, int64_t count) {
  return (mean && count > 0) ? __fdiv_rn(1.0f, static_cast<float>(count)) : 1.0f;
}

// out[row, col(slot) + d] = pool over the bag's positions, in order, of values[row(k), d] (rows
// -1 read zeros); one thread per (bag, d).
__global__ void pooled_kernel(const int64_t* bag_start, const int64_t* bag_count, const int64_t* slot_cols,
                              const uint8_t* slot_mean, const int64_t* row_of_position, const float* values,
                              int64_t bags, int64_t batch, int64_t dim, float* out, int64_t out_cols) {
  GRID_STRIDE(e, bags * dim) {
    const int64_t bag = e / dim, d = e % dim;
    float sum = 0.0f;
    for (int64_t k = bag_start[bag]; k < bag_start[bag] + bag_count[bag]; ++k) {
      const int64_t row = row_of_position[k];
      if (row >= 0) sum = __fadd_rn(sum, values[row * dim + d]);
    }
    const float s = pool_scale(slot_mean[bag / batch] != 0, bag_count[bag]);
    out[(bag % batch) * out_cols + slot_cols[bag / batch] + d] = s != 1.0f ? __fmul_rn(sum, s) : sum;
  }
}

// The gradient of unique row u, element d: its positions' output gradients in position order
// (slot by slot, then row by row: the CPU's (slot, row, k) order), each times its bag's pooling
// factor.
struct GradientSource {
  const int64_t* run_begin;
  const int64_t* sorted_positions;
  const int64_t* bag_of_position;
  const int64_t* bag_count;
  const int64_t* slot_cols;
  const uint8_t* slot_mean;
  const float* dout;
  int64_t dout_cols, batch, dim;
};
__device__ inline float segment_gradient(const GradientSource& src, int64_t u, int64_t d) {
  float g = 0.0f;
  for (int64_t i = src.run_begin[u]; i < src.run_begin[u + 1]; ++i) {
    const int64_t bag = src.bag_of_position[src.sorted_positions[i]];
    const float gi = src.dout[(bag % src.batch) * src.dout_cols + src.slot_cols[bag / src.batch] + d];
    g = __fadd_rn(g, __fmul_rn(gi, pool_scale(src.slot_mean[bag / src.batch] != 0, src.bag_count[bag])));
  }
  return g;
}

// w -= lr · g
__global__ void sgd_kernel(GradientSource src, const int64_t* unique_rows, int64_t U, float* values, float lr) {
  const int64_t dim = src.dim;
  GRID_STRIDE(e, U * dim) {
    const int64_t u = e / dim, d = e % dim, row = unique_rows[u];
    if (row < 0) continue;
    const int64_t w = row * dim + d;
    values[w] = __fsub_rn(values[w], __fmul_rn(lr, segment_gradient(src, u, d)));
  }
}

// acc += g²; w -= lr · g / (sqrt(acc) + eps)
__global__ void adagrad_kernel(GradientSource src, const int64_t* unique_rows, int64_t U, float* values, float* acc,
                               float lr, float eps) {
  const int64_t dim = src.dim;
  GRID_STRIDE(e, U * dim) {
    const int64_t u = e / dim, d = e % dim, row = unique_rows[u];
    if (row < 0) continue;  // an id without a row gets no gradient
    const float g = segment_gradient(src, u, d);
    const int64_t w = row * dim + d;
    const float a = __fadd_rn(acc[w], __fmul_rn(g, g));
    acc[w] = a;
    values[w] = __fsub_rn(values[w], __fdiv_rn(__fmul_rn(lr, g), __fadd_rn(__fsqrt_rn(a), eps)));
  }
}

// Lazy Adam: t = the row's steps + 1 (steps is incremented after, by steps_kernel);
// m = β1 m + (1-β1) g; v = β2 v + (1-β2) g²; w -= lr · (m / c1) / (sqrt(v / c2) + eps).
__global__ void adam_kernel(GradientSource src, const int64_t* unique_rows, int64_t U, float* values, float* m, float* v,
                            const int64_t* steps, float lr, double beta1, double beta2, float eps) {
  const int64_t dim = src.dim;
  GRID_STRIDE(e, U * dim) {
    const int64_t u = e / dim, d = e % dim, row = unique_rows[u];
    if (row < 0) continue;
    const float g = segment_gradient(src, u, d);
    const double t = static_cast<double>(steps[row] + 1);
    const float c1 = static_cast<float>(1.0 - pow(beta1, t)), c2 = static_cast<float>(1.0 - pow(beta2, t));
    const float b1 = static_cast<float>(beta1), b2 = static_cast<float>(beta2);
    const int64_t w = row * dim + d;
    const float mw = __fadd_rn(__fmul_rn(b1, m[w]), __fmul_rn(__fsub_rn(1.0f, b1), g));
    const float vw = __fadd_rn(__fmul_rn(b2, v[w]), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, b2), g), g));
    m[w] = mw;
    v[w] = vw;
    values[w] = __fsub_rn(values[w], __fdiv_rn(__fmul_rn(lr, __fdiv_rn(mw, c1)), __fadd_rn(__fsqrt_rn(__fdiv_rn(vw, c2)), eps)));
  }
}

__global__ void steps_kernel(const int64_t* unique_rows, int64_t U, int64_t* steps) {
  GRID_STRIDE(u, U) {
    const int64_t row = unique_rows[u];
    if (row >= 0) ++steps[row];
  }
}

void launch_check() { CUDA_CHECK(cudaGetLastError()); }

template <class T>
std::vector<T> to_host(const T* device, int64_t n) {
  std::vector<T> host(static_cast<size_t>(n));
  if (n > 0) CUDA_CHECK(cudaMemcpy(host.data(), device, host.size() * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

}  // namespace

struct CudaEmbeddingTable::Buffers {
  // The table.
  DeviceVector<float> values, acc, m, v;  // [rows, dim]; acc (adagrad) or m, v (adam)
  DeviceVector<int64_t> steps;            // adam: [rows]
  DeviceVector<int64_t> count, last_seen, updated;  // [rows]: reads, last day read, last step updated
  // Hash tables.
  uint64_t slot_mask = 0;
  DeviceVector<unsigned long long> slot_keys;  // [slots]: id or kEmptySlot
  DeviceVector<int64_t> slot_rows;             // [slots]: row of the slot's id, -1 none
  DeviceVector<int64_t> row_keys;              // [rows]: id of each row
  DeviceVector<unsigned long long> row_count;  // [1]
  DeviceVector<int> full;                      // [1]
  // Admission and eviction (admission()): the pending ids' index, its slots holding an id and
  // its ids pending (the host's mirror of tally [1], [2]); rows inserted up to counted_rows
  // rows, and rows evicted.
  uint64_t pend_mask = 0;
  DeviceVector<unsigned long long> pend_keys;  // [slots]: id or kEmptySlot
  DeviceVector<int64_t> pend_count, pend_seen; // [slots]: reads so far (0: none pending), last day read
  int64_t pend_used = 0, pend_live = 0;
  DeviceVector<unsigned long long> tally;      // [3], pending_reads_kernel's
  int64_t inserted = 0, counted_rows = 0, evicted_full = 0;
  // The last forward's batch (backward reads it).
  int64_t batch = 0, nnz = 0, unique = 0, slots = 0;
  bool trained_forward = false;
  DeviceVector<int64_t> all_ids, keys, positions, sorted_keys, sorted_positions, unique_keys, run_begin, unique_rows,
      row_of_position, bag_of_position, bag_start, bag_count, slot_cols, admit_reads;
  DeviceVector<uint8_t> slot_mean;
  DeviceVector<int32_t> flags, run_id1;
  DeviceVector<uint8_t> is_new;
  DeviceVector<char> scratch;  // CUB temporary storage
  int64_t reserved_slots = 0, reserved_bags = 0, reserved_ids = 0;  // what the per-batch buffers hold
};

CudaEmbeddingTable::CudaEmbeddingTable(const CudaEmbeddingOptions& options)
    : options_(options), table_seed_(hash_combine(options.seed, hash_string(options.name))),
      buffers_(std::make_unique<Buffers>()) {
  NCSREC_CHECK(options_.rows > 0 && options_.dim > 0,
               "CudaEmbeddingTable " << options_.name << ": rows " << options_.rows << ", dim " << options_.dim);
  NCSREC_CHECK(options_.optimizer == "sgd" || options_.optimizer == "adagrad" || options_.optimizer == "adam",
               "CudaEmbeddingTable " << options_.name << ": optimizer " << options_.optimizer
                                     << " (sgd, adagrad or adam)");
  Buffers& b = *buffers_;
  const int64_t n = options_.rows * options_.dim;
  b.values.reserve(n);
  if (options_.optimizer == "sgd") {
  } else if (options_.optimizer == "adagrad") {
    fill_f32_kernel<<<blocks_for(n), kThreads>>>(b.acc.reserve(n), n, static_cast<float>(options_.initial_accumulator));
    launch_check();
  } else {
    CUDA_CHECK(cudaMemset(b.m.reserve(n), 0, static_cast<size_t>(n) * sizeof(float)));
    CUDA_CHECK(cudaMemset(b.v.reserve(n), 0, static_cast<size_t>(n) * sizeof(float)));
    CUDA_CHECK(cudaMemset(b.steps.reserve(options_.rows), 0, static_cast<size_t>(options_.rows) * sizeof(int64_t)));
  }
  const int64_t R = options_.rows;
  CUDA_CHECK(cudaMemset(b.count.reserve(R), 0, static_cast<size_t>(R) * sizeof(int64_t)));
  fill_i64_kernel<<<blocks_for(R), kThreads>>>(b.last_seen.reserve(R), R, -1);
  launch_check();
  fill_i64_kernel<<<blocks_for(R), kThreads>>>(b.updated.reserve(R), R, -1);
  launch_check();
  if (options_.hash) {
    uint64_t slots = 16;
    while (slots < 2 * static_cast<uint64_t>(options_.rows)) slots *= 2;
    b.slot_mask = slots - 1;
    const auto n_slots = static_cast<int64_t>(slots);
    b.slot_keys.reserve(n_slots);
    b.slot_rows.reserve(n_slots);
    b.row_keys.reserve(options_.rows);
    b.row_count.reserve(1);
    index_rows(nullptr, 0);  // empty
    CUDA_CHECK(cudaMemset(b.full.reserve(1), 0, sizeof(int)));
    NCSREC_CHECK(options_.admit_after >= 1, "CudaEmbeddingTable " << options_.name << ": admit_after "
                                                                  << options_.admit_after);
    b.tally.reserve(3);
    ensure_pending_room(0);  // with admit_after > 1
  } else {
    // Every row of a fixed table now, keyed by its index.
    init_rows_kernel<<<blocks_for(options_.rows), kThreads>>>(nullptr, nullptr, nullptr, options_.rows, b.values.get(),
                                                               options_.dim, table_seed_, options_.init_scale);
    launch_check();
  }
  CUDA_CHECK(cudaDeviceSynchronize());
}

CudaEmbeddingTable::~CudaEmbeddingTable() = default;

int64_t CudaEmbeddingTable::rows() const {
  if (!options_.hash) return options_.rows;
  unsigned long long count = 0;
  CUDA_CHECK(cudaMemcpy(&count, buffers_->row_count.get(), sizeof(count), cudaMemcpyDeviceToHost));
  return std::min<int64_t>(static_cast<int64_t>(count), options_.rows);
}

void CudaEmbeddingTable::forward(const int64_t* offsets, const int64_t* ids, int64_t batch, int64_t nnz, float* out,
                                 bool training) {
  forward({Slot{offsets, ids, nnz, 0}}, batch, out, options_.dim, training);
}

void CudaEmbeddingTable::forward(const std::vector<Slot>& slots, int64_t batch, float* out, int64_t out_cols,
                                 bool training) {
  Buffers& b = *buffers_;
  const int64_t dim = options_.dim, S = static_cast<int64_t>(slots.size());
  NCSREC_CHECK(S >= 1 && batch >= 0, "CudaEmbeddingTable " << options_.name << ": " << S << " slots, batch " << batch);
  int64_t nnz = 0;
  std::vector<int64_t> cols;
  std::vector<uint8_t> means;
  for (const Slot& slot : slots) {
    NCSREC_CHECK(slot.nnz >= 0 && slot.col >= 0 && slot.col + dim <= out_cols,
                 "CudaEmbeddingTable " << options_.name << ": a slot of " << slot.nnz << " ids at column " << slot.col
                                       << " of " << out_cols);
    nnz += slot.nnz;
    cols.push_back(slot.col);
    means.push_back(slot.mean < 0 ? options_.mean_pooling : slot.mean != 0);
  }
  NCSREC_CHECK(nnz <= INT32_MAX, "CudaEmbeddingTable " << options_.name << ": " << nnz << " ids in one batch");
  // Past what the plan reserved: grow by half again at least, so that growing is rare.
  if (S > b.reserved_slots || S * batch > b.reserved_bags || nnz > b.reserved_ids)
    reserve_batch(std::max(S, b.reserved_slots), std::max(S * batch, b.reserved_bags),
                  nnz > b.reserved_ids ? std::max(nnz, b.reserved_ids + b.reserved_ids / 2) : b.reserved_ids);
  b.batch = batch;
  b.nnz = nnz;
  b.slots = S;
  b.trained_forward = false;
  b.unique = 0;
  const int64_t bags = S * batch;
  CUDA_CHECK(cudaMemcpy(b.slot_cols.reserve(S), cols.data(), static_cast<size_t>(S) * sizeof(int64_t),
                        cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(b.slot_mean.reserve(S), means.data(), means.size(), cudaMemcpyHostToDevice));
  // Every slot's ids one after the other (position = slot base + k), and the bags.
  int64_t* all_ids = b.all_ids.reserve(nnz);
  int64_t base = 0;
  b.bag_start.reserve(bags);
  b.bag_count.reserve(bags);
  b.bag_of_position.reserve(nnz);
  for (int64_t s = 0; s < S; ++s) {
    const Slot& slot = slots[static_cast<size_t>(s)];
    if (slot.nnz > 0)
      CUDA_CHECK(cudaMemcpy(all_ids + base, slot.ids, static_cast<size_t>(slot.nnz) * sizeof(int64_t),
                            cudaMemcpyDeviceToDevice));
    if (batch > 0) {
      slot_bags_kernel<<<blocks_for(batch), kThreads>>>(slot.offsets, batch, s, base, b.bag_of_position.get(),
                                                        b.bag_start.get(), b.bag_count.get());
      launch_check();
    }
    base += slot.nnz;
  }
  if (nnz > 0) {
    const int n = static_cast<int>(nnz);
    // The keys of the positions: a fixed table's rows, a hash table's ids.
    const int64_t* keys = all_ids;
    if (!options_.hash) {
      fixed_rows_kernel<<<blocks_for(nnz), kThreads>>>(all_ids, nnz, options_.rows, b.keys.reserve(nnz));
      launch_check();
      keys = b.keys.get();
    }
    iota_kernel<<<blocks_for(nnz), kThreads>>>(b.positions.reserve(nnz), nnz);
    launch_check();
    // Keys sorted with their positions (stable: a run of one key keeps its positions ascending).
    size_t sort_bytes = 0, scan_bytes = 0;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, keys, b.sorted_keys.reserve(nnz), b.positions.get(),
                                               b.sorted_positions.reserve(nnz), n));
    CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, b.flags.reserve(nnz), b.run_id1.reserve(nnz), n));
    char* scratch = b.scratch.reserve(static_cast<int64_t>(std::max(sort_bytes, scan_bytes)));
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(scratch, sort_bytes, keys, b.sorted_keys.get(), b.positions.get(),
                                               b.sorted_positions.get(), n));
    run_start_flags_kernel<<<blocks_for(nnz), kThreads>>>(b.sorted_keys.get(), nnz, b.flags.get());
    launch_check();
    CUDA_CHECK(cub::DeviceScan::InclusiveSum(scratch, scan_bytes, b.flags.get(), b.run_id1.get(), n));
    int32_t unique = 0;
    CUDA_CHECK(cudaMemcpy(&unique, b.run_id1.get() + (nnz - 1), sizeof(unique), cudaMemcpyDeviceToHost));
    b.unique = unique;
    compact_runs_kernel<<<blocks_for(nnz), kThreads>>>(b.sorted_keys.get(), b.run_id1.get(), nnz,
                                                       b.unique_keys.reserve(b.unique), b.run_begin.reserve(b.unique + 1));
    launch_check();
    const bool admitting = training && admission();
    if (options_.hash) {
      if (admitting) count_pending_reads();
      find_or_insert_kernel<<<blocks_for(b.unique), kThreads>>>(
          b.unique_keys.get(), b.unique, b.slot_keys.get(), b.slot_rows.get(), b.slot_mask, b.row_count.get(),
          options_.rows, b.row_keys.get(), b.unique_rows.reserve(b.unique), b.is_new.reserve(b.unique), b.full.get(),
          training, admitting ? b.admit_reads.get() : nullptr);
      launch_check();
      init_rows_kernel<<<blocks_for(b.unique), kThreads>>>(b.unique_keys.get(), b.unique_rows.get(), b.is_new.get(),
                                                           b.unique, b.values.get(), dim, table_seed_,
                                                           options_.init_scale);
      launch_check();
      const bool adagrad = options_.optimizer == "adagrad", adam = options_.optimizer == "adam";
      const RowState fresh{adagrad ? b.acc.get() : nullptr, adam ? b.m.get() : nullptr, adam ? b.v.get() : nullptr,
                           adam ? b.steps.get() : nullptr, b.count.get(), b.last_seen.get(), b.updated.get(),
                           static_cast<float>(options_.initial_accumulator)};
      reset_rows_kernel<<<blocks_for(b.unique), kThreads>>>(b.unique_rows.get(), b.is_new.get(), b.unique, dim, fresh);
      launch_check();
    } else {
      copy_i64_kernel<<<blocks_for(b.unique), kThreads>>>(b.unique_keys.get(), b.unique, b.unique_rows.reserve(b.unique));
      launch_check();
    }
    scatter_rows_kernel<<<blocks_for(nnz), kThreads>>>(b.sorted_positions.get(), b.run_id1.get(), b.unique_rows.get(),
                                                       nnz, b.row_of_position.reserve(nnz));
    launch_check();
    if (training) {
      count_reads_kernel<<<blocks_for(b.unique), kThreads>>>(b.unique_rows.get(), b.run_begin.get(), b.unique,
                                                             b.count.get(), b.last_seen.get(), day_);
      launch_check();
    }
    if (admitting) {
      admitted_counts_kernel<<<blocks_for(b.unique), kThreads>>>(b.unique_rows.get(), b.is_new.get(),
                                                                 b.admit_reads.get(), b.unique, b.count.get());
      launch_check();
    }
    if (training && options_.hash) {
      int full = 0;
      CUDA_CHECK(cudaMemcpy(&full, b.full.get(), sizeof(full), cudaMemcpyDeviceToHost));
      if (full)
        throw UserError("hash table " + options_.name + " (GPU) is full: it holds its capacity of " +
                        std::to_string(options_.rows) + " rows; raise its capacity");
    }
  }
  if (bags > 0) {
    pooled_kernel<<<blocks_for(bags * dim), kThreads>>>(b.bag_start.get(), b.bag_count.get(), b.slot_cols.get(),
                                                        b.slot_mean.get(), nnz > 0 ? b.row_of_position.get() : nullptr,
                                                        b.values.get(), bags, batch, dim, out, out_cols);
    launch_check();
  }
  // No device-wide synchronisation: the kernels run in order on the default stream, where the
  // model's next kernels read `out`; a wait here would also wait for the dense gradient's sums
  // in flight on the communicator's stream.
  b.trained_forward = training;
}

void CudaEmbeddingTable::backward_update(const float* dout) { backward_update(dout, options_.dim); }

void CudaEmbeddingTable::backward_update(const float* dout, int64_t dout_cols) {
  Buffers& b = *buffers_;
  NCSREC_CHECK(b.trained_forward, "CudaEmbeddingTable " << options_.name << ": backward without a training forward");
  b.trained_forward = false;  // one backward per forward
  if (b.unique == 0) return;
  const int64_t dim = options_.dim;
  const GradientSource src{b.run_begin.get(), b.sorted_positions.get(), b.bag_of_position.get(), b.bag_count.get(),
                           b.slot_cols.get(), b.slot_mean.get(), dout, dout_cols, b.batch, dim};
  const int g = blocks_for(b.unique * dim);
  if (options_.optimizer == "sgd") {
    sgd_kernel<<<g, kThreads>>>(src, b.unique_rows.get(), b.unique, b.values.get(), static_cast<float>(options_.lr));
    launch_check();
  } else if (options_.optimizer == "adagrad") {
    adagrad_kernel<<<g, kThreads>>>(src, b.unique_rows.get(), b.unique, b.values.get(), b.acc.get(),
                                    static_cast<float>(options_.lr), static_cast<float>(options_.eps));
    launch_check();
  } else {
    adam_kernel<<<g, kThreads>>>(src, b.unique_rows.get(), b.unique, b.values.get(), b.m.get(), b.v.get(), b.steps.get(),
                                 static_cast<float>(options_.lr), options_.beta1, options_.beta2,
                                 static_cast<float>(options_.eps));
    launch_check();
    steps_kernel<<<blocks_for(b.unique), kThreads>>>(b.unique_rows.get(), b.unique, b.steps.get());
    launch_check();
  }
  mark_updated_kernel<<<blocks_for(b.unique), kThreads>>>(b.unique_rows.get(), b.unique, b.updated.get(), step_);
  launch_check();  // and no device-wide wait (see forward): the dense sums stay in flight
}

void CudaEmbeddingTable::reserve(int64_t slots, int64_t batch, int64_t ids) {
  NCSREC_CHECK(slots >= 1 && batch >= 0 && ids >= 0 && ids <= INT32_MAX,
               "CudaEmbeddingTable " << options_.name << ": reserve for " << slots << " slots, batch " << batch
                                     << ", " << ids << " ids");
  Buffers& b = *buffers_;
  reserve_batch(std::max(slots, b.reserved_slots), std::max(slots * batch, b.reserved_bags),
                std::max(ids, b.reserved_ids));
}

void CudaEmbeddingTable::reserve_batch(int64_t slots, int64_t bags, int64_t ids) {
  Buffers& b = *buffers_;
  const int64_t n = std::max<int64_t>(ids, 1);
  b.slot_cols.reserve(slots);
  b.slot_mean.reserve(slots);
  b.bag_start.reserve(bags);
  b.bag_count.reserve(bags);
  for (DeviceVector<int64_t>* v : {&b.all_ids, &b.keys, &b.positions, &b.sorted_keys, &b.sorted_positions,
                                   &b.row_of_position, &b.bag_of_position, &b.unique_keys, &b.unique_rows,
                                   &b.admit_reads})
    v->reserve(n);
  b.run_begin.reserve(n + 1);
  b.flags.reserve(n);
  b.run_id1.reserve(n);
  b.is_new.reserve(n);
  size_t sort_bytes = 0, scan_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, b.keys.get(), b.sorted_keys.get(), b.positions.get(),
                                             b.sorted_positions.get(), static_cast<int>(n)));
  CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, b.flags.get(), b.run_id1.get(), static_cast<int>(n)));
  b.scratch.reserve(static_cast<int64_t>(std::max(sort_bytes, scan_bytes)));
  b.reserved_slots = slots;
  b.reserved_bags = bags;
  b.reserved_ids = ids;
}

void CudaEmbeddingTable::count_pending_reads() {
  Buffers& b = *buffers_;
  const int64_t U = b.unique;
  // The rows of the batch's ids as they stand.
  find_or_insert_kernel<<<blocks_for(U), kThreads>>>(b.unique_keys.get(), U, b.slot_keys.get(), b.slot_rows.get(),
                                                     b.slot_mask, b.row_count.get(), options_.rows, b.row_keys.get(),
                                                     b.unique_rows.get(), b.is_new.get(), b.full.get(), false, nullptr);
  launch_check();
  ensure_pending_room(U);
  const unsigned long long start[3] = {0, static_cast<unsigned long long>(b.pend_used),
                                       static_cast<unsigned long long>(b.pend_live)};
  CUDA_CHECK(cudaMemcpy(b.tally.get(), start, sizeof(start), cudaMemcpyHostToDevice));
  pending_reads_kernel<<<blocks_for(U), kThreads>>>(b.unique_keys.get(), b.unique_rows.get(), b.run_begin.get(), U,
                                                    b.pend_keys.get(), b.pend_count.get(), b.pend_seen.get(),
                                                    b.pend_mask, b.pend_keys.size() > 0, options_.admit_after, day_,
                                                    b.admit_reads.get(), b.tally.get());
  launch_check();
  unsigned long long tally[3] = {0, 0, 0};
  CUDA_CHECK(cudaMemcpy(tally, b.tally.get(), sizeof(tally), cudaMemcpyDeviceToHost));
  b.pend_used = static_cast<int64_t>(tally[1]);
  b.pend_live = static_cast<int64_t>(tally[2]);
  make_room(static_cast<int64_t>(tally[0]));
}

// Keeps the pending index at most half full after `more` new ids (admit_after > 1): else
// rebuilds it without the slots of admitted ids.
void CudaEmbeddingTable::ensure_pending_room(int64_t more) {
  Buffers& b = *buffers_;
  if (options_.admit_after <= 1) return;
  const auto slots = static_cast<int64_t>(b.pend_keys.size() > 0 ? b.pend_mask + 1 : 0);
  if (slots > 0 && 2 * (b.pend_used + more) <= slots) return;
  rebuild_pending(b.pend_keys.get(), b.pend_count.get(), b.pend_seen.get(), slots, b.pend_live, more);
}

// A fresh pending index of four times the pending ids and `more`, 1024 slots at least, holding
// the pending ids (count > 0) of the n slots `keys`, `count`, `seen` (device memory).
void CudaEmbeddingTable::rebuild_pending(const unsigned long long* keys, const int64_t* count, const int64_t* seen,
                                         int64_t n, int64_t live, int64_t more) {
  Buffers& b = *buffers_;
  int64_t want = 1024;
  while (want < 4 * (live + more)) want *= 2;
  DeviceVector<unsigned long long> new_keys;
  DeviceVector<int64_t> new_count, new_seen;
  fill_i64_kernel<<<blocks_for(want), kThreads>>>(reinterpret_cast<int64_t*>(new_keys.reserve(want)), want, INT64_MIN);
  launch_check();
  CUDA_CHECK(cudaMemset(new_count.reserve(want), 0, static_cast<size_t>(want) * sizeof(int64_t)));
  new_seen.reserve(want);
  if (n > 0) {
    rehash_pending_kernel<<<blocks_for(n), kThreads>>>(keys, count, seen, n, new_keys.get(), new_count.get(),
                                                       new_seen.get(), static_cast<uint64_t>(want - 1));
    launch_check();
    CUDA_CHECK(cudaDeviceSynchronize());  // before the old index is freed
  }
  b.pend_keys.swap(new_keys);
  b.pend_count.swap(new_count);
  b.pend_seen.swap(new_seen);
  b.pend_mask = static_cast<uint64_t>(want - 1);
  b.pend_used = b.pend_live = live;
}

// The pending ids of a load: an index holding them (none, without them and with admit_after 1).
void CudaEmbeddingTable::load_pending(const std::vector<PendingId>& pending) {
  Buffers& b = *buffers_;
  const auto n = static_cast<int64_t>(pending.size());
  if (n == 0 && options_.admit_after <= 1) {
    DeviceVector<unsigned long long>().swap(b.pend_keys);
    b.pend_used = b.pend_live = 0;
    return;
  }
  std::vector<unsigned long long> keys;
  std::vector<int64_t> count, seen;
  for (const PendingId& p : pending) {  // checked by load_rows
    keys.push_back(static_cast<unsigned long long>(p.id));
    count.push_back(p.count);
    seen.push_back(p.last_seen_day);
  }
  DeviceVector<unsigned long long> d_keys;
  DeviceVector<int64_t> d_count, d_seen;
  if (n > 0) {
    CUDA_CHECK(cudaMemcpy(d_keys.reserve(n), keys.data(), keys.size() * sizeof(keys[0]), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_count.reserve(n), count.data(), count.size() * sizeof(int64_t), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_seen.reserve(n), seen.data(), seen.size() * sizeof(int64_t), cudaMemcpyHostToDevice));
  }
  rebuild_pending(d_keys.get(), d_count.get(), d_seen.get(), n, n, 0);
}

bool CudaEmbeddingTable::admission() const {
  return options_.hash && (options_.admit_after > 1 || options_.evict_when_full || buffers_->pend_live > 0);
}

// A fresh hash index holding rows 0..n-1 under their ids keys[0..n) (device memory; may be
// row_keys itself), and row_count n.
void CudaEmbeddingTable::index_rows(const int64_t* keys, int64_t n) {
  Buffers& b = *buffers_;
  const auto n_slots = static_cast<int64_t>(b.slot_mask + 1);
  // INT64_MIN is 0x8000...0: not a byte pattern cudaMemset can write, so fill by kernel.
  fill_i64_kernel<<<blocks_for(n_slots), kThreads>>>(reinterpret_cast<int64_t*>(b.slot_keys.get()), n_slots, INT64_MIN);
  launch_check();
  fill_i64_kernel<<<blocks_for(n_slots), kThreads>>>(b.slot_rows.get(), n_slots, -1);
  launch_check();
  if (n > 0) {
    insert_keys_kernel<<<blocks_for(n), kThreads>>>(keys, n, b.slot_keys.get(), b.slot_rows.get(), b.slot_mask,
                                                    b.row_keys.get());
    launch_check();
  }
  const auto count = static_cast<unsigned long long>(n);
  CUDA_CHECK(cudaMemcpy(b.row_count.get(), &count, sizeof(count), cudaMemcpyHostToDevice));
}

// Room for `wanted` new rows: nothing when they fit; else the CPU's ShardedTable::make_room (the
// same rows, picked on the host from their counters), then the last rows fill the evicted rows'
// places and the index is rebuilt.
void CudaEmbeddingTable::make_room(int64_t wanted) {
  Buffers& b = *buffers_;
  const int64_t cap = options_.rows, rows = this->rows();
  if (rows + wanted <= cap) return;
  const std::string advice = "; raise model.tables." + options_.name + ".capacity";
  if (!options_.evict_when_full || wanted > cap)
    throw UserError("hash table " + options_.name + " (GPU) is full: it holds " + std::to_string(rows) + " of its " +
                    std::to_string(cap) + " rows and this batch brings " + std::to_string(wanted) + " new ids" +
                    advice + ", or set evict_when_full: true or ttl_days");
  const int64_t evict = std::min(rows, rows + wanted - cap + cap / 10);
  const std::vector<int64_t> keys = to_host(b.row_keys.get(), rows), seen = to_host(b.last_seen.get(), rows),
                             updated = to_host(b.updated.get(), rows);
  std::vector<int64_t> batch_ids = to_host(b.unique_keys.get(), b.unique);
  std::sort(batch_ids.begin(), batch_ids.end());
  const std::vector<int64_t> victims =
      least_recently_seen(keys.data(), seen.data(), updated.data(), rows, batch_ids, evict);
  const auto n = static_cast<int64_t>(victims.size());
  if (rows - n + wanted > cap)
    throw UserError("hash table " + options_.name + " (GPU) is full: it cannot evict enough rows for this batch: it "
                    "brings " + std::to_string(wanted) + " new ids, and only " + std::to_string(n) + " of its " +
                    std::to_string(rows) + " rows are not read by it" + advice);
  std::vector<uint8_t> drop(static_cast<size_t>(rows), 0);
  for (const int64_t r : victims) drop[static_cast<size_t>(r)] = 1;
  // The kept rows past the new end move into the evicted rows' places before it.
  const int64_t left = rows - n;
  std::vector<int64_t> from, to;
  for (int64_t r = 0; r < left; ++r)
    if (drop[static_cast<size_t>(r)]) to.push_back(r);
  for (int64_t r = left; r < rows; ++r)
    if (!drop[static_cast<size_t>(r)]) from.push_back(r);
  NCSREC_CHECK(from.size() == to.size(), "CudaEmbeddingTable " << options_.name << ": " << from.size()
                                                               << " rows to move into " << to.size() << " places");
  if (!from.empty()) {
    const auto m = static_cast<int64_t>(from.size());
    DeviceVector<int64_t> d_from, d_to;
    CUDA_CHECK(cudaMemcpy(d_from.reserve(m), from.data(), from.size() * sizeof(int64_t), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_to.reserve(m), to.data(), to.size() * sizeof(int64_t), cudaMemcpyHostToDevice));
    const RowColumns columns{{b.values.get(), b.acc.get(), b.m.get(), b.v.get()},
                             {b.steps.get(), b.count.get(), b.last_seen.get(), b.updated.get(), b.row_keys.get()}};
    move_rows_kernel<<<blocks_for(m), kThreads>>>(d_from.get(), d_to.get(), m, options_.dim, columns);
    launch_check();
    CUDA_CHECK(cudaDeviceSynchronize());  // before d_from and d_to are freed
  }
  index_rows(b.row_keys.get(), left);  // the rows that are left: row_keys[r] is row r's id
  b.inserted += rows - b.counted_rows;
  b.counted_rows = left;
  b.evicted_full += n;
}

std::vector<PendingId> CudaEmbeddingTable::pending() const {
  const Buffers& b = *buffers_;
  std::vector<PendingId> out;
  if (!options_.hash || b.pend_keys.size() == 0) return out;
  const auto slots = static_cast<int64_t>(b.pend_mask + 1);
  const std::vector<unsigned long long> keys = to_host(b.pend_keys.get(), slots);
  const std::vector<int64_t> count = to_host(b.pend_count.get(), slots), seen = to_host(b.pend_seen.get(), slots);
  for (size_t i = 0; i < keys.size(); ++i)
    if (keys[i] != kEmptySlot && count[i] > 0) out.push_back({static_cast<int64_t>(keys[i]), count[i], seen[i]});
  std::sort(out.begin(), out.end(), [](const PendingId& x, const PendingId& y) { return x.id < y.id; });
  return out;
}

DeviceHashCounts CudaEmbeddingTable::hash_counts() const {
  const Buffers& b = *buffers_;
  if (!options_.hash) return {};
  return {b.inserted + rows() - b.counted_rows, b.evicted_full, b.pend_live};
}

void CudaEmbeddingTable::set_lr(double lr) { options_.lr = lr; }
void CudaEmbeddingTable::set_day(int64_t day) { day_ = day; }
void CudaEmbeddingTable::set_step(int64_t step) { step_ = step; }

DeviceColumnView CudaEmbeddingTable::device_column(const std::string& name, int64_t rows) const {
  Buffers& b = *buffers_;
  const size_t n = static_cast<size_t>(rows * options_.dim), r = static_cast<size_t>(rows);
  const std::string& opt = options_.optimizer;
  if (name == "values") return {b.values.get(), n * sizeof(float)};
  if (opt == "adagrad" && name == "accumulator") return {b.acc.get(), n * sizeof(float)};
  if (opt == "adam" && name == "m") return {b.m.get(), n * sizeof(float)};
  if (opt == "adam" && name == "v") return {b.v.get(), n * sizeof(float)};
  if (opt == "adam" && name == "steps") return {b.steps.get(), r * sizeof(int64_t)};
  if (name == "count") return {b.count.get(), r * sizeof(int64_t)};
  if (name == "last_seen_day") return {b.last_seen.get(), r * sizeof(int64_t)};
  if (name == "updated_step") return {b.updated.get(), r * sizeof(int64_t)};
  throw InternalError(NCSREC_STR_("CudaEmbeddingTable " << options_.name << ": no column " << name
                                                        << " with optimizer " << opt));
}

std::vector<int64_t> CudaEmbeddingTable::row_keys() const {
  const int64_t rows = this->rows();
  if (options_.hash) return to_host(buffers_->row_keys.get(), rows);
  std::vector<int64_t> keys(static_cast<size_t>(rows));
  std::iota(keys.begin(), keys.end(), int64_t{0});
  return keys;
}

void CudaEmbeddingTable::load_rows(const std::vector<int64_t>& keys,
                                   const std::vector<std::pair<std::string, void*>>& columns,
                                   const std::vector<PendingId>& pending) {
  Buffers& b = *buffers_;
  const auto n = static_cast<int64_t>(keys.size());
  // Everything is checked before anything changes: a refused load leaves the table as it was.
  if (!options_.hash) {
    NCSREC_CHECK(n == options_.rows, "CudaEmbeddingTable " << options_.name << ": " << n << " rows loaded into a table of "
                                                           << options_.rows);
  } else {
    NCSREC_CHECK(n <= options_.rows, "CudaEmbeddingTable " << options_.name << ": " << n << " rows loaded into a capacity of "
                                                           << options_.rows);
    std::vector<int64_t> ids = keys;
    for (const PendingId& p : pending) {
      NCSREC_CHECK(p.count > 0, "CudaEmbeddingTable " << options_.name << ": pending id " << p.id << " with "
                                                      << p.count << " reads");
      ids.push_back(p.id);
    }
    std::sort(ids.begin(), ids.end());
    NCSREC_CHECK(std::adjacent_find(ids.begin(), ids.end()) == ids.end() &&
                     !std::binary_search(ids.begin(), ids.end(), INT64_MIN),
                 "CudaEmbeddingTable " << options_.name << ": the keys and pending ids loaded must be distinct ids, "
                                       << "none of them " << INT64_MIN);
    b.inserted += rows() - b.counted_rows;  // the rows inserted so far stay counted
    b.counted_rows = n;
    // A fresh index holding `keys` as rows 0..n-1; every other row is free again, its state
    // and counters reset when an id takes it.
    DeviceVector<int64_t> d_keys;
    if (n > 0)
      CUDA_CHECK(cudaMemcpy(d_keys.reserve(n), keys.data(), static_cast<size_t>(n) * sizeof(int64_t),
                            cudaMemcpyHostToDevice));
    index_rows(d_keys.get(), n);
    if (n > 0) CUDA_CHECK(cudaDeviceSynchronize());  // before d_keys is freed
    CUDA_CHECK(cudaMemset(b.full.get(), 0, sizeof(int)));
    load_pending(pending);
  }
  for (const auto& [name, host] : columns) {
    const DeviceColumnView d = device_column(name, n);
    if (d.bytes) CUDA_CHECK(cudaMemcpy(d.data, host, d.bytes, cudaMemcpyHostToDevice));
  }
  b.trained_forward = false;
}

void CudaEmbeddingTable::store_rows(const std::vector<std::pair<std::string, void*>>& columns) const {
  const int64_t n = rows();
  for (const auto& [name, host] : columns) {
    const DeviceColumnView d = device_column(name, n);
    if (d.bytes) CUDA_CHECK(cudaMemcpy(host, d.data, d.bytes, cudaMemcpyDeviceToHost));
  }
}

namespace {

// The model's device table (core/device_table.h) on a CudaEmbeddingTable: the batch's host CSR
// arrays go up into buffers kept from step to step (grown, never shrunk).
class CudaDeviceTable final : public DeviceTable {
 public:
  explicit CudaDeviceTable(const DeviceTableSpec& spec) : table_(options_of(spec)), hash_(spec.hash), name_(spec.name) {}

  void reserve(int64_t slots, int64_t batch, int64_t ids) override {
    grow(static_cast<size_t>(slots));
    const int64_t per_slot = (ids + slots - 1) / std::max<int64_t>(slots, 1);  // the ids of one slot
    for (int64_t s = 0; s < slots; ++s) {
      offsets_[static_cast<size_t>(s)]->reserve(batch + 1);
      ids_[static_cast<size_t>(s)]->reserve(per_slot);
    }
    table_.reserve(slots, batch, ids);
  }

  void forward(const std::vector<Slot>& slots, int64_t batch, float* out, int64_t out_cols, bool training,
               int64_t day) override {
    grow(slots.size());
    std::vector<CudaEmbeddingTable::Slot> device_slots;
    for (size_t s = 0; s < slots.size(); ++s) {
      const Slot& slot = slots[s];
      if (hash_)  // the index's empty-slot marker
        for (int64_t k = 0; k < slot.nnz; ++k)
          if (slot.ids[k] == INT64_MIN)
            throw UserError("hash table " + name_ + " on the GPU: the id " + std::to_string(INT64_MIN) +
                            " is reserved there; map it to another id, or keep the table on the CPU (run.device: cpu)");
      int64_t* offsets = offsets_[s]->reserve(batch + 1);
      DeviceVector<int64_t>& id_buffer = *ids_[s];
      // Past what the plan reserved: grow by half again at least, so that growing is rare.
      if (slot.nnz > id_buffer.size()) id_buffer.reserve(std::max(slot.nnz, id_buffer.size() + id_buffer.size() / 2));
      int64_t* ids = id_buffer.get();
      CUDA_CHECK(cudaMemcpy(offsets, slot.offsets, static_cast<size_t>(batch + 1) * sizeof(int64_t),
                            cudaMemcpyHostToDevice));
      if (slot.nnz > 0)
        CUDA_CHECK(cudaMemcpy(ids, slot.ids, static_cast<size_t>(slot.nnz) * sizeof(int64_t), cudaMemcpyHostToDevice));
      device_slots.push_back({offsets, ids, slot.nnz, slot.col, slot.mean ? 1 : 0});
    }
    table_.set_day(day);
    table_.forward(device_slots, batch, out, out_cols, training);
  }

  void backward_update(const float* dout, int64_t dout_cols, double lr, int64_t step) override {
    table_.set_lr(lr);
    table_.set_step(step);
    table_.backward_update(dout, dout_cols);
  }

  int64_t rows() const override { return table_.rows(); }
  std::vector<int64_t> keys() const override { return table_.row_keys(); }
  void load(const std::vector<int64_t>& keys, const std::vector<Column>& columns,
            const std::vector<PendingId>& pending) override {
    table_.load_rows(keys, pairs(columns), pending);
  }
  void store(const std::vector<Column>& columns) const override { table_.store_rows(pairs(columns)); }
  std::vector<PendingId> pending() const override { return table_.pending(); }
  DeviceHashCounts hash_counts() const override { return table_.hash_counts(); }

 private:
  void grow(size_t slots) {
    while (ids_.size() < slots) {
      ids_.push_back(std::make_unique<DeviceVector<int64_t>>());
      offsets_.push_back(std::make_unique<DeviceVector<int64_t>>());
    }
  }

  static CudaEmbeddingOptions options_of(const DeviceTableSpec& spec) {
    CudaEmbeddingOptions o;
    o.name = spec.name;
    o.hash = spec.hash;
    o.rows = spec.rows;
    o.dim = spec.dim;
    o.seed = spec.seed;
    o.init_scale = spec.init_scale;
    o.optimizer = spec.optimizer.type;
    o.lr = spec.optimizer.lr;
    o.eps = spec.optimizer.type == "adam" ? spec.optimizer.eps : spec.optimizer.adagrad_eps;
    o.initial_accumulator = spec.optimizer.initial_accumulator;
    o.beta1 = spec.optimizer.beta1;
    o.beta2 = spec.optimizer.beta2;
    o.admit_after = spec.admit_after;
    o.evict_when_full = spec.evict_when_full;
    return o;
  }
  static std::vector<std::pair<std::string, void*>> pairs(const std::vector<Column>& columns) {
    std::vector<std::pair<std::string, void*>> out;
    for (const Column& c : columns) out.emplace_back(c.name, c.data);
    return out;
  }

  CudaEmbeddingTable table_;
  bool hash_;
  std::string name_;
  std::vector<std::unique_ptr<DeviceVector<int64_t>>> ids_, offsets_;  // per slot
};

}  // namespace

int64_t cuda_device_buffer_allocations() { return g_device_vector_allocations.load(); }

std::unique_ptr<DeviceTable> make_cuda_device_table(const DeviceTableSpec& spec) {
  return std::make_unique<CudaDeviceTable>(spec);
}

CudaEmbeddingTable::Snapshot CudaEmbeddingTable::snapshot() const {
  const Buffers& b = *buffers_;
  const int64_t rows = this->rows(), dim = options_.dim;
  std::vector<int64_t> keys(static_cast<size_t>(rows));
  if (options_.hash) keys = to_host(b.row_keys.get(), rows);
  else std::iota(keys.begin(), keys.end(), int64_t{0});
  std::vector<std::pair<std::string, std::vector<float>>> columns;  // [rows, width] each, row order
  std::vector<int64_t> widths;
  columns.emplace_back("values", to_host(b.values.get(), rows * dim));
  widths.push_back(dim);
  if (options_.optimizer == "sgd") {
  } else if (options_.optimizer == "adagrad") {
    columns.emplace_back("accumulator", to_host(b.acc.get(), rows * dim));
    widths.push_back(dim);
  } else {
    columns.emplace_back("m", to_host(b.m.get(), rows * dim));
    columns.emplace_back("v", to_host(b.v.get(), rows * dim));
    const std::vector<int64_t> steps = to_host(b.steps.get(), rows);
    columns.emplace_back("steps", std::vector<float>(steps.begin(), steps.end()));
    widths.insert(widths.end(), {dim, dim, 1});
  }
  std::vector<int64_t> order(static_cast<size_t>(rows));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return keys[static_cast<size_t>(x)] < keys[static_cast<size_t>(y)]; });
  Snapshot s;
  for (const int64_t r : order) s.keys.push_back(keys[static_cast<size_t>(r)]);
  for (size_t c = 0; c < columns.size(); ++c) {
    std::vector<float> sorted;
    const int64_t w = widths[c];
    for (const int64_t r : order)
      sorted.insert(sorted.end(), columns[c].second.begin() + r * w, columns[c].second.begin() + (r + 1) * w);
    if (c == 0) s.values = std::move(sorted);
    else s.state.emplace_back(columns[c].first, std::move(sorted));
  }
  return s;
}

}  // namespace ncsrec

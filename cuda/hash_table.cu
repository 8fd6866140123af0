// The GPU hash embedding table (cuda/hash_table.h): index, row initialisation, pooled lookup
// and the fused segment-sum backward with sparse Adagrad.
//
// Float arithmetic that must match the CPU reference uses the _rn intrinsics (__fadd_rn,
// __fmul_rn, ...), which nvcc never contracts into fused multiply-adds: the sums and the
// Adagrad update then round exactly as embedding_bag.cpp and embedding_table.cpp do.
#include "cuda/hash_table.h"

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <numeric>

#include "core/error.h"
#include "core/random.h"
#include "cuda/check.h"

namespace ncsrec {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;
constexpr unsigned long long kEmptySlot = static_cast<unsigned long long>(INT64_MIN);

int blocks_for(int64_t n) { return static_cast<int>(std::max<int64_t>(1, std::min(kMaxBlocks, (n + kThreads - 1) / kThreads))); }

#define GRID_STRIDE(i, n) for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

__global__ void iota_kernel(int64_t* p, int64_t n) {
  GRID_STRIDE(i, n) p[i] = i;
}

__global__ void fill_i64_kernel(int64_t* p, int64_t n, int64_t v) {
  GRID_STRIDE(i, n) p[i] = v;
}

// 1 where a run of equal ids starts in the sorted ids.
__global__ void run_start_flags_kernel(const int64_t* sorted, int64_t n, int32_t* flags) {
  GRID_STRIDE(i, n) flags[i] = (i == 0 || sorted[i] != sorted[i - 1]) ? 1 : 0;
}

// run_id1[i] = 1 + the unique index of sorted[i] (the inclusive scan of the flags): each run's
// id and its first position; run_begin[U] = n closes the last run.
__global__ void compact_runs_kernel(const int64_t* sorted, const int32_t* run_id1, int64_t n, int64_t* unique_ids,
                                    int64_t* run_begin) {
  GRID_STRIDE(i, n) {
    if (i == 0 || sorted[i] != sorted[i - 1]) {
      const int64_t u = run_id1[i] - 1;
      unique_ids[u] = sorted[i];
      run_begin[u] = i;
    }
    if (i == n - 1) run_begin[run_id1[i]] = n;
  }
}

// One thread per unique id of the batch (so no two threads ever look for the same id): the row
// of the id, claiming a slot and a row for a new id when `insert`. row -1: no row (absent and
// not inserted, or the table is full: then *full is set).
__global__ void find_or_insert_kernel(const int64_t* unique_ids, int64_t U, unsigned long long* slot_keys,
                                      int64_t* slot_rows, uint64_t slot_mask, unsigned long long* row_count,
                                      int64_t capacity, int64_t* row_ids, int64_t* unique_rows, uint8_t* is_new,
                                      int* full, bool insert) {
  GRID_STRIDE(u, U) {
    const int64_t id = unique_ids[u];
    const auto want = static_cast<unsigned long long>(id);
    uint64_t slot = mix64(static_cast<uint64_t>(id)) & slot_mask;
    int64_t row = -1;
    uint8_t fresh = 0;
    bool settled = false;
    for (uint64_t probe = 0; probe <= slot_mask && !settled; ++probe, slot = (slot + 1) & slot_mask) {
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
            row_ids[row] = id;
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

// A new row's values from (table seed, id), as init_rows in embedding_table.cpp: one generator
// per row, drawn in element order; its accumulator starts at the configured value.
__global__ void init_rows_kernel(const int64_t* unique_ids, const int64_t* unique_rows, const uint8_t* is_new,
                                 int64_t U, float* values, float* accumulators, int64_t dim, uint64_t table_seed,
                                 double init_scale, float initial_accumulator) {
  GRID_STRIDE(u, U) {
    if (!is_new[u]) continue;
    const int64_t row = unique_rows[u];
    Rng rng(hash_combine(table_seed, static_cast<uint64_t>(unique_ids[u])));
    for (int64_t d = 0; d < dim; ++d) {
      values[row * dim + d] = static_cast<float>(init_scale * rng.normal());
      accumulators[row * dim + d] = initial_accumulator;
    }
  }
}

// The row each position of the batch reads.
__global__ void scatter_rows_kernel(const int64_t* sorted_positions, const int32_t* run_id1, const int64_t* unique_rows,
                                    int64_t n, int64_t* row_of_position) {
  GRID_STRIDE(i, n) row_of_position[sorted_positions[i]] = unique_rows[run_id1[i] - 1];
}

__global__ void bag_of_position_kernel(const int64_t* offsets, int64_t batch, int64_t* bag_of_position) {
  GRID_STRIDE(b, batch) for (int64_t k = offsets[b]; k < offsets[b + 1]; ++k) bag_of_position[k] = b;
}

// out[b, d] = Σ_k values[row(k), d] over the bag's positions in order (rows -1 read zeros).
__global__ void pooled_sum_kernel(const int64_t* offsets, const int64_t* row_of_position, const float* values,
                                  int64_t batch, int64_t dim, float* out) {
  GRID_STRIDE(e, batch * dim) {
    const int64_t b = e / dim, d = e % dim;
    float sum = 0.0f;
    for (int64_t k = offsets[b]; k < offsets[b + 1]; ++k) {
      const int64_t row = row_of_position[k];
      if (row >= 0) sum = __fadd_rn(sum, values[row * dim + d]);
    }
    out[e] = sum;
  }
}

// Per (unique id, element): the id's gradient summed over its positions in order (the sorted
// segment sum), then Adagrad on its row: acc += g²; w -= lr · g / (sqrt(acc) + eps).
__global__ void segment_sum_adagrad_kernel(const int64_t* run_begin, const int64_t* sorted_positions,
                                           const int64_t* bag_of_position, const int64_t* unique_rows, int64_t U,
                                           const float* dout, int64_t dim, float* values, float* accumulators,
                                           float lr, float eps) {
  GRID_STRIDE(e, U * dim) {
    const int64_t u = e / dim, d = e % dim;
    const int64_t row = unique_rows[u];
    if (row < 0) continue;  // an id without a row gets no gradient
    float g = 0.0f;
    for (int64_t i = run_begin[u]; i < run_begin[u + 1]; ++i)
      g = __fadd_rn(g, dout[bag_of_position[sorted_positions[i]] * dim + d]);
    const int64_t w = row * dim + d;
    const float acc = __fadd_rn(accumulators[w], __fmul_rn(g, g));
    accumulators[w] = acc;
    values[w] = __fsub_rn(values[w], __fdiv_rn(__fmul_rn(lr, g), __fadd_rn(__fsqrt_rn(acc), eps)));
  }
}

void launch_check() { CUDA_CHECK(cudaGetLastError()); }

// A device buffer that grows (and only grows) to the largest size asked for.
template <class T>
class DeviceVector {
 public:
  DeviceVector() = default;
  ~DeviceVector() {
    if (ptr_) (void)cudaFree(ptr_);
  }
  DeviceVector(const DeviceVector&) = delete;
  DeviceVector& operator=(const DeviceVector&) = delete;
  T* reserve(int64_t n) {
    if (n > size_) {
      if (ptr_) CUDA_CHECK(cudaFree(ptr_));
      ptr_ = nullptr;
      size_ = 0;
      CUDA_CHECK(cudaMalloc(&ptr_, static_cast<size_t>(n) * sizeof(T)));
      size_ = n;
    }
    return ptr_;
  }
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
  int64_t size_ = 0;
};

}  // namespace

struct CudaHashTable::Buffers {
  uint64_t slot_mask = 0;
  // The table.
  DeviceVector<unsigned long long> slot_keys;  // [slots]: id or kEmptySlot
  DeviceVector<int64_t> slot_rows;             // [slots]: row of the slot's id, -1 none
  DeviceVector<int64_t> row_ids;               // [capacity]: id of each row
  DeviceVector<float> values, accumulators;    // [capacity, dim]
  DeviceVector<unsigned long long> row_count;  // [1]
  DeviceVector<int> full;                      // [1]
  // The last forward's batch (backward reads it).
  int64_t batch = 0, nnz = 0, unique = 0;
  bool trained_forward = false;
  DeviceVector<int64_t> positions, sorted_ids, sorted_positions, unique_ids, run_begin, unique_rows, row_of_position,
      bag_of_position;
  DeviceVector<int32_t> flags, run_id1;
  DeviceVector<uint8_t> is_new;
  DeviceVector<char> scratch;  // CUB temporary storage
};

CudaHashTable::CudaHashTable(const CudaHashTableOptions& options)
    : options_(options), table_seed_(hash_combine(options.seed, hash_string(options.name))),
      buffers_(std::make_unique<Buffers>()) {
  NCSREC_CHECK(options_.capacity > 0 && options_.dim > 0,
               "CudaHashTable " << options_.name << ": capacity " << options_.capacity << ", dim " << options_.dim);
  Buffers& b = *buffers_;
  uint64_t slots = 16;
  while (slots < 2 * static_cast<uint64_t>(options_.capacity)) slots *= 2;
  b.slot_mask = slots - 1;
  const auto n_slots = static_cast<int64_t>(slots);
  b.slot_keys.reserve(n_slots);
  b.slot_rows.reserve(n_slots);
  b.row_ids.reserve(options_.capacity);
  b.values.reserve(options_.capacity * options_.dim);
  b.accumulators.reserve(options_.capacity * options_.dim);
  b.row_count.reserve(1);
  b.full.reserve(1);
  // INT64_MIN is 0x8000...0: not a byte pattern cudaMemset can write, so fill by kernel.
  fill_i64_kernel<<<blocks_for(n_slots), kThreads>>>(reinterpret_cast<int64_t*>(b.slot_keys.get()), n_slots, INT64_MIN);
  launch_check();
  fill_i64_kernel<<<blocks_for(n_slots), kThreads>>>(b.slot_rows.get(), n_slots, -1);
  launch_check();
  CUDA_CHECK(cudaMemset(b.row_count.get(), 0, sizeof(unsigned long long)));
  CUDA_CHECK(cudaMemset(b.full.get(), 0, sizeof(int)));
  CUDA_CHECK(cudaDeviceSynchronize());
}

CudaHashTable::~CudaHashTable() = default;

int64_t CudaHashTable::rows() const {
  unsigned long long count = 0;
  CUDA_CHECK(cudaMemcpy(&count, buffers_->row_count.get(), sizeof(count), cudaMemcpyDeviceToHost));
  return std::min<int64_t>(static_cast<int64_t>(count), options_.capacity);
}

void CudaHashTable::forward(const int64_t* offsets, const int64_t* ids, int64_t batch, int64_t nnz, float* out,
                            bool training) {
  NCSREC_CHECK(batch >= 0 && nnz >= 0 && nnz <= INT32_MAX, "CudaHashTable " << options_.name << ": batch " << batch
                                                                          << ", nnz " << nnz);
  Buffers& b = *buffers_;
  const int64_t dim = options_.dim;
  b.batch = batch;
  b.nnz = nnz;
  b.trained_forward = false;
  b.unique = 0;
  if (nnz > 0) {
    const int n = static_cast<int>(nnz);
    iota_kernel<<<blocks_for(nnz), kThreads>>>(b.positions.reserve(nnz), nnz);
    launch_check();
    // Ids sorted with their positions (stable: a run of one id keeps its positions ascending).
    size_t sort_bytes = 0, scan_bytes = 0;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, ids, b.sorted_ids.reserve(nnz), b.positions.get(),
                                               b.sorted_positions.reserve(nnz), n));
    CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, b.flags.reserve(nnz), b.run_id1.reserve(nnz), n));
    char* scratch = b.scratch.reserve(static_cast<int64_t>(std::max(sort_bytes, scan_bytes)));
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(scratch, sort_bytes, ids, b.sorted_ids.get(), b.positions.get(),
                                               b.sorted_positions.get(), n));
    run_start_flags_kernel<<<blocks_for(nnz), kThreads>>>(b.sorted_ids.get(), nnz, b.flags.get());
    launch_check();
    CUDA_CHECK(cub::DeviceScan::InclusiveSum(scratch, scan_bytes, b.flags.get(), b.run_id1.get(), n));
    int32_t unique = 0;
    CUDA_CHECK(cudaMemcpy(&unique, b.run_id1.get() + (nnz - 1), sizeof(unique), cudaMemcpyDeviceToHost));
    b.unique = unique;
    compact_runs_kernel<<<blocks_for(nnz), kThreads>>>(b.sorted_ids.get(), b.run_id1.get(), nnz,
                                                       b.unique_ids.reserve(b.unique), b.run_begin.reserve(b.unique + 1));
    launch_check();
    find_or_insert_kernel<<<blocks_for(b.unique), kThreads>>>(
        b.unique_ids.get(), b.unique, b.slot_keys.get(), b.slot_rows.get(), b.slot_mask, b.row_count.get(),
        options_.capacity, b.row_ids.get(), b.unique_rows.reserve(b.unique), b.is_new.reserve(b.unique), b.full.get(),
        training);
    launch_check();
    init_rows_kernel<<<blocks_for(b.unique), kThreads>>>(b.unique_ids.get(), b.unique_rows.get(), b.is_new.get(),
                                                         b.unique, b.values.get(), b.accumulators.get(), dim,
                                                         table_seed_, options_.init_scale,
                                                         static_cast<float>(options_.initial_accumulator));
    launch_check();
    scatter_rows_kernel<<<blocks_for(nnz), kThreads>>>(b.sorted_positions.get(), b.run_id1.get(), b.unique_rows.get(),
                                                       nnz, b.row_of_position.reserve(nnz));
    launch_check();
    bag_of_position_kernel<<<blocks_for(batch), kThreads>>>(offsets, batch, b.bag_of_position.reserve(nnz));
    launch_check();
    if (training) {
      int full = 0;
      CUDA_CHECK(cudaMemcpy(&full, b.full.get(), sizeof(full), cudaMemcpyDeviceToHost));
      if (full)
        throw UserError("hash table " + options_.name + " (GPU) is full: it holds its capacity of " +
                        std::to_string(options_.capacity) + " rows; raise its capacity");
    }
  }
  if (batch > 0) {
    const int64_t* rows = nnz > 0 ? b.row_of_position.get() : nullptr;
    if (nnz > 0) {
      pooled_sum_kernel<<<blocks_for(batch * dim), kThreads>>>(offsets, rows, b.values.get(), batch, dim, out);
      launch_check();
    } else {
      CUDA_CHECK(cudaMemset(out, 0, static_cast<size_t>(batch * dim) * sizeof(float)));
    }
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  b.trained_forward = training;
}

void CudaHashTable::backward_adagrad(const float* dout) {
  Buffers& b = *buffers_;
  NCSREC_CHECK(b.trained_forward, "CudaHashTable " << options_.name << ": backward without a training forward");
  b.trained_forward = false;  // one backward per forward
  if (b.unique == 0) return;
  segment_sum_adagrad_kernel<<<blocks_for(b.unique * options_.dim), kThreads>>>(
      b.run_begin.get(), b.sorted_positions.get(), b.bag_of_position.get(), b.unique_rows.get(), b.unique, dout,
      options_.dim, b.values.get(), b.accumulators.get(), static_cast<float>(options_.lr),
      static_cast<float>(options_.eps));
  launch_check();
  CUDA_CHECK(cudaDeviceSynchronize());
}

void CudaHashTable::snapshot(std::vector<int64_t>* ids, std::vector<float>* values,
                             std::vector<float>* accumulators) const {
  const Buffers& b = *buffers_;
  const int64_t rows = this->rows(), dim = options_.dim;
  std::vector<int64_t> row_ids(static_cast<size_t>(rows));
  std::vector<float> v(static_cast<size_t>(rows * dim)), a(static_cast<size_t>(rows * dim));
  if (rows > 0) {
    CUDA_CHECK(cudaMemcpy(row_ids.data(), b.row_ids.get(), row_ids.size() * sizeof(int64_t), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(v.data(), b.values.get(), v.size() * sizeof(float), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(a.data(), b.accumulators.get(), a.size() * sizeof(float), cudaMemcpyDeviceToHost));
  }
  std::vector<int64_t> order(static_cast<size_t>(rows));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return row_ids[static_cast<size_t>(x)] < row_ids[static_cast<size_t>(y)]; });
  ids->clear();
  values->clear();
  accumulators->clear();
  for (const int64_t r : order) {
    ids->push_back(row_ids[static_cast<size_t>(r)]);
    values->insert(values->end(), v.begin() + r * dim, v.begin() + (r + 1) * dim);
    accumulators->insert(accumulators->end(), a.begin() + r * dim, a.begin() + (r + 1) * dim);
  }
}

}  // namespace ncsrec

// The GPU twin of a hash embedding table (embedding/sharded_table.h on one rank): int64 ids to
// rows in device memory, for an open vocabulary.
//
// The index is open addressing with linear probing over a power-of-two number of slots (at
// least twice the capacity): a new id claims an empty slot with atomicCAS, then takes the next
// row number from an atomicAdd counter. A new row is initialised on the device from
// (seed, table name, id) with core/random.h's generator, exactly as EmbeddingTable does on the
// CPU, so the insertion order (and so the thread schedule) never changes a row's values. Row
// numbers do depend on the schedule; nothing outside this class sees them (snapshot() is in id
// order).
//
// A training step is:
//   forward:  the batch's ids sorted with their positions (CUB radix sort, stable), unique ids
//             found by a flag scan, each unique id looked up (or inserted) by one thread, then
//             every bag summed over its ids' rows in position order;
//   backward: per unique id, the sum of its occurrences' output gradients in position order
//             (the sorted segment sum: deterministic, no float atomics), then sparse Adagrad on
//             its row: acc += g², w -= lr · g / (sqrt(acc) + eps), as embedding_table.cpp.
// So two runs on the same input give bit-identical tables, and the CPU gives the same values up
// to the rounding of fused multiply-adds.
//
// Scope: one slot of sum-pooled bags, f32, admission after the first read (admit_after 1), no
// TTL or eviction (a full table throws a UserError and stays usable for reads), Adagrad only,
// one device. The CPU table has the rest; the id INT64_MIN is reserved as the empty-slot marker.
// Buffers are allocated when the table is built and grown only when a batch is larger than any
// before it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ncsrec {

struct CudaHashTableOptions {
  std::string name;          // the table's name: part of each row's initialisation key
  int64_t capacity = 0;      // rows at most
  int64_t dim = 0;
  uint64_t seed = 1;         // run.seed
  double init_scale = 0.01;  // rows start N(0, init_scale²)
  double lr = 0.05;          // Adagrad
  double eps = 1e-10;
  double initial_accumulator = 0.0;
};

class CudaHashTable {
 public:
  // Needs a GPU (cuda_register_if_available); throws InternalError from a failing CUDA call.
  explicit CudaHashTable(const CudaHashTableOptions& options);
  ~CudaHashTable();
  CudaHashTable(const CudaHashTable&) = delete;
  CudaHashTable& operator=(const CudaHashTable&) = delete;

  int64_t rows() const;  // rows inserted so far (reads a device counter)
  int64_t capacity() const { return options_.capacity; }
  int64_t dim() const { return options_.dim; }

  // One slot of `batch` bags in CSR form, DEVICE arrays: offsets [batch + 1] (offsets[0] = 0),
  // ids [nnz] with nnz = offsets[batch]. Writes out [batch, dim] (device) with each bag's sum of
  // its ids' rows; an id without a row reads zeros. `training`: ids without a row are inserted
  // first (a UserError naming the table when it is full), and the batch is kept for backward.
  void forward(const int64_t* offsets, const int64_t* ids, int64_t batch, int64_t nnz, float* out, bool training);
  // dout [batch, dim] (device): the gradient of the last training forward's output. Sparse
  // Adagrad on the rows that batch read; no other row or accumulator changes.
  void backward_adagrad(const float* dout);

  // Host copies of every row in increasing id order: ids, values [rows, dim], accumulators [rows, dim].
  void snapshot(std::vector<int64_t>* ids, std::vector<float>* values, std::vector<float>* accumulators) const;

 private:
  struct Buffers;
  CudaHashTableOptions options_;
  uint64_t table_seed_ = 0;
  std::unique_ptr<Buffers> buffers_;
};

}  // namespace ncsrec

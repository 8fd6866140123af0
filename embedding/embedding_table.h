// Embedding tables and their sparse optimizers: a step touches only the rows in the batch (the
// rows of a SparseGrad); every other row and its optimizer state stay bit-identical.
//
// A table is a list of rows, each with a key (its global row for a fixed-size table, its id
// for a hash table: embedding/sharded_table.h), its values, its optimizer state (per-row
// columns the optimizer adds, so they grow and shrink with the rows) and three counters:
//   count          the ids of training batches that read the row (occurrences, over all ranks);
//   last_seen_day  the day (days since 1970-01-01) of the last training batch that read it, -1: never;
//   updated_step   the training step of its last optimizer update, -1: never (delta export).
// A row's initial value is a pure function of (seed, table name, key), so tables initialise
// the same whatever their size, sharding, insertion order or thread count.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/huge_pages.h"
#include "core/layers/embedding_bag.h"
#include "core/optim.h"
#include "core/tensor.h"

namespace ncsrec {

// Per-row int64 columns (keys, counters): read at the batch's random rows, so in huge pages
// when large (core/huge_pages.h).
using RowColumn = std::vector<int64_t, RandomAccessAllocator<int64_t>>;

class EmbeddingTable {
 public:
  // Rows 0..rows-1 with keys 0..rows-1, initialised N(0, init_scale²) from (seed, name, key).
  EmbeddingTable(std::string name, int64_t rows, int64_t dim, DType dtype, uint64_t seed, double init_scale);
  // One row per key of `keys`, initialised alike (may be empty: a shard that holds no row yet).
  EmbeddingTable(std::string name, const std::vector<int64_t>& keys, int64_t dim, DType dtype, uint64_t seed,
                 double init_scale);
  EmbeddingTable(EmbeddingTable&&) = default;
  EmbeddingTable& operator=(EmbeddingTable&&) = default;

  const std::string& name() const { return name_; }
  int64_t rows() const { return rows_; }
  int64_t dim() const { return dim_; }
  DType dtype() const { return dtype_; }
  // [rows, dim]. A view: appending or dropping rows replaces it (take no pointer across those).
  Tensor& values() { return values_; }
  const Tensor& values() const { return values_; }
  // The key of each row.
  const RowColumn& keys() const { return keys_; }

  // Appends one row per key, initialised from (seed, name, key), with fresh optimizer state
  // (each column's fill) and counters (0, -1, -1). Returns the index of the first new row.
  int64_t append(const std::vector<int64_t>& keys);
  // Keeps the rows `keep` (increasing indices) and drops the others: values, state, counters.
  void keep_rows(const std::vector<int64_t>& keep);

  // A per-row optimizer state column: [rows, width] (width 0: [rows]) of `dtype`, each new row
  // filled with `fill`. Adding an existing name resets it to `fill` (a new optimizer starts
  // fresh). The pointer stays valid for the table's life.
  Tensor* add_state(const std::string& name, DType dtype, int64_t width, double fill);

  RowColumn& count() { return count_; }
  RowColumn& last_seen_day() { return last_seen_day_; }
  RowColumn& updated_step() { return updated_step_; }
  const RowColumn& count() const { return count_; }
  const RowColumn& last_seen_day() const { return last_seen_day_; }
  const RowColumn& updated_step() const { return updated_step_; }

 private:
  struct Column {
    std::string name;
    DType dtype;
    int64_t width;  // 0: one element per row, shape [rows]
    double fill;
    Tensor storage;  // [capacity, max(width, 1)]
    Tensor view;     // the first rows_ rows
  };
  void reserve(int64_t rows);
  void refresh_views();

  std::string name_;
  int64_t dim_;
  DType dtype_;
  uint64_t table_seed_;
  double init_scale_;
  int64_t rows_ = 0, capacity_ = 0;
  Tensor storage_, values_;
  std::vector<std::unique_ptr<Column>> columns_;
  RowColumn keys_, count_, last_seen_day_, updated_step_;
};

// Sparse optimizers: "adagrad" (sparse Adagrad), "adam" (sparse/lazy Adam: moments and the
// per-row step count advance only for rows in the batch) or "sgd". No weight decay (a config
// with weight_decay > 0 is refused): decaying only the rows in the batch would shrink frequent
// ids more than rare ones, and decaying every row would make each step touch the whole table.
// The state lives in the table as per-row columns (EmbeddingTable::add_state).
class SparseOptimizer {
 public:
  virtual ~SparseOptimizer() = default;
  virtual void step(EmbeddingTable& table, const SparseGrad& grad) = 0;
  // Named state tensors for checkpoints: {"accumulator"} or {"m", "v", "steps"}.
  std::vector<std::pair<std::string, Tensor*>> state() const { return state_; }

  // The rate of the following steps; starts at the config's lr, base_lr() (a schedule sets
  // base_lr() · factor before every step).
  void set_lr(double lr);
  double lr() const { return lr_; }
  double base_lr() const { return base_lr_; }

 protected:
  SparseOptimizer(double lr, const EmbeddingTable& table) : base_lr_(lr), lr_(lr), table_(&table) {}
  void check(const EmbeddingTable& table, const SparseGrad& grad) const;
  double base_lr_, lr_;
  const EmbeddingTable* table_;
  std::vector<std::pair<std::string, Tensor*>> state_;
};

std::unique_ptr<SparseOptimizer> make_sparse_optimizer(const OptimizerConfig& config, EmbeddingTable& table);

}  // namespace ncsrec

// Fixed-size embedding tables and their sparse optimizers: a step touches only the rows in
// the batch (the rows of a SparseGrad); every other row and its optimizer state stay
// bit-identical. Hash tables with open vocabularies are a later issue; this table maps ids
// to rows modulo its size (core/layers/embedding_bag.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/layers/embedding_bag.h"
#include "core/optim.h"
#include "core/tensor.h"

namespace ncsrec {

class EmbeddingTable {
 public:
  // Rows are initialised N(0, init_scale²) from (seed, table name, row), independent of order.
  EmbeddingTable(std::string name, int64_t rows, int64_t dim, DType dtype, uint64_t seed, double init_scale);
  // A shard: row i holds global row global_rows[i] of the table above, initialised alike (may
  // be empty: a rank that holds no row of the table).
  EmbeddingTable(std::string name, const std::vector<int64_t>& global_rows, int64_t dim, DType dtype, uint64_t seed,
                 double init_scale);
  const std::string& name() const { return name_; }
  int64_t rows() const { return values_.dim(0); }
  int64_t dim() const { return values_.dim(1); }
  Tensor& values() { return values_; }
  const Tensor& values() const { return values_; }

 private:
  void init(int64_t rows, const int64_t* rows_of, int64_t dim, DType dtype, uint64_t seed, double init_scale);
  std::string name_;
  Tensor values_;
};

// Sparse optimizers: "adagrad" (sparse Adagrad) or "adam" (sparse/lazy Adam: moments and the
// per-row step count advance only for rows in the batch). No weight decay (a config with
// weight_decay > 0 is refused): decaying only the rows in the batch would shrink frequent ids
// more than rare ones, and decaying every row would make each step touch the whole table.
class SparseOptimizer {
 public:
  virtual ~SparseOptimizer() = default;
  virtual void step(EmbeddingTable& table, const SparseGrad& grad) = 0;
  // Named state tensors for checkpoints: {"accumulator"} or {"m", "v", "steps"}.
  virtual std::vector<std::pair<std::string, Tensor*>> state() = 0;

  // The rate of the following steps; starts at the config's lr, base_lr() (a schedule sets
  // base_lr() · factor before every step).
  void set_lr(double lr);
  double lr() const { return lr_; }
  double base_lr() const { return base_lr_; }

 protected:
  explicit SparseOptimizer(double lr) : base_lr_(lr), lr_(lr) {}
  double base_lr_, lr_;
};

std::unique_ptr<SparseOptimizer> make_sparse_optimizer(const OptimizerConfig& config, const EmbeddingTable& table);

}  // namespace ncsrec

// Embedding tables and their sparse optimizers (CPU).
//
// A row's initial value is a pure function of (seed, table name, key), so tables initialise the
// same whatever their size, sharding, insertion order or thread count. Rows live in storage of
// growing capacity (doubling), so appending is amortised O(rows appended); values() and every
// state column are views of the live rows. A sparse step visits only the rows of the
// SparseGrad (sorted and unique, so rows can be updated in parallel without conflicts); every
// other row and its optimizer state stay bit-identical. Adam is "lazy": a row's moments decay
// and its step count advances only when the row is in the batch, and its bias correction uses
// that row's own count.
//
// Not here: the key index of hash tables and row sharding (sharded_table.h), CUDA kernels.
#include "embedding/embedding_table.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/huge_pages.h"
#include "core/random.h"

namespace ncsrec {
namespace {

constexpr int64_t kParallelMinRows = 64;  // below this, threads cost more than they save

// Row r of `values` is the row of key keys[r]: a pure function of (table seed, key), so shards,
// whole tables and hash tables agree bit for bit.
template <class T>
void init_rows(T* values, int64_t rows, const int64_t* keys, int64_t dim, uint64_t table_seed, double init_scale) {
#pragma omp parallel for schedule(static) if (rows >= kParallelMinRows)
  for (int64_t r = 0; r < rows; ++r) {
    Rng rng(hash_combine(table_seed, static_cast<uint64_t>(keys[r])));
    for (int64_t d = 0; d < dim; ++d) values[r * dim + d] = static_cast<T>(init_scale * rng.normal());
  }
}

class SparseSgd final : public SparseOptimizer {
 public:
  SparseSgd(const OptimizerConfig& c, EmbeddingTable& t) : SparseOptimizer(c.lr, t) {}
  void step(EmbeddingTable& table, const SparseGrad& grad) override {
    check(table, grad);
    if (table.dtype() == DType::F32) run<float>(table, grad);
    else run<double>(table, grad);
  }

 private:
  template <class T>
  void run(EmbeddingTable& table, const SparseGrad& grad) {
    const int64_t n = static_cast<int64_t>(grad.rows.size()), dim = table.dim();
    T* w = table.values().data<T>();
    const T* g = grad.values.data<T>();
    const T lr = static_cast<T>(lr_);
#pragma omp parallel for schedule(static) if (n >= kParallelMinRows)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t row = grad.rows[static_cast<size_t>(i)];
      for (int64_t d = 0; d < dim; ++d) w[row * dim + d] -= lr * g[i * dim + d];
    }
  }
};

// acc += g²;  w -= lr · g / (sqrt(acc) + eps), per element of the touched rows.
class SparseAdagrad final : public SparseOptimizer {
 public:
  SparseAdagrad(const OptimizerConfig& c, EmbeddingTable& t)
      : SparseOptimizer(c.lr, t), c_(c),
        accumulator_(t.add_state("accumulator", t.dtype(), t.dim(), c.initial_accumulator)) {
    state_ = {{"accumulator", accumulator_}};
  }
  void step(EmbeddingTable& table, const SparseGrad& grad) override {
    check(table, grad);
    if (table.dtype() == DType::F32) run<float>(table, grad);
    else run<double>(table, grad);
  }

 private:
  template <class T>
  void run(EmbeddingTable& table, const SparseGrad& grad) {
    const int64_t n = static_cast<int64_t>(grad.rows.size()), dim = table.dim();
    T* w = table.values().data<T>();
    T* acc = accumulator_->data<T>();
    const T* g = grad.values.data<T>();
    const T lr = static_cast<T>(lr_), eps = static_cast<T>(c_.adagrad_eps);
#pragma omp parallel for schedule(static) if (n >= kParallelMinRows)
    for (int64_t i = 0; i < n; ++i) {
      if (i + kPrefetchAhead < n) {
        const int64_t ahead = grad.rows[static_cast<size_t>(i + kPrefetchAhead)] * dim;
        prefetch_row<true>(w + ahead, dim * sizeof(T));
        prefetch_row<true>(acc + ahead, dim * sizeof(T));
      }
      const int64_t row = grad.rows[static_cast<size_t>(i)];
      for (int64_t d = 0; d < dim; ++d) {
        const int64_t e = row * dim + d;
        const T gi = g[i * dim + d];
        acc[e] += gi * gi;
        w[e] -= lr * gi / (std::sqrt(acc[e]) + eps);
      }
    }
  }
  OptimizerConfig c_;
  Tensor* accumulator_;
};

// Lazy Adam: for a touched row with its own step count t (after increment),
// m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²;  w -= lr · (m / (1-β1^t)) / (sqrt(v / (1-β2^t)) + eps).
class SparseAdam final : public SparseOptimizer {
 public:
  SparseAdam(const OptimizerConfig& c, EmbeddingTable& t)
      : SparseOptimizer(c.lr, t), c_(c),
        m_(t.add_state("m", t.dtype(), t.dim(), 0.0)),
        v_(t.add_state("v", t.dtype(), t.dim(), 0.0)),
        steps_(t.add_state("steps", DType::I64, 0, 0.0)) {
    state_ = {{"m", m_}, {"v", v_}, {"steps", steps_}};
  }
  void step(EmbeddingTable& table, const SparseGrad& grad) override {
    check(table, grad);
    if (table.dtype() == DType::F32) run<float>(table, grad);
    else run<double>(table, grad);
  }

 private:
  template <class T>
  void run(EmbeddingTable& table, const SparseGrad& grad) {
    const int64_t n = static_cast<int64_t>(grad.rows.size()), dim = table.dim();
    T* w = table.values().data<T>();
    T* m = m_->data<T>();
    T* v = v_->data<T>();
    int64_t* steps = steps_->data<int64_t>();
    const T* g = grad.values.data<T>();
    const T lr = static_cast<T>(lr_), beta1 = static_cast<T>(c_.beta1), beta2 = static_cast<T>(c_.beta2),
            eps = static_cast<T>(c_.eps);
#pragma omp parallel for schedule(static) if (n >= kParallelMinRows)
    for (int64_t i = 0; i < n; ++i) {
      if (i + kPrefetchAhead < n) {
        const int64_t ahead = grad.rows[static_cast<size_t>(i + kPrefetchAhead)];
        prefetch_row<true>(w + ahead * dim, dim * sizeof(T));
        prefetch_row<true>(m + ahead * dim, dim * sizeof(T));
        prefetch_row<true>(v + ahead * dim, dim * sizeof(T));
        prefetch_row<true>(steps + ahead, sizeof(int64_t));
      }
      const int64_t row = grad.rows[static_cast<size_t>(i)];
      const int64_t t = ++steps[row];
      // Same bias corrections, computed the same way, as the dense Adam (core/optim.cpp).
      const T c1 = static_cast<T>(1.0 - std::pow(c_.beta1, static_cast<double>(t)));
      const T c2 = static_cast<T>(1.0 - std::pow(c_.beta2, static_cast<double>(t)));
      for (int64_t d = 0; d < dim; ++d) {
        const int64_t e = row * dim + d;
        const T gi = g[i * dim + d];
        m[e] = beta1 * m[e] + (T(1) - beta1) * gi;
        v[e] = beta2 * v[e] + (T(1) - beta2) * gi * gi;
        w[e] -= lr * (m[e] / c1) / (std::sqrt(v[e] / c2) + eps);
      }
    }
  }
  OptimizerConfig c_;
  Tensor *m_, *v_, *steps_;
};

}  // namespace

void SparseOptimizer::set_lr(double lr) {
  NCSREC_CHECK(lr >= 0 && std::isfinite(lr), "learning rate " << lr);
  lr_ = lr;
}

void SparseOptimizer::check(const EmbeddingTable& table, const SparseGrad& grad) const {
  NCSREC_CHECK(&table == table_, "sparse optimizer built for table " << table_->name() << " stepped on table "
                                                                      << table.name());
  const int64_t n = static_cast<int64_t>(grad.rows.size());
  NCSREC_CHECK(grad.values.dtype() == table.dtype() && grad.values.ndim() == 2 && grad.values.dim(0) == n &&
                   grad.values.dim(1) == table.dim(),
               "sparse gradient " << grad.values.describe() << " for " << n << " rows of table " << table.name() << " "
                                  << table.values().describe());
  NCSREC_CHECK(grad.values.device() == Device::CPU && table.values().device() == Device::CPU,
               "the CPU sparse optimizer got " << grad.values.describe() << " for " << table.values().describe());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = grad.rows[static_cast<size_t>(i)];
    NCSREC_CHECK(r >= 0 && r < table.rows(), "sparse gradient row " << r << " outside table " << table.name());
    NCSREC_CHECK(i == 0 || r > grad.rows[static_cast<size_t>(i - 1)], "sparse gradient rows must be sorted and unique");
  }
}

namespace {

std::vector<int64_t> iota_keys(const std::string& name, int64_t rows, int64_t dim) {
  NCSREC_CHECK(rows > 0 && dim > 0, "embedding table " << name << " needs positive shape, got [" << rows << ", " << dim << "]");
  std::vector<int64_t> keys(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) keys[static_cast<size_t>(r)] = r;
  return keys;
}

void fill_rows(Tensor& storage, int64_t begin, int64_t end, double value) {
  const int64_t width = storage.dim(1);
  switch (storage.dtype()) {
    case DType::F32: std::fill(storage.data<float>() + begin * width, storage.data<float>() + end * width, static_cast<float>(value)); break;
    case DType::F64: std::fill(storage.data<double>() + begin * width, storage.data<double>() + end * width, value); break;
    case DType::I64: std::fill(storage.data<int64_t>() + begin * width, storage.data<int64_t>() + end * width, static_cast<int64_t>(value)); break;
    case DType::U8: std::fill(storage.data<uint8_t>() + begin * width, storage.data<uint8_t>() + end * width, static_cast<uint8_t>(value)); break;
  }
}

// A copy of the first `rows` rows of `storage` in new storage of `capacity` rows.
Tensor regrow(const Tensor& storage, int64_t rows, int64_t capacity, int64_t width, DType dtype) {
  Tensor out = Tensor::empty({capacity, width}, dtype, Device::CPU);
  if (rows > 0) std::memcpy(out.raw(), storage.raw(), static_cast<size_t>(rows * width) * dtype_size(dtype));
  return out;
}

// Moves rows keep[i] to row i (keep increasing, so keep[i] >= i: a forward in-place copy is safe).
void compact_rows(Tensor& storage, const std::vector<int64_t>& keep) {
  const size_t row_bytes = static_cast<size_t>(storage.dim(1)) * dtype_size(storage.dtype());
  char* base = static_cast<char*>(storage.raw());
  for (size_t i = 0; i < keep.size(); ++i)
    if (static_cast<int64_t>(i) != keep[i]) std::memmove(base + i * row_bytes, base + static_cast<size_t>(keep[i]) * row_bytes, row_bytes);
}

template <class Vector>
void compact_vector(Vector& v, const std::vector<int64_t>& keep) {
  for (size_t i = 0; i < keep.size(); ++i) v[i] = v[static_cast<size_t>(keep[i])];
  v.resize(keep.size());
}

}  // namespace

EmbeddingTable::EmbeddingTable(std::string name, int64_t rows, int64_t dim, DType dtype, uint64_t seed,
                               double init_scale)
    : EmbeddingTable(name, iota_keys(name, rows, dim), dim, dtype, seed, init_scale) {}

EmbeddingTable::EmbeddingTable(std::string name, const std::vector<int64_t>& keys, int64_t dim, DType dtype,
                               uint64_t seed, double init_scale)
    : name_(std::move(name)), dim_(dim), dtype_(dtype), table_seed_(hash_combine(seed, hash_string(name_))),
      init_scale_(init_scale) {
  NCSREC_CHECK(dim > 0, "embedding table " << name_ << " needs a positive dim, got " << dim);
  NCSREC_CHECK(dtype == DType::F32 || dtype == DType::F64, "embedding table " << name_ << " of " << dtype_name(dtype));
  reserve(std::max<int64_t>(static_cast<int64_t>(keys.size()), 1));
  append(keys);
}

void EmbeddingTable::reserve(int64_t rows) {
  if (rows <= capacity_) return;
  const int64_t capacity = std::max<int64_t>(rows, capacity_ == 0 ? rows : 2 * capacity_);
  storage_ = regrow(storage_, rows_, capacity, dim_, dtype_);
  for (auto& c : columns_) c->storage = regrow(c->storage, rows_, capacity, std::max<int64_t>(c->width, 1), c->dtype);
  capacity_ = capacity;
  refresh_views();
}

void EmbeddingTable::refresh_views() {
  values_ = storage_.slice_rows(0, rows_);
  for (auto& c : columns_) {
    Tensor rows = c->storage.slice_rows(0, rows_);
    c->view = c->width == 0 ? rows.reshape({rows_}) : rows;
  }
}

int64_t EmbeddingTable::append(const std::vector<int64_t>& keys) {
  const int64_t first = rows_, n = static_cast<int64_t>(keys.size());
  if (n == 0) return first;
  reserve(rows_ + n);
  if (dtype_ == DType::F32)
    init_rows(storage_.data<float>() + first * dim_, n, keys.data(), dim_, table_seed_, init_scale_);
  else
    init_rows(storage_.data<double>() + first * dim_, n, keys.data(), dim_, table_seed_, init_scale_);
  for (auto& c : columns_) fill_rows(c->storage, first, first + n, c->fill);
  keys_.insert(keys_.end(), keys.begin(), keys.end());
  count_.resize(static_cast<size_t>(first + n), 0);
  last_seen_day_.resize(static_cast<size_t>(first + n), -1);
  updated_step_.resize(static_cast<size_t>(first + n), -1);
  rows_ = first + n;
  refresh_views();
  return first;
}

void EmbeddingTable::keep_rows(const std::vector<int64_t>& keep) {
  for (size_t i = 0; i < keep.size(); ++i)
    NCSREC_CHECK(keep[i] >= 0 && keep[i] < rows_ && (i == 0 || keep[i] > keep[i - 1]),
                 "table " << name_ << ": rows to keep must be increasing rows of the table");
  compact_rows(storage_, keep);
  for (auto& c : columns_) compact_rows(c->storage, keep);
  compact_vector(keys_, keep);
  compact_vector(count_, keep);
  compact_vector(last_seen_day_, keep);
  compact_vector(updated_step_, keep);
  rows_ = static_cast<int64_t>(keep.size());
  refresh_views();
}

Tensor* EmbeddingTable::add_state(const std::string& name, DType dtype, int64_t width, double fill) {
  for (auto& c : columns_)
    if (c->name == name) {
      NCSREC_CHECK(c->dtype == dtype && c->width == width, "table " << name_ << ": state " << name << " re-added with another shape");
      c->fill = fill;
      fill_rows(c->storage, 0, rows_, fill);
      return &c->view;
    }
  auto c = std::make_unique<Column>();
  c->name = name;
  c->dtype = dtype;
  c->width = width;
  c->fill = fill;
  c->storage = Tensor::empty({std::max<int64_t>(capacity_, 1), std::max<int64_t>(width, 1)}, dtype, Device::CPU);
  fill_rows(c->storage, 0, rows_, fill);
  columns_.push_back(std::move(c));
  refresh_views();
  return &columns_.back()->view;
}

std::unique_ptr<SparseOptimizer> make_sparse_optimizer(const OptimizerConfig& config, EmbeddingTable& table) {
  if (!(config.lr >= 0) || !std::isfinite(config.lr))
    throw ConfigError(NCSREC_STR_("sparse optimizer lr must be a finite number >= 0, got " << config.lr));
  if (config.weight_decay != 0)
    throw ConfigError(NCSREC_STR_("sparse optimizer weight_decay must be 0 (the embedding optimizers apply no weight "
                                  "decay), got " << config.weight_decay));
  if (config.type == "adagrad") return std::make_unique<SparseAdagrad>(config, table);
  if (config.type == "adam") return std::make_unique<SparseAdam>(config, table);
  if (config.type == "sgd") return std::make_unique<SparseSgd>(config, table);
  throw ConfigError("unknown sparse optimizer type '" + config.type + "' for table " + table.name() +
                    "; valid types: adagrad, adam, sgd");
}

}  // namespace ncsrec

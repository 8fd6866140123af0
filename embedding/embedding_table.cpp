// Fixed-size embedding tables and their sparse optimizers (CPU).
//
// A row's initial value is a pure function of (seed, table name, row), so tables initialise the
// same whatever their size, sharding or thread count. A sparse step visits only the rows of the
// SparseGrad (sorted and unique, so rows can be updated in parallel without conflicts); every
// other row and its optimizer state stay bit-identical. Adam is "lazy": a row's moments decay
// and its step count advances only when the row is in the batch, and its bias correction uses
// that row's own count.
//
// Not here: open-vocabulary hash tables, row sharding over ranks, delta export, CUDA kernels.
#include "embedding/embedding_table.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/random.h"

namespace ncsrec {
namespace {

constexpr int64_t kParallelMinRows = 64;  // below this, threads cost more than they save

// Row i of `values` is global row rows_of[i] (or i when rows_of is null): a pure function of
// (table seed, global row), so shards and whole tables agree bit for bit.
template <class T>
void init_rows(T* values, int64_t rows, const int64_t* rows_of, int64_t dim, uint64_t table_seed, double init_scale) {
#pragma omp parallel for schedule(static) if (rows >= kParallelMinRows)
  for (int64_t r = 0; r < rows; ++r) {
    Rng rng(hash_combine(table_seed, static_cast<uint64_t>(rows_of ? rows_of[r] : r)));
    for (int64_t d = 0; d < dim; ++d) values[r * dim + d] = static_cast<T>(init_scale * rng.normal());
  }
}

void check_grad(const EmbeddingTable& table, const SparseGrad& grad, DType state_dtype, int64_t state_rows) {
  NCSREC_CHECK(table.values().dtype() == state_dtype && table.rows() == state_rows,
               "sparse optimizer built for " << dtype_name(state_dtype) << " [" << state_rows << ", ...] stepped on "
                                             << table.name() << " " << table.values().describe());
  const int64_t n = static_cast<int64_t>(grad.rows.size());
  NCSREC_CHECK(grad.values.dtype() == table.values().dtype() && grad.values.ndim() == 2 &&
                   grad.values.dim(0) == n && grad.values.dim(1) == table.dim(),
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

class SparseSgd final : public SparseOptimizer {
 public:
  SparseSgd(const OptimizerConfig& c, const EmbeddingTable& t)
      : SparseOptimizer(c.lr), dtype_(t.values().dtype()), rows_(t.rows()) {}
  void step(EmbeddingTable& table, const SparseGrad& grad) override {
    check_grad(table, grad, dtype_, rows_);
    if (dtype_ == DType::F32) run<float>(table, grad);
    else run<double>(table, grad);
  }
  std::vector<std::pair<std::string, Tensor*>> state() override { return {}; }

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
  DType dtype_;
  int64_t rows_;
};

// acc += g²;  w -= lr · g / (sqrt(acc) + eps), per element of the touched rows.
class SparseAdagrad final : public SparseOptimizer {
 public:
  SparseAdagrad(const OptimizerConfig& c, const EmbeddingTable& t)
      : SparseOptimizer(c.lr), c_(c), dtype_(t.values().dtype()), rows_(t.rows()),
        accumulator_(Tensor::empty({t.rows(), t.dim()}, t.values().dtype(), Device::CPU)) {
    if (dtype_ == DType::F32)
      std::fill_n(accumulator_.data<float>(), accumulator_.numel(), static_cast<float>(c.initial_accumulator));
    else
      std::fill_n(accumulator_.data<double>(), accumulator_.numel(), c.initial_accumulator);
  }
  void step(EmbeddingTable& table, const SparseGrad& grad) override {
    check_grad(table, grad, dtype_, rows_);
    if (dtype_ == DType::F32) run<float>(table, grad);
    else run<double>(table, grad);
  }
  std::vector<std::pair<std::string, Tensor*>> state() override { return {{"accumulator", &accumulator_}}; }

 private:
  template <class T>
  void run(EmbeddingTable& table, const SparseGrad& grad) {
    const int64_t n = static_cast<int64_t>(grad.rows.size()), dim = table.dim();
    T* w = table.values().data<T>();
    T* acc = accumulator_.data<T>();
    const T* g = grad.values.data<T>();
    const T lr = static_cast<T>(lr_), eps = static_cast<T>(c_.adagrad_eps);
#pragma omp parallel for schedule(static) if (n >= kParallelMinRows)
    for (int64_t i = 0; i < n; ++i) {
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
  DType dtype_;
  int64_t rows_;
  Tensor accumulator_;
};

// Lazy Adam: for a touched row with its own step count t (after increment),
// m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²;  w -= lr · (m / (1-β1^t)) / (sqrt(v / (1-β2^t)) + eps).
class SparseAdam final : public SparseOptimizer {
 public:
  SparseAdam(const OptimizerConfig& c, const EmbeddingTable& t)
      : SparseOptimizer(c.lr), c_(c), dtype_(t.values().dtype()), rows_(t.rows()),
        m_(Tensor::zeros({t.rows(), t.dim()}, t.values().dtype(), Device::CPU)),
        v_(Tensor::zeros({t.rows(), t.dim()}, t.values().dtype(), Device::CPU)),
        steps_(Tensor::zeros({t.rows()}, DType::I64, Device::CPU)) {}
  void step(EmbeddingTable& table, const SparseGrad& grad) override {
    check_grad(table, grad, dtype_, rows_);
    if (dtype_ == DType::F32) run<float>(table, grad);
    else run<double>(table, grad);
  }
  std::vector<std::pair<std::string, Tensor*>> state() override {
    return {{"m", &m_}, {"v", &v_}, {"steps", &steps_}};
  }

 private:
  template <class T>
  void run(EmbeddingTable& table, const SparseGrad& grad) {
    const int64_t n = static_cast<int64_t>(grad.rows.size()), dim = table.dim();
    T* w = table.values().data<T>();
    T* m = m_.data<T>();
    T* v = v_.data<T>();
    int64_t* steps = steps_.data<int64_t>();
    const T* g = grad.values.data<T>();
    const T lr = static_cast<T>(lr_), beta1 = static_cast<T>(c_.beta1), beta2 = static_cast<T>(c_.beta2),
            eps = static_cast<T>(c_.eps);
#pragma omp parallel for schedule(static) if (n >= kParallelMinRows)
    for (int64_t i = 0; i < n; ++i) {
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
  DType dtype_;
  int64_t rows_;
  Tensor m_, v_, steps_;
};

}  // namespace

void SparseOptimizer::set_lr(double lr) {
  NCSREC_CHECK(lr >= 0 && std::isfinite(lr), "learning rate " << lr);
  lr_ = lr;
}

EmbeddingTable::EmbeddingTable(std::string name, int64_t rows, int64_t dim, DType dtype, uint64_t seed,
                               double init_scale)
    : name_(std::move(name)) {
  NCSREC_CHECK(rows > 0 && dim > 0, "embedding table " << name_ << " needs positive shape, got [" << rows << ", "
                                                       << dim << "]");
  init(rows, nullptr, dim, dtype, seed, init_scale);
}

EmbeddingTable::EmbeddingTable(std::string name, const std::vector<int64_t>& global_rows, int64_t dim, DType dtype,
                               uint64_t seed, double init_scale)
    : name_(std::move(name)) {
  NCSREC_CHECK(dim > 0, "embedding table " << name_ << " needs a positive dim, got " << dim);
  init(static_cast<int64_t>(global_rows.size()), global_rows.data(), dim, dtype, seed, init_scale);
}

void EmbeddingTable::init(int64_t rows, const int64_t* rows_of, int64_t dim, DType dtype, uint64_t seed,
                          double init_scale) {
  NCSREC_CHECK(dtype == DType::F32 || dtype == DType::F64, "embedding table " << name_ << " of " << dtype_name(dtype));
  values_ = Tensor::empty({rows, dim}, dtype, Device::CPU);
  const uint64_t table_seed = hash_combine(seed, hash_string(name_));
  if (dtype == DType::F32) init_rows(values_.data<float>(), rows, rows_of, dim, table_seed, init_scale);
  else init_rows(values_.data<double>(), rows, rows_of, dim, table_seed, init_scale);
}

std::unique_ptr<SparseOptimizer> make_sparse_optimizer(const OptimizerConfig& config, const EmbeddingTable& table) {
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

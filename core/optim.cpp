// Dense optimizers (SGD, Adam, Adagrad) on CPU: one element-wise loop over the whole parameter
// buffer, OpenMP static schedule. Each element's update reads only its own value, gradient and
// state, so the result does not depend on the thread count. An update mask (optim.h) is a
// compile-time variant of each loop, chosen outside it, so the unmasked loop stays as it was.
//
// Not here: sparse (row-wise) optimizers for embedding tables (embedding/), gradient clipping or
// weight decay, and a CUDA path (its kernels will be registered by cuda/).
#include "core/optim.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace ncsrec {
namespace {

constexpr int64_t kParallelMin = 1 << 14;  // below this, threads cost more than they save

void check_step_args(const Tensor& values, const Tensor& grads, int64_t numel, DType dtype) {
  NCSREC_CHECK(values.numel() == numel && grads.numel() == numel,
               "optimizer built for " << numel << " elements got " << values.describe() << " and " << grads.describe());
  NCSREC_CHECK(values.dtype() == dtype && grads.dtype() == dtype,
               "optimizer built for " << dtype_name(dtype) << " got " << values.describe() << " and "
                                      << grads.describe());
  NCSREC_CHECK(values.device() == Device::CPU && grads.device() == Device::CPU,
               "the CPU optimizer got " << values.describe() << " and " << grads.describe());
}

template <bool kMasked, class T>
void sgd_t(T* w, const T* g, const uint8_t* mask, int64_t n, T lr) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (kMasked)
      if (!mask[i]) continue;
    w[i] -= lr * g[i];
  }
}

// m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²;  w -= lr · (m / c1) / (sqrt(v / c2) + eps),
// with the bias corrections c1 = 1 - β1^t, c2 = 1 - β2^t.
template <bool kMasked, class T>
void adam_t(T* w, const T* g, T* m, T* v, const uint8_t* mask, int64_t n, T lr, T beta1, T beta2, T eps, T c1,
            T c2) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (kMasked)
      if (!mask[i]) continue;
    m[i] = beta1 * m[i] + (T(1) - beta1) * g[i];
    v[i] = beta2 * v[i] + (T(1) - beta2) * g[i] * g[i];
    w[i] -= lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + eps);
  }
}

// acc += g²;  w -= lr · g / (sqrt(acc) + eps)
template <bool kMasked, class T>
void adagrad_t(T* w, const T* g, T* acc, const uint8_t* mask, int64_t n, T lr, T eps) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (kMasked)
      if (!mask[i]) continue;
    acc[i] += g[i] * g[i];
    w[i] -= lr * g[i] / (std::sqrt(acc[i]) + eps);
  }
}

class Sgd final : public DenseOptimizer {
 public:
  Sgd(const OptimizerConfig& c, int64_t numel, DType dtype) : c_(c), numel_(numel), dtype_(dtype) {}
  using DenseOptimizer::step;
  void step(Tensor& values, const Tensor& grads, int64_t, const uint8_t* mask) override {
    check_step_args(values, grads, numel_, dtype_);
    if (dtype_ == DType::F32) run<float>(values, grads, mask);
    else run<double>(values, grads, mask);
  }
  std::vector<std::pair<std::string, Tensor*>> state() override { return {}; }

 private:
  template <class T>
  void run(Tensor& values, const Tensor& grads, const uint8_t* mask) {
    auto kernel = mask ? sgd_t<true, T> : sgd_t<false, T>;
    kernel(values.data<T>(), grads.data<T>(), mask, numel_, static_cast<T>(c_.lr));
  }

  OptimizerConfig c_;
  int64_t numel_;
  DType dtype_;
};

class Adam final : public DenseOptimizer {
 public:
  Adam(const OptimizerConfig& c, int64_t numel, DType dtype, Device device)
      : c_(c), numel_(numel), dtype_(dtype), m_(Tensor::zeros({numel}, dtype, device)),
        v_(Tensor::zeros({numel}, dtype, device)) {}
  using DenseOptimizer::step;
  void step(Tensor& values, const Tensor& grads, int64_t step, const uint8_t* mask) override {
    check_step_args(values, grads, numel_, dtype_);
    NCSREC_CHECK(step >= 1, "Adam steps count from 1, got " << step);
    // Global step count, masked or not (see optim.h).
    const double c1 = 1.0 - std::pow(c_.beta1, static_cast<double>(step));
    const double c2 = 1.0 - std::pow(c_.beta2, static_cast<double>(step));
    if (dtype_ == DType::F32) run<float>(values, grads, mask, c1, c2);
    else run<double>(values, grads, mask, c1, c2);
  }
  std::vector<std::pair<std::string, Tensor*>> state() override { return {{"m", &m_}, {"v", &v_}}; }

 private:
  template <class T>
  void run(Tensor& values, const Tensor& grads, const uint8_t* mask, double c1, double c2) {
    auto kernel = mask ? adam_t<true, T> : adam_t<false, T>;
    kernel(values.data<T>(), grads.data<T>(), m_.data<T>(), v_.data<T>(), mask, numel_, static_cast<T>(c_.lr),
           static_cast<T>(c_.beta1), static_cast<T>(c_.beta2), static_cast<T>(c_.eps), static_cast<T>(c1),
           static_cast<T>(c2));
  }

  OptimizerConfig c_;
  int64_t numel_;
  DType dtype_;
  Tensor m_, v_;
};

class Adagrad final : public DenseOptimizer {
 public:
  Adagrad(const OptimizerConfig& c, int64_t numel, DType dtype, Device device)
      : c_(c), numel_(numel), dtype_(dtype), accumulator_(Tensor::empty({numel}, dtype, device)) {
    if (dtype == DType::F32) std::fill_n(accumulator_.data<float>(), numel, static_cast<float>(c.initial_accumulator));
    else std::fill_n(accumulator_.data<double>(), numel, c.initial_accumulator);
  }
  using DenseOptimizer::step;
  void step(Tensor& values, const Tensor& grads, int64_t, const uint8_t* mask) override {
    check_step_args(values, grads, numel_, dtype_);
    if (dtype_ == DType::F32) run<float>(values, grads, mask);
    else run<double>(values, grads, mask);
  }
  std::vector<std::pair<std::string, Tensor*>> state() override { return {{"accumulator", &accumulator_}}; }

 private:
  template <class T>
  void run(Tensor& values, const Tensor& grads, const uint8_t* mask) {
    auto kernel = mask ? adagrad_t<true, T> : adagrad_t<false, T>;
    kernel(values.data<T>(), grads.data<T>(), accumulator_.data<T>(), mask, numel_, static_cast<T>(c_.lr),
           static_cast<T>(c_.adagrad_eps));
  }

  OptimizerConfig c_;
  int64_t numel_;
  DType dtype_;
  Tensor accumulator_;
};

void validate(const OptimizerConfig& c) {
  if (!(c.lr >= 0) || !std::isfinite(c.lr))
    throw ConfigError(NCSREC_STR_("optimizer lr must be a finite number >= 0, got " << c.lr));
  if (c.type == "adam") {
    if (!(c.beta1 >= 0 && c.beta1 < 1) || !(c.beta2 >= 0 && c.beta2 < 1))
      throw ConfigError(NCSREC_STR_("adam betas must lie in [0, 1), got beta1=" << c.beta1 << ", beta2=" << c.beta2));
    if (!(c.eps > 0)) throw ConfigError(NCSREC_STR_("adam eps must be > 0, got " << c.eps));
  }
  if (c.type == "adagrad") {
    if (!(c.initial_accumulator >= 0))
      throw ConfigError(NCSREC_STR_("adagrad initial_accumulator must be >= 0, got " << c.initial_accumulator));
    if (!(c.adagrad_eps > 0)) throw ConfigError(NCSREC_STR_("adagrad eps must be > 0, got " << c.adagrad_eps));
  }
}

}  // namespace

std::unique_ptr<DenseOptimizer> make_dense_optimizer(const OptimizerConfig& config, int64_t numel, DType dtype,
                                                     Device device) {
  NCSREC_CHECK(numel >= 0, "optimizer for " << numel << " elements");
  NCSREC_CHECK(dtype == DType::F32 || dtype == DType::F64, "dense optimizer on " << dtype_name(dtype) << " values");
  if (config.type != "sgd" && config.type != "adam" && config.type != "adagrad")
    throw ConfigError("unknown optimizer type '" + config.type + "'; valid types: sgd, adam, adagrad");
  if (device != Device::CPU)
    throw UserError(std::string("dense optimizer '") + config.type + "' has no implementation on " +
                    device_name(device) + " yet");
  validate(config);
  if (config.type == "sgd") return std::make_unique<Sgd>(config, numel, dtype);
  if (config.type == "adam") return std::make_unique<Adam>(config, numel, dtype, device);
  return std::make_unique<Adagrad>(config, numel, dtype, device);
}

}  // namespace ncsrec

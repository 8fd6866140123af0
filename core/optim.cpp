// Dense optimizers (SGD, Adam, Adagrad) on CPU: one element-wise loop over the whole parameter
// buffer, OpenMP static schedule. Each element's update reads only its own value, gradient and
// state, so the result does not depend on the thread count. An update mask and weight decay
// (optim.h) are compile-time variants of each loop, chosen outside it, so the plain loop (no
// mask, no decay) stays as it was; an element outside the decay mask takes exactly the plain
// update. Gradient clipping by global norm is here too: a deterministic chunked sum of squares.
//
// Not here: sparse (row-wise) optimizers for embedding tables (embedding/), learning-rate
// schedules (lr_schedule.h: they only call set_lr), and a CUDA path (its kernels will be
// registered by cuda/).
#include "core/optim.h"

#include <algorithm>
#include <cmath>

#include "core/dispatch.h"
#include "core/error.h"
#include "core/ops.h"

namespace ncsrec {
namespace {

class Sgd final : public DenseOptimizer {
 public:
  Sgd(const OptimizerConfig& c, int64_t numel, DType dtype, Device device)
      : DenseOptimizer(c, numel, device), dtype_(dtype) {}
  using DenseOptimizer::step;
  void step(Tensor& values, const Tensor& grads, int64_t, const uint8_t* mask) override {
    check_step(values, grads, dtype_);
    if (dtype_ == DType::F32) run<float>(values, grads, mask);
    else run<double>(values, grads, mask);
  }
  std::vector<std::pair<std::string, Tensor*>> state() override { return {}; }

 private:
  template <class T>
  void run(Tensor& values, const Tensor& grads, const uint8_t* mask) {
    ops_for(values.device()).sgd_step(dtype_, values.raw(), grads.raw(), mask, decay_mask(), numel_, lr_,
                                      decays() ? weight_decay_ : 0.0);
  }

  DType dtype_;
};

class Adam final : public DenseOptimizer {
 public:
  Adam(const OptimizerConfig& c, int64_t numel, DType dtype, Device device)
      : DenseOptimizer(c, numel, device), c_(c), dtype_(dtype), m_(Tensor::zeros({numel}, dtype, device)),
        v_(Tensor::zeros({numel}, dtype, device)) {}
  using DenseOptimizer::step;
  void step(Tensor& values, const Tensor& grads, int64_t step, const uint8_t* mask) override {
    check_step(values, grads, dtype_);
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
    ops_for(values.device()).adam_step(dtype_, values.raw(), grads.raw(), m_.raw(), v_.raw(), mask, decay_mask(),
                                       numel_, lr_, c_.beta1, c_.beta2, c_.eps, c1, c2,
                                       decays() ? weight_decay_ : 0.0);
  }

  OptimizerConfig c_;
  DType dtype_;
  Tensor m_, v_;
};

class Adagrad final : public DenseOptimizer {
 public:
  Adagrad(const OptimizerConfig& c, int64_t numel, DType dtype, Device device)
      : DenseOptimizer(c, numel, device), c_(c), dtype_(dtype) {
    Tensor host = Tensor::empty({numel}, dtype, Device::CPU);
    if (dtype == DType::F32) std::fill_n(host.data<float>(), numel, static_cast<float>(c.initial_accumulator));
    else std::fill_n(host.data<double>(), numel, c.initial_accumulator);
    accumulator_ = host.to(device);
  }
  using DenseOptimizer::step;
  void step(Tensor& values, const Tensor& grads, int64_t, const uint8_t* mask) override {
    check_step(values, grads, dtype_);
    if (dtype_ == DType::F32) run<float>(values, grads, mask);
    else run<double>(values, grads, mask);
  }
  std::vector<std::pair<std::string, Tensor*>> state() override { return {{"accumulator", &accumulator_}}; }

 private:
  template <class T>
  void run(Tensor& values, const Tensor& grads, const uint8_t* mask) {
    ops_for(values.device()).adagrad_step(dtype_, values.raw(), grads.raw(), accumulator_.raw(), mask, decay_mask(),
                                          numel_, lr_, c_.adagrad_eps, decays() ? weight_decay_ : 0.0);
  }

  OptimizerConfig c_;
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
  if (!(c.weight_decay >= 0) || !std::isfinite(c.weight_decay))
    throw ConfigError(NCSREC_STR_("optimizer weight_decay must be a finite number >= 0, got " << c.weight_decay));
}

}  // namespace

DenseOptimizer::DenseOptimizer(const OptimizerConfig& config, int64_t numel, Device device)
    : numel_(numel), device_(device), base_lr_(config.lr), lr_(config.lr), weight_decay_(config.weight_decay) {}

void DenseOptimizer::check_step(const Tensor& values, const Tensor& grads, DType dtype) const {
  NCSREC_CHECK(values.numel() == numel_ && grads.numel() == numel_,
               "optimizer built for " << numel_ << " elements got " << values.describe() << " and " << grads.describe());
  NCSREC_CHECK(values.dtype() == dtype && grads.dtype() == dtype,
               "optimizer built for " << dtype_name(dtype) << " got " << values.describe() << " and "
                                      << grads.describe());
  NCSREC_CHECK(values.device() == device_ && grads.device() == device_,
               "optimizer on " << device_name(device_) << " got " << values.describe() << " and " << grads.describe());
}

const uint8_t* DenseOptimizer::decay_mask() const {
  if (decay_mask_.empty()) return nullptr;
  if (device_ == Device::CPU) return decay_mask_.data();
  return static_cast<const uint8_t*>(decay_mask_device_.raw());
}

void DenseOptimizer::set_lr(double lr) {
  NCSREC_CHECK(lr >= 0 && std::isfinite(lr), "learning rate " << lr);
  lr_ = lr;
}

void DenseOptimizer::set_decay_mask(const std::vector<uint8_t>& mask) {
  NCSREC_CHECK(mask.empty() || static_cast<int64_t>(mask.size()) == numel_,
               "decay mask of " << mask.size() << " bytes for an optimizer of " << numel_ << " elements");
  // All ones is "everywhere" (the kernels then read no mask); all zeros turns decay off.
  const bool all_ones = std::all_of(mask.begin(), mask.end(), [](uint8_t b) { return b != 0; });
  decay_nowhere_ = !mask.empty() && std::none_of(mask.begin(), mask.end(), [](uint8_t b) { return b != 0; });
  if (all_ones) decay_mask_.clear();
  else decay_mask_ = mask;
  decay_mask_device_ = device_ != Device::CPU && !decay_mask_.empty() ? Tensor::from_bytes(decay_mask_, device_) : Tensor();
}

double clip_grad_norm(Tensor& grads, double max_norm, const uint8_t* mask) {
  NCSREC_CHECK(grads.dtype() == DType::F32 || grads.dtype() == DType::F64, "clip_grad_norm on " << grads.describe());
  NCSREC_CHECK(max_norm >= 0, "clip_grad_norm max_norm " << max_norm);
  const double norm =
      std::sqrt(ops_for(grads.device()).masked_sum_squares(grads.dtype(), grads.raw(), mask, grads.numel()));
  if (max_norm > 0 && std::isfinite(norm) && norm > max_norm) ops::scale(grads, max_norm / norm);
  return norm;
}

std::unique_ptr<DenseOptimizer> make_dense_optimizer(const OptimizerConfig& config, int64_t numel, DType dtype,
                                                     Device device) {
  NCSREC_CHECK(numel >= 0, "optimizer for " << numel << " elements");
  NCSREC_CHECK(dtype == DType::F32 || dtype == DType::F64, "dense optimizer on " << dtype_name(dtype) << " values");
  if (config.type != "sgd" && config.type != "adam" && config.type != "adagrad")
    throw ConfigError("unknown optimizer type '" + config.type + "'; valid types: sgd, adam, adagrad");
  validate(config);
  if (config.type == "sgd") return std::make_unique<Sgd>(config, numel, dtype, device);
  if (config.type == "adam") return std::make_unique<Adam>(config, numel, dtype, device);
  return std::make_unique<Adagrad>(config, numel, dtype, device);
}

}  // namespace ncsrec

#include "core/params.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/random.h"

namespace ncsrec {

Param* ParamStore::add(const std::string& name, Shape shape, Init init, double scale) {
  NCSREC_CHECK(!finalized_, "parameter " << name << " added after the store was finalised");
  NCSREC_CHECK(by_name_.count(name) == 0, "duplicate parameter name " << name);
  Param& p = params_.emplace_back();
  p.name = name;
  p.shape = std::move(shape);
  p.init = init;
  p.scale = scale;
  p.offset = total_;
  total_ += shape_numel(p.shape);
  p.decay = p.shape.size() == 2;
  by_name_[name] = &p;
  return &p;
}

Param* ParamStore::add_state(const std::string& name, Shape shape, Init init, double scale) {
  Param* p = add(name, std::move(shape), init, scale);
  p->trainable = false;
  p->decay = false;
  return p;
}

void init_values(Tensor& out, Init init, double scale, const Shape& shape, uint64_t seed) {
  const int64_t n = out.numel();
  Rng rng(seed);
  auto fill = [&](auto* v) {
    using T = std::remove_pointer_t<decltype(v)>;
    for (int64_t i = 0; i < n; ++i) {
      double x = 0;
      switch (init) {
        case Init::Zeros: x = 0; break;
        case Init::Ones: x = 1; break;
        case Init::Uniform: x = rng.uniform(-scale, scale); break;
        case Init::Normal: x = scale * rng.normal(); break;
        case Init::XavierUniform: {
          NCSREC_CHECK(shape.size() == 2, "xavier init needs a 2-D shape");
          const double a = std::sqrt(6.0 / static_cast<double>(shape[0] + shape[1]));
          x = rng.uniform(-a, a);
          break;
        }
      }
      v[i] = static_cast<T>(x);
    }
  };
  if (out.dtype() == DType::F32) fill(out.data<float>());
  else fill(out.data<double>());
}

void ParamStore::finalize(DType dtype, Device device, uint64_t seed) {
  NCSREC_CHECK(!finalized_, "parameter store finalised twice");
  NCSREC_CHECK(dtype == DType::F32 || dtype == DType::F64, "parameters must be f32 or f64");
  Tensor host = Tensor::empty({total_}, dtype, Device::CPU);
  for (Param& p : params_) {
    Tensor v = host.view(p.offset, p.shape);
    init_values(v, p.init, p.scale, p.shape, hash_combine(seed, hash_string(p.name)));
  }
  values_ = host.to(device);
  grads_ = Tensor::zeros({total_}, dtype, device);
  for (Param& p : params_) {
    p.value = values_.view(p.offset, p.shape);
    p.grad = grads_.view(p.offset, p.shape);
  }
  bool all_trainable = true;
  decay_mask_.assign(static_cast<size_t>(total_), 0);
  for (const Param& p : params_) {
    all_trainable = all_trainable && p.trainable;
    if (p.decay) std::fill_n(decay_mask_.begin() + p.offset, shape_numel(p.shape), uint8_t{1});
  }
  trainable_mask_.clear();
  if (!all_trainable) {
    trainable_mask_.assign(static_cast<size_t>(total_), 1);
    for (const Param& p : params_)
      if (!p.trainable) std::fill_n(trainable_mask_.begin() + p.offset, shape_numel(p.shape), uint8_t{0});
    if (device != Device::CPU) trainable_mask_device_ = Tensor::from_bytes(trainable_mask_, device);
  }
  finalized_ = true;
}

Param* ParamStore::find(const std::string& name) {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

}  // namespace ncsrec

// Dropout: one pass over the elements with OpenMP; each element's decision depends only on
// (key, index), so the result is the same bits for any thread count.
#include "core/layers/dropout.h"

#include "core/error.h"
#include "core/layers/linear.h"
#include "core/random.h"

namespace ncsrec {
namespace {

constexpr int64_t kParallelMin = 1 << 14;  // below this, threads cost more than they save

// out[i] = in[i] / (1 − rate) where element i is kept, 0 where it is dropped.
template <class T>
void apply_mask(T* out, const T* in, int64_t n, double rate, uint64_t key) {
  const T scale = static_cast<T>(1.0 / (1.0 - rate));
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const bool keep = to_unit(hash_combine(key, static_cast<uint64_t>(i))) >= rate;
    out[i] = keep ? in[i] * scale : T(0);
  }
}

void apply_mask(Tensor& out, const Tensor& in, double rate, uint64_t key) {
  NCSREC_USER_CHECK(in.device() == Device::CPU,
                    "dropout is not implemented on the " << device_name(in.device())
                                                         << " backend; use device: cpu for this model");
  if (in.dtype() == DType::F32) apply_mask(out.data<float>(), in.data<float>(), in.numel(), rate, key);
  else apply_mask(out.data<double>(), in.data<double>(), in.numel(), rate, key);
}

}  // namespace

Dropout::Dropout(double rate) : rate_(rate) {
  NCSREC_USER_CHECK(rate >= 0 && rate < 1, "dropout rate must be in [0, 1), got " << rate);
}

const Tensor& Dropout::forward(const Tensor& x, bool training, uint64_t key) {
  forwarded_ = true;
  active_ = training && rate_ > 0;
  if (!active_) return x;
  NCSREC_CHECK(x.ndim() == 2 && (x.dtype() == DType::F32 || x.dtype() == DType::F64),
               "dropout expects a 2-D f32 or f64 tensor, got " << x.describe());
  key_ = key;
  y_ = ensure_buffer(y_buf_, x.dim(0), x.dim(1), x.dtype(), x.device());
  apply_mask(y_, x, rate_, key_);
  return y_;
}

const Tensor& Dropout::backward(const Tensor& dy) {
  NCSREC_CHECK(forwarded_, "dropout backward before forward");
  if (!active_) return dy;
  NCSREC_CHECK(dy.shape() == y_.shape() && dy.dtype() == y_.dtype(),
               "dropout backward expects dy " << y_.describe() << ", got " << dy.describe());
  dx_ = ensure_buffer(dx_buf_, dy.dim(0), dy.dim(1), dy.dtype(), dy.device());
  apply_mask(dx_, dy, rate_, key_);
  return dx_;
}

}  // namespace ncsrec

// Dropout: one pass over the elements (OpTable::dropout); each element's decision depends only
// on (key, index), so the result is the same bits for any backend and thread count.
#include "core/layers/dropout.h"

#include "core/error.h"
#include "core/layers/linear.h"
#include "core/ops.h"

namespace ncsrec {

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
  ops::dropout(y_, x, rate_, key_);
  return y_;
}

const Tensor& Dropout::backward(const Tensor& dy) {
  NCSREC_CHECK(forwarded_, "dropout backward before forward");
  if (!active_) return dy;
  NCSREC_CHECK(dy.shape() == y_.shape() && dy.dtype() == y_.dtype(),
               "dropout backward expects dy " << y_.describe() << ", got " << dy.describe());
  dx_ = ensure_buffer(dx_buf_, dy.dim(0), dy.dim(1), dy.dtype(), dy.device());
  ops::dropout(dx_, dy, rate_, key_);
  return dx_;
}

}  // namespace ncsrec

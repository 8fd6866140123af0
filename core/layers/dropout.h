// Inverted dropout with a counter-based mask: element i of x [B, C] (flat, row-major index) is
// kept iff to_unit(hash_combine(key, i)) >= rate, and kept elements are scaled by 1/(1 − rate),
// so the expected output equals the input and evaluation needs no rescaling. The mask is a pure
// function of (key, i): the same key gives the same mask on any thread count, and backward
// recomputes it rather than storing it. The caller picks a key that differs per step, layer and
// rank (e.g. hash_combine(seed, step, layer)).
// Gradient contract: dx is written (dx = dy ⊙ mask / (1 − rate)).
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace ncsrec {

class Dropout {
 public:
  // rate in [0, 1): the probability of dropping an element.
  explicit Dropout(double rate);
  // Not training, or rate 0: the identity, returning x itself. Otherwise this layer's buffer
  // [B, C], valid until the next forward.
  const Tensor& forward(const Tensor& x, bool training, uint64_t key);
  // dL/dx for the last forward: dy itself after an identity forward, else this layer's buffer.
  const Tensor& backward(const Tensor& dy);

  double rate() const { return rate_; }

 private:
  double rate_;
  bool forwarded_ = false;
  bool active_ = false;  // the last forward applied a mask
  uint64_t key_ = 0;
  Tensor y_buf_, y_, dx_buf_, dx_;
};

}  // namespace ncsrec

// Random test inputs shared by the CPU and GPU test executables: never zero, seeded, so a
// failure reproduces.
#pragma once

#include <cstdint>

#include "core/masks.h"
#include "core/random.h"
#include "core/tensor.h"

namespace ncsrec::testing {

// f32 values in ±[0.05, 1]: never zero, both signs.
inline Tensor random_f32(Shape shape, uint64_t seed) {
  Tensor t = Tensor::empty(std::move(shape), DType::F32);
  Rng rng(seed);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i)
    p[i] = static_cast<float>((rng.bernoulli(0.5) ? -1.0 : 1.0) * rng.uniform(0.05, 1.0));
  return t;
}

// Each bit set with probability `density`.
inline BitMask random_mask(int64_t rows, int64_t cols, double density, uint64_t seed) {
  Rng rng(seed);
  BitMask m = BitMask::zeros(rows, cols);
  for (int64_t i = 0; i < m.size(); ++i) m.set(i, rng.bernoulli(density));
  return m;
}

}  // namespace ncsrec::testing

// Binary connection masks for neuron-connection sharing (NCS4CVR / LT4REC, PAPERS.md §1–2):
// the bit-packed mask type, global magnitude pruning (one IMP round), and the split of the
// masked weights into shared / task-private / dead connections.
//
// Layout: a BitMask covers a row-major [rows, cols] weight and is packed exactly like
// numpy.packbits(flat, bitorder='little'): element i is bit (i % 8) of byte i / 8, and the
// unused high bits of the last byte are always zero (so `==` and `count` are plain byte ops).
// The packed bytes are what checkpoints store, and what a Python tool reads back with
// numpy.unpackbits(bits, count=rows*cols, bitorder='little').
//
// Not here: the layer that applies masks (core/layers/masked_linear.h), the IMP training loop
// with rewinding (it needs a model and a trainer), and mask (de)serialisation.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace ncsrec {

struct BitMask {
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> bits;  // ceil(rows*cols / 8) bytes, packbits(bitorder='little') order

  static BitMask ones(int64_t rows, int64_t cols);
  static BitMask zeros(int64_t rows, int64_t cols);
  // 1 wherever values[i] != 0; `values` holds rows*cols elements, row-major (e.g. the
  // reference code's float32 0/1 mask arrays).
  template <class T> static BitMask from_values(int64_t rows, int64_t cols, const T* values) {
    BitMask m = zeros(rows, cols);
    for (int64_t i = 0; i < m.size(); ++i)
      if (values[i] != T(0)) m.bits[static_cast<size_t>(i >> 3)] |= static_cast<uint8_t>(1u << (i & 7));
    return m;
  }

  int64_t size() const { return rows * cols; }
  bool get(int64_t i) const { return (bits[static_cast<size_t>(i >> 3)] >> (i & 7)) & 1u; }
  void set(int64_t i, bool on) {
    uint8_t& byte = bits[static_cast<size_t>(i >> 3)];
    const uint8_t bit = static_cast<uint8_t>(1u << (i & 7));
    byte = on ? static_cast<uint8_t>(byte | bit) : static_cast<uint8_t>(byte & ~bit);
  }
  int64_t count() const;    // number of ones
  double density() const;   // count() / size(); 1 for an empty mask
  bool same_shape(int64_t r, int64_t c) const { return rows == r && cols == c; }

  // out[0, size()) = 0/1, row-major.
  template <class T> void expand(T* out) const {
    for (int64_t i = 0; i < size(); ++i) out[i] = get(i) ? T(1) : T(0);
  }

  bool operator==(const BitMask& o) const { return rows == o.rows && cols == o.cols && bits == o.bits; }
  bool operator!=(const BitMask& o) const { return !(*this == o); }
};

// Masked element-wise kernels (f32 or f64, contiguous, numel == mask.size(), both tensors on
// one device). Entries outside the mask become exactly 0 (a select, not a multiply, so an inf
// or NaN outside the mask cannot leak through as NaN). `bits`: the mask's bytes in the
// tensors' memory; null reads mask.bits (host memory: CPU tensors only).
// dst = src ⊙ M   (dst and src may alias)
void apply_mask(Tensor& dst, const Tensor& src, const BitMask& mask, const uint8_t* bits = nullptr);
// dst += src ⊙ M  (a parameter gradient: accumulates)
void add_masked(Tensor& dst, const Tensor& src, const BitMask& mask, const uint8_t* bits = nullptr);

// IMP per-round prune fraction p = 1 − r^(1/n): after n rounds, each removing the fraction p
// of the weights still alive, the density is r (up to the rounding of each round's count).
// With r = 0.2, n = 4: p = 0.33126, densities 66.87%, 44.72%, 29.91%, 20.00%.
double imp_prune_fraction(double final_density, int rounds);

// One round of global magnitude pruning across all given layers (the paper prunes fc_0..fc_2
// together, not per layer). weights[l] is a CPU f32/f64 tensor with numel == masks[l]->size()
// (normally [rows, cols] of the mask). Among the weights currently inside their masks
// (N_remaining of them) it clears exactly k = llround(fraction · N_remaining) bits: those with
// the smallest |w|, ordered by the key (|w|, layer index, element index) ascending, so equal
// magnitudes are resolved deterministically and the result is a pure function of the inputs.
//
// Densities are therefore exact by count, independent of ties. This deliberately differs from
// the reference code (cutoff = sorted[round(p·N)], prune |w| < cutoff), which removes fewer
// weights when several share the cutoff value and uses Python's round-half-to-even.
// Returns k. Throws on NaN weights (they have no order) or mismatched shapes.
int64_t prune_global_magnitude(const std::vector<const Tensor*>& weights, std::vector<BitMask*>& masks,
                               double fraction);

// How the per-task masks of one weight divide its connections.
//   shared             in every task's mask (trained by all tasks)
//   private_total      in at least one mask but not in all of them (counted once per weight)
//   private_per_task[t] in task t's mask but not in all masks
//   dead               in no mask (never used, never trained)
// shared + private_total + dead == size. With two tasks, private_total is the sum of the
// per-task counts; with more tasks a weight in two of three masks counts for both tasks.
struct MaskSplit {
  int64_t shared = 0, private_total = 0, dead = 0;
  std::vector<int64_t> private_per_task;
  int64_t size() const { return shared + private_total + dead; }
  // Sums the counts of another weight's split (same number of tasks): a whole network's split.
  MaskSplit& operator+=(const MaskSplit& o);
};

// task_masks: one mask per task, all of the same shape; at least one.
MaskSplit split_connections(const std::vector<const BitMask*>& task_masks);

}  // namespace ncsrec

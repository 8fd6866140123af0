// Bit-packed masks, global magnitude pruning and the shared/private/dead split (see masks.h).
//
// Not here: anything that trains (IMP's train-prune-rewind loop lives with the trainer).
#include "core/masks.h"

#include <algorithm>
#include <cmath>

#include "core/dispatch.h"
#include "core/error.h"

namespace ncsrec {

namespace {

int64_t packed_bytes(int64_t n) { return (n + 7) / 8; }

// Checks a mask's byte count and its zero padding: every other function relies on both.
void check_mask(const BitMask& m, const char* what) {
  NCSREC_CHECK(m.rows >= 0 && m.cols >= 0, what << ": mask of negative shape [" << m.rows << ", " << m.cols << "]");
  NCSREC_CHECK(static_cast<int64_t>(m.bits.size()) == packed_bytes(m.size()),
               what << ": mask [" << m.rows << ", " << m.cols << "] holds " << m.bits.size() << " bytes, needs "
                    << packed_bytes(m.size()));
  if (m.size() % 8 != 0)
    NCSREC_CHECK((m.bits.back() >> (m.size() % 8)) == 0, what << ": mask has set bits past its last element");
}

// The mask's bytes for the kernel: `bits` (in the tensors' memory), or the host's for CPU tensors.
const uint8_t* check_kernel_args(const Tensor& dst, const Tensor& src, const BitMask& mask, const uint8_t* bits,
                                 const char* what) {
  check_mask(mask, what);
  NCSREC_CHECK(dst.device() == src.device(), what << " got " << dst.describe() << " and " << src.describe());
  NCSREC_CHECK(bits || dst.device() == Device::CPU,
               what << " on " << dst.describe() << " needs the mask's bytes in that device's memory");
  NCSREC_CHECK(dst.dtype() == src.dtype() && (dst.dtype() == DType::F32 || dst.dtype() == DType::F64),
               what << " needs two f32 or two f64 tensors; got " << dst.describe() << " and " << src.describe());
  NCSREC_CHECK(dst.numel() == mask.size() && src.numel() == mask.size(),
               what << ": mask [" << mask.rows << ", " << mask.cols << "] vs " << dst.describe() << " and "
                    << src.describe());
  return bits ? bits : mask.bits.data();
}

// Sort key of a prune candidate: |w| first, then (layer, element) packed into one integer so
// that ties compare in (layer, index) order. 2^40 elements per layer is far above any MLP.
struct Candidate {
  double magnitude;
  uint64_t position;  // layer << 40 | element index
  bool operator<(const Candidate& o) const {
    return magnitude < o.magnitude || (magnitude == o.magnitude && position < o.position);
  }
};
constexpr int kPositionShift = 40;

template <class T>
void collect_candidates(const T* w, const BitMask& mask, uint64_t layer, std::vector<Candidate>& out) {
  for (int64_t i = 0; i < mask.size(); ++i) {
    if (!mask.get(i)) continue;
    NCSREC_CHECK(!std::isnan(w[i]), "magnitude pruning met a NaN weight (layer " << layer << ", element " << i
                                                                                 << "): the model has diverged");
    // |w| of a float is exact in double, so f32 and f64 weights order identically.
    out.push_back({std::abs(static_cast<double>(w[i])), (layer << kPositionShift) | static_cast<uint64_t>(i)});
  }
}

}  // namespace

BitMask BitMask::ones(int64_t rows, int64_t cols) {
  BitMask m = zeros(rows, cols);
  std::fill(m.bits.begin(), m.bits.end(), uint8_t{0xFF});
  if (m.size() % 8 != 0) m.bits.back() = static_cast<uint8_t>((1u << (m.size() % 8)) - 1);  // keep padding zero
  return m;
}

BitMask BitMask::zeros(int64_t rows, int64_t cols) {
  NCSREC_CHECK(rows >= 0 && cols >= 0, "mask of negative shape [" << rows << ", " << cols << "]");
  BitMask m;
  m.rows = rows;
  m.cols = cols;
  m.bits.assign(static_cast<size_t>(packed_bytes(rows * cols)), 0);
  return m;
}

int64_t BitMask::count() const {
  int64_t n = 0;
  for (uint8_t byte : bits) n += __builtin_popcount(byte);
  return n;
}

double BitMask::density() const { return size() == 0 ? 1.0 : static_cast<double>(count()) / static_cast<double>(size()); }

void apply_mask(Tensor& dst, const Tensor& src, const BitMask& mask, const uint8_t* bits) {
  bits = check_kernel_args(dst, src, mask, bits, "apply_mask");
  ops_for(dst.device()).apply_mask(dst.dtype(), dst.raw(), src.raw(), bits, mask.size());
}

void add_masked(Tensor& dst, const Tensor& src, const BitMask& mask, const uint8_t* bits) {
  bits = check_kernel_args(dst, src, mask, bits, "add_masked");
  ops_for(dst.device()).add_masked(dst.dtype(), dst.raw(), src.raw(), bits, mask.size());
}

double imp_prune_fraction(double final_density, int rounds) {
  NCSREC_USER_CHECK(final_density > 0.0 && final_density <= 1.0,
                    "IMP final density must be in (0, 1], got " << final_density);
  NCSREC_USER_CHECK(rounds >= 1, "IMP needs at least one pruning round, got " << rounds);
  return 1.0 - std::pow(final_density, 1.0 / rounds);
}

int64_t prune_global_magnitude(const std::vector<const Tensor*>& weights, std::vector<BitMask*>& masks,
                               double fraction) {
  NCSREC_CHECK(weights.size() == masks.size(),
               "prune_global_magnitude: " << weights.size() << " weights but " << masks.size() << " masks");
  NCSREC_CHECK(fraction >= 0.0 && fraction <= 1.0, "prune fraction must be in [0, 1], got " << fraction);
  std::vector<Candidate> candidates;
  int64_t remaining = 0;
  for (size_t l = 0; l < masks.size(); ++l) {
    NCSREC_CHECK(weights[l] && masks[l], "prune_global_magnitude: null weight or mask for layer " << l);
    check_mask(*masks[l], "prune_global_magnitude");
    remaining += masks[l]->count();
  }
  candidates.reserve(static_cast<size_t>(remaining));
  for (size_t l = 0; l < masks.size(); ++l) {
    const Tensor& w = *weights[l];
    const BitMask& m = *masks[l];
    NCSREC_CHECK(w.device() == Device::CPU, "prune_global_magnitude needs CPU weights, got " << w.describe());
    NCSREC_CHECK(w.numel() == m.size(), "prune_global_magnitude: layer " << l << " weight " << w.describe()
                                                                          << " vs mask [" << m.rows << ", " << m.cols
                                                                          << "]");
    NCSREC_CHECK(m.size() < (int64_t{1} << kPositionShift), "layer " << l << " too large for pruning keys");
    if (w.dtype() == DType::F32)
      collect_candidates(w.data<float>(), m, l, candidates);
    else if (w.dtype() == DType::F64)
      collect_candidates(w.data<double>(), m, l, candidates);
    else
      NCSREC_CHECK(false, "prune_global_magnitude needs f32 or f64 weights, got " << w.describe());
  }
  const int64_t k = std::llround(fraction * static_cast<double>(remaining));
  if (k == 0) return 0;
  // The key is a strict total order (positions are unique), so the k smallest are one
  // well-defined set whatever the selection algorithm does internally.
  std::nth_element(candidates.begin(), candidates.begin() + (k - 1), candidates.end());
  for (int64_t j = 0; j < k; ++j) {
    const uint64_t pos = candidates[static_cast<size_t>(j)].position;
    masks[pos >> kPositionShift]->set(static_cast<int64_t>(pos & ((uint64_t{1} << kPositionShift) - 1)), false);
  }
  return k;
}

MaskSplit& MaskSplit::operator+=(const MaskSplit& o) {
  NCSREC_CHECK(private_per_task.size() == o.private_per_task.size() || private_per_task.empty(),
               "adding mask splits over " << private_per_task.size() << " and " << o.private_per_task.size()
                                          << " tasks");
  if (private_per_task.empty()) private_per_task.assign(o.private_per_task.size(), 0);
  shared += o.shared;
  private_total += o.private_total;
  dead += o.dead;
  for (size_t t = 0; t < o.private_per_task.size(); ++t) private_per_task[t] += o.private_per_task[t];
  return *this;
}

MaskSplit split_connections(const std::vector<const BitMask*>& task_masks) {
  NCSREC_CHECK(!task_masks.empty(), "split_connections needs at least one task mask");
  const BitMask& first = *task_masks[0];
  for (const BitMask* m : task_masks) {
    check_mask(*m, "split_connections");
    NCSREC_CHECK(m->same_shape(first.rows, first.cols), "split_connections: masks [" << first.rows << ", "
                                                                                    << first.cols << "] and ["
                                                                                    << m->rows << ", " << m->cols
                                                                                    << "] differ in shape");
  }
  const size_t T = task_masks.size();
  MaskSplit split;
  split.private_per_task.assign(T, 0);
  // Byte-parallel: all_of / any_of over tasks for 8 elements at once, then popcounts. The
  // padding bits are zero in every mask, so they land in neither `all` nor `any`.
  for (size_t b = 0; b < first.bits.size(); ++b) {
    unsigned all = 0xFF, any = 0;
    for (size_t t = 0; t < T; ++t) {
      all &= task_masks[t]->bits[b];
      any |= task_masks[t]->bits[b];
    }
    split.shared += __builtin_popcount(all);
    split.private_total += __builtin_popcount(any & ~all);
    for (size_t t = 0; t < T; ++t) split.private_per_task[t] += __builtin_popcount(task_masks[t]->bits[b] & ~all & 0xFFu);
  }
  split.dead = first.size() - split.shared - split.private_total;
  return split;
}

}  // namespace ncsrec

// Specification tests for the dense optimizers' update masks (exact per-task semantics): an
// element whose mask byte is 0 keeps its value and optimizer state bit for bit; an element whose
// mask byte is 1 follows the same optimizer run on the updated elements alone, with the global
// step count. All-ones equals no mask and all-zeros is a no-op, bit for bit. Weight decay obeys
// both masks: decay only where the decay mask is 1, and nothing at all where the update mask is 0.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/optim.h"
#include "core/random.h"

namespace ncsrec {
namespace {

// 20000 elements > the optimizer's OpenMP threshold, so the parallel loop is what gets tested.
constexpr int64_t kNumel = 20000;

OptimizerConfig config_for(const std::string& type) {
  OptimizerConfig c;
  c.type = type;
  c.lr = 0.05;
  c.beta2 = 0.99;
  c.initial_accumulator = 0.1;
  return c;
}

template <class T>
Tensor random_tensor(int64_t n, uint64_t seed, double lo, double hi) {
  Tensor t = Tensor::empty({n}, dtype_of<T>());
  Rng rng(seed);
  for (int64_t i = 0; i < n; ++i) t.data<T>()[i] = static_cast<T>(rng.uniform(lo, hi));
  return t;
}

// Non-zero gradients: |g| in [0.1, 2), random sign.
template <class T>
Tensor random_grad(int64_t n, uint64_t seed) {
  Tensor t = random_tensor<T>(n, seed, 0.1, 2.0);
  Rng rng(seed ^ 0x5eedULL);
  for (int64_t i = 0; i < n; ++i)
    if (rng.bernoulli(0.5)) t.data<T>()[i] = -t.data<T>()[i];
  return t;
}

std::vector<uint8_t> random_mask(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<uint8_t> mask(static_cast<size_t>(n));
  for (uint8_t& m : mask) m = rng.bernoulli(0.5) ? 1 : 0;
  return mask;
}

template <class T>
Tensor compact(const Tensor& t, const std::vector<uint8_t>& mask) {
  std::vector<T> kept;
  for (int64_t i = 0; i < t.numel(); ++i)
    if (mask[static_cast<size_t>(i)]) kept.push_back(t.data<T>()[i]);
  Tensor out = Tensor::empty({static_cast<int64_t>(kept.size())}, dtype_of<T>());
  std::memcpy(out.raw(), kept.data(), out.nbytes());
  return out;
}

template <class T>
bool element_equal(const Tensor& a, int64_t i, const Tensor& b, int64_t j) {
  return std::memcmp(a.data<T>() + i, b.data<T>() + j, sizeof(T)) == 0;
}

bool bytes_equal(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

std::vector<Tensor> clone_state(DenseOptimizer& opt) {
  std::vector<Tensor> out;
  for (auto& [name, t] : opt.state()) out.push_back(t->clone());
  return out;
}

// Two unmasked steps (non-zero prior state), then three steps under one random mask. Masked-out
// elements must be bit-identical to their state after step 2; masked-in elements bit-identical
// to an unmasked optimizer run on the compacted buffer with the same global step numbers.
template <class T>
void expect_masked_steps_follow_compacted_reference(const std::string& type) {
  SCOPED_TRACE(type + (sizeof(T) == 4 ? " f32" : " f64"));
  const OptimizerConfig c = config_for(type);
  const std::vector<uint8_t> mask = random_mask(kNumel, 7);
  Tensor w = random_tensor<T>(kNumel, 1, -1, 1);
  Tensor w_kept = compact<T>(w, mask);
  const int64_t kept = w_kept.numel();
  ASSERT_GT(kept, kNumel / 3);
  ASSERT_LT(kept, 2 * kNumel / 3);

  auto opt = make_dense_optimizer(c, kNumel, dtype_of<T>(), Device::CPU);
  auto ref = make_dense_optimizer(c, kept, dtype_of<T>(), Device::CPU);
  int64_t step = 0;
  for (; step < 2; ++step) {
    const Tensor g = random_grad<T>(kNumel, 100 + step);
    opt->step(w, g, step + 1);
    ref->step(w_kept, compact<T>(g, mask), step + 1);
  }
  const Tensor w_prior = w.clone();
  const std::vector<Tensor> state_prior = clone_state(*opt);
  for (; step < 5; ++step) {
    const Tensor g = random_grad<T>(kNumel, 100 + step);
    opt->step(w, g, step + 1, mask.data());
    ref->step(w_kept, compact<T>(g, mask), step + 1);
  }

  const auto state = opt->state();
  const auto ref_state = ref->state();
  int64_t j = 0, bad_out = 0, bad_in = 0;
  for (int64_t i = 0; i < kNumel; ++i) {
    if (!mask[static_cast<size_t>(i)]) {
      bool same = element_equal<T>(w, i, w_prior, i);
      for (size_t k = 0; k < state.size(); ++k) same = same && element_equal<T>(*state[k].second, i, state_prior[k], i);
      bad_out += !same;
    } else {
      bool same = element_equal<T>(w, i, w_kept, j);
      for (size_t k = 0; k < state.size(); ++k)
        same = same && element_equal<T>(*state[k].second, i, *ref_state[k].second, j);
      bad_in += !same;
      ++j;
    }
  }
  EXPECT_EQ(bad_out, 0) << "masked-out elements whose value or state moved";
  EXPECT_EQ(bad_in, 0) << "masked-in elements that differ from the compacted reference";
  EXPECT_FALSE(bytes_equal(w, w_prior)) << "the masked steps moved nothing at all";
}

TEST(MaskedDenseOptimizer, OutsideMaskBitIdenticalInsideMaskFollowsCompactedRun) {
  for (const char* type : {"sgd", "adam", "adagrad"}) {
    expect_masked_steps_follow_compacted_reference<float>(type);
    expect_masked_steps_follow_compacted_reference<double>(type);
  }
}

// Two tasks alternate with their own masks, as in the paper's MTL phase. Each element must
// follow a one-element optimizer stepped only on the steps whose mask holds it, with the global
// step number: its moments advance only when it is updated, the bias correction does not wait.
TEST(MaskedDenseOptimizer, AlternatingTaskMasksGiveEachElementItsOwnMaskedHistory) {
  constexpr int64_t n = 64;
  for (const char* type : {"sgd", "adam", "adagrad"}) {
    SCOPED_TRACE(type);
    const OptimizerConfig c = config_for(type);
    const std::vector<uint8_t> masks[2] = {random_mask(n, 11), random_mask(n, 12)};
    Tensor w = random_tensor<double>(n, 3, -1, 1);
    std::vector<Tensor> w_ref;
    std::vector<std::unique_ptr<DenseOptimizer>> ref;
    for (int64_t i = 0; i < n; ++i) {
      w_ref.push_back(w.view(i, {1}).clone());
      ref.push_back(make_dense_optimizer(c, 1, DType::F64, Device::CPU));
    }
    auto opt = make_dense_optimizer(c, n, DType::F64, Device::CPU);
    for (int64_t step = 1; step <= 6; ++step) {
      const std::vector<uint8_t>& mask = masks[step % 2];
      const Tensor g = random_grad<double>(n, 200 + step);
      opt->step(w, g, step, mask.data());
      for (int64_t i = 0; i < n; ++i)
        if (mask[static_cast<size_t>(i)]) ref[i]->step(w_ref[i], g.view(i, {1}), step);
    }
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_TRUE(element_equal<double>(w, i, w_ref[i], 0)) << "element " << i;
      const auto state = opt->state();
      const auto ref_state = ref[i]->state();
      for (size_t k = 0; k < state.size(); ++k)
        EXPECT_TRUE(element_equal<double>(*state[k].second, i, *ref_state[k].second, 0))
            << state[k].first << " of element " << i;
    }
  }
}

template <class T>
void expect_all_ones_equals_no_mask(const std::string& type) {
  SCOPED_TRACE(type + (sizeof(T) == 4 ? " f32" : " f64"));
  const OptimizerConfig c = config_for(type);
  const std::vector<uint8_t> ones(kNumel, 1);
  Tensor w_plain = random_tensor<T>(kNumel, 4, -1, 1);
  Tensor w_ones = w_plain.clone();
  auto plain = make_dense_optimizer(c, kNumel, dtype_of<T>(), Device::CPU);
  auto masked = make_dense_optimizer(c, kNumel, dtype_of<T>(), Device::CPU);
  for (int64_t step = 1; step <= 3; ++step) {
    const Tensor g = random_grad<T>(kNumel, 300 + step);
    plain->step(w_plain, g, step);
    masked->step(w_ones, g, step, ones.data());
  }
  EXPECT_TRUE(bytes_equal(w_plain, w_ones));
  const auto a = plain->state(), b = masked->state();
  for (size_t k = 0; k < a.size(); ++k) EXPECT_TRUE(bytes_equal(*a[k].second, *b[k].second)) << a[k].first;
}

TEST(MaskedDenseOptimizer, AllOnesMaskEqualsNoMaskBitForBit) {
  for (const char* type : {"sgd", "adam", "adagrad"}) {
    expect_all_ones_equals_no_mask<float>(type);
    expect_all_ones_equals_no_mask<double>(type);
  }
}

template <class T>
void expect_all_zeros_changes_nothing(const std::string& type) {
  SCOPED_TRACE(type + (sizeof(T) == 4 ? " f32" : " f64"));
  const OptimizerConfig c = config_for(type);
  const std::vector<uint8_t> zeros(kNumel, 0);
  Tensor w = random_tensor<T>(kNumel, 5, -1, 1);
  auto opt = make_dense_optimizer(c, kNumel, dtype_of<T>(), Device::CPU);
  opt->step(w, random_grad<T>(kNumel, 401), 1);
  const Tensor w_prior = w.clone();
  const std::vector<Tensor> state_prior = clone_state(*opt);
  for (int64_t step = 2; step <= 3; ++step) opt->step(w, random_grad<T>(kNumel, 400 + step), step, zeros.data());
  EXPECT_TRUE(bytes_equal(w, w_prior));
  const auto state = opt->state();
  for (size_t k = 0; k < state.size(); ++k)
    EXPECT_TRUE(bytes_equal(*state[k].second, state_prior[k])) << state[k].first;
}

TEST(MaskedDenseOptimizer, AllZerosMaskChangesNothing) {
  for (const char* type : {"sgd", "adam", "adagrad"}) {
    expect_all_zeros_changes_nothing<float>(type);
    expect_all_zeros_changes_nothing<double>(type);
  }
}

// Three steps with weight decay under a random update mask and a random decay mask. Outside the
// update mask: value and state bit-identical. Inside: bit-identical to the compacted run with the
// compacted decay mask; where the decay mask is 0, bit-identical to a run without decay.
template <class T>
void expect_decay_follows_both_masks(const std::string& type) {
  SCOPED_TRACE(type + (sizeof(T) == 4 ? " f32" : " f64"));
  OptimizerConfig c = config_for(type);
  c.weight_decay = 0.1;
  OptimizerConfig no_decay = c;
  no_decay.weight_decay = 0;
  const std::vector<uint8_t> mask = random_mask(kNumel, 21), decay = random_mask(kNumel, 22);
  std::vector<uint8_t> decay_kept;
  for (int64_t i = 0; i < kNumel; ++i)
    if (mask[static_cast<size_t>(i)]) decay_kept.push_back(decay[static_cast<size_t>(i)]);
  Tensor w = random_tensor<T>(kNumel, 6, -1, 1);
  const Tensor w_prior = w.clone();
  Tensor w_ref = compact<T>(w, mask), w_plain = w_ref.clone();
  const int64_t kept = w_ref.numel();

  auto opt = make_dense_optimizer(c, kNumel, dtype_of<T>(), Device::CPU);
  opt->set_decay_mask(decay);
  auto ref = make_dense_optimizer(c, kept, dtype_of<T>(), Device::CPU);
  ref->set_decay_mask(decay_kept);
  auto plain = make_dense_optimizer(no_decay, kept, dtype_of<T>(), Device::CPU);
  const std::vector<Tensor> state_prior = clone_state(*opt);
  for (int64_t step = 1; step <= 3; ++step) {
    const Tensor g = random_grad<T>(kNumel, 500 + step);
    opt->step(w, g, step, mask.data());
    ref->step(w_ref, compact<T>(g, mask), step);
    plain->step(w_plain, compact<T>(g, mask), step);
  }
  const auto state = opt->state();
  const auto ref_state = ref->state();
  int64_t j = 0, bad_out = 0, bad_in = 0, bad_undecayed = 0, decayed_same = 0;
  for (int64_t i = 0; i < kNumel; ++i) {
    if (!mask[static_cast<size_t>(i)]) {
      bool same = element_equal<T>(w, i, w_prior, i);
      for (size_t k = 0; k < state.size(); ++k) same = same && element_equal<T>(*state[k].second, i, state_prior[k], i);
      bad_out += !same;
      continue;
    }
    bool same = element_equal<T>(w, i, w_ref, j);
    for (size_t k = 0; k < state.size(); ++k)
      same = same && element_equal<T>(*state[k].second, i, *ref_state[k].second, j);
    bad_in += !same;
    if (decay[static_cast<size_t>(i)]) decayed_same += element_equal<T>(w, i, w_plain, j);
    else bad_undecayed += !element_equal<T>(w, i, w_plain, j);
    ++j;
  }
  EXPECT_EQ(bad_out, 0) << "elements outside the update mask whose value or state moved";
  EXPECT_EQ(bad_in, 0) << "updated elements that differ from the compacted reference";
  EXPECT_EQ(bad_undecayed, 0) << "elements outside the decay mask that differ from the run without decay";
  EXPECT_EQ(decayed_same, 0) << "decayed elements equal to the run without decay";
}

TEST(MaskedDenseOptimizer, WeightDecayOnlyWhereDecayMaskAndNeverOutsideTheUpdateMask) {
  for (const char* type : {"sgd", "adam", "adagrad"}) {
    expect_decay_follows_both_masks<float>(type);
    expect_decay_follows_both_masks<double>(type);
  }
}

}  // namespace
}  // namespace ncsrec

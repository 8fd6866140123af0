// Specification tests for connection masks (core/masks.h) and the masked layers
// (core/layers/masked_linear.h): the packbits bit order, finite-difference gradients per task
// in double, gradient routing (no task moves a weight outside its mask), independent per-task
// buffers, exact-count global magnitude pruning with deterministic ties, the paper's IMP
// densities, and the shared/private/dead split.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "core/layers/masked_linear.h"
#include "core/masks.h"
#include "core/ops.h"
#include "core/params.h"
#include "core/random.h"
#include "tests/unit/gradcheck.h"

#include "tests/random_inputs.h"

namespace ncsrec {
namespace {

using testing::check_gradient;
using testing::dot;
using testing::fill_uniform;
using testing::random_tensor;

using testing::random_mask;

// ---------------------------------------------------------------------------------------------
// BitMask

// Element i of the 3×11 pattern is set when (7i + 3) mod 5 < 2: irregular, and 33 elements
// leave a partial last byte.
bool pattern_bit(int64_t i) { return (7 * i + 3) % 5 < 2; }

TEST(BitMask, PacksElementIIntoBitIMod8OfByteIDiv8) {
  BitMask m = BitMask::zeros(3, 11);
  for (int64_t i = 0; i < m.size(); ++i) m.set(i, pattern_bit(i));
  // Set elements: i ≡ 4 or 1 (mod 5): 1,4,6,9,11,14,16,19,21,24,26,29,31.
  // byte 0 (i 0..7):  bits 1,4,6        -> 0b01010010 = 0x52
  // byte 1 (i 8..15): i 9,11,14 -> 1,3,6 -> 0b01001010 = 0x4A
  // byte 2 (16..23):  i 16,19,21 -> 0,3,5 -> 0b00101001 = 0x29
  // byte 3 (24..31):  i 24,26,29,31 -> 0,2,5,7 -> 0b10100101 = 0xA5
  // byte 4 (32):      nothing            -> 0x00
  const std::vector<uint8_t> expected = {0x52, 0x4A, 0x29, 0xA5, 0x00};
  EXPECT_EQ(m.bits, expected);
  EXPECT_EQ(m.count(), 13);
  EXPECT_DOUBLE_EQ(m.density(), 13.0 / 33.0);
  for (int64_t i = 0; i < m.size(); ++i) EXPECT_EQ(m.get(i), pattern_bit(i)) << i;
  std::vector<double> dense(33);
  m.expand(dense.data());
  for (int64_t i = 0; i < 33; ++i) EXPECT_EQ(dense[static_cast<size_t>(i)], pattern_bit(i) ? 1.0 : 0.0);
  EXPECT_EQ(BitMask::from_values(3, 11, dense.data()), m);
}

TEST(BitMask, MatchesNumpyPackbitsLittle) {
  if (std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "no /usr/bin/python3 with numpy";
  const char* script =
      "/usr/bin/python3 -c \"import numpy as np; "
      "a = np.array([(7*i+3) % 5 < 2 for i in range(7*13)], dtype=np.uint8).reshape(7, 13); "
      "print(np.packbits(a, bitorder='little').tobytes().hex())\"";
  FILE* pipe = popen(script, "r");
  ASSERT_NE(pipe, nullptr);
  char buffer[512] = {0};
  const size_t n = fread(buffer, 1, sizeof(buffer) - 1, pipe);
  ASSERT_EQ(pclose(pipe), 0);
  std::string hex(buffer, n);
  while (!hex.empty() && (hex.back() == '\n' || hex.back() == '\r')) hex.pop_back();

  BitMask m = BitMask::zeros(7, 13);
  for (int64_t i = 0; i < m.size(); ++i) m.set(i, pattern_bit(i));
  std::string ours;
  char two[3];
  for (uint8_t b : m.bits) {
    std::snprintf(two, sizeof(two), "%02x", b);
    ours += two;
  }
  EXPECT_EQ(ours, hex);
}

TEST(BitMask, OnesKeepsPaddingZeroSoCountAndEqualityAreExact) {
  const BitMask a = BitMask::ones(3, 5);
  EXPECT_EQ(a.bits.size(), 2u);
  EXPECT_EQ(a.bits[1], 0x7F);  // 15 elements: bits 8..14 of the second byte
  EXPECT_EQ(a.count(), 15);
  EXPECT_DOUBLE_EQ(a.density(), 1.0);
  BitMask b = BitMask::zeros(3, 5);
  for (int64_t i = 0; i < b.size(); ++i) b.set(i, true);
  EXPECT_EQ(a, b);
  b.set(7, false);
  EXPECT_NE(a, b);
  EXPECT_EQ(b.count(), 14);
  EXPECT_NE(BitMask::ones(5, 3), a);  // same bits, other shape
  EXPECT_EQ(BitMask::zeros(4, 4).count(), 0);
}

// ---------------------------------------------------------------------------------------------
// MaskedLinear / MaskedMLP

void randomize(ParamStore& store, uint64_t seed) { fill_uniform(store.values(), seed, -0.6, 0.6); }

// Reference pre-activations x·(W ⊙ M) + b, [B, out], by plain loops.
std::vector<double> reference_pre(const Tensor& x, const MaskedLinear& layer, int task) {
  const int64_t B = x.dim(0), in = layer.in(), out = layer.out();
  const double* xv = x.data<double>();
  const double* W = layer.weight()->value.data<double>();
  const double* b = layer.bias()->value.data<double>();
  const BitMask& M = layer.mask(task);
  std::vector<double> pre(static_cast<size_t>(B * out));
  for (int64_t r = 0; r < B; ++r)
    for (int64_t c = 0; c < out; ++c) {
      double s = b[c];
      for (int64_t k = 0; k < in; ++k) s += xv[r * in + k] * (M.get(k * out + c) ? W[k * out + c] : 0.0);
      pre[static_cast<size_t>(r * out + c)] = s;
    }
  return pre;
}

double min_abs(const std::vector<double>& v) {
  double m = INFINITY;
  for (double x : v) m = std::min(m, std::abs(x));
  return m;
}

// Checks every parameter's gradient in the store (and dx) for one task's loss dot(y_t, r).
void expect_task_gradients(ParamStore& store, const std::function<const Tensor&(int, const Tensor&)>& forward,
                           const std::function<const Tensor&(int, const Tensor&)>& backward, int task, Tensor& x,
                           const Tensor& r) {
  SCOPED_TRACE("task " + std::to_string(task));
  store.zero_grad();
  auto loss = [&] { return dot(forward(task, x), r); };
  loss();
  const Tensor dx = backward(task, r).clone();
  const Tensor grads = store.grads().clone();
  for (const Param& p : store.params()) {
    Tensor value = p.value;
    EXPECT_TRUE(check_gradient(p.name, loss, value, grads.view(p.offset, p.shape)));
  }
  EXPECT_TRUE(check_gradient("x", loss, x, dx));
}

void expect_masked_linear_gradients(Activation act) {
  ParamStore store;
  MaskedLinear fc(store, "fc", 6, 5, 2, act);
  store.finalize(DType::F64, Device::CPU, 7);
  randomize(store, 8);
  fc.set_mask(0, random_mask(6, 5, 0.5, 100));
  fc.set_mask(1, random_mask(6, 5, 0.5, 101));
  ASSERT_NE(fc.mask(0), fc.mask(1));
  Tensor x = random_tensor({4, 6}, 11);
  const Tensor r = random_tensor({4, 5}, 12);  // dL/dy
  for (int task = 0; task < 2; ++task) {
    const std::vector<double> pre = reference_pre(x, fc, task);
    // A kink within the finite-difference step would make the numeric gradient meaningless.
    if (act == Activation::ReLU) ASSERT_GT(min_abs(pre), 1e-3);
    const Tensor& y = fc.forward(task, x);
    for (size_t i = 0; i < pre.size(); ++i)
      EXPECT_NEAR(y.data<double>()[i], act == Activation::ReLU ? std::max(pre[i], 0.0) : pre[i], 1e-13);
    expect_task_gradients(
        store, [&](int t, const Tensor& in) -> const Tensor& { return fc.forward(t, in); },
        [&](int t, const Tensor& dy) -> const Tensor& { return fc.backward(t, dy); }, task, x, r);
  }
}

TEST(MaskedLinear, GradientsMatchFiniteDifferencesPerTask) { expect_masked_linear_gradients(Activation::None); }
TEST(MaskedLinear, GradientsMatchFiniteDifferencesPerTaskWithReLU) {
  expect_masked_linear_gradients(Activation::ReLU);
}

TEST(MaskedLinear, WeightsOutsideTaskMaskGetExactlyZeroGradient) {
  ParamStore store;
  MaskedLinear fc(store, "fc", 9, 7, 2);
  store.finalize(DType::F64, Device::CPU, 1);
  randomize(store, 2);
  const BitMask m0 = random_mask(9, 7, 0.5, 3), m1 = random_mask(9, 7, 0.5, 4);
  fc.set_mask(0, m0);
  fc.set_mask(1, m1);
  const Tensor x = random_tensor({5, 9}, 5);
  const Tensor dy = random_tensor({5, 7}, 6);
  for (int task = 0; task < 2; ++task) {
    const BitMask& m = task == 0 ? m0 : m1;
    store.zero_grad();
    fc.forward(task, x);
    const Tensor& dx = fc.backward(task, dy);
    const double* dW = fc.weight()->grad.data<double>();
    for (int64_t i = 0; i < m.size(); ++i)
      if (!m.get(i)) EXPECT_EQ(dW[i], 0.0) << "task " << task << " element " << i;
      else EXPECT_NE(dW[i], 0.0) << "task " << task << " element " << i;
    // dx = dy·(W ⊙ M)ᵀ, by loops.
    const double* W = fc.weight()->value.data<double>();
    for (int64_t r = 0; r < 5; ++r)
      for (int64_t k = 0; k < 9; ++k) {
        double s = 0;
        for (int64_t c = 0; c < 7; ++c) s += dy.data<double>()[r * 7 + c] * (m.get(k * 7 + c) ? W[k * 7 + c] : 0.0);
        EXPECT_NEAR(dx.data<double>()[r * 9 + k], s, 1e-13);
      }
  }
}

TEST(MaskedLinear, DefaultMasksAreAllOnesSoItMatchesTheDenseLayer) {
  ParamStore store;
  MaskedLinear masked(store, "m", 5, 3, 2, Activation::ReLU);
  Linear dense(store, "d", 5, 3, Activation::ReLU);
  store.finalize(DType::F64, Device::CPU, 1);
  randomize(store, 9);
  dense.weight()->value.copy_from(masked.weight()->value);
  dense.bias()->value.copy_from(masked.bias()->value);
  EXPECT_EQ(masked.mask(1), BitMask::ones(5, 3));
  const Tensor x = random_tensor({4, 5}, 10);
  const Tensor& a = masked.forward(1, x);
  const Tensor& b = dense.forward(x);
  for (int64_t i = 0; i < a.numel(); ++i) EXPECT_EQ(a.data<double>()[i], b.data<double>()[i]);
}

TEST(MaskedLinear, SeesWeightUpdatesBetweenForwards) {
  ParamStore store;
  MaskedLinear fc(store, "fc", 3, 2, 1);
  store.finalize(DType::F64, Device::CPU, 1);
  const Tensor x = random_tensor({2, 3}, 2);
  const double before = dot(fc.forward(0, x), random_tensor({2, 2}, 3));
  fc.weight()->value.data<double>()[0] += 1.0;  // the masked copy must be refreshed
  const double after = dot(fc.forward(0, x), random_tensor({2, 2}, 3));
  EXPECT_NE(before, after);
}

TEST(MaskedLinear, JointStepEqualsSequentialStepsBecauseTaskBuffersAreIndependent) {
  ParamStore store;
  MaskedLinear fc(store, "fc", 8, 6, 2, Activation::ReLU);
  store.finalize(DType::F64, Device::CPU, 3);
  randomize(store, 4);
  fc.set_mask(0, random_mask(8, 6, 0.5, 5));
  fc.set_mask(1, random_mask(8, 6, 0.5, 6));
  const Tensor x0 = random_tensor({5, 8}, 7), x1 = random_tensor({3, 8}, 8);  // different batch sizes
  const Tensor r0 = random_tensor({5, 6}, 9), r1 = random_tensor({3, 6}, 10);

  store.zero_grad();
  fc.forward(0, x0);
  const Tensor dx0_seq = fc.backward(0, r0).clone();
  fc.forward(1, x1);
  const Tensor dx1_seq = fc.backward(1, r1).clone();
  const Tensor grads_seq = store.grads().clone();

  store.zero_grad();
  const Tensor& y0 = fc.forward(0, x0);
  const Tensor y0_copy = y0.clone();
  fc.forward(1, x1);
  for (int64_t i = 0; i < y0.numel(); ++i) ASSERT_EQ(y0.data<double>()[i], y0_copy.data<double>()[i]);
  const Tensor dx1 = fc.backward(1, r1).clone();
  const Tensor dx0 = fc.backward(0, r0).clone();
  // Same operations on the same values; only the order of the two accumulations into dW
  // differs, so allow rounding.
  for (int64_t i = 0; i < store.grads().numel(); ++i)
    EXPECT_NEAR(store.grads().data<double>()[i], grads_seq.data<double>()[i], 1e-14);
  for (int64_t i = 0; i < dx0.numel(); ++i) EXPECT_EQ(dx0.data<double>()[i], dx0_seq.data<double>()[i]);
  for (int64_t i = 0; i < dx1.numel(); ++i) EXPECT_EQ(dx1.data<double>()[i], dx1_seq.data<double>()[i]);
}

TEST(MaskedLinear, ParameterGradientsAccumulateAndInputGradientIsWritten) {
  ParamStore store;
  MaskedLinear fc(store, "fc", 4, 3, 1);
  store.finalize(DType::F64, Device::CPU, 1);
  fc.set_mask(0, random_mask(4, 3, 0.5, 2));
  const Tensor x = random_tensor({2, 4}, 3), dy = random_tensor({2, 3}, 4);
  store.zero_grad();
  fc.forward(0, x);
  const Tensor dx1 = fc.backward(0, dy).clone();
  const Tensor g1 = store.grads().clone();
  fc.forward(0, x);
  const Tensor dx2 = fc.backward(0, dy).clone();
  for (int64_t i = 0; i < g1.numel(); ++i) EXPECT_EQ(store.grads().data<double>()[i], 2 * g1.data<double>()[i]);
  for (int64_t i = 0; i < dx1.numel(); ++i) EXPECT_EQ(dx2.data<double>()[i], dx1.data<double>()[i]);
  EXPECT_FALSE(fc.backward(0, dy, false).defined());
}

TEST(MaskedLinear, Float32MatchesFloat64) {
  ParamStore s32, s64;
  MaskedLinear a(s32, "fc", 6, 4, 2, Activation::ReLU), b(s64, "fc", 6, 4, 2, Activation::ReLU);
  s32.finalize(DType::F32, Device::CPU, 5);
  s64.finalize(DType::F64, Device::CPU, 5);
  const BitMask m = random_mask(6, 4, 0.5, 6);
  a.set_mask(1, m);
  b.set_mask(1, m);
  const Tensor x64 = random_tensor({3, 6}, 7), dy64 = random_tensor({3, 4}, 8);
  Tensor x32 = Tensor::empty({3, 6}, DType::F32), dy32 = Tensor::empty({3, 4}, DType::F32);
  for (int64_t i = 0; i < 18; ++i) x32.data<float>()[i] = static_cast<float>(x64.data<double>()[i]);
  for (int64_t i = 0; i < 12; ++i) dy32.data<float>()[i] = static_cast<float>(dy64.data<double>()[i]);
  const Tensor& y32 = a.forward(1, x32);
  const Tensor& y64 = b.forward(1, x64);
  for (int64_t i = 0; i < 12; ++i) EXPECT_NEAR(y32.data<float>()[i], y64.data<double>()[i], 1e-5);
  const Tensor& dx32 = a.backward(1, dy32);
  const Tensor& dx64 = b.backward(1, dy64);
  for (int64_t i = 0; i < 18; ++i) EXPECT_NEAR(dx32.data<float>()[i], dx64.data<double>()[i], 1e-5);
  for (int64_t i = 0; i < 24; ++i) {
    EXPECT_NEAR(a.weight()->grad.data<float>()[i], b.weight()->grad.data<double>()[i], 1e-5);
    if (!m.get(i)) EXPECT_EQ(a.weight()->grad.data<float>()[i], 0.0f);
  }
}

TEST(MaskedLinear, RejectsMasksOfTheWrongShapeAndUnknownTasks) {
  ParamStore store;
  MaskedLinear fc(store, "fc", 4, 3, 2);
  store.finalize(DType::F64, Device::CPU, 1);
  EXPECT_THROW(fc.set_mask(0, BitMask::ones(3, 4)), InternalError);
  EXPECT_THROW(fc.set_mask(2, BitMask::ones(4, 3)), InternalError);
  EXPECT_THROW(fc.forward(-1, random_tensor({2, 4}, 1)), InternalError);
  EXPECT_THROW(fc.backward(1, random_tensor({2, 3}, 1)), InternalError);  // before forward
}

TEST(MaskedMLP, GradientsMatchFiniteDifferencesTwoLayersTwoTasks) {
  ParamStore store;
  MaskedMLP mlp(store, "shared", 6, {7, 4}, 2, /*final_activation=*/true);
  store.finalize(DType::F64, Device::CPU, 21);
  randomize(store, 22);
  for (int task = 0; task < 2; ++task)
    mlp.set_task_masks(task, {random_mask(6, 7, 0.5, 30 + task), random_mask(7, 4, 0.5, 40 + task)});
  EXPECT_NE(store.find("shared.1.weight"), nullptr);
  EXPECT_NE(store.find("shared.0.bias"), nullptr);
  EXPECT_EQ(mlp.out(), 4);
  EXPECT_EQ(mlp.masked_weight_count(), 6 * 7 + 7 * 4);
  Tensor x = random_tensor({5, 6}, 23);
  const Tensor r = random_tensor({5, 4}, 24);
  for (int task = 0; task < 2; ++task) {
    // Both layers end in ReLU: keep every pre-activation away from the kink.
    std::vector<double> pre0 = reference_pre(x, mlp.layer(0), task);
    ASSERT_GT(min_abs(pre0), 1e-3) << "task " << task;
    Tensor h = Tensor::empty({5, 7}, DType::F64);
    for (size_t i = 0; i < pre0.size(); ++i) h.data<double>()[i] = std::max(pre0[i], 0.0);
    ASSERT_GT(min_abs(reference_pre(h, mlp.layer(1), task)), 1e-3) << "task " << task;
    expect_task_gradients(
        store, [&](int t, const Tensor& in) -> const Tensor& { return mlp.forward(t, in); },
        [&](int t, const Tensor& dy) -> const Tensor& { return mlp.backward(t, dy); }, task, x, r);
  }
}

TEST(MaskedMLP, JointLossGradientMatchesFiniteDifferences) {
  // L = dot(y_0(x), r0) + dot(y_1(x), r1) with both forwards before both backwards.
  ParamStore store;
  MaskedMLP mlp(store, "shared", 5, {6, 3}, 2, /*final_activation=*/false);
  store.finalize(DType::F64, Device::CPU, 31);
  randomize(store, 32);
  for (int task = 0; task < 2; ++task)
    mlp.set_task_masks(task, {random_mask(5, 6, 0.5, 50 + task), random_mask(6, 3, 0.5, 60 + task)});
  Tensor x = random_tensor({4, 5}, 33);
  const Tensor r0 = random_tensor({4, 3}, 34), r1 = random_tensor({4, 3}, 35);
  for (int task = 0; task < 2; ++task)
    ASSERT_GT(min_abs(reference_pre(x, mlp.layer(0), task)), 1e-3) << "task " << task;
  auto loss = [&] { return dot(mlp.forward(0, x), r0) + dot(mlp.forward(1, x), r1); };
  store.zero_grad();
  mlp.forward(0, x);
  mlp.forward(1, x);
  Tensor dx = mlp.backward(1, r1).clone();
  ops::axpy(dx, 1.0, mlp.backward(0, r0));
  const Tensor grads = store.grads().clone();
  for (const Param& p : store.params()) {
    Tensor value = p.value;
    EXPECT_TRUE(check_gradient(p.name, loss, value, grads.view(p.offset, p.shape)));
  }
  EXPECT_TRUE(check_gradient("x", loss, x, dx));
}

// ---------------------------------------------------------------------------------------------
// Pruning

TEST(Pruning, ImpFractionGivesThePapersSchedule) {
  const double p = imp_prune_fraction(0.2, 4);
  EXPECT_NEAR(p, 0.33125969, 1e-8);
  EXPECT_NEAR(std::pow(1 - p, 4), 0.2, 1e-15);
  EXPECT_THROW(imp_prune_fraction(0.0, 4), UserError);
  EXPECT_THROW(imp_prune_fraction(0.5, 0), UserError);
}

// Two layers of random weights with partially pruned masks.
struct PruneCase {
  Tensor w0 = random_tensor({13, 11}, 71), w1 = random_tensor({11, 7}, 72);
  BitMask m0 = random_mask(13, 11, 0.8, 73), m1 = random_mask(11, 7, 0.8, 74);
};

TEST(Pruning, RemovesExactlyTheRoundedCountOfTheGloballySmallestRemainingWeights) {
  PruneCase c;
  const BitMask before0 = c.m0, before1 = c.m1;
  const int64_t remaining = c.m0.count() + c.m1.count();
  std::vector<const Tensor*> w = {&c.w0, &c.w1};
  std::vector<BitMask*> m = {&c.m0, &c.m1};
  const double fraction = 0.37;
  const int64_t k = prune_global_magnitude(w, m, fraction);
  EXPECT_EQ(k, std::llround(fraction * remaining));
  EXPECT_EQ(c.m0.count() + c.m1.count(), remaining - k);

  // Reference: sort all remaining (|w|, layer, index) keys; the first k are removed.
  std::vector<std::tuple<double, int, int64_t>> keys;
  for (int64_t i = 0; i < before0.size(); ++i)
    if (before0.get(i)) keys.emplace_back(std::abs(c.w0.data<double>()[i]), 0, i);
  for (int64_t i = 0; i < before1.size(); ++i)
    if (before1.get(i)) keys.emplace_back(std::abs(c.w1.data<double>()[i]), 1, i);
  std::sort(keys.begin(), keys.end());
  BitMask expect0 = before0, expect1 = before1;
  for (int64_t j = 0; j < k; ++j) {
    const auto& [mag, layer, index] = keys[static_cast<size_t>(j)];
    (layer == 0 ? expect0 : expect1).set(index, false);
  }
  EXPECT_EQ(c.m0, expect0);
  EXPECT_EQ(c.m1, expect1);
  // Nothing outside the old masks comes back.
  for (int64_t i = 0; i < before0.size(); ++i)
    if (!before0.get(i)) EXPECT_FALSE(c.m0.get(i));
}

TEST(Pruning, TiesAreResolvedByLayerThenIndexAndRunsAreIdentical) {
  // Every weight has |w| = 0.5 (both signs) except a few larger ones: the 0.5s tie.
  auto run = [] {
    Tensor w0 = Tensor::empty({4, 5}, DType::F32), w1 = Tensor::empty({3, 4}, DType::F64);
    for (int64_t i = 0; i < 20; ++i) w0.data<float>()[i] = (i % 3 == 0) ? 0.9f : (i % 2 ? -0.5f : 0.5f);
    for (int64_t i = 0; i < 12; ++i) w1.data<double>()[i] = (i == 5) ? 2.0 : (i % 2 ? 0.5 : -0.5);
    std::vector<BitMask> masks = {BitMask::ones(4, 5), BitMask::ones(3, 4)};
    masks[0].set(1, false);  // already pruned: must not be counted again
    std::vector<const Tensor*> w = {&w0, &w1};
    std::vector<BitMask*> m = {&masks[0], &masks[1]};
    EXPECT_EQ(prune_global_magnitude(w, m, 0.5), 16);  // llround(0.5 · 31) = llround(15.5) = 16
    return masks;
  };
  const std::vector<BitMask> a = run(), b = run();
  EXPECT_EQ(a[0], b[0]);
  EXPECT_EQ(a[1], b[1]);
  // Remaining ties at 0.5: layer 0 elements {2,4,5,7,8,10,11,13,14,16,17,19} (12 of them; 1
  // was already pruned), then layer 1 elements {0,1,2,3,4,6,...}. The first 16 are removed:
  // all 12 of layer 0, then layer 1 elements 0..3.
  for (int64_t i = 0; i < 20; ++i) EXPECT_EQ(a[0].get(i), i % 3 == 0) << "layer 0 element " << i;
  for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(a[1].get(i), i >= 4) << "layer 1 element " << i;
}

TEST(Pruning, ImpOnThePapersLayerSizesGivesExactCounts) {
  // fc_0..fc_2 of the NCS shared MLP: N = 720·512 + 512·256 + 256·128 = 532,480.
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{720, 512}, {512, 256}, {256, 128}};
  std::vector<Tensor> weights;
  std::vector<BitMask> masks;
  for (size_t l = 0; l < shapes.size(); ++l) {
    weights.push_back(Tensor::empty({shapes[l].first, shapes[l].second}, DType::F32));
    Rng rng(900 + l);
    for (int64_t i = 0; i < weights.back().numel(); ++i)
      weights.back().data<float>()[i] = static_cast<float>(rng.uniform(-0.1, 0.1));
    masks.push_back(BitMask::ones(shapes[l].first, shapes[l].second));
  }
  std::vector<const Tensor*> w;
  std::vector<BitMask*> m;
  for (size_t l = 0; l < shapes.size(); ++l) {
    w.push_back(&weights[l]);
    m.push_back(&masks[l]);
  }
  const int64_t N = 532480;
  const double p = imp_prune_fraction(0.2, 4);
  // Per round: removed = llround(p · remaining).
  const std::vector<int64_t> removed = {176389, 117959, 78884, 52752};
  const std::vector<int64_t> remaining = {356091, 238132, 159248, 106496};
  const std::vector<double> percent = {66.87, 44.72, 29.91, 20.00};
  for (int round = 0; round < 4; ++round) {
    // Between rounds the real loop rewinds and retrains; scrambling the weights stands in.
    if (round > 0)
      for (Tensor& t : weights) {
        Rng rng(1000 + round * 7 + static_cast<uint64_t>(t.numel()));
        for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = static_cast<float>(rng.uniform(-0.1, 0.1));
      }
    EXPECT_EQ(prune_global_magnitude(w, m, p), removed[static_cast<size_t>(round)]);
    int64_t alive = 0;
    for (const BitMask& mask : masks) alive += mask.count();
    EXPECT_EQ(alive, remaining[static_cast<size_t>(round)]);
    EXPECT_NEAR(100.0 * alive / N, percent[static_cast<size_t>(round)], 0.005);
  }
  EXPECT_EQ(remaining.back(), N / 5);  // exactly 20%
}

TEST(Pruning, MaskedMLPExposesItsWeightsAndMasksForPruning) {
  ParamStore store;
  MaskedMLP mlp(store, "shared", 6, {5, 4}, 2, true);
  store.finalize(DType::F64, Device::CPU, 3);
  std::vector<BitMask*> masks = mlp.task_masks(1);
  prune_global_magnitude(mlp.masked_weights(), masks, 0.5);
  EXPECT_EQ(mlp.layer(0).mask(1).count() + mlp.layer(1).mask(1).count(), 25);  // 50 - 25
  EXPECT_EQ(mlp.layer(0).mask(0), BitMask::ones(6, 5));                       // task 0 untouched
  const MaskSplit s = mlp.split();
  EXPECT_EQ(s.shared, 25);
  EXPECT_EQ(s.private_per_task, (std::vector<int64_t>{25, 0}));
  EXPECT_EQ(s.dead, 0);
}

TEST(Pruning, RejectsNaNWeights) {
  Tensor w = random_tensor({2, 3}, 1);
  w.data<double>()[4] = NAN;
  BitMask mask = BitMask::ones(2, 3);
  std::vector<const Tensor*> ws = {&w};
  std::vector<BitMask*> ms = {&mask};
  EXPECT_THROW(prune_global_magnitude(ws, ms, 0.5), InternalError);
}

// ---------------------------------------------------------------------------------------------
// Shared / private / dead

BitMask mask_from(int64_t rows, int64_t cols, const std::vector<int>& values) {
  return BitMask::from_values(rows, cols, values.data());
}

TEST(SplitConnections, TwoTasksOnHandMadeMasks) {
  // 3×3: shared {0, 4}, CTR-only {1, 5, 8}, CVR-only {2}, dead {3, 6, 7}.
  const BitMask ctr = mask_from(3, 3, {1, 1, 0, 0, 1, 1, 0, 0, 1});
  const BitMask cvr = mask_from(3, 3, {1, 0, 1, 0, 1, 0, 0, 0, 0});
  const MaskSplit s = split_connections({&ctr, &cvr});
  EXPECT_EQ(s.shared, 2);
  EXPECT_EQ(s.private_per_task, (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(s.private_total, 4);
  EXPECT_EQ(s.dead, 3);
  EXPECT_EQ(s.size(), 9);
}

TEST(SplitConnections, ThreeTasksCountAWeightInTwoMasksForBothButOnceInTotal) {
  // Columns of one row of 10 (the last byte is partial): per element, which tasks hold it.
  const BitMask a = mask_from(1, 10, {1, 1, 1, 0, 0, 0, 1, 0, 0, 0});
  const BitMask b = mask_from(1, 10, {1, 1, 0, 1, 0, 0, 0, 0, 1, 0});
  const BitMask c = mask_from(1, 10, {1, 0, 0, 0, 1, 0, 1, 0, 0, 0});
  const MaskSplit s = split_connections({&a, &b, &c});
  EXPECT_EQ(s.shared, 1);                                         // element 0
  EXPECT_EQ(s.private_total, 6);                                  // 1, 2, 3, 4, 6, 8
  EXPECT_EQ(s.private_per_task, (std::vector<int64_t>{3, 3, 2}));  // a: 1,2,6  b: 1,3,8  c: 4,6
  EXPECT_EQ(s.dead, 3);                                           // 5, 7, 9
  MaskSplit total;
  total += s;
  total += s;
  EXPECT_EQ(total.shared, 2);
  EXPECT_EQ(total.private_per_task, (std::vector<int64_t>{6, 6, 4}));
  EXPECT_EQ(total.size(), 20);
}

TEST(SplitConnections, RejectsMasksOfDifferentShapes) {
  const BitMask a = BitMask::ones(2, 3), b = BitMask::ones(3, 2);
  EXPECT_THROW(split_connections({&a, &b}), InternalError);
  EXPECT_THROW(split_connections({}), InternalError);
}

}  // namespace
}  // namespace ncsrec

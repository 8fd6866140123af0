// The CPU's sparse route of the masked layer (core/sparse_train.h): each product against a
// double-precision reference over the mask, on random inputs of shapes that are not multiples
// of the kernels' tiles, outputs poisoned with NaN before the call; nothing outside the mask
// touched; results independent of the thread count; and the layer's route choice.
// Skipped where the CPU lacks AVX-512F (the route is then never taken).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/layers/masked_linear.h"
#include "core/params.h"
#include "core/sparse_train.h"
#include "tests/random_inputs.h"
#include "tests/unit/route_scope.h"

namespace ncsrec {
namespace {

using testing::random_f32;
using testing::random_mask;

#define SKIP_WITHOUT_AVX512()                                                              \
  if (!masked_sparse_available()) GTEST_SKIP() << "this CPU has no AVX-512F: the sparse route is never taken"

struct Case {
  int64_t rows, in, out;
  double density;
};

std::string name(const Case& c) {
  return std::to_string(c.rows) + " rows, " + std::to_string(c.in) + "→" + std::to_string(c.out) + ", density " +
         std::to_string(c.density);
}

// |got − Σ a·b| ≤ 1e-5 · Σ|a·b| (+ a floor for sums of nothing), as the GEMM parity tests bound f32.
void expect_close(double got, double sum, double abs_sum, const std::string& what) {
  ASSERT_FALSE(std::isnan(got)) << what << ": not written";
  EXPECT_LE(std::fabs(got - sum), 1e-5 * abs_sum + 1e-30) << what << ": " << got << " against " << sum;
}

// An output buffer of n floats, every one NaN until the kernel writes it.
std::vector<float> poisoned(int64_t n) {
  return std::vector<float>(static_cast<size_t>(n), std::numeric_limits<float>::quiet_NaN());
}

const Case kCases[] = {{300, 37, 21, 0.2}, {4096, 720, 512, 0.2}, {130, 256, 128, 0.05},
                       {65, 40, 48, 1.0},  {64, 33, 17, 0.0},     {1, 20, 16, 0.3}};

TEST(SparseTrain, TheForwardIsTheMaskedProductPlusBiasThroughReLU) {
  SKIP_WITHOUT_AVX512();
  for (const Case& c : kCases) {
    SCOPED_TRACE(name(c));
    const Tensor x = random_f32({c.rows, c.in}, 1), w = random_f32({c.in, c.out}, 2), b = random_f32({c.out}, 3);
    const BitMask m = random_mask(c.in, c.out, c.density, 4);
    const MaskedSparsePlan plan = plan_masked_sparse(m);
    EXPECT_EQ(plan.nnz(), m.count());
    for (const bool relu : {false, true}) {
      std::vector<float> y = poisoned(c.rows * c.out);
      masked_sparse_forward(plan, c.rows, x.data<float>(), w.data<float>(), b.data<float>(), relu, y.data());
      for (int64_t r = 0; r < c.rows; r += (c.rows > 500 ? 37 : 1))
        for (int64_t j = 0; j < c.out; ++j) {
          double sum = b.data<float>()[j], abs_sum = std::fabs(sum);
          for (int64_t k = 0; k < c.in; ++k) {
            if (!m.get(k * c.out + j)) continue;
            const double p = double(x.data<float>()[r * c.in + k]) * w.data<float>()[k * c.out + j];
            sum += p;
            abs_sum += std::fabs(p);
          }
          if (relu) sum = std::max(sum, 0.0);
          expect_close(y[static_cast<size_t>(r * c.out + j)], sum, abs_sum,
                       "y[" + std::to_string(r) + ", " + std::to_string(j) + "]");
        }
    }
  }
}

// With the layer's ReLU output given, dy counts only where it is > 0 (random_f32 has both signs).
TEST(SparseTrain, TheInputGradientIsTheProductWithTheMaskedWeightTransposed) {
  SKIP_WITHOUT_AVX512();
  for (const Case& c : kCases) {
    SCOPED_TRACE(name(c));
    const Tensor dy = random_f32({c.rows, c.out}, 5), w = random_f32({c.in, c.out}, 6), y = random_f32({c.rows, c.out}, 16);
    const BitMask m = random_mask(c.in, c.out, c.density, 7);
    for (const bool gated : {false, true}) {
      SCOPED_TRACE(gated ? "dy gated by y > 0" : "dy");
      std::vector<float> dx = poisoned(c.rows * c.in);
      masked_sparse_input_grad(plan_masked_sparse(m), c.rows, dy.data<float>(), gated ? y.data<float>() : nullptr,
                               w.data<float>(), dx.data());
      for (int64_t r = 0; r < c.rows; r += (c.rows > 500 ? 37 : 1))
        for (int64_t k = 0; k < c.in; ++k) {
          double sum = 0, abs_sum = 0;
          for (int64_t j = 0; j < c.out; ++j) {
            if (!m.get(k * c.out + j) || (gated && !(y.data<float>()[r * c.out + j] > 0))) continue;
            const double p = double(dy.data<float>()[r * c.out + j]) * w.data<float>()[k * c.out + j];
            sum += p;
            abs_sum += std::fabs(p);
          }
          expect_close(dx[static_cast<size_t>(r * c.in + k)], sum, abs_sum,
                       "dx[" + std::to_string(r) + ", " + std::to_string(k) + "]");
        }
    }
  }
}

// dW accumulates onto what was there, inside the mask only: an element outside it keeps its bits.
// The bias gradient accumulates colsum(dy ⊙ (y > 0)) onto db.
TEST(SparseTrain, TheWeightGradientAddsInsideTheMaskAndTouchesNothingOutside) {
  SKIP_WITHOUT_AVX512();
  for (const Case& c : kCases) {
    SCOPED_TRACE(name(c));
    const Tensor x = random_f32({c.rows, c.in}, 8), dy = random_f32({c.rows, c.out}, 9), y = random_f32({c.rows, c.out}, 17);
    const Tensor before = random_f32({c.in, c.out}, 10), db_before = random_f32({c.out}, 18);
    const BitMask m = random_mask(c.in, c.out, c.density, 11);
    for (const bool gated : {false, true}) {
      SCOPED_TRACE(gated ? "dy gated by y > 0" : "dy");
      auto g = [&](int64_t r, int64_t j) {
        return gated && !(y.data<float>()[r * c.out + j] > 0) ? 0.0 : double(dy.data<float>()[r * c.out + j]);
      };
      std::vector<float> dw(before.data<float>(), before.data<float>() + c.in * c.out);
      std::vector<float> db(db_before.data<float>(), db_before.data<float>() + c.out);
      masked_sparse_weight_grad(plan_masked_sparse(m), c.rows, x.data<float>(), dy.data<float>(),
                                gated ? y.data<float>() : nullptr, dw.data(), db.data());
      int64_t outside = 0;
      for (int64_t k = 0; k < c.in; ++k)
        for (int64_t j = 0; j < c.out; ++j) {
          const int64_t i = k * c.out + j;
          const float got = dw[static_cast<size_t>(i)], was = before.data<float>()[i];
          if (!m.get(i)) {
            ++outside;
            ASSERT_EQ(std::memcmp(&got, &was, sizeof got), 0) << "dW[" << k << ", " << j << "] is outside the mask";
            continue;
          }
          if (c.rows > 500 && (k * 7 + j) % 13) continue;  // a sample of the large case's sums
          double sum = was, abs_sum = std::fabs(was);
          for (int64_t r = 0; r < c.rows; ++r) {
            const double p = double(x.data<float>()[r * c.in + k]) * g(r, j);
            sum += p;
            abs_sum += std::fabs(p);
          }
          expect_close(got, sum, abs_sum, "dW[" + std::to_string(k) + ", " + std::to_string(j) + "]");
        }
      EXPECT_EQ(outside, c.in * c.out - m.count());
      for (int64_t j = 0; j < c.out; ++j) {
        double sum = db_before.data<float>()[j], abs_sum = std::fabs(sum);
        for (int64_t r = 0; r < c.rows; ++r) {
          sum += g(r, j);
          abs_sum += std::fabs(g(r, j));
        }
        expect_close(db[static_cast<size_t>(j)], sum, abs_sum, "db[" + std::to_string(j) + "]");
      }
    }
  }
}

// The same bits on one thread as on two (each sum has one order whatever the threads).
TEST(SparseTrain, ResultsAreBitIdenticalOnOneAndTwoThreads) {
  SKIP_WITHOUT_AVX512();
  const int64_t rows = 1000, in = 200, out = 150;
  const Tensor x = random_f32({rows, in}, 12), dy = random_f32({rows, out}, 13), w = random_f32({in, out}, 14),
               gate = random_f32({rows, out}, 19);
  const MaskedSparsePlan plan = plan_masked_sparse(random_mask(in, out, 0.2, 15));
  auto run = [&](int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    std::vector<float> y(static_cast<size_t>(rows * out)), dx(static_cast<size_t>(rows * in)),
        dw(static_cast<size_t>(in * out), 0.5f), db(static_cast<size_t>(out), 0.25f);
    masked_sparse_forward(plan, rows, x.data<float>(), w.data<float>(), nullptr, true, y.data());
    masked_sparse_input_grad(plan, rows, dy.data<float>(), gate.data<float>(), w.data<float>(), dx.data());
    masked_sparse_weight_grad(plan, rows, x.data<float>(), dy.data<float>(), gate.data<float>(), dw.data(), db.data());
    omp_set_num_threads(saved);
    std::vector<float> all = y;
    all.insert(all.end(), dx.begin(), dx.end());
    all.insert(all.end(), dw.begin(), dw.end());
    all.insert(all.end(), db.begin(), db.end());
    return all;
  };
  const std::vector<float> one = run(1), two = run(2);
  ASSERT_EQ(one.size(), two.size());
  EXPECT_EQ(std::memcmp(one.data(), two.data(), one.size() * sizeof(float)), 0);
}

bool same(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Three tasks of one layer in one call, tasks 0 and 1 on one x (its tiles transposed once for
// both), task 2 on its own: the bits of one call per task, in task order; the summed input
// gradient is ((dx0 + dx1) + dx2), as adding the tasks' dx would give.
TEST(SparseTrain, SeveralTasksInOneCallGiveTheBitsOfOneCallPerTask) {
  SKIP_WITHOUT_AVX512();
  const int64_t rows = 300, in = 96, out = 80;
  const Tensor x01 = random_f32({rows, in}, 41), x2 = random_f32({rows, in}, 42), w = random_f32({in, out}, 43),
               b = random_f32({out}, 44);
  std::vector<MaskedSparsePlan> plans;
  std::vector<Tensor> dys, gates;
  for (int t = 0; t < 3; ++t) {
    plans.push_back(plan_masked_sparse(random_mask(in, out, 0.2 + 0.1 * t, 45 + t)));
    dys.push_back(random_f32({rows, out}, 50 + t));
    gates.push_back(random_f32({rows, out}, 60 + t));
  }
  const float* xs[3] = {x01.data<float>(), x01.data<float>(), x2.data<float>()};

  std::vector<MaskedSparseTask> tasks(3);
  std::vector<std::vector<float>> y(3), dx(3), y_one(3), dx_one(3);
  for (size_t t = 0; t < 3; ++t) {
    y[t] = poisoned(rows * out);
    dx[t] = poisoned(rows * in);
    y_one[t] = poisoned(rows * out);
    dx_one[t] = poisoned(rows * in);
    tasks[t].plan = &plans[t];
    tasks[t].x = xs[t];
    tasks[t].dy = dys[t].data<float>();
    tasks[t].relu_y = gates[t].data<float>();
    tasks[t].y = y[t].data();
    tasks[t].dx = dx[t].data();
  }
  masked_sparse_forward(tasks, rows, w.data<float>(), b.data<float>(), true);
  masked_sparse_input_grad(tasks, rows, w.data<float>(), nullptr);
  std::vector<float> dw(static_cast<size_t>(in * out), 0.5f), db(static_cast<size_t>(out), 0.25f);
  std::vector<float> dw_one = dw, db_one = db;
  masked_sparse_weight_grad(tasks, rows, dw.data(), db.data());
  for (size_t t = 0; t < 3; ++t) {
    SCOPED_TRACE("task " + std::to_string(t));
    masked_sparse_forward(plans[t], rows, xs[t], w.data<float>(), b.data<float>(), true, y_one[t].data());
    masked_sparse_input_grad(plans[t], rows, dys[t].data<float>(), gates[t].data<float>(), w.data<float>(),
                             dx_one[t].data());
    masked_sparse_weight_grad(plans[t], rows, xs[t], dys[t].data<float>(), gates[t].data<float>(), dw_one.data(),
                              db_one.data());
    EXPECT_TRUE(same(y[t], y_one[t])) << "forward";
    EXPECT_TRUE(same(dx[t], dx_one[t])) << "input gradient";
  }
  EXPECT_TRUE(same(dw, dw_one)) << "weight gradient";
  EXPECT_TRUE(same(db, db_one)) << "bias gradient";

  std::vector<float> dx_sum = poisoned(rows * in), expected(static_cast<size_t>(rows * in));
  for (size_t i = 0; i < expected.size(); ++i) expected[i] = (dx_one[0][i] + dx_one[1][i]) + dx_one[2][i];
  for (auto& t : tasks) t.dx = nullptr;  // summed: no task's own dx is written
  masked_sparse_input_grad(tasks, rows, w.data<float>(), dx_sum.data());
  EXPECT_TRUE(same(dx_sum, expected)) << "summed input gradient";
}

using testing::RouteScope;

// backward_tasks_sum of three tasks on one x returns the bits of their input gradients added
// in task order, with the parameter gradients of backward_tasks, on the plain and fused routes;
// the tasks' own input gradients are then undefined.
TEST(SparseTrain, ALayersSummedInputGradientIsTheTasksInputGradientsAddedInOrder) {
  SKIP_WITHOUT_AVX512();
  for (const MaskedRoute route : {MaskedRoute::Plain, MaskedRoute::Fused}) {
    SCOPED_TRACE(route == MaskedRoute::Plain ? "plain" : "fused");
    RouteScope scope(route);
    const int64_t rows = 300, in = 96, out = 80;
    const Tensor x = random_f32({rows, in}, 71);
    std::vector<Tensor> dy;
    for (int t = 0; t < 3; ++t) dy.push_back(random_f32({rows, out}, 72 + t));
    auto run = [&](bool summed, std::vector<float>* sum, std::vector<float>* grads) {
      ParamStore store;
      MaskedLinear layer(store, "l", in, out, 3, Activation::ReLU);
      store.finalize(DType::F32, Device::CPU, 81);
      for (int t = 0; t < 3; ++t) layer.set_mask(t, random_mask(in, out, 0.2, 82 + t));
      layer.forward_tasks({0, 1, 2}, {&x, &x, &x});
      if (summed) {
        const Tensor& s = layer.backward_tasks_sum({0, 1, 2}, {&dy[0], &dy[1], &dy[2]});
        sum->assign(s.data<float>(), s.data<float>() + s.numel());
        for (int t = 0; t < 3; ++t) EXPECT_FALSE(layer.input_grad(t).defined()) << "task " << t;
      } else {
        layer.backward_tasks({0, 1, 2}, {&dy[0], &dy[1], &dy[2]}, true);
        sum->assign(static_cast<size_t>(rows * in), 0.0f);
        for (size_t i = 0; i < sum->size(); ++i)
          (*sum)[i] = (layer.input_grad(0).data<float>()[i] + layer.input_grad(1).data<float>()[i]) +
                      layer.input_grad(2).data<float>()[i];
      }
      const Tensor& g = store.grads();
      grads->assign(g.data<float>(), g.data<float>() + g.numel());
    };
    std::vector<float> sum, grads, expected, expected_grads;
    run(true, &sum, &grads);
    run(false, &expected, &expected_grads);
    EXPECT_TRUE(same(sum, expected)) << "the summed input gradient";
    EXPECT_TRUE(same(grads, expected_grads)) << "the parameter gradients";
  }
}

// One forward and backward of a two-task masked layer on the CPU, f32, under `route`: outputs,
// input gradients and the parameter gradients, in one vector.
std::vector<float> layer_step(MaskedRoute route, double density, int64_t rows) {
  RouteScope scope(route);
  ParamStore store;
  MaskedLinear layer(store, "l", 96, 80, 2, Activation::ReLU);
  store.finalize(DType::F32, Device::CPU, 21);
  layer.set_mask(0, random_mask(96, 80, density, 22));
  layer.set_mask(1, random_mask(96, 80, density, 23));
  const Tensor x = random_f32({rows, 96}, 24), dy0 = random_f32({rows, 80}, 25), dy1 = random_f32({rows, 80}, 26);
  layer.forward_tasks({0, 1}, {&x, &x});
  layer.backward_tasks({0, 1}, {&dy0, &dy1}, true);
  std::vector<float> all;
  for (int t = 0; t < 2; ++t) {
    const Tensor& y = layer.output(t);
    const Tensor& dx = layer.input_grad(t);
    all.insert(all.end(), y.data<float>(), y.data<float>() + y.numel());
    all.insert(all.end(), dx.data<float>(), dx.data<float>() + dx.numel());
  }
  const Tensor& g = store.grads();
  all.insert(all.end(), g.data<float>(), g.data<float>() + g.numel());
  return all;
}

// The layer's fused route on the CPU is the sparse kernels: close to the plain route, not its
// bits; auto takes it exactly when every mask keeps at most 40% and the batch has 256 rows.
TEST(SparseTrain, TheCpuLayersFusedRouteIsTheSparseKernelsAndAutoTakesItForSparseMasksAndLargeBatches) {
  SKIP_WITHOUT_AVX512();
  const std::vector<float> plain = layer_step(MaskedRoute::Plain, 0.2, 300),
                           fused = layer_step(MaskedRoute::Fused, 0.2, 300);
  ASSERT_EQ(plain.size(), fused.size());
  EXPECT_FALSE(same(plain, fused)) << "the two routes should round differently";
  for (size_t i = 0; i < plain.size(); ++i)
    ASSERT_NEAR(fused[i], plain[i], 1e-4 * (1 + std::fabs(plain[i]))) << "element " << i;
  EXPECT_TRUE(same(layer_step(MaskedRoute::Auto, 0.2, 300), fused)) << "sparse masks, 300 rows: fused";
  EXPECT_TRUE(same(layer_step(MaskedRoute::Auto, 0.2, 255), layer_step(MaskedRoute::Plain, 0.2, 255)))
      << "255 rows: plain";
  EXPECT_TRUE(same(layer_step(MaskedRoute::Auto, 0.5, 300), layer_step(MaskedRoute::Plain, 0.5, 300)))
      << "masks at 50%: plain";
}

// A changed mask is planned again: the second forward uses the new mask, not the old plan.
TEST(SparseTrain, ALayersChangedMaskIsPlannedAgain) {
  SKIP_WITHOUT_AVX512();
  RouteScope scope(MaskedRoute::Fused);
  ParamStore store;
  MaskedLinear layer(store, "l", 40, 30, 1, Activation::None);
  store.finalize(DType::F32, Device::CPU, 31);
  const Tensor x = random_f32({70, 40}, 32);
  layer.set_mask(0, random_mask(40, 30, 0.2, 33));
  layer.forward(0, x);
  layer.mutable_mask(0) = BitMask::zeros(40, 30);  // pruned to nothing
  const Tensor& y = layer.forward(0, x);
  for (int64_t i = 0; i < y.numel(); ++i) ASSERT_EQ(y.data<float>()[i], 0.0f) << "element " << i << " (bias 0)";
  layer.set_mask(0, BitMask::ones(40, 30));
  const Tensor& y1 = layer.forward(0, x);
  double s = 0;
  for (int64_t i = 0; i < y1.numel(); ++i) s += std::fabs(y1.data<float>()[i]);
  EXPECT_GT(s, 0);
  // Edited through a reference taken before the last forward: still seen.
  BitMask& held = layer.mutable_mask(0);
  layer.forward(0, x);
  held = BitMask::zeros(40, 30);
  const Tensor& y2 = layer.forward(0, x);
  for (int64_t i = 0; i < y2.numel(); ++i) ASSERT_EQ(y2.data<float>()[i], 0.0f) << "element " << i;
}

// The tiled layout (tile i the [n, 64] block of rows 64·i ..): each element where the layout
// says, the rows up to a multiple of 256 present and zero, and back to the same bits.
TEST(SparseTrain, TheTiledLayoutPutsEachElementInItsTileAndPadsWithZeros) {
  const int64_t rows = 300, n = 37;
  const Tensor a = random_f32({rows, n}, 61);
  ASSERT_EQ(masked_tiled_floats(rows, n), 512 * n);
  std::vector<float> tiled(static_cast<size_t>(masked_tiled_floats(rows, n)), std::nanf("")), back(static_cast<size_t>(rows * n), std::nanf(""));
  to_masked_tiled(a.data<float>(), rows, n, tiled.data());
  for (int64_t r = 0; r < 512; ++r)
    for (int64_t k = 0; k < n; ++k) {
      const float got = tiled[static_cast<size_t>((r / 64 * n + k) * 64 + r % 64)];
      ASSERT_EQ(got, r < rows ? a.data<float>()[r * n + k] : 0.0f) << "row " << r << ", feature " << k;
    }
  from_masked_tiled(tiled.data(), rows, n, back.data());
  EXPECT_EQ(std::memcmp(back.data(), a.data<float>(), back.size() * sizeof(float)), 0);
}

// Each product with tiled operands and outputs gives the row-major products' bits, in the
// layout, with the padding rows zero (outputs poisoned with NaN first): the forward to a tiled
// y, the input gradient from a tiled gated dy to a tiled dx gated by the layer below, and the
// weight gradient from a tiled x and dy.
TEST(SparseTrain, TiledOperandsGiveTheBitsOfRowMajorOnes) {
  SKIP_WITHOUT_AVX512();
  const int64_t rows = 300, in = 150, out = 70;
  const BitMask mask = random_mask(in, out, 0.25, 131);
  const MaskedSparsePlan plan = plan_masked_sparse(mask);
  const Tensor x = random_f32({rows, in}, 132), w = random_f32({in, out}, 133), b = random_f32({out}, 134);
  const Tensor dy = random_f32({rows, out}, 135), below = random_f32({rows, in}, 136);
  auto tiled = [](const float* a, int64_t r, int64_t n) {
    std::vector<float> t(static_cast<size_t>(masked_tiled_floats(r, n)) + 16);
    float* at = t.data() + (16 - reinterpret_cast<uintptr_t>(t.data()) % 64 / 4) % 16;  // 64-byte aligned
    if (a) to_masked_tiled(a, r, n, at);
    return std::make_pair(std::move(t), at);
  };
  auto poisoned_tiled = [&](int64_t n) {
    auto t = tiled(nullptr, rows, n);
    std::fill(t.first.begin(), t.first.end(), std::nanf(""));
    return t;
  };
  // Forward (x of 150 inputs: two blocks of the product).
  std::vector<float> y(static_cast<size_t>(rows * out));
  masked_sparse_forward(plan, rows, x.data<float>(), w.data<float>(), b.data<float>(), true, y.data());
  auto yt = poisoned_tiled(out);
  MaskedSparseTask f;
  f.plan = &plan;
  f.x = x.data<float>();
  f.y = yt.second;
  f.y_tiled = true;
  masked_sparse_forward({f}, rows, w.data<float>(), b.data<float>(), true);
  const auto y_expected = tiled(y.data(), rows, out);
  EXPECT_EQ(std::memcmp(yt.second, y_expected.second, static_cast<size_t>(masked_tiled_floats(rows, out)) * 4), 0)
      << "the tiled forward";
  std::vector<float> y_from_tiled(y.size(), std::nanf(""));
  const auto xt = tiled(x.data<float>(), rows, in);
  f.x = xt.second;
  f.x_tiled = true;
  f.y = y_from_tiled.data();
  f.y_tiled = false;
  masked_sparse_forward({f}, rows, w.data<float>(), b.data<float>(), true);
  EXPECT_TRUE(same(y, y_from_tiled)) << "the forward of a tiled x";
  // Input gradient: dy gated by y, tiled; dx gated by the layer below's output.
  std::vector<float> dx(static_cast<size_t>(rows * in)), gated(static_cast<size_t>(rows * out));
  masked_sparse_input_grad(plan, rows, dy.data<float>(), y.data(), w.data<float>(), dx.data());
  for (size_t i = 0; i < gated.size(); ++i) gated[i] = y[i] > 0 ? dy.data<float>()[i] : 0.0f;
  for (size_t i = 0; i < dx.size(); ++i) dx[i] = below.data<float>()[i] > 0 ? dx[i] : 0.0f;
  const auto dyt = tiled(gated.data(), rows, out), gate = tiled(below.data<float>(), rows, in);
  auto dxt = poisoned_tiled(in);
  MaskedSparseTask g;
  g.plan = &plan;
  g.dy = dyt.second;
  g.dy_tiled = true;
  g.dx = dxt.second;
  g.dx_tiled = true;
  g.dx_gate = gate.second;
  masked_sparse_input_grad({g}, rows, w.data<float>(), nullptr);
  const auto dx_expected = tiled(dx.data(), rows, in);
  EXPECT_EQ(std::memcmp(dxt.second, dx_expected.second, static_cast<size_t>(masked_tiled_floats(rows, in)) * 4), 0)
      << "the tiled input gradient";
  // Weight gradient.
  const Tensor dw0 = random_f32({in, out}, 137), db0 = random_f32({out}, 138);
  std::vector<float> dw(dw0.data<float>(), dw0.data<float>() + dw0.numel()), db(db0.data<float>(), db0.data<float>() + out);
  std::vector<float> dw_tiled = dw, db_tiled = db;
  masked_sparse_weight_grad(plan, rows, x.data<float>(), dy.data<float>(), y.data(), dw.data(), db.data());
  MaskedSparseTask h;
  h.plan = &plan;
  h.x = xt.second;
  h.x_tiled = true;
  h.dy = dyt.second;
  h.dy_tiled = true;
  masked_sparse_weight_grad({h}, rows, dw_tiled.data(), db_tiled.data());
  EXPECT_TRUE(same(dw, dw_tiled)) << "the weight gradient";
  EXPECT_TRUE(same(db, db_tiled)) << "the bias gradient";
}

// One step of a three-layer masked MLP of three tasks on the CPU's fused route, either chained
// (through the MLP: tiled activations between the layers) or through its layers one by one
// (row-major activations); everything it produced, in one vector. A first step of 450 rows
// leaves its values in every buffer past the 300 rows of the measured step.
std::vector<float> mlp_step(bool chained, bool summed, bool final_relu) {
  RouteScope scope(MaskedRoute::Fused);
  ParamStore store;
  const std::vector<int64_t> sizes = {150, 140, 33};  // over 128 inputs: tiled operands of two blocks
  MaskedMLP mlp(store, "m", 70, sizes, 3, final_relu);
  store.finalize(DType::F32, Device::CPU, 91);
  for (size_t l = 0; l < sizes.size(); ++l) {  // biases of both signs: a padding row would not stay zero
    const Tensor b = random_f32({sizes[l]}, 80 + l);
    std::memcpy(mlp.layer(l).bias()->value.raw(), b.raw(), b.nbytes());
    for (int t = 0; t < 3; ++t)
      mlp.layer(l).set_mask(t, random_mask(mlp.layer(l).in(), sizes[l], 0.2 + 0.1 * t, 92 + 3 * l + t));
  }
  const std::vector<int> tasks = {0, 1, 2};
  std::vector<float> all;
  auto step = [&](int64_t rows, uint64_t seed) {
    const Tensor x = random_f32({rows, 70}, seed);
    std::vector<Tensor> dy;
    for (int t = 0; t < 3; ++t) dy.push_back(random_f32({rows, 33}, seed + 1 + t));
    const std::vector<const Tensor*> dys = {&dy[0], &dy[1], &dy[2]};
    store.zero_grad();
    all.clear();
    const Tensor* sum = nullptr;
    if (chained) {
      mlp.forward_tasks(tasks, x);
      // Only a chain keeps a layer's own backward from running after the MLP's forward.
      EXPECT_THROW(mlp.layer(1).backward(0, dy[0]), InternalError) << "the forward did not run as a chain";
      for (int t : tasks) all.insert(all.end(), mlp.output(t).data<float>(), mlp.output(t).data<float>() + mlp.output(t).numel());
      if (summed)
        sum = &mlp.backward_tasks_sum(tasks, dys);
      else
        mlp.backward_tasks(tasks, dys, true);
    } else {
      std::vector<const Tensor*> in(3, &x);
      for (size_t l = 0; l < sizes.size(); ++l) {
        mlp.layer(l).forward_tasks(tasks, in);
        for (int t : tasks) in[static_cast<size_t>(t)] = &mlp.layer(l).output(t);
      }
      for (int t : tasks) all.insert(all.end(), in[static_cast<size_t>(t)]->data<float>(), in[static_cast<size_t>(t)]->data<float>() + in[static_cast<size_t>(t)]->numel());
      std::vector<const Tensor*> grads = dys;
      for (size_t l = sizes.size(); l-- > 1;) {
        mlp.layer(l).backward_tasks(tasks, grads, true);
        for (int t : tasks) grads[static_cast<size_t>(t)] = &mlp.layer(l).input_grad(t);
      }
      if (summed)
        sum = &mlp.layer(0).backward_tasks_sum(tasks, grads);
      else
        mlp.layer(0).backward_tasks(tasks, grads, true);
    }
    if (sum) all.insert(all.end(), sum->data<float>(), sum->data<float>() + sum->numel());
    for (int t : tasks)
      if (!summed) all.insert(all.end(), mlp.input_grad(t).data<float>(), mlp.input_grad(t).data<float>() + mlp.input_grad(t).numel());
    const Tensor& g = store.grads();
    all.insert(all.end(), g.data<float>(), g.data<float>() + g.numel());
  };
  step(450, 100);
  step(300, 200);
  return all;
}

// The chained MLP keeps its activations in the kernels' layout and gates each gradient as it
// is written: the same bits as the layers one by one (which the tests above hold to a double
// reference), stale rows of a larger batch left out, summed or not, with and without a ReLU
// after the last layer.
TEST(SparseTrain, AChainedMaskedMlpGivesTheBitsOfItsLayersOneByOne) {
  SKIP_WITHOUT_AVX512();
  for (const bool summed : {true, false})
    for (const bool final_relu : {true, false}) {
      SCOPED_TRACE(std::string(summed ? "summed" : "per task") + (final_relu ? ", final ReLU" : ", no final ReLU"));
      const std::vector<float> chained = mlp_step(true, summed, final_relu),
                               layered = mlp_step(false, summed, final_relu);
      ASSERT_EQ(chained.size(), layered.size());
      EXPECT_TRUE(same(chained, layered));
      size_t nonzero = 0;
      for (float v : chained) nonzero += v != 0.0f;
      EXPECT_GT(nonzero, chained.size() / 2);
    }
}

// Tasks whose forwards ran apart (two chained, one not because its mask is too dense for
// auto's rule) go backward one after the other: the parameter gradients and the summed input
// gradient are the bits of the same steps through the layers one by one (each layer's
// backward_tasks, which runs a mix of routes task by task). A layer inside a chain refuses a
// backward of its own, and a layer run on its own after a chained forward takes its task out
// of the chain.
TEST(SparseTrain, AMaskedMlpsTasksFromSeparateForwardsGoBackwardOneByOne) {
  SKIP_WITHOUT_AVX512();
  RouteScope scope(MaskedRoute::Auto);
  auto run = [](bool through_mlp, std::vector<float>* out) {
    ParamStore store;
    MaskedMLP mlp(store, "m", 70, {90, 33}, 3, true);
    store.finalize(DType::F32, Device::CPU, 111);
    for (int t = 0; t < 3; ++t)
      for (size_t l = 0; l < 2; ++l)
        mlp.layer(l).set_mask(t, random_mask(mlp.layer(l).in(), mlp.layer(l).out(), t == 2 ? 0.6 : 0.2, 112 + 2 * l + t));
    const Tensor x = random_f32({300, 70}, 120);
    std::vector<Tensor> dy;
    for (int t = 0; t < 3; ++t) dy.push_back(random_f32({300, 33}, 121 + t));
    const std::vector<const Tensor*> dys = {&dy[0], &dy[1], &dy[2]};
    const Tensor* sum = nullptr;
    if (through_mlp) {
      mlp.forward_tasks({0, 1}, x);  // chained: 20% masks
      mlp.forward_tasks({2}, x);     // not: 60% is past auto's rule
      EXPECT_THROW(mlp.layer(1).backward(0, dy[0]), InternalError);
      EXPECT_THROW(mlp.layer(0).output(0), InternalError) << "a chained layer's own output is not kept";
      sum = &mlp.backward_tasks_sum({0, 1, 2}, dys);
      for (int t = 0; t < 3; ++t) EXPECT_FALSE(mlp.input_grad(t).defined()) << "task " << t;
    } else {
      for (const std::vector<int>& tasks : {std::vector<int>{0, 1}, std::vector<int>{2}}) {
        std::vector<const Tensor*> in(tasks.size(), &x);
        for (size_t l = 0; l < 2; ++l) {
          mlp.layer(l).forward_tasks(tasks, in);
          for (size_t i = 0; i < tasks.size(); ++i) in[i] = &mlp.layer(l).output(tasks[i]);
        }
      }
      mlp.layer(1).backward_tasks({0, 1, 2}, dys, true);
      sum = &mlp.layer(0).backward_tasks_sum(
          {0, 1, 2}, {&mlp.layer(1).input_grad(0), &mlp.layer(1).input_grad(1), &mlp.layer(1).input_grad(2)});
    }
    out->assign(sum->data<float>(), sum->data<float>() + sum->numel());
    const Tensor& g = store.grads();
    out->insert(out->end(), g.data<float>(), g.data<float>() + g.numel());
  };
  std::vector<float> through_mlp, layered;
  run(true, &through_mlp);
  run(false, &layered);
  EXPECT_TRUE(same(through_mlp, layered));

  // The layers run on their own after a chained forward: the MLP's backward goes through them.
  ParamStore store;
  MaskedMLP mlp(store, "m", 70, {90, 33}, 1, true);
  store.finalize(DType::F32, Device::CPU, 131);
  for (size_t l = 0; l < 2; ++l) mlp.layer(l).set_mask(0, random_mask(mlp.layer(l).in(), mlp.layer(l).out(), 0.2, 132 + l));
  const Tensor x = random_f32({300, 70}, 133), dy = random_f32({300, 33}, 134);
  mlp.forward_tasks({0}, x);  // chained
  const Tensor& h = mlp.layer(0).forward(0, x);
  mlp.layer(1).forward(0, h);
  EXPECT_NO_THROW(mlp.backward(0, dy));
  EXPECT_TRUE(mlp.input_grad(0).defined());
}

// No rows: the weight gradient adds nothing (not a previous call's partial sums).
TEST(SparseTrain, AWeightGradientOfNoRowsAddsNothing) {
  SKIP_WITHOUT_AVX512();
  const BitMask mask = random_mask(96, 80, 0.2, 141);
  const MaskedSparsePlan plan = plan_masked_sparse(mask);
  const Tensor x = random_f32({300, 96}, 142), dy = random_f32({300, 80}, 143);
  std::vector<float> dw(96 * 80, 0.0f), db(80, 0.0f);
  masked_sparse_weight_grad(plan, 300, x.data<float>(), dy.data<float>(), nullptr, dw.data(), db.data());
  const std::vector<float> before_dw = dw, before_db = db;
  masked_sparse_weight_grad(plan, 0, x.data<float>(), dy.data<float>(), nullptr, dw.data(), db.data());
  EXPECT_TRUE(same(dw, before_dw));
  EXPECT_TRUE(same(db, before_db));
}

}  // namespace
}  // namespace ncsrec

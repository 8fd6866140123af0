// CUDA/CPU parity of the masked multi-task linear layer's fused route (cuda/masked_linear.cu,
// the masked_linear_* entries of core/dispatch.h) against the CPU's entries, which compute the
// plain route (W ⊙ M_t written out, one product per task). Inputs are random and never zero,
// the masks random at several densities (one empty when there are three tasks or more), task
// counts 1, 2, 3 and 5 (five run as a launch of four and a launch of one). Outputs are poisoned
// (0xFF) with a poisoned guard tail that must survive; dW starts random (it accumulates).
// Bounds follow the operands' magnitudes (|·| taken elementwise, the products in double):
//   y_t    rtol · (|x_t|·|W ⊙ M_t| + |bias|)
//   dx_t   rtol · |dy_t|·|W ⊙ M_t|ᵀ
//   dW     rtol · (|dW₀| + Σ_t (|x_t|ᵀ·|dy_t|) ⊙ M_t), and bit-identical to dW₀ outside every mask
// with rtol 1e-5 (f32; the fused route sums in FP32 with fused multiply-adds, whatever
// run.matmul says) and 1e-12 (f64). Without a GPU every test skips with the reason.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/dispatch.h"
#include "cuda/device.h"
#include "tests/gpu/gpu_test_util.h"

namespace ncsrec {
namespace {

using namespace gpu_test;

class CudaMaskedLinear : public GpuTest {};

// Packed bits of a random [in, out] mask at `density` (element i: bit i % 8 of byte i / 8).
std::vector<uint8_t> random_bits(int64_t n, double density, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution on(density);
  std::vector<uint8_t> bits(static_cast<size_t>((n + 7) / 8), 0);
  for (int64_t i = 0; i < n; ++i)
    if (on(rng)) bits[static_cast<size_t>(i / 8)] |= static_cast<uint8_t>(1u << (i % 8));
  return bits;
}

bool bit(const std::vector<uint8_t>& bits, int64_t i) { return (bits[static_cast<size_t>(i / 8)] >> (i % 8)) & 1u; }

// |a|·|b| (or its transposes) in double through the CPU's product: the bounds' magnitudes.
std::vector<double> abs_product(const std::vector<double>& a, bool ta, const std::vector<double>& b, bool tb,
                                int64_t M, int64_t N, int64_t K) {
  std::vector<double> c(static_cast<size_t>(M * N));
  cpu().gemm(DType::F64, ta, tb, M, N, K, 1.0, a.data(), b.data(), 0.0, c.data());
  return c;
}

template <class T>
std::vector<double> absolute(const std::vector<T>& v) {
  std::vector<double> a(v.size());
  for (size_t i = 0; i < v.size(); ++i) a[i] = std::fabs(static_cast<double>(v[i]));
  return a;
}

template <class T>
void check_fused(int tasks, int64_t rows, int64_t in, int64_t out, bool relu, bool with_bias, uint64_t seed) {
  const std::string what = std::string(dtype_name(dtype_for<T>())) + " " + std::to_string(tasks) + " tasks, rows " +
                           std::to_string(rows) + ", " + std::to_string(in) + "→" + std::to_string(out) +
                           (relu ? ", relu" : "") + (with_bias ? ", bias" : "");
  SCOPED_TRACE(what);
  const int64_t n = in * out;
  const auto w = random_values<T>(n, seed), bias = random_values<T>(out, seed + 1), dw0 = random_values<T>(n, seed + 2);
  std::vector<std::vector<T>> x, dy;
  std::vector<std::vector<uint8_t>> bits;
  for (int t = 0; t < tasks; ++t) {
    x.push_back(random_values<T>(rows * in, seed + 10 + static_cast<uint64_t>(t)));
    dy.push_back(random_values<T>(rows * out, seed + 20 + static_cast<uint64_t>(t)));
    const double density = t == 2 ? 0.0 : 0.15 + 0.2 * t;  // task 2's mask is empty
    bits.push_back(random_bits(n, density, seed + 30 + static_cast<uint64_t>(t)));
  }
  const DType d = dtype_for<T>();
  const void* b_host = with_bias ? bias.data() : nullptr;

  // CPU: the plain route.
  std::vector<std::vector<T>> y_c(static_cast<size_t>(tasks), std::vector<T>(static_cast<size_t>(rows * out))),
      dx_c(static_cast<size_t>(tasks), std::vector<T>(static_cast<size_t>(rows * in)));
  std::vector<T> dw_c = dw0;
  std::vector<const void*> xs, dys;
  std::vector<void*> ys, dxs;
  std::vector<const uint8_t*> bs;
  for (int t = 0; t < tasks; ++t) {
    xs.push_back(x[static_cast<size_t>(t)].data());
    dys.push_back(dy[static_cast<size_t>(t)].data());
    ys.push_back(y_c[static_cast<size_t>(t)].data());
    dxs.push_back(dx_c[static_cast<size_t>(t)].data());
    bs.push_back(bits[static_cast<size_t>(t)].data());
  }
  cpu().masked_linear_forward(d, tasks, rows, in, out, xs.data(), w.data(), bs.data(), b_host, relu, ys.data());
  cpu().masked_linear_weight_grad(d, tasks, rows, in, out, xs.data(), dys.data(), bs.data(), dw_c.data());
  cpu().masked_linear_input_grad(d, tasks, rows, in, out, dys.data(), w.data(), bs.data(), dxs.data());

  // GPU: every output poisoned by its buffer's constructor.
  DeviceBuffer<T> d_w(w), d_bias(bias), d_dw(dw0);
  std::vector<std::unique_ptr<DeviceBuffer<T>>> d_x, d_dy, d_y, d_dx;
  std::vector<std::unique_ptr<DeviceBuffer<uint8_t>>> d_bits;
  std::vector<const void*> gxs, gdys;
  std::vector<void*> gys, gdxs;
  std::vector<const uint8_t*> gbs;
  for (int t = 0; t < tasks; ++t) {
    d_x.push_back(std::make_unique<DeviceBuffer<T>>(x[static_cast<size_t>(t)]));
    d_dy.push_back(std::make_unique<DeviceBuffer<T>>(dy[static_cast<size_t>(t)]));
    d_y.push_back(std::make_unique<DeviceBuffer<T>>(rows * out));
    d_dx.push_back(std::make_unique<DeviceBuffer<T>>(rows * in));
    d_bits.push_back(std::make_unique<DeviceBuffer<uint8_t>>(bits[static_cast<size_t>(t)]));
    gxs.push_back(d_x.back()->get());
    gdys.push_back(d_dy.back()->get());
    gys.push_back(d_y.back()->get());
    gdxs.push_back(d_dx.back()->get());
    gbs.push_back(d_bits.back()->get());
  }
  gpu().masked_linear_forward(d, tasks, rows, in, out, gxs.data(), d_w.get(), gbs.data(),
                              with_bias ? d_bias.get() : nullptr, relu, gys.data());
  gpu().masked_linear_weight_grad(d, tasks, rows, in, out, gxs.data(), gdys.data(), gbs.data(), d_dw.get());
  gpu().masked_linear_input_grad(d, tasks, rows, in, out, gdys.data(), d_w.get(), gbs.data(), gdxs.data());

  std::vector<double> dw_scale = absolute(dw0);
  for (int t = 0; t < tasks; ++t) {
    const size_t i = static_cast<size_t>(t);
    std::vector<double> wm = absolute(w);
    for (int64_t k = 0; k < n; ++k)
      if (!bit(bits[i], k)) wm[static_cast<size_t>(k)] = 0;
    const std::vector<double> ax = absolute(x[i]), ady = absolute(dy[i]);
    std::vector<double> y_bound = abs_product(ax, false, wm, false, rows, out, in);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < out; ++c) {
        double& b = y_bound[static_cast<size_t>(r * out + c)];
        b = rtol<T>() * (b + (with_bias ? std::fabs(static_cast<double>(bias[static_cast<size_t>(c)])) : 0.0));
      }
    expect_close(d_y[i]->download(), y_c[i], y_bound, what + ": y of task " + std::to_string(t));
    std::vector<double> dx_bound = abs_product(ady, false, wm, true, rows, in, out);
    for (double& b : dx_bound) b *= rtol<T>();
    expect_close(d_dx[i]->download(), dx_c[i], dx_bound, what + ": dx of task " + std::to_string(t));
    const std::vector<double> g = abs_product(ax, true, ady, false, in, out, rows);
    for (int64_t k = 0; k < n; ++k)
      if (bit(bits[i], k)) dw_scale[static_cast<size_t>(k)] += g[static_cast<size_t>(k)];
  }
  const std::vector<T> dw_g = d_dw.download();
  std::vector<double> dw_bound(dw_scale.size());
  for (size_t k = 0; k < dw_scale.size(); ++k) dw_bound[k] = rtol<T>() * dw_scale[k];
  expect_close(dw_g, dw_c, dw_bound, what + ": dW");
  int reported = 0;
  for (int64_t k = 0; k < n && reported < 5; ++k) {
    bool in_some = false;
    for (const auto& b : bits) in_some = in_some || bit(b, k);
    if (!in_some && std::memcmp(&dw_g[static_cast<size_t>(k)], &dw0[static_cast<size_t>(k)], sizeof(T)) != 0) {
      ADD_FAILURE() << what << ": dW element " << k << " is in no mask but changed from " << dw0[static_cast<size_t>(k)]
                    << " to " << dw_g[static_cast<size_t>(k)];
      ++reported;
    }
  }
}

struct Shape3 {
  int64_t rows, in, out;
};

TEST_F(CudaMaskedLinear, FusedRouteMatchesTheCpuOnOddShapes) {
  const std::vector<Shape3> shapes = {{1, 1, 1}, {7, 33, 65}, {65, 129, 31}, {130, 17, 257}, {300, 256, 128}};
  uint64_t seed = 100;
  for (const Shape3& s : shapes)
    for (int tasks : {1, 2, 3, 5}) {
      check_fused<float>(tasks, s.rows, s.in, s.out, true, true, seed++);
      check_fused<double>(tasks, s.rows, s.in, s.out, false, tasks % 2 == 0, seed++);
    }
}

TEST_F(CudaMaskedLinear, FusedRouteMatchesTheCpuWithoutBiasOrActivation) {
  check_fused<float>(2, 129, 65, 33, false, false, 7);
  check_fused<float>(4, 64, 64, 64, true, false, 8);  // exact tiles, a full launch of four
}

// The paper's first masked layer at batch 4096 (720 → 512, two tasks).
TEST_F(CudaMaskedLinear, FusedRouteMatchesTheCpuOnThePapersFirstLayer) {
  check_fused<float>(2, 4096, 720, 512, true, true, 9);
}

}  // namespace
}  // namespace ncsrec

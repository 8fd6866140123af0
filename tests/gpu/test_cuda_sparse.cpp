// CUDA/CPU parity for the CSR masked layer: CudaCsrLinear (cuSPARSE SpMM + bias/ReLU kernel,
// cuda/sparse.h) against the CPU reference csr_linear_forward (core/sparse.h).
//
// Inputs are random (fixed seed, never zero, both signs); the GPU output is poisoned with NaN
// and carries one extra poisoned row that must survive (an out-of-bounds-write check). The
// tolerance is an error bound: |gpu − cpu| ≤ 1e-5 · (Σ_i |x[b,i]| |(W ⊙ M)[i,o]| + |b[o]|).
//
// Without a GPU the parity tests skip with the reason, and CudaCsrLinearNoGpu checks that
// building the layer fails with an exception, not a crash.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/masks.h"
#include "core/random.h"
#include "core/sparse.h"
#include "core/tensor.h"
#include "cuda/device.h"
#include "cuda/sparse.h"

#include "tests/gpu/gpu_test_util.h"
#include "tests/random_inputs.h"

namespace ncsrec {
namespace {

using testing::random_f32;

using testing::random_mask;

class CudaCsrParity : public gpu_test::GpuTest {};

struct Case {
  int64_t batch, in, out;
  double density;
  bool relu, bias;
};

// Runs one case on both paths; returns the GPU output (for the determinism test).
std::vector<float> check_case(const Case& c, uint64_t seed) {
  const Tensor x = random_f32({c.batch, c.in}, seed);
  const Tensor W = random_f32({c.in, c.out}, seed + 1);
  const Tensor b = random_f32({c.out}, seed + 2);
  const BitMask M = random_mask(c.in, c.out, c.density, seed + 3);
  const CsrMatrix csr = masked_to_csr(W, M);
  const std::string what = "B=" + std::to_string(c.batch) + " " + std::to_string(c.in) + "x" + std::to_string(c.out) +
                           " density " + std::to_string(c.density) + (c.relu ? " relu" : "") + (c.bias ? " bias" : "");

  Tensor y_cpu = Tensor::empty({c.batch, c.out}, DType::F32);
  csr_linear_forward(y_cpu, x, csr, c.bias ? &b : nullptr, c.relu);

  CudaCsrLinear layer(csr, c.bias ? b.data<float>() : nullptr, c.relu);
  EXPECT_EQ(layer.nnz(), M.count());
  const Tensor x_gpu = x.to(Device::CUDA);
  // One guard row past the output, everything poisoned with NaN.
  Tensor poison = Tensor::empty({c.batch + 1, c.out}, DType::F32);
  for (int64_t i = 0; i < poison.numel(); ++i) poison.data<float>()[i] = std::numeric_limits<float>::quiet_NaN();
  Tensor y_full = poison.to(Device::CUDA);
  Tensor y_gpu = y_full.slice_rows(0, c.batch);
  layer.forward(y_gpu, x_gpu);
  const Tensor back = y_full.to(Device::CPU);
  const float* got = back.data<float>();

  for (int64_t o = 0; o < c.out; ++o)
    EXPECT_TRUE(std::isnan(got[c.batch * c.out + o])) << what << ": guard element " << o << " overwritten";

  const float* xp = x.data<float>();
  const float* wp = W.data<float>();
  const float* want = y_cpu.data<float>();
  int reported = 0;
  for (int64_t r = 0; r < c.batch && reported < 5; ++r)
    for (int64_t o = 0; o < c.out && reported < 5; ++o) {
      double mag = c.bias ? std::fabs(b.data<float>()[o]) : 0.0;
      for (int64_t i = 0; i < c.in; ++i)
        if (M.get(i * c.out + o)) mag += std::fabs(static_cast<double>(xp[r * c.in + i]) * wp[i * c.out + o]);
      const double g = got[r * c.out + o], w = want[r * c.out + o], err = std::fabs(g - w);
      if (!(err <= 1e-5 * mag)) {
        ADD_FAILURE() << what << ": y[" << r << ", " << o << "]: gpu " << g << " cpu " << w << " |diff| " << err
                      << " > bound " << 1e-5 * mag;
        ++reported;
      }
    }
  return std::vector<float>(got, got + c.batch * c.out);
}

TEST_F(CudaCsrParity, PaperLayersAtImpDensities) {
  // The NCS shared MLP (PAPERS.md §1) at the final IMP density and its neighbours.
  for (const Case& c : {Case{256, 720, 512, 0.20, true, true}, Case{256, 512, 256, 0.20, true, true},
                        Case{256, 256, 128, 0.20, true, true}, Case{1024, 720, 512, 0.0499, true, true},
                        Case{33, 720, 512, 0.4472, false, true}})
    check_case(c, 100);
}

TEST_F(CudaCsrParity, OddShapesDensitiesAndEpilogues) {
  uint64_t seed = 200;
  for (const auto& [B, in, out] : std::vector<std::array<int64_t, 3>>{{1, 1, 1}, {7, 33, 5}, {33, 7, 65}, {65, 129, 33}})
    for (double d : {0.0, 0.05, 0.2, 1.0})
      for (bool relu : {false, true})
        for (bool bias : {false, true}) check_case(Case{B, in, out, d, relu, bias}, seed++);
}

TEST_F(CudaCsrParity, RepeatedRunsAreBitIdentical) {
  const Case c{512, 720, 512, 0.2, true, true};
  const std::vector<float> a = check_case(c, 300), b = check_case(c, 300);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

TEST(CudaCsrLinearNoGpu, BuildingTheLayerFailsWithAnErrorNotACrash) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is present: the parity tests cover this path";
  const Tensor W = random_f32({8, 4}, 1);
  const CsrMatrix csr = masked_to_csr(W, BitMask::ones(8, 4));
  EXPECT_THROW(CudaCsrLinear(csr, nullptr, true), InternalError);
}

}  // namespace
}  // namespace ncsrec

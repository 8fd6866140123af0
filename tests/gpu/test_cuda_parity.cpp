// CUDA/CPU parity: every op in the CUDA OpTable against the CPU reference kernels.
//
// Inputs are random (fixed seed, never zero, both signs); GPU outputs are poisoned with 0xFF
// bytes (NaN for f32/f64) before each run, and every device buffer carries a poisoned guard
// tail that must still be intact afterwards (a cheap out-of-bounds-write check; the
// compute-sanitizer run in scripts/gpu_check.sh is the thorough one). Tolerances are error
// bounds, not guesses: GEMM is checked elementwise against rtol * (|alpha| |A||B| + |beta| |C|).
//
// Without a GPU, the CudaParity tests skip with the reason, and CudaNoGpu checks that the
// backend reports the absence cleanly.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <cuda_runtime.h>

#include "core/dispatch.h"
#include "core/error.h"
#include "core/tensor.h"
#include "cuda/device.h"
#include "tests/gpu/gpu_test_util.h"

namespace ncsrec {
namespace {

using namespace gpu_test;

const char* tname(DType d) { return dtype_name(d); }

class CudaParity : public GpuTest {};

// ---- memory ---------------------------------------------------------------------------------

template <class T>
void check_memory_ops() {
  const int64_t n = 1000;
  const auto host = random_values<T>(n, 11);
  DeviceBuffer<T> a(n), b(n);
  gpu().copy(a.get(), host.data(), n * sizeof(T), CopyKind::HostToDevice);
  gpu().copy(b.get(), a.get(), n * sizeof(T), CopyKind::DeviceToDevice);
  gpu().synchronize();
  EXPECT_EQ(b.download(), host);
  std::vector<T> hh(static_cast<size_t>(n));
  gpu().copy(hh.data(), host.data(), n * sizeof(T), CopyKind::HostToHost);
  EXPECT_EQ(hh, host);
  // Zero a middle range only: the neighbours must keep their values.
  gpu().memset_zero(b.get() + 7, 33 * sizeof(T));
  auto z = b.download();
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(z[static_cast<size_t>(i)], (i >= 7 && i < 40) ? T(0) : host[static_cast<size_t>(i)]) << i;
}

TEST_F(CudaParity, MemoryOps) {
  check_memory_ops<float>();
  check_memory_ops<double>();
}

// The staging buffers of a device model (Tensor::empty_pinned): page-locked host memory that
// the runtime knows, and copies through it both ways keep every bit.
TEST_F(CudaParity, PinnedHostBuffersAreRegisteredAndCopyBothWays) {
  const int64_t n = 1000003;
  Tensor up = Tensor::empty_pinned({n}, DType::F32, Device::CUDA);
  Tensor down = Tensor::empty_pinned({n}, DType::F32, Device::CUDA);
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, up.raw()), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeHost) << "page-locked host memory";
  const auto values = random_values<float>(n, 7);
  std::memcpy(up.raw(), values.data(), up.nbytes());
  for (int64_t i = 0; i < n; ++i) down.data<float>()[i] = std::numeric_limits<float>::quiet_NaN();
  Tensor on_device = Tensor::empty({n}, DType::F32, Device::CUDA);
  on_device.copy_from(up);
  down.copy_from(on_device);
  EXPECT_EQ(std::memcmp(down.raw(), values.data(), down.nbytes()), 0);
}

// Leading columns of row-major arrays both ways (Tensor::copy_columns_from, the copy_2d entry):
// a device model's input goes up, and its gradient comes down, without the interaction's
// columns. The other columns keep their poison (device) or sentinel (host).
TEST_F(CudaParity, LeadingColumnsCopyBothWaysAndLeaveTheRestAlone) {
  for (const auto& [rows, cols, keep] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {7, 33, 5},
                                         {4096, 720, 320}, {3, 10, 0}}) {
    SCOPED_TRACE(std::to_string(rows) + " x " + std::to_string(cols) + ", " + std::to_string(keep) + " columns");
    Tensor host = Tensor::empty({rows, cols}, DType::F32);
    const auto values = random_values<float>(rows * cols, 11);
    std::memcpy(host.raw(), values.data(), host.nbytes());
    Tensor device = Tensor::empty({rows, cols}, DType::F32, Device::CUDA);
    gpu().copy(device.raw(), std::vector<unsigned char>(device.nbytes(), 0xFF).data(), device.nbytes(),
               CopyKind::HostToDevice);
    device.copy_columns_from(host, keep);
    const Tensor up = device.to(Device::CPU);
    Tensor down = Tensor::empty({rows, cols}, DType::F32);
    for (int64_t i = 0; i < rows * cols; ++i) down.data<float>()[i] = -7.0f;
    down.copy_columns_from(device, keep);
    int64_t wrong = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t i = r * cols + c;
        const float v = values[static_cast<size_t>(i)];
        if (c < keep) wrong += up.data<float>()[i] != v || down.data<float>()[i] != v;
        else wrong += !is_poison(up.data<float>()[i]) || down.data<float>()[i] != -7.0f;
      }
    EXPECT_EQ(wrong, 0);
  }
}

// ---- gemm -----------------------------------------------------------------------------------

template <class T>
void check_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, double beta, uint64_t seed,
                MatmulPrecision precision = kMatmulFp32) {
  const DType dt = dtype_of<T>();
  const double rtol = precision == kMatmulTf32   ? 2e-3
                      : precision == kMatmulBf16 ? 1.6e-2
                      : std::is_same<T, float>::value ? 1e-5
                                                      : 1e-12;
  const auto A = random_values<T>(M * K, seed), B = random_values<T>(K * N, seed + 1);
  const auto C0 = random_values<T>(M * N, seed + 2);
  // CPU reference. With beta == 0 the reference starts from zeros, the GPU from NaN poison:
  // beta == 0 must overwrite C, not scale it.
  std::vector<T> want = beta == 0 ? std::vector<T>(static_cast<size_t>(M * N), T(0)) : C0;
  cpu().gemm(dt, ta, tb, M, N, K, alpha, A.data(), B.data(), beta, want.data());
  // Error scale |alpha| |A||B| + |beta| |C0|, from a CPU gemm of absolute values.
  std::vector<T> absA(A.size()), absB(B.size());
  for (size_t i = 0; i < A.size(); ++i) absA[i] = std::fabs(A[i]);
  for (size_t i = 0; i < B.size(); ++i) absB[i] = std::fabs(B[i]);
  std::vector<T> scale(static_cast<size_t>(M * N), T(0));
  cpu().gemm(dt, ta, tb, M, N, K, 1.0, absA.data(), absB.data(), 0.0, scale.data());
  std::vector<double> bound(scale.size());
  for (size_t i = 0; i < bound.size(); ++i)
    bound[i] = rtol * (std::fabs(alpha) * scale[i] + std::fabs(beta) * std::fabs(static_cast<double>(C0[i])));

  DeviceBuffer<T> dA(A), dB(B), dC(M * N);
  if (beta != 0) dC.upload(C0);
  set_matmul_precision(precision);
  gpu().gemm(dt, ta, tb, M, N, K, alpha, dA.get(), dB.get(), beta, dC.get());
  set_matmul_precision(kMatmulFp32);
  const std::vector<T> got = dC.download();
  if (precision == kMatmulBf16 && K >= 64)
    expect_reduced_precision(got, want, bound, rtol,
                             "gemm bf16 M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K));
  expect_close(got, want, bound,
               std::string("gemm ") + (precision == kMatmulTf32 ? "tf32 " : precision == kMatmulBf16 ? "bf16 " : "") + tname(dt) + (ta ? " A^T" : " A") + (tb ? " B^T" : " B") + " M=" +
                   std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) +
                   " alpha=" + std::to_string(alpha) + " beta=" + std::to_string(beta));
}

template <class T>
void check_gemm_all(MatmulPrecision precision = kMatmulFp32) {
  const int64_t shapes[][3] = {{1, 1, 1},  {7, 33, 1},    {33, 7, 1000}, {1000, 1, 7},
                               {1, 1000, 33}, {64, 33, 7}, {257, 129, 65}, {1000, 33, 1000}};
  uint64_t seed = 100;
  for (const auto& s : shapes)
    for (int t = 0; t < 4; ++t) {
      check_gemm<T>(t & 1, t & 2, s[0], s[1], s[2], 1.0, 0.0, seed++, precision);
      check_gemm<T>(t & 1, t & 2, s[0], s[1], s[2], 0.5, -1.5, seed++, precision);
    }
}

TEST_F(CudaParity, GemmF32) { check_gemm_all<float>(); }
TEST_F(CudaParity, GemmF64) { check_gemm_all<double>(); }
// run.matmul: tf32 (every f32 product of a step: cuBLAS with the TF32 compute type; the linear forward through cuBLASLt is CudaTrainOps.GemmBiasAct*).
TEST_F(CudaParity, GemmF32Tf32) { check_gemm_all<float>(kMatmulTf32); }
// run.matmul: bf16 (the FP32 operands rounded to BF16 inside cuBLAS, FP32 accumulation): 1.6e-2.
TEST_F(CudaParity, GemmF32Bf16) { check_gemm_all<float>(kMatmulBf16); }

// ---- row ops --------------------------------------------------------------------------------

const int64_t kRowShapes[][2] = {{1, 1}, {1, 1000}, {7, 33}, {33, 7}, {1000, 1}, {1000, 33}, {3, 4099}};

template <class T>
void check_bias_add(int64_t rows, int64_t cols) {
  const DType dt = dtype_of<T>();
  const auto y0 = random_values<T>(rows * cols, 21), b = random_values<T>(cols, 22);
  auto want = y0;
  cpu().bias_add(dt, want.data(), b.data(), rows, cols);
  DeviceBuffer<T> dy(y0), db(b);
  gpu().bias_add(dt, dy.get(), db.get(), rows, cols);
  std::vector<double> bound(want.size());
  for (size_t i = 0; i < bound.size(); ++i)
    bound[i] = eps<T>() * (std::fabs(double(y0[i])) + std::fabs(double(b[i % static_cast<size_t>(cols)])));
  expect_close(dy.download(), want, bound,
               std::string("bias_add ") + tname(dt) + " " + std::to_string(rows) + "x" + std::to_string(cols));
}

template <class T>
void check_bias_grad(int64_t rows, int64_t cols) {
  const DType dt = dtype_of<T>();
  const auto dy = random_values<T>(rows * cols, 31), db0 = random_values<T>(cols, 32);
  auto want = db0;
  cpu().bias_grad(dt, want.data(), dy.data(), rows, cols);
  DeviceBuffer<T> ddy(dy), ddb(db0);
  gpu().bias_grad(dt, ddb.get(), ddy.get(), rows, cols);
  // Both sides sum in double (different orders), round to T, then add to db.
  std::vector<double> bound(want.size());
  for (int64_t c = 0; c < cols; ++c) {
    double abs_sum = 0;
    for (int64_t r = 0; r < rows; ++r) abs_sum += std::fabs(double(dy[static_cast<size_t>(r * cols + c)]));
    bound[static_cast<size_t>(c)] = (2 * eps<T>() + (rows + 2) * eps<double>()) *
                                    (std::fabs(double(db0[static_cast<size_t>(c)])) + abs_sum);
  }
  expect_close(ddb.download(), want, bound,
               std::string("bias_grad ") + tname(dt) + " " + std::to_string(rows) + "x" + std::to_string(cols));
}

template <class T>
void check_softmax(int64_t rows, int64_t cols) {
  const DType dt = dtype_of<T>();
  auto x = random_values<T>(rows * cols, 41);
  for (auto& v : x) v *= T(8);  // a wider range than ±1 so that the max subtraction matters
  std::vector<T> want(x.size());
  cpu().softmax_rows(dt, want.data(), x.data(), rows, cols);
  DeviceBuffer<T> dx(x), dy(rows * cols);
  gpu().softmax_rows(dt, dy.get(), dx.get(), rows, cols);
  // The CPU sums cols exp values in T sequentially: worst-case relative error ~ cols * eps.
  expect_close(dy.download(), want, relative_bound(want, eps<T>() * (cols + 8)),
               std::string("softmax_rows ") + tname(dt) + " " + std::to_string(rows) + "x" + std::to_string(cols));
}

TEST_F(CudaParity, RowOps) {
  for (const auto& s : kRowShapes) {
    check_bias_add<float>(s[0], s[1]);
    check_bias_add<double>(s[0], s[1]);
    check_bias_grad<float>(s[0], s[1]);
    check_bias_grad<double>(s[0], s[1]);
    check_softmax<float>(s[0], s[1]);
    check_softmax<double>(s[0], s[1]);
  }
}

// ---- element-wise ops ---------------------------------------------------------------------

const int64_t kSizes[] = {1, 7, 33, 1000, 4099, 1 << 20};

template <class T>
void check_elementwise(int64_t n) {
  const DType dt = dtype_of<T>();
  const std::string sz = std::string(" ") + tname(dt) + " n=" + std::to_string(n);
  const auto x = random_values<T>(n, 51), dy = random_values<T>(n, 52), y0 = random_values<T>(n, 53);
  const std::vector<double> exact(static_cast<size_t>(n), 0.0);

  {  // relu_forward, out of place and in place
    std::vector<T> want(x.size());
    cpu().relu_forward(dt, want.data(), x.data(), n);
    DeviceBuffer<T> dx(x), dout(n);
    gpu().relu_forward(dt, dout.get(), dx.get(), n);
    expect_close(dout.download(), want, exact, "relu_forward" + sz);
    gpu().relu_forward(dt, dx.get(), dx.get(), n);
    expect_close(dx.download(), want, exact, "relu_forward in place" + sz);
  }
  {  // relu_backward (y from relu_forward: zeros where x < 0), out of place and dx == dy
    std::vector<T> y(x.size()), want(x.size());
    cpu().relu_forward(dt, y.data(), x.data(), n);
    cpu().relu_backward(dt, want.data(), dy.data(), y.data(), n);
    DeviceBuffer<T> ddy(dy), dyv(y), ddx(n);
    gpu().relu_backward(dt, ddx.get(), ddy.get(), dyv.get(), n);
    expect_close(ddx.download(), want, exact, "relu_backward" + sz);
    gpu().relu_backward(dt, ddy.get(), ddy.get(), dyv.get(), n);
    expect_close(ddy.download(), want, exact, "relu_backward in place" + sz);
  }
  {  // sigmoid over a wider range, including large |x| where the two branches matter
    auto xs = x;
    for (size_t i = 0; i < xs.size(); ++i) xs[i] *= (i % 5 == 0) ? T(60) : T(6);
    std::vector<T> want(xs.size());
    cpu().sigmoid(dt, want.data(), xs.data(), n);
    DeviceBuffer<T> dx(xs), dout(n);
    gpu().sigmoid(dt, dout.get(), dx.get(), n);
    expect_close(dout.download(), want, relative_bound(want, 8 * eps<T>()), "sigmoid" + sz);
  }
  {  // axpy: one multiply-add (the GPU may fuse it)
    const double a = -0.75;
    auto want = y0;
    cpu().axpy(dt, n, a, x.data(), want.data());
    DeviceBuffer<T> dx(x), dyv(y0);
    gpu().axpy(dt, n, a, dx.get(), dyv.get());
    std::vector<double> bound(want.size());
    for (size_t i = 0; i < bound.size(); ++i)
      bound[i] = 2 * eps<T>() * (std::fabs(double(y0[i])) + std::fabs(a * double(x[i])));
    expect_close(dyv.download(), want, bound, "axpy" + sz);
  }
  {  // scale: one multiply, correctly rounded on both sides
    const double a = 1.37;
    auto want = x;
    cpu().scale(dt, n, a, want.data());
    DeviceBuffer<T> dx(x);
    gpu().scale(dt, n, a, dx.get());
    expect_close(dx.download(), want, exact, "scale" + sz);
  }
}

TEST_F(CudaParity, ElementwiseOps) {
  for (int64_t n : kSizes) {
    check_elementwise<float>(n);
    check_elementwise<double>(n);
  }
}

// ---- reductions -----------------------------------------------------------------------------

template <class T>
void check_reductions(int64_t n) {
  const DType dt = dtype_of<T>();
  const auto x = random_values<T>(n, 61);
  double abs_sum = 0, sq_sum = 0;
  for (T v : x) abs_sum += std::fabs(double(v)), sq_sum += double(v) * double(v);
  DeviceBuffer<T> dx(x);
  const double tol = (n + 4) * eps<double>();
  const double s_cpu = cpu().sum(dt, x.data(), n), s_gpu = gpu().sum(dt, dx.get(), n);
  EXPECT_LE(std::fabs(s_gpu - s_cpu), tol * abs_sum) << "sum " << tname(dt) << " n=" << n;
  const double q_cpu = cpu().sum_squares(dt, x.data(), n), q_gpu = gpu().sum_squares(dt, dx.get(), n);
  EXPECT_LE(std::fabs(q_gpu - q_cpu), tol * sq_sum) << "sum_squares " << tname(dt) << " n=" << n;
  // Deterministic: the same bits on a second run.
  EXPECT_EQ(gpu().sum(dt, dx.get(), n), s_gpu) << "sum not deterministic, n=" << n;
  EXPECT_EQ(gpu().sum_squares(dt, dx.get(), n), q_gpu) << "sum_squares not deterministic, n=" << n;
  dx.download();  // guard check
}

TEST_F(CudaParity, Reductions) {
  for (int64_t n : kSizes) {
    check_reductions<float>(n);
    check_reductions<double>(n);
  }
  check_reductions<float>(3 * 1000 * 1000 + 7);  // more elements than one pass-1 grid covers
}

TEST_F(CudaParity, DeviceDescription) {
  const std::string d = cuda_device_description(cuda_select_device_index(cuda_device_count()));
  std::cout << "[ info     ] GPU: " << d << "\n";
  EXPECT_NE(d.find("sm_"), std::string::npos) << d;
}

// ---- without a GPU --------------------------------------------------------------------------

// Runs on CPU-only machines (CI): the backend must report the absence, register nothing and not
// crash; the CUDA slot of the dispatch table stays empty with a clear error.
TEST(CudaNoGpu, ReportsNoDeviceAndRegistersNothing) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is present: " << cuda_device_description(0);
  EXPECT_EQ(cuda_device_count(), 0);
  std::string why;
  EXPECT_FALSE(cuda_register_if_available(&why));
  EXPECT_FALSE(why.empty());
  EXPECT_NE(why.find("no CUDA device"), std::string::npos) << why;
  std::cout << "[ info     ] " << why << "\n";
  EXPECT_FALSE(cuda_register_if_available(nullptr));  // a second call, no reason wanted: still clean
  EXPECT_FALSE(device_available(Device::CUDA));
  EXPECT_THROW(ops_for(Device::CUDA), UserError);
  EXPECT_TRUE(device_available(Device::CPU));
  EXPECT_FALSE(cuda_device_description(0).empty());  // never crashes, even without a device
  EXPECT_EQ(cuda_select_device_index(0), 0);
}

}  // namespace
}  // namespace ncsrec

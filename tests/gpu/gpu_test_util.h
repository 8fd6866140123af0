// Helpers of the CUDA parity tests: device buffers with a poisoned guard tail, random inputs that
// are never zero, and elementwise comparison against error bounds. Header-only, for the test
// executables (each test file includes it once).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/dispatch.h"
#include "cuda/device.h"

namespace ncsrec::gpu_test {

constexpr int64_t kGuard = 37;  // poisoned elements after every device buffer

// The fixture of the parity tests: registers the CUDA backend, or skips the test with the reason
// where no GPU can be used.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!cuda_register_if_available(&why))
      GTEST_SKIP() << ::testing::UnitTest::GetInstance()->current_test_info()->test_suite_name()
                   << " needs a GPU: " << why;
  }
};

// The relative tolerance of a parity bound: 1e-5 in f32 (the device contracts multiply-adds and
// sums in other orders), 1e-12 in f64.
// The element type of T (float or double) as the dispatch table names it.
template <class T>
constexpr DType dtype_for() {
  return sizeof(T) == 4 ? DType::F32 : DType::F64;
}

template <class T>
double rtol() {
  return sizeof(T) == 4 ? 1e-5 : 1e-12;
}

inline const OpTable& cpu() { return ops_for(Device::CPU); }
inline const OpTable& gpu() { return ops_for(Device::CUDA); }

template <class T>
constexpr double eps() { return std::numeric_limits<T>::epsilon(); }

// Random values in ±[0.05, 1]: never zero, both signs.
template <class T>
std::vector<T> random_values(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> mag(0.05, 1.0);
  std::bernoulli_distribution neg(0.5);
  std::vector<T> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<T>(neg(rng) ? -mag(rng) : mag(rng));
  return v;
}

template <class T>
bool is_poison(T v) {
  unsigned char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  for (unsigned char c : b)
    if (c != 0xFF) return false;
  return true;
}

// A device buffer of n elements plus a poisoned guard tail.
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(int64_t n) : n_(n) {
    ptr_ = static_cast<T*>(gpu().alloc(static_cast<size_t>(n + kGuard) * sizeof(T)));
    poison();
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(static_cast<int64_t>(host.size())) { upload(host); }
  ~DeviceBuffer() { gpu().free(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() { return ptr_; }
  void poison() {
    std::vector<unsigned char> ff(static_cast<size_t>(n_ + kGuard) * sizeof(T), 0xFF);
    gpu().copy(ptr_, ff.data(), ff.size(), CopyKind::HostToDevice);
  }
  void upload(const std::vector<T>& host) {
    gpu().copy(ptr_, host.data(), host.size() * sizeof(T), CopyKind::HostToDevice);
  }
  std::vector<T> download() {
    std::vector<T> all(static_cast<size_t>(n_ + kGuard));
    gpu().synchronize();
    gpu().copy(all.data(), ptr_, all.size() * sizeof(T), CopyKind::DeviceToHost);
    for (int64_t i = n_; i < n_ + kGuard; ++i)
      EXPECT_TRUE(is_poison(all[static_cast<size_t>(i)])) << "guard element " << i - n_ << " overwritten";
    all.resize(static_cast<size_t>(n_));
    return all;
  }

 private:
  int64_t n_;
  T* ptr_ = nullptr;
};

// |got - want| <= bound[i] elementwise (bound already includes the tolerance); reports the
// first few failures with their index.
// For a reduced-precision product (BF16) whose `bound` is rtol · scale: the product did run in
// that precision, i.e. somewhere the error is far above FP32's (about 1e-7 of the scale), near
// the precision's own (BF16: about 4e-3). Exact elements on both sides (ReLU zeros) count 0.
template <class T>
void expect_reduced_precision(const std::vector<T>& got, const std::vector<T>& want, const std::vector<double>& bound,
                              double rtol, const std::string& what) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i)
    worst = std::max(worst, std::fabs(static_cast<double>(got[i]) - static_cast<double>(want[i])) / (bound[i] / rtol));
  EXPECT_GT(worst, 1e-4) << what << ": FP32 accuracy, not the reduced precision's";
}

template <class T>
void expect_close(const std::vector<T>& got, const std::vector<T>& want, const std::vector<double>& bound,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int reported = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i], err = std::fabs(g - w);
    if (!(err <= bound[i])) {  // also catches NaN (poison left in place)
      ADD_FAILURE() << what << ": element " << i << ": gpu " << g << " cpu " << w << " |diff| " << err
                    << " > bound " << bound[i];
      if (++reported == 5) return;
    }
  }
}

template <class T>
std::vector<double> relative_bound(const std::vector<T>& want, double rtol) {
  std::vector<double> b(want.size());
  for (size_t i = 0; i < want.size(); ++i) b[i] = rtol * std::fabs(static_cast<double>(want[i]));
  return b;
}


}  // namespace ncsrec::gpu_test

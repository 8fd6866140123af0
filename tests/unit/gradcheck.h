// Finite-difference gradient checks for the unit tests (double precision, CPU).
//
// `check_gradient` perturbs each element of a double array in place (central differences),
// re-evaluates a scalar loss, and compares with an analytic gradient element by element:
//   |analytic - numeric| <= tol · max(1, |analytic|, |numeric|).
// With eps = 1e-6 in double the truncation error is O(eps²) ~ 1e-12 and the rounding error is
// about 1e-16 · |loss| / eps ~ 1e-10 · |loss|, so tol = 1e-6 leaves a wide honest margin for
// losses of order 1-100 while catching any wrong term. Not a general autodiff tester: the loss
// must be smooth at the point (keep ReLU pre-activations away from 0).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "core/random.h"
#include "core/tensor.h"

namespace ncsrec::testing {

// Central-difference gradient of `loss` with respect to x[0, n); x is restored afterwards.
inline std::vector<double> numeric_gradient(const std::function<double()>& loss, double* x, int64_t n,
                                            double eps = 1e-6) {
  std::vector<double> g(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const double saved = x[i];
    x[i] = saved + eps;
    const double plus = loss();
    x[i] = saved - eps;
    const double minus = loss();
    x[i] = saved;
    g[static_cast<size_t>(i)] = (plus - minus) / (2 * eps);
  }
  return g;
}

// Compares `analytic` [n] with the numeric gradient of `loss` with respect to x[0, n).
inline ::testing::AssertionResult check_gradient(const std::string& what, const std::function<double()>& loss,
                                                 double* x, const double* analytic, int64_t n, double tol = 1e-6,
                                                 double eps = 1e-6) {
  const std::vector<double> numeric = numeric_gradient(loss, x, n, eps);
  int bad = 0;
  std::ostringstream os;
  for (int64_t i = 0; i < n; ++i) {
    const double a = analytic[i], b = numeric[static_cast<size_t>(i)];
    const double bound = tol * std::max({1.0, std::abs(a), std::abs(b)});
    if (!(std::abs(a - b) <= bound)) {
      if (bad++ < 5) os << "\n  " << what << "[" << i << "]: analytic " << a << ", numeric " << b;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << n << " gradient elements of " << what << " differ:"
                                       << os.str();
}

inline ::testing::AssertionResult check_gradient(const std::string& what, const std::function<double()>& loss,
                                                 Tensor& x, const Tensor& analytic, double tol = 1e-6) {
  if (x.numel() != analytic.numel())
    return ::testing::AssertionFailure() << what << ": " << x.describe() << " vs gradient " << analytic.describe();
  return check_gradient(what, loss, x.data<double>(), analytic.data<double>(), x.numel(), tol);
}

// Fills a double tensor with U(lo, hi) values from a fixed seed.
inline void fill_uniform(Tensor& t, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Rng rng(seed);
  double* p = t.data<double>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = rng.uniform(lo, hi);
}

inline Tensor random_tensor(Shape shape, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Tensor t = Tensor::empty(std::move(shape), DType::F64);
  fill_uniform(t, seed, lo, hi);
  return t;
}

// n values U(lo, hi) from a fixed seed, as double or float.
inline std::vector<double> uniform(size_t n, uint64_t seed, double lo, double hi) {
  Rng rng(seed);
  std::vector<double> v(n);
  for (double& x : v) x = rng.uniform(lo, hi);
  return v;
}
inline std::vector<float> uniform_f(size_t n, uint64_t seed, double lo, double hi) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(rng.uniform(lo, hi));
  return v;
}

// sum(y ⊙ r): a loss whose gradient with respect to y is exactly r.
inline double dot(const Tensor& y, const Tensor& r) {
  const double* a = y.data<double>();
  const double* b = r.data<double>();
  double s = 0;
  for (int64_t i = 0; i < y.numel(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace ncsrec::testing

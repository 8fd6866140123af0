// Specification tests for the model-zoo layers: the MMoE/PLE gate (softmax + expert mixture as
// one op), BatchNorm, LayerNorm and Dropout. Finite-difference gradient checks in double on
// random inputs (loss = Σ r ⊙ y with random r), the gradient contract (parameter and expert
// gradients accumulate, input gradients are written), and the determinism promises: the same
// bits for any thread count, the same dropout mask for the same key.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/layers/dropout.h"
#include "core/layers/gate.h"
#include "core/layers/norm.h"
#include "core/ops.h"
#include "core/params.h"
#include "tests/random_inputs.h"
#include "tests/unit/gradcheck.h"

namespace ncsrec {
namespace {

using testing::check_gradient;
using testing::dot;
using testing::fill_uniform;
using testing::random_tensor;

// a − b, element by element (double tensors of one shape).
Tensor difference(const Tensor& a, const Tensor& b) {
  Tensor d = a.clone();
  for (int64_t i = 0; i < d.numel(); ++i) d.data<double>()[i] -= b.data<double>()[i];
  return d;
}

Tensor to_f32(const Tensor& t) {
  Tensor f = Tensor::empty(t.shape(), DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) f.data<float>()[i] = static_cast<float>(t.data<double>()[i]);
  return f;
}

// Largest |a − b| between an f32 and an f64 tensor of one size.
double max_diff(const Tensor& f32, const Tensor& f64) {
  double m = 0;
  for (int64_t i = 0; i < f64.numel(); ++i)
    m = std::max(m, std::abs(static_cast<double>(f32.data<float>()[i]) - f64.data<double>()[i]));
  return m;
}

bool all_finite(const Tensor& t) {
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double v = t.dtype() == DType::F32 ? t.data<float>()[i] : t.data<double>()[i];
    if (!std::isfinite(v)) return false;
  }
  return true;
}

bool bit_identical(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Runs `body` on `threads` OpenMP threads, then restores the thread count.
template <class Body>
void with_threads(int threads, const Body& body) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  body();
  omp_set_num_threads(saved);
}

// ---- Gate ----------------------------------------------------------------------------------

TEST(ZooGate, ProbsAreARowSoftmaxAndTheOutputIsTheirMixtureOfExperts) {
  const int64_t B = 4, in = 3, E = 3, D = 5;
  ParamStore store;
  Gate gate(store, "gate", in, E, D);
  store.finalize(DType::F64, Device::CPU, 1);
  fill_uniform(store.values(), 2, -1.0, 1.0);
  const Tensor x = random_tensor({B, in}, 3);
  std::vector<Tensor> experts;
  for (int64_t e = 0; e < E; ++e) experts.push_back(random_tensor({B, D}, 10 + e));
  const Tensor& out = gate.forward(x, {&experts[0], &experts[1], &experts[2]});

  const double* W = gate.weight()->value.data<double>();
  const double* b = gate.bias()->value.data<double>();
  for (int64_t r = 0; r < B; ++r) {
    std::vector<double> p(E);
    double z = 0;
    for (int64_t e = 0; e < E; ++e) {
      double logit = b[e];
      for (int64_t k = 0; k < in; ++k) logit += x.data<double>()[r * in + k] * W[k * E + e];
      z += (p[e] = std::exp(logit));
    }
    double row_sum = 0;
    for (int64_t e = 0; e < E; ++e) {
      EXPECT_NEAR(gate.probs().data<double>()[r * E + e], p[e] / z, 1e-14);
      row_sum += gate.probs().data<double>()[r * E + e];
    }
    EXPECT_NEAR(row_sum, 1.0, 1e-14);
    for (int64_t d = 0; d < D; ++d) {
      double mix = 0;
      for (int64_t e = 0; e < E; ++e) mix += p[e] / z * experts[e].data<double>()[r * D + d];
      EXPECT_NEAR(out.data<double>()[r * D + d], mix, 1e-14);
    }
  }
}

TEST(ZooGate, GradientsMatchFiniteDifferencesWithExpertsSharedByTwoGates) {
  // Two gates (as two MMoE tasks) mix the same three experts: each expert's gradient is the
  // sum of what both gates send back, on top of what its buffer already held.
  const int64_t B = 5, in1 = 4, in2 = 3, E = 3, D = 6;
  ParamStore store;
  Gate ctr(store, "gate.ctr", in1, E, D), cvr(store, "gate.cvr", in2, E, D);
  store.finalize(DType::F64, Device::CPU, 3);
  fill_uniform(store.values(), 4, -0.8, 0.8);  // non-zero biases exercise every term
  Tensor x1 = random_tensor({B, in1}, 5), x2 = random_tensor({B, in2}, 6);
  std::vector<Tensor> experts;
  for (int64_t e = 0; e < E; ++e) experts.push_back(random_tensor({B, D}, 10 + e, -1.5, 1.5));
  const std::vector<const Tensor*> expert_ptrs = {&experts[0], &experts[1], &experts[2]};
  const Tensor r1 = random_tensor({B, D}, 20), r2 = random_tensor({B, D}, 21);
  auto loss = [&] { return dot(ctr.forward(x1, expert_ptrs), r1) + dot(cvr.forward(x2, expert_ptrs), r2); };

  loss();
  std::vector<Tensor> prior, dexperts;
  for (int64_t e = 0; e < E; ++e) {
    prior.push_back(random_tensor({B, D}, 30 + e));
    dexperts.push_back(prior.back().clone());
  }
  const std::vector<Tensor*> dexpert_ptrs = {&dexperts[0], &dexperts[1], &dexperts[2]};
  const Tensor dx1 = ctr.backward(r1, dexpert_ptrs).clone();
  const Tensor dx2 = cvr.backward(r2, dexpert_ptrs).clone();

  EXPECT_TRUE(check_gradient("ctr input", loss, x1, dx1));
  EXPECT_TRUE(check_gradient("cvr input", loss, x2, dx2));
  for (Gate* g : {&ctr, &cvr}) {
    const Tensor dW = g->weight()->grad.clone(), db = g->bias()->grad.clone();
    EXPECT_TRUE(check_gradient(g->weight()->name, loss, g->weight()->value, dW));
    EXPECT_TRUE(check_gradient(g->bias()->name, loss, g->bias()->value, db));
  }
  for (int64_t e = 0; e < E; ++e)
    EXPECT_TRUE(check_gradient("expert " + std::to_string(e), loss, experts[e], difference(dexperts[e], prior[e])));
}

TEST(ZooGate, NullExpertGradientIsSkippedAndNoDInputIsUndefined) {
  const int64_t B = 3, in = 2, E = 2, D = 4;
  ParamStore store;
  Gate gate(store, "gate", in, E, D);
  store.finalize(DType::F64, Device::CPU, 7);
  const Tensor x = random_tensor({B, in}, 8);
  const Tensor e0 = random_tensor({B, D}, 9), e1 = random_tensor({B, D}, 10);
  gate.forward(x, {&e0, &e1});
  const Tensor prior = random_tensor({B, D}, 11);
  Tensor d1 = prior.clone();
  const Tensor& dx = gate.backward(random_tensor({B, D}, 12), {nullptr, &d1}, /*need_dinput=*/false);
  EXPECT_FALSE(dx.defined());
  EXPECT_FALSE(bit_identical(d1, prior));  // the present expert received its gradient
}

TEST(ZooGate, LogitsNearOneThousandStayFinite) {
  // exp(1000) overflows in any precision: only the max-subtracted softmax survives this.
  for (DType dtype : {DType::F32, DType::F64}) {
    const int64_t B = 4, in = 3, E = 4, D = 5;
    ParamStore store;
    Gate gate(store, "gate", in, E, D);
    store.finalize(dtype, Device::CPU, 13);
    Tensor bias = random_tensor({E}, 14, 995.0, 1005.0);
    bias.data<double>()[1] = -1000.0;
    Tensor x = random_tensor({B, in}, 15), dout = random_tensor({B, D}, 16);
    std::vector<Tensor> experts;
    for (int64_t e = 0; e < E; ++e) experts.push_back(random_tensor({B, D}, 20 + e));
    if (dtype == DType::F32) {
      bias = to_f32(bias);
      x = to_f32(x);
      dout = to_f32(dout);
      for (Tensor& t : experts) t = to_f32(t);
    }
    gate.bias()->value.copy_from(bias);
    std::vector<Tensor> dexperts;
    for (int64_t e = 0; e < E; ++e) dexperts.push_back(Tensor::zeros({B, D}, dtype));
    const Tensor out = gate.forward(x, {&experts[0], &experts[1], &experts[2], &experts[3]}).clone();
    const Tensor dx = gate.backward(dout, {&dexperts[0], &dexperts[1], &dexperts[2], &dexperts[3]}).clone();
    EXPECT_TRUE(all_finite(gate.probs()));
    EXPECT_TRUE(all_finite(out));
    EXPECT_TRUE(all_finite(dx));
    EXPECT_TRUE(all_finite(gate.weight()->grad));
    EXPECT_TRUE(all_finite(gate.bias()->grad));
    for (const Tensor& d : dexperts) EXPECT_TRUE(all_finite(d));
    for (int64_t r = 0; r < B; ++r) {
      double sum = 0;
      for (int64_t e = 0; e < E; ++e)
        sum += dtype == DType::F32 ? gate.probs().data<float>()[r * E + e] : gate.probs().data<double>()[r * E + e];
      EXPECT_NEAR(sum, 1.0, 1e-6);
    }
  }
}

TEST(ZooGate, MixtureOpIsBitIdenticalOnOneAndTwoThreads) {
  // Large enough (rows·E·D >= 2^14) that the kernels take their parallel branch.
  const int64_t B = 517, E = 4, D = 16;
  const Tensor logits = testing::random_f32({B, E}, 40), dout = testing::random_f32({B, D}, 41);
  std::vector<Tensor> experts;
  for (int64_t e = 0; e < E; ++e) experts.push_back(testing::random_f32({B, D}, 42 + e));
  const std::vector<const Tensor*> expert_ptrs = {&experts[0], &experts[1], &experts[2], &experts[3]};
  struct Result {
    Tensor out, probs, dlogits;
    std::vector<Tensor> dexperts;
  };
  auto run = [&] {
    Result r{Tensor::empty({B, D}, DType::F32), Tensor::empty({B, E}, DType::F32), Tensor::empty({B, E}, DType::F32),
             {}};
    std::vector<Tensor*> dptrs;
    for (int64_t e = 0; e < E; ++e) r.dexperts.push_back(testing::random_f32({B, D}, 50 + e));
    for (Tensor& d : r.dexperts) dptrs.push_back(&d);
    ops::gate_mixture_forward(r.out, r.probs, logits, expert_ptrs);
    ops::gate_mixture_backward(r.dlogits, dptrs, dout, r.probs, expert_ptrs);
    return r;
  };
  Result one, two;
  with_threads(1, [&] { one = run(); });
  with_threads(2, [&] { two = run(); });
  EXPECT_TRUE(bit_identical(one.out, two.out));
  EXPECT_TRUE(bit_identical(one.probs, two.probs));
  EXPECT_TRUE(bit_identical(one.dlogits, two.dlogits));
  for (int64_t e = 0; e < E; ++e) EXPECT_TRUE(bit_identical(one.dexperts[e], two.dexperts[e]));
}

// ---- BatchNorm ------------------------------------------------------------------------------

TEST(ZooBatchNorm, TrainingGradientsMatchFiniteDifferences) {
  const int64_t B = 6, C = 4;
  ParamStore store;
  BatchNorm bn(store, "bn", C);
  store.finalize(DType::F64, Device::CPU, 60);
  fill_uniform(bn.gamma()->value, 61, 0.5, 1.5);
  fill_uniform(bn.beta()->value, 62, -0.5, 0.5);
  Tensor x = random_tensor({B, C}, 63, -2.0, 2.0);
  const Tensor r = random_tensor({B, C}, 64);
  auto loss = [&] { return dot(bn.forward(x, /*training=*/true), r); };
  loss();
  const Tensor prior_dgamma = random_tensor({C}, 65);
  bn.gamma()->grad.copy_from(prior_dgamma);  // parameter gradients accumulate on top of this
  const Tensor dx = bn.backward(r).clone();
  const Tensor dgamma = difference(bn.gamma()->grad, prior_dgamma), dbeta = bn.beta()->grad.clone();
  EXPECT_TRUE(check_gradient("x", loss, x, dx));
  EXPECT_TRUE(check_gradient("bn.gamma", loss, bn.gamma()->value, dgamma));
  EXPECT_TRUE(check_gradient("bn.beta", loss, bn.beta()->value, dbeta));
}

TEST(ZooBatchNorm, TrainingOutputHasZeroMeanAndUnitVariancePerColumn) {
  const int64_t B = 9, C = 3;
  ParamStore store;
  BatchNorm bn(store, "bn", C, 0.99, 1e-12);
  store.finalize(DType::F64, Device::CPU, 70);
  const Tensor x = random_tensor({B, C}, 71, -3.0, 5.0);
  const Tensor& y = bn.forward(x, true);  // gamma = 1, beta = 0
  for (int64_t c = 0; c < C; ++c) {
    double mean = 0, sq = 0;
    for (int64_t r = 0; r < B; ++r) mean += y.data<double>()[r * C + c] / B;
    for (int64_t r = 0; r < B; ++r) sq += std::pow(y.data<double>()[r * C + c] - mean, 2) / B;
    EXPECT_NEAR(mean, 0.0, 1e-12);
    EXPECT_NEAR(sq, 1.0, 1e-9);
  }
}

TEST(ZooBatchNorm, RunningStatisticsFollowTheMomentumUpdateAndDriveEvaluation) {
  const int64_t B = 7, C = 3;
  const double momentum = 0.9, eps = 1e-5;
  ParamStore store;
  BatchNorm bn(store, "bn", C, momentum, eps);
  store.finalize(DType::F64, Device::CPU, 80);
  std::vector<double> mean(C, 0.0), var(C, 1.0);  // the initial running statistics
  for (uint64_t step = 0; step < 3; ++step) {
    const Tensor x = random_tensor({B, C}, 81 + step, -2.0, 3.0 + static_cast<double>(step));
    bn.forward(x, true);
    for (int64_t c = 0; c < C; ++c) {
      double m = 0, ss = 0;
      for (int64_t r = 0; r < B; ++r) m += x.data<double>()[r * C + c];
      m /= B;
      for (int64_t r = 0; r < B; ++r) ss += std::pow(x.data<double>()[r * C + c] - m, 2);
      mean[c] = momentum * mean[c] + (1 - momentum) * m;
      var[c] = momentum * var[c] + (1 - momentum) * ss / (B - 1);  // unbiased
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_NEAR(bn.running_mean()->value.data<double>()[c], mean[c], 1e-13);
    EXPECT_NEAR(bn.running_var()->value.data<double>()[c], var[c], 1e-13);
  }

  fill_uniform(bn.gamma()->value, 90, 0.5, 1.5);
  fill_uniform(bn.beta()->value, 91, -0.5, 0.5);
  const Tensor x = random_tensor({B, C}, 92, -2.0, 2.0);
  const Tensor mean_before = bn.running_mean()->value.clone(), var_before = bn.running_var()->value.clone();
  const Tensor& y = bn.forward(x, /*training=*/false);
  EXPECT_TRUE(bit_identical(bn.running_mean()->value, mean_before));  // evaluation leaves the statistics alone
  EXPECT_TRUE(bit_identical(bn.running_var()->value, var_before));
  for (int64_t r = 0; r < B; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const double want = bn.gamma()->value.data<double>()[c] * (x.data<double>()[r * C + c] - mean[c]) /
                              std::sqrt(var[c] + eps) +
                          bn.beta()->value.data<double>()[c];
      EXPECT_NEAR(y.data<double>()[r * C + c], want, 1e-13);
    }
  EXPECT_THROW(bn.backward(random_tensor({B, C}, 93)), InternalError);  // no batch statistics to differentiate
}

TEST(ZooBatchNorm, TrainingOnOneRowIsAUserErrorButEvaluationWorks) {
  ParamStore store;
  BatchNorm bn(store, "tower.bn", 4);
  store.finalize(DType::F64, Device::CPU, 100);
  const Tensor x = random_tensor({1, 4}, 101);
  try {
    bn.forward(x, true);
    ADD_FAILURE() << "training on one row did not throw";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("tower.bn"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("2 or more rows"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(bn.forward(x, false));
}

TEST(ZooBatchNorm, StatisticsAreNonTrainableStateAndNothingDecays) {
  ParamStore store;
  BatchNorm bn(store, "bn", 5);
  for (const Param* p : {bn.gamma(), bn.beta(), bn.running_mean(), bn.running_var()}) EXPECT_FALSE(p->decay) << p->name;
  EXPECT_TRUE(bn.gamma()->trainable);
  EXPECT_TRUE(bn.beta()->trainable);
  EXPECT_FALSE(bn.running_mean()->trainable);
  EXPECT_FALSE(bn.running_var()->trainable);
  EXPECT_EQ(bn.running_var()->init, Init::Ones);
  EXPECT_EQ(store.find("bn.running_mean"), bn.running_mean());
}

// ---- LayerNorm ------------------------------------------------------------------------------

TEST(ZooLayerNorm, GradientsMatchFiniteDifferences) {
  const int64_t B = 5, C = 6;
  ParamStore store;
  LayerNorm ln(store, "ln", C);
  store.finalize(DType::F64, Device::CPU, 110);
  fill_uniform(ln.gamma()->value, 111, 0.5, 1.5);
  fill_uniform(ln.beta()->value, 112, -0.5, 0.5);
  Tensor x = random_tensor({B, C}, 113, -2.0, 2.0);
  const Tensor r = random_tensor({B, C}, 114);
  auto loss = [&] { return dot(ln.forward(x), r); };
  loss();
  const Tensor prior_dbeta = random_tensor({C}, 115);
  ln.beta()->grad.copy_from(prior_dbeta);
  const Tensor dx = ln.backward(r).clone();
  const Tensor dgamma = ln.gamma()->grad.clone(), dbeta = difference(ln.beta()->grad, prior_dbeta);
  EXPECT_TRUE(check_gradient("x", loss, x, dx));
  EXPECT_TRUE(check_gradient("ln.gamma", loss, ln.gamma()->value, dgamma));
  EXPECT_TRUE(check_gradient("ln.beta", loss, ln.beta()->value, dbeta));
}

TEST(ZooLayerNorm, EachRowHasZeroMeanAndUnitVariance) {
  const int64_t B = 4, C = 7;
  ParamStore store;
  LayerNorm ln(store, "ln", C, 1e-12);
  store.finalize(DType::F64, Device::CPU, 120);
  const Tensor& y = ln.forward(random_tensor({B, C}, 121, -4.0, 6.0));
  for (int64_t r = 0; r < B; ++r) {
    double mean = 0, sq = 0;
    for (int64_t c = 0; c < C; ++c) mean += y.data<double>()[r * C + c] / C;
    for (int64_t c = 0; c < C; ++c) sq += std::pow(y.data<double>()[r * C + c] - mean, 2) / C;
    EXPECT_NEAR(mean, 0.0, 1e-12);
    EXPECT_NEAR(sq, 1.0, 1e-9);
  }
}

// ---- f32 and thread counts ------------------------------------------------------------------

TEST(ZooLayers, F32MatchesF64) {
  const int64_t B = 8, in = 5, E = 3, C = 6;
  ParamStore s64, s32;
  Gate g64(s64, "gate", in, E, C), g32(s32, "gate", in, E, C);
  BatchNorm b64(s64, "bn", C), b32(s32, "bn", C);
  LayerNorm l64(s64, "ln", C), l32(s32, "ln", C);
  s64.finalize(DType::F64, Device::CPU, 130);
  s32.finalize(DType::F32, Device::CPU, 130);
  fill_uniform(s64.values(), 131, -0.8, 0.8);
  for (Param& p : s64.params())
    if (p.name == "bn.gamma" || p.name == "ln.gamma") fill_uniform(p.value, 132, 0.5, 1.5);
  s32.values().copy_from(to_f32(s64.values()));

  const Tensor x = random_tensor({B, in}, 133), dy = random_tensor({B, C}, 134);
  std::vector<Tensor> e64, e32, d64, d32;
  for (int64_t e = 0; e < E; ++e) {
    e64.push_back(random_tensor({B, C}, 135 + e));
    e32.push_back(to_f32(e64.back()));
    d64.push_back(Tensor::zeros({B, C}, DType::F64));
    d32.push_back(Tensor::zeros({B, C}, DType::F32));
  }
  const Tensor x32 = to_f32(x), dy32 = to_f32(dy);
  const double tol = 1e-5;
  // gate -> batch norm -> layer norm, forward then backward, in both precisions.
  const Tensor& y64 = l64.forward(b64.forward(g64.forward(x, {&e64[0], &e64[1], &e64[2]}), true));
  const Tensor& y32 = l32.forward(b32.forward(g32.forward(x32, {&e32[0], &e32[1], &e32[2]}), true));
  EXPECT_LT(max_diff(y32, y64), tol);
  const Tensor& dx64 = g64.backward(b64.backward(l64.backward(dy)), {&d64[0], &d64[1], &d64[2]});
  const Tensor& dx32 = g32.backward(b32.backward(l32.backward(dy32)), {&d32[0], &d32[1], &d32[2]});
  EXPECT_LT(max_diff(dx32, dx64), tol);
  EXPECT_LT(max_diff(s32.grads(), s64.grads()), tol);
  for (int64_t e = 0; e < E; ++e) EXPECT_LT(max_diff(d32[e], d64[e]), tol);
}

TEST(ZooLayers, NormsAreBitIdenticalOnOneAndTwoThreads) {
  const int64_t B = 300, C = 70;  // B·C >= 2^14: the parallel branches run; C spans 3 column blocks
  const Tensor x = testing::random_f32({B, C}, 140), dy = testing::random_f32({B, C}, 141);
  struct Result {
    Tensor y, dx, grads;
  };
  auto run = [&] {
    ParamStore store;
    BatchNorm bn(store, "bn", C);
    LayerNorm ln(store, "ln", C);
    store.finalize(DType::F32, Device::CPU, 142);
    Result r;
    r.y = ln.forward(bn.forward(x, true)).clone();
    r.dx = bn.backward(ln.backward(dy)).clone();
    r.grads = store.grads().clone();
    return r;
  };
  Result one, two;
  with_threads(1, [&] { one = run(); });
  with_threads(2, [&] { two = run(); });
  EXPECT_TRUE(bit_identical(one.y, two.y));
  EXPECT_TRUE(bit_identical(one.dx, two.dx));
  EXPECT_TRUE(bit_identical(one.grads, two.grads));
}

// ---- Dropout --------------------------------------------------------------------------------

TEST(ZooDropout, GradientIsTheMaskTimesTheInverseKeepProbability) {
  const int64_t B = 6, C = 7;
  const double rate = 0.4;
  Dropout dropout(rate);
  Tensor x = random_tensor({B, C}, 150, 0.1, 1.0);  // never zero: y == 0 exactly where dropped
  const Tensor r = random_tensor({B, C}, 151);
  auto loss = [&] { return dot(dropout.forward(x, true, 777), r); };
  loss();
  const Tensor y = dropout.forward(x, true, 777).clone();
  const Tensor dx = dropout.backward(r).clone();
  int64_t dropped = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const bool kept = y.data<double>()[i] != 0.0;
    dropped += !kept;
    EXPECT_DOUBLE_EQ(dx.data<double>()[i], kept ? r.data<double>()[i] / (1 - rate) : 0.0);
    if (kept) EXPECT_DOUBLE_EQ(y.data<double>()[i], x.data<double>()[i] / (1 - rate));
  }
  EXPECT_GT(dropped, 0);
  EXPECT_LT(dropped, x.numel());
  EXPECT_TRUE(check_gradient("x", loss, x, dx));
}

TEST(ZooDropout, SameKeyGivesTheSameMaskAndAnotherKeyAnotherMask) {
  Dropout dropout(0.5);
  const Tensor x = random_tensor({32, 16}, 160, 0.1, 1.0);
  const Tensor a = dropout.forward(x, true, 1).clone();
  const Tensor b = dropout.forward(x, true, 1).clone();
  const Tensor c = dropout.forward(x, true, 2).clone();
  EXPECT_TRUE(bit_identical(a, b));
  EXPECT_FALSE(bit_identical(a, c));
  Dropout other(0.5);  // the mask belongs to the key, not to the layer object
  EXPECT_TRUE(bit_identical(a, other.forward(x, true, 1)));
}

TEST(ZooDropout, KeptFractionIsWithinFiveSigmaOfOneMinusRate) {
  const int64_t B = 1000, C = 1000;
  const double rate = 0.3;
  Dropout dropout(rate);
  const Tensor x = testing::random_f32({B, C}, 170);  // ±[0.05, 1]: never zero
  Tensor one, two;
  with_threads(1, [&] { one = dropout.forward(x, true, 171).clone(); });
  with_threads(2, [&] { two = dropout.forward(x, true, 171).clone(); });
  EXPECT_TRUE(bit_identical(one, two));
  int64_t kept = 0;
  for (int64_t i = 0; i < one.numel(); ++i) kept += one.data<float>()[i] != 0.0f;
  const double n = static_cast<double>(B * C), p = 1 - rate;
  EXPECT_NEAR(static_cast<double>(kept), n * p, 5 * std::sqrt(n * p * (1 - p)));
}

TEST(ZooDropout, EvaluationAndRateZeroAreTheIdentity) {
  const Tensor x = random_tensor({4, 5}, 180), dy = random_tensor({4, 5}, 181);
  Dropout dropout(0.5);
  EXPECT_EQ(&dropout.forward(x, false, 3), &x);
  EXPECT_EQ(&dropout.backward(dy), &dy);
  Dropout none(0.0);
  EXPECT_EQ(&none.forward(x, true, 3), &x);
  EXPECT_EQ(&none.backward(dy), &dy);
}

TEST(ZooDropout, RateOutsideZeroToOneIsAUserError) {
  EXPECT_THROW(Dropout(1.0), UserError);
  EXPECT_THROW(Dropout(-0.1), UserError);
  EXPECT_THROW(Dropout(std::numeric_limits<double>::quiet_NaN()), UserError);
  EXPECT_NO_THROW(Dropout(0.999));
}

}  // namespace
}  // namespace ncsrec

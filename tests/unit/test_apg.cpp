// Specification tests for the APG layer (core/layers/apg.h): the forward against a plain-loop
// reference, finite-difference gradients in double for x, z and every parameter (plain,
// over-parameterised, generated bias, ReLU, self-wise condition), the gradient contract,
// folding the over-parameterised factors for serving, option and shape errors, and
// thread-count independence.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/layers/apg.h"
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

// Xavier init leaves biases at zero; random values exercise every term of the gradient.
void randomize(ParamStore& store, uint64_t seed) { fill_uniform(store.values(), seed, -0.6, 0.6); }

using Matrix = std::vector<double>;  // row-major

Matrix matmul(const Matrix& a, const Matrix& b, int64_t n, int64_t k, int64_t m) {
  Matrix c(static_cast<size_t>(n * m), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j)
      for (int64_t t = 0; t < k; ++t) c[i * m + j] += a[i * k + t] * b[t * m + j];
  return c;
}

Matrix values(ParamStore& store, const std::string& name) {
  Param* p = store.find(name);
  EXPECT_NE(p, nullptr) << name;
  const double* v = p->value.data<double>();
  return Matrix(v, v + p->value.numel());
}

Matrix values(const Tensor& t) { return Matrix(t.data<double>(), t.data<double>() + t.numel()); }

struct Reference {
  Matrix y;          // [B, out]
  Matrix pre;        // [B, out]: before the activation
  Matrix hyper_pre;  // every hidden pre-activation of the hypernetwork
};

// The layer's maths by plain loops: y = act(((x·U) ⊙row S(z))·V + b).
Reference reference(ParamStore& store, const std::string& name, const ApgLinear& layer, const Tensor& x,
                    const Tensor& z) {
  const ApgOptions& o = layer.options();
  const int64_t B = x.dim(0), N = layer.in(), M = layer.out(), K = o.rank, P = o.overparam;
  const Matrix U = P ? matmul(values(store, name + ".U_l"), values(store, name + ".U_r"), N, P, K)
                     : values(store, name + ".U");
  const Matrix V = P ? matmul(values(store, name + ".V_l"), values(store, name + ".V_r"), K, P, M)
                     : values(store, name + ".V");
  Reference ref;
  Matrix a = values(z);
  int64_t width = layer.condition_dim();
  std::vector<int64_t> sizes = o.hyper_hidden;
  sizes.push_back(K * K + (o.generate_bias ? M : 0));
  for (size_t l = 0; l < sizes.size(); ++l) {
    const std::string prefix = name + ".hyper." + std::to_string(l);
    Matrix pre = matmul(a, values(store, prefix + ".weight"), B, width, sizes[l]);
    const Matrix b = values(store, prefix + ".bias");
    for (int64_t i = 0; i < B; ++i)
      for (int64_t j = 0; j < sizes[l]; ++j) pre[i * sizes[l] + j] += b[j];
    if (l + 1 < sizes.size()) {
      ref.hyper_pre.insert(ref.hyper_pre.end(), pre.begin(), pre.end());
      for (double& v : pre) v = std::max(v, 0.0);
    }
    a = pre;
    width = sizes[l];
  }
  const Matrix& s = a;  // [B, K² (+ M)]
  const Matrix h = matmul(values(x), U, B, N, K);
  Matrix g(static_cast<size_t>(B * K), 0.0);
  for (int64_t i = 0; i < B; ++i)
    for (int64_t c = 0; c < K; ++c)
      for (int64_t t = 0; t < K; ++t) g[i * K + c] += h[i * K + t] * s[i * width + t * K + c];
  ref.pre = matmul(g, V, B, K, M);
  const Matrix bias = o.generate_bias ? Matrix() : values(store, name + ".bias");
  for (int64_t i = 0; i < B; ++i)
    for (int64_t m = 0; m < M; ++m) ref.pre[i * M + m] += o.generate_bias ? s[i * width + K * K + m] : bias[m];
  ref.y = ref.pre;
  if (layer.activation() == Activation::ReLU)
    for (double& v : ref.y) v = std::max(v, 0.0);
  return ref;
}

double min_abs(const Matrix& v) {
  double m = INFINITY;
  for (double x : v) m = std::min(m, std::abs(x));
  return m;
}

ApgOptions small_options() {
  ApgOptions o;
  o.rank = 3;
  o.hyper_hidden = {5};
  return o;
}

constexpr int64_t kBatch = 5, kIn = 6, kOut = 4, kCondition = 4;

// Finite differences for x, z (group-wise) and every parameter of the layer.
void expect_apg_gradients(const ApgOptions& options, Activation act, uint64_t seed) {
  ParamStore store;
  const int64_t condition_dim = options.self_condition ? kIn : kCondition;
  ApgLinear apg(store, "apg", kIn, kOut, condition_dim, options, act);
  store.finalize(DType::F64, Device::CPU, seed);
  randomize(store, seed + 1);
  Tensor x = random_tensor({kBatch, kIn}, seed + 2);
  Tensor z = options.self_condition ? x : random_tensor({kBatch, condition_dim}, seed + 3);
  const Tensor r = random_tensor({kBatch, kOut}, seed + 4);  // dL/dy

  // A kink within the finite-difference step would make the numeric gradient meaningless.
  const Reference ref = reference(store, "apg", apg, x, z);
  ASSERT_GT(min_abs(ref.hyper_pre), 1e-3) << "seed " << seed << ": a hypernetwork ReLU sits at its kink";
  if (act == Activation::ReLU) {
    ASSERT_GT(min_abs(ref.pre), 1e-3) << "seed " << seed << ": an output ReLU sits at its kink";
    ASSERT_GT(*std::max_element(ref.pre.begin(), ref.pre.end()), 0.0);
    ASSERT_LT(*std::min_element(ref.pre.begin(), ref.pre.end()), 0.0) << "both sides of the ReLU are exercised";
  }

  auto loss = [&] { return dot(options.self_condition ? apg.forward(x) : apg.forward(x, z), r); };
  loss();
  const Tensor dx = apg.backward(r).clone();
  const Tensor dz = options.self_condition ? Tensor() : apg.dz().clone();
  EXPECT_EQ(apg.dz().defined(), !options.self_condition);
  for (Param* p : apg.parameters()) {
    const Tensor grad = p->grad.clone();
    EXPECT_TRUE(check_gradient(p->name, loss, p->value, grad));
  }
  EXPECT_TRUE(check_gradient(options.self_condition ? "x (both paths)" : "x", loss, x, dx));
  if (!options.self_condition) {
    EXPECT_TRUE(check_gradient("z", loss, z, dz));
  }
}

TEST(ApgLinear, GradientsMatchFiniteDifferences) { expect_apg_gradients(small_options(), Activation::None, 10); }

TEST(ApgLinear, GradientsMatchFiniteDifferencesWithOverparam) {
  ApgOptions o = small_options();
  o.overparam = 5;
  expect_apg_gradients(o, Activation::None, 21);
}

TEST(ApgLinear, GradientsMatchFiniteDifferencesWithGeneratedBias) {
  ApgOptions o = small_options();
  o.generate_bias = true;
  expect_apg_gradients(o, Activation::None, 31);
}

TEST(ApgLinear, GradientsMatchFiniteDifferencesWithReLU) {
  ApgOptions o = small_options();
  o.overparam = 4;
  o.generate_bias = true;
  expect_apg_gradients(o, Activation::ReLU, 40);
}

TEST(ApgLinear, GradientsMatchFiniteDifferencesWithTwoHiddenHyperLayers) {
  ApgOptions o = small_options();
  o.hyper_hidden = {5, 4};
  expect_apg_gradients(o, Activation::None, 50);
}

TEST(ApgLinear, SelfWiseInputGradientIncludesTheHypernetworkPath) {
  ApgOptions o = small_options();
  o.self_condition = true;
  expect_apg_gradients(o, Activation::None, 60);
  o.overparam = 4;
  o.generate_bias = true;
  expect_apg_gradients(o, Activation::None, 70);
}

TEST(ApgLinear, ForwardMatchesReference) {
  for (const bool overparam : {false, true}) {
    ApgOptions o = small_options();
    o.overparam = overparam ? 7 : 0;
    o.generate_bias = overparam;
    ParamStore store;
    ApgLinear apg(store, "layer", kIn, kOut, kCondition, o, Activation::ReLU);
    store.finalize(DType::F64, Device::CPU, 3);
    randomize(store, 4);
    const Tensor x = random_tensor({kBatch, kIn}, 5), z = random_tensor({kBatch, kCondition}, 6);
    const Reference ref = reference(store, "layer", apg, x, z);
    const Tensor& y = apg.forward(x, z);
    ASSERT_EQ(y.shape(), (Shape{kBatch, kOut}));
    for (size_t i = 0; i < ref.y.size(); ++i) EXPECT_NEAR(y.data<double>()[i], ref.y[i], 1e-13) << "y[" << i << "]";
  }
}

TEST(ApgLinear, SmallerBatchAfterALargerOneGivesTheSameRows) {
  ApgOptions o = small_options();
  o.overparam = 4;
  o.generate_bias = true;
  ParamStore store;
  ApgLinear apg(store, "apg", kIn, kOut, kCondition, o, Activation::ReLU);
  store.finalize(DType::F64, Device::CPU, 3);
  randomize(store, 4);
  const Tensor x = random_tensor({8, kIn}, 5), z = random_tensor({8, kCondition}, 6);
  const Tensor dy = random_tensor({8, kOut}, 7);
  const Tensor y8 = apg.forward(x, z).clone();
  const Tensor dx8 = apg.backward(dy).clone(), dz8 = apg.dz().clone();
  const Tensor& y3 = apg.forward(x.slice_rows(0, 3), z.slice_rows(0, 3));
  ASSERT_EQ(y3.shape(), (Shape{3, kOut}));
  // Row results agree to rounding (BLAS may block a 3-row product differently from an 8-row one).
  auto expect_rows_equal = [](const Tensor& small, const Tensor& large, const char* what) {
    for (int64_t i = 0; i < small.numel(); ++i)
      EXPECT_NEAR(small.data<double>()[i], large.data<double>()[i], 1e-13) << what << "[" << i << "]";
  };
  expect_rows_equal(y3, y8, "y");
  const Tensor& dx3 = apg.backward(dy.slice_rows(0, 3));
  ASSERT_EQ(dx3.shape(), (Shape{3, kIn}));
  ASSERT_EQ(apg.dz().shape(), (Shape{3, kCondition}));
  expect_rows_equal(dx3, dx8, "dx");
  expect_rows_equal(apg.dz(), dz8, "dz");
}

TEST(ApgLinear, ParametersAreNamedAndShapedAsDocumented) {
  ParamStore plain, over;
  ApgOptions o = small_options();
  ApgLinear a(plain, "a", kIn, kOut, kCondition, o);
  o.overparam = 7;
  o.generate_bias = true;
  ApgLinear b(over, "b", kIn, kOut, kCondition, o);
  auto shape = [](ParamStore& s, const std::string& n) { return s.find(n) ? s.find(n)->shape : Shape{}; };
  EXPECT_EQ(shape(plain, "a.U"), (Shape{kIn, 3}));
  EXPECT_EQ(shape(plain, "a.V"), (Shape{3, kOut}));
  EXPECT_EQ(shape(plain, "a.bias"), (Shape{kOut}));
  EXPECT_EQ(shape(plain, "a.hyper.0.weight"), (Shape{kCondition, 5}));
  EXPECT_EQ(shape(plain, "a.hyper.1.weight"), (Shape{5, 9}));
  EXPECT_EQ(shape(over, "b.U_l"), (Shape{kIn, 7}));
  EXPECT_EQ(shape(over, "b.U_r"), (Shape{7, 3}));
  EXPECT_EQ(shape(over, "b.V_l"), (Shape{3, 7}));
  EXPECT_EQ(shape(over, "b.V_r"), (Shape{7, kOut}));
  EXPECT_EQ(shape(over, "b.hyper.1.weight"), (Shape{5, 9 + kOut}));
  EXPECT_EQ(over.find("b.bias"), nullptr) << "a generated bias has no static parameter";
  EXPECT_EQ(over.find("b.U"), nullptr);
  EXPECT_EQ(a.parameters().size(), plain.params().size());
  EXPECT_EQ(b.parameters().size(), over.params().size());
}

TEST(ApgLinear, ParameterGradientsAccumulateAndInputGradientsAreWritten) {
  ApgOptions o = small_options();
  o.overparam = 4;
  ParamStore store;
  ApgLinear apg(store, "apg", kIn, kOut, kCondition, o, Activation::ReLU);
  store.finalize(DType::F64, Device::CPU, 5);
  randomize(store, 6);
  const Tensor x = random_tensor({kBatch, kIn}, 7), z = random_tensor({kBatch, kCondition}, 8);
  const Tensor dy = random_tensor({kBatch, kOut}, 9);

  apg.forward(x, z);
  const Tensor dx1 = apg.backward(dy).clone(), dz1 = apg.dz().clone();
  const Tensor grads1 = store.grads().clone();
  apg.forward(x, z);
  const Tensor& dx2 = apg.backward(dy);

  ASSERT_EQ(0, std::memcmp(dx1.raw(), dx2.raw(), dx1.nbytes())) << "dx must be written, not accumulated";
  ASSERT_EQ(0, std::memcmp(dz1.raw(), apg.dz().raw(), dz1.nbytes())) << "dz must be written, not accumulated";
  for (int64_t i = 0; i < grads1.numel(); ++i)
    EXPECT_NEAR(store.grads().data<double>()[i], 2 * grads1.data<double>()[i], 1e-13) << "grad[" << i << "]";

  // Without need_dx / need_dz the layer still accumulates its parameter gradients.
  apg.forward(x, z);
  EXPECT_FALSE(apg.backward(dy, /*need_dx=*/false, /*need_dz=*/false).defined());
  EXPECT_FALSE(apg.dz().defined());
  for (int64_t i = 0; i < grads1.numel(); ++i)
    EXPECT_NEAR(store.grads().data<double>()[i], 3 * grads1.data<double>()[i], 1e-13) << "grad[" << i << "]";
}

// Over-parameterised f32 layer after a few SGD steps, folded into an overparam = 0 layer.
void expect_fold_preserves_outputs(const ApgOptions& options, Activation act, bool self) {
  const int64_t B = 16, in = 12, out = 10;
  const int64_t condition_dim = self ? in : 7;
  ParamStore train_store, serve_store;
  ApgLinear trained(train_store, "apg", in, out, condition_dim, options, act);
  ApgOptions folded_options = options;
  folded_options.overparam = 0;
  ApgLinear folded(serve_store, "apg", in, out, condition_dim, folded_options, act);
  train_store.finalize(DType::F32, Device::CPU, 1);
  serve_store.finalize(DType::F32, Device::CPU, 2);  // other values until folded

  const Tensor x = testing::random_f32({B, in}, 3);
  const Tensor z = self ? x : testing::random_f32({B, condition_dim}, 4);
  for (uint64_t step = 0; step < 3; ++step) {
    trained.forward(x, z);
    trained.backward(testing::random_f32({B, out}, 10 + step));
    ops::axpy(train_store.values(), -0.1, train_store.grads());
    train_store.zero_grad();
  }
  trained.fold_into(folded);
  EXPECT_EQ(folded.parameter_count(), serve_store.numel());
  EXPECT_EQ(trained.parameter_count(), folded.parameter_count());
  EXPECT_EQ(trained.multiply_adds_per_row(), folded.multiply_adds_per_row());

  const Tensor probe = testing::random_f32({B, in}, 20);
  const Tensor probe_z = self ? probe : testing::random_f32({B, condition_dim}, 21);
  const Tensor y_trained = trained.forward(probe, probe_z).clone();
  const Tensor& y_folded = folded.forward(probe, probe_z);
  for (int64_t i = 0; i < y_trained.numel(); ++i) {
    const float a = y_trained.data<float>()[i], b = y_folded.data<float>()[i];
    EXPECT_NEAR(a, b, 1e-5 * std::max(1.0f, std::abs(a))) << "y[" << i << "]";
  }
}

TEST(ApgLinear, FoldedLayerReproducesTheOverparameterisedLayer) {
  ApgOptions o;
  o.rank = 4;
  o.overparam = 9;
  o.hyper_hidden = {8};
  expect_fold_preserves_outputs(o, Activation::ReLU, /*self=*/false);
  o.generate_bias = true;
  expect_fold_preserves_outputs(o, Activation::None, /*self=*/false);
  o.self_condition = true;
  expect_fold_preserves_outputs(o, Activation::ReLU, /*self=*/true);
}

TEST(ApgLinear, FoldingALayerWithoutOverparamCopiesIt) {
  ApgOptions o;
  o.rank = 4;
  o.hyper_hidden = {8};
  expect_fold_preserves_outputs(o, Activation::ReLU, /*self=*/false);
}

TEST(ApgLinear, FoldRejectsATargetOfAnotherShape) {
  ApgOptions o = small_options();
  o.overparam = 4;
  ParamStore a, b, c;
  ApgLinear src(a, "apg", kIn, kOut, kCondition, o);
  ApgLinear over_target(b, "apg", kIn, kOut, kCondition, o);  // overparam is not 0
  o.overparam = 0;
  o.rank = 2;
  ApgLinear other_rank(c, "apg", kIn, kOut, kCondition, o);
  a.finalize(DType::F32, Device::CPU, 1);
  b.finalize(DType::F32, Device::CPU, 1);
  c.finalize(DType::F32, Device::CPU, 1);
  EXPECT_THROW(src.fold_into(over_target), InternalError);
  EXPECT_THROW(src.fold_into(other_rank), InternalError);
}

TEST(ApgLinear, Float32MatchesFloat64) {
  ApgOptions o = small_options();
  o.overparam = 5;
  o.generate_bias = true;
  ParamStore s64, s32;
  ApgLinear f64(s64, "apg", kIn, kOut, kCondition, o, Activation::ReLU);
  ApgLinear f32(s32, "apg", kIn, kOut, kCondition, o, Activation::ReLU);
  s64.finalize(DType::F64, Device::CPU, 9);
  s32.finalize(DType::F32, Device::CPU, 9);  // same (seed, name): same initial values up to rounding
  const Tensor x32 = testing::random_f32({kBatch, kIn}, 1), z32 = testing::random_f32({kBatch, kCondition}, 2);
  Tensor x64 = Tensor::empty({kBatch, kIn}, DType::F64), z64 = Tensor::empty({kBatch, kCondition}, DType::F64);
  for (int64_t i = 0; i < x64.numel(); ++i) x64.data<double>()[i] = x32.data<float>()[i];
  for (int64_t i = 0; i < z64.numel(); ++i) z64.data<double>()[i] = z32.data<float>()[i];
  const Tensor& y64 = f64.forward(x64, z64);
  const Tensor& y32 = f32.forward(x32, z32);
  for (int64_t i = 0; i < y64.numel(); ++i)
    EXPECT_NEAR(y32.data<float>()[i], y64.data<double>()[i], 1e-5 * std::max(1.0, std::abs(y64.data<double>()[i])));
}

TEST(ApgLinear, ResultsAreBitIdenticalForOneAndFourThreads) {
  ApgOptions o;
  o.rank = 8;
  o.generate_bias = true;
  o.hyper_hidden = {16};
  const int64_t B = 600, in = 20, out = 12, cond = 10;  // B·K² above the parallel threshold
  const Tensor x = testing::random_f32({B, in}, 1), z = testing::random_f32({B, cond}, 2);
  const Tensor dy = testing::random_f32({B, out}, 3);
  const int saved = omp_get_max_threads();
  std::vector<Tensor> results;
  for (const int threads : {1, 4}) {
    omp_set_num_threads(threads);
    ParamStore store;
    ApgLinear apg(store, "apg", in, out, cond, o, Activation::ReLU);
    store.finalize(DType::F32, Device::CPU, 4);
    results.push_back(apg.forward(x, z).clone());
    results.push_back(apg.backward(dy).clone());
    results.push_back(apg.dz().clone());
    results.push_back(store.grads().clone());
  }
  omp_set_num_threads(saved);
  for (size_t i = 0; i < 4; ++i)
    EXPECT_EQ(0, std::memcmp(results[i].raw(), results[i + 4].raw(), results[i].nbytes())) << "result " << i;
}

TEST(ApgLinear, CostsCountTheServingLayer) {
  ApgOptions o = small_options();  // K = 3, hyper {5}
  o.overparam = 8;                 // folded away: no cost at serving
  ParamStore store;
  ApgLinear apg(store, "apg", kIn, kOut, kCondition, o);
  // in·K + K² + K·out + hypernetwork (4·5 + 5·9)
  EXPECT_EQ(apg.multiply_adds_per_row(), 6 * 3 + 9 + 3 * 4 + 4 * 5 + 5 * 9);
  // U, V, static bias, hypernetwork weights and biases
  EXPECT_EQ(apg.parameter_count(), 6 * 3 + 3 * 4 + 4 + (4 * 5 + 5) + (5 * 9 + 9));
}

TEST(ApgLinear, RejectsBadOptionsBeforeDeclaringAnything) {
  auto build = [](ApgOptions o, int64_t condition_dim = kCondition) {
    ParamStore store;
    try {
      ApgLinear apg(store, "apg", kIn, kOut, condition_dim, o);
    } catch (...) {
      EXPECT_TRUE(store.params().empty()) << "a rejected layer must leave the store untouched";
      throw;
    }
  };
  ApgOptions o = small_options();
  o.rank = 0;
  EXPECT_THROW(build(o), UserError);
  o.rank = -2;
  EXPECT_THROW(build(o), UserError);
  o = small_options();
  o.overparam = 2;  // < rank 3
  try {
    build(o);
    ADD_FAILURE() << "overparam below the rank must be rejected";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("overparam"), std::string::npos) << e.what();
  }
  o.overparam = -1;
  EXPECT_THROW(build(o), UserError);
  o = small_options();
  o.hyper_hidden = {5, 0};
  EXPECT_THROW(build(o), UserError);
  o = small_options();
  o.self_condition = true;
  EXPECT_THROW(build(o, kIn + 1), UserError);
  EXPECT_NO_THROW(build(o, kIn));
}

TEST(ApgLinear, RejectsConditionOfAnotherShapeAtForward) {
  ParamStore store;
  ApgLinear group(store, "group", kIn, kOut, kCondition, small_options());
  ApgOptions self_options = small_options();
  self_options.self_condition = true;
  ApgLinear self(store, "self", kIn, kOut, kIn, self_options);
  store.finalize(DType::F64, Device::CPU, 1);
  const Tensor x = random_tensor({kBatch, kIn}, 2);
  EXPECT_THROW(group.forward(x, random_tensor({kBatch, kCondition + 1}, 3)), InternalError);
  EXPECT_THROW(group.forward(x, random_tensor({kBatch + 1, kCondition}, 3)), InternalError);
  EXPECT_THROW(group.forward(x), InternalError) << "a group-wise layer needs its condition";
  EXPECT_THROW(self.forward(x, random_tensor({kBatch, kIn}, 4)), InternalError) << "self-wise: z must be x itself";
  EXPECT_NO_THROW(self.forward(x, x));
  EXPECT_THROW(group.forward(Tensor::zeros({kBatch, kIn}, DType::F32), random_tensor({kBatch, kCondition}, 3)),
               InternalError);
}

}  // namespace
}  // namespace ncsrec

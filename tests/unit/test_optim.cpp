// Specification tests for the dense optimizers (SGD, Adam, Adagrad against a hand-written
// two-step reference; weight decay, L2 or decoupled, against a hand-written step), gradient
// clipping by global norm, the embedding table's order-free initialisation, and the sparse
// optimizers: touched rows follow the dense formula with the row's own step count, untouched
// rows and their state stay bit-identical.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <vector>

#include "core/error.h"
#include "core/optim.h"
#include "core/random.h"
#include "embedding/embedding_table.h"

namespace ncsrec {
namespace {

Tensor f64(const std::vector<double>& v) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::F64);
  std::copy(v.begin(), v.end(), t.data<double>());
  return t;
}

const std::vector<double> kW0 = {1.0, -0.5, 0.25};
const std::vector<double> kG1 = {0.5, -2.0, 0.0}, kG2 = {-0.25, -1.0, 3.0};

// Runs two steps of `config` on kW0 with gradients kG1, kG2.
std::vector<double> two_steps(const OptimizerConfig& config) {
  auto opt = make_dense_optimizer(config, 3, DType::F64, Device::CPU);
  Tensor w = f64(kW0);
  opt->step(w, f64(kG1), 1);
  opt->step(w, f64(kG2), 2);
  return {w.data<double>(), w.data<double>() + 3};
}

TEST(DenseOptimizer, SgdMatchesTwoHandComputedSteps) {
  OptimizerConfig c;
  c.type = "sgd";
  c.lr = 0.1;
  const std::vector<double> w = two_steps(c);
  // w - lr (g1 + g2)
  EXPECT_DOUBLE_EQ(w[0], 1.0 - 0.1 * 0.5 + 0.1 * 0.25);  // 0.975
  EXPECT_DOUBLE_EQ(w[1], -0.5 + 0.1 * 2.0 + 0.1 * 1.0);  // -0.2
  EXPECT_DOUBLE_EQ(w[2], 0.25 - 0.1 * 3.0);              // -0.05
}

// Adam with lr 0.01, β1 0.9, β2 0.99, ε 1e-8.
OptimizerConfig adam_config() {
  OptimizerConfig c;
  c.type = "adam";
  c.lr = 0.01;
  c.beta1 = 0.9;
  c.beta2 = 0.99;
  c.eps = 1e-8;
  return c;
}

TEST(DenseOptimizer, AdamMatchesTwoHandComputedStepsWithBiasCorrection) {
  const OptimizerConfig c = adam_config();
  const std::vector<double> w = two_steps(c);
  for (int i = 0; i < 3; ++i) {
    double p = kW0[i], m = 0, v = 0;
    const double g[2] = {kG1[i], kG2[i]};
    for (int t = 1; t <= 2; ++t) {
      m = 0.9 * m + 0.1 * g[t - 1];
      v = 0.99 * v + 0.01 * g[t - 1] * g[t - 1];
      const double m_hat = m / (1 - std::pow(0.9, t)), v_hat = v / (1 - std::pow(0.99, t));
      p -= 0.01 * m_hat / (std::sqrt(v_hat) + 1e-8);
    }
    EXPECT_NEAR(w[i], p, 1e-15) << "element " << i;
  }
  // Step 1 of Adam moves each weight by lr against the sign of its gradient (m̂ = g, v̂ = g²).
  auto opt = make_dense_optimizer(c, 3, DType::F64, Device::CPU);
  Tensor w1 = f64(kW0);
  opt->step(w1, f64(kG1), 1);
  EXPECT_NEAR(w1.data<double>()[0], 1.0 - 0.01, 1e-9);
  EXPECT_NEAR(w1.data<double>()[1], -0.5 + 0.01, 1e-9);
  EXPECT_EQ(w1.data<double>()[2], 0.25) << "a zero gradient moves nothing at step 1";
  ASSERT_EQ(opt->state().size(), 2u);
  EXPECT_EQ(opt->state()[0].first, "m");
  EXPECT_EQ(opt->state()[1].first, "v");
}

// F32 Adam over a thousand elements, with an update mask and NaN gradients outside it: inside,
// each element's bits are the scalar formula's in f32; outside, weights and moments keep their
// bits (the gradient there is never read into them).
TEST(DenseOptimizer, MaskedF32AdamIsTheScalarFormulaInsideAndTouchesNothingOutside) {
  constexpr int64_t n = 1003;
  auto opt = make_dense_optimizer(adam_config(), n, DType::F32, Device::CPU);
  Tensor w = Tensor::empty({n}, DType::F32), g = Tensor::empty({n}, DType::F32);
  std::vector<uint8_t> mask(static_cast<size_t>(n));
  std::vector<float> w_ref(static_cast<size_t>(n)), m_ref(static_cast<size_t>(n), 0.0f),
      v_ref(static_cast<size_t>(n), 0.0f);
  Rng rng(17);
  for (int64_t i = 0; i < n; ++i) {
    w.data<float>()[i] = w_ref[static_cast<size_t>(i)] = static_cast<float>(rng.uniform(-1, 1));
    mask[static_cast<size_t>(i)] = rng.bernoulli(0.4) ? 1 : 0;
  }
  for (int64_t step = 1; step <= 2; ++step) {
    const float c1 = static_cast<float>(1 - std::pow(0.9, static_cast<double>(step))),
                c2 = static_cast<float>(1 - std::pow(0.99, static_cast<double>(step)));
    const float lr = 0.01f, b1 = 0.9f, b2 = 0.99f, eps = 1e-8f;
    for (int64_t i = 0; i < n; ++i) {
      const size_t k = static_cast<size_t>(i);
      const float gi = mask[k] ? static_cast<float>(rng.uniform(-2, 2)) : std::numeric_limits<float>::quiet_NaN();
      g.data<float>()[i] = gi;
      if (!mask[k]) continue;
      m_ref[k] = b1 * m_ref[k] + (1.0f - b1) * gi;
      v_ref[k] = b2 * v_ref[k] + (1.0f - b2) * gi * gi;
      w_ref[k] -= lr * (m_ref[k] / c1) / (std::sqrt(v_ref[k] / c2) + eps);
    }
    opt->step(w, g, step, mask.data());
  }
  const Tensor& m = *opt->state()[0].second;
  const Tensor& v = *opt->state()[1].second;
  for (int64_t i = 0; i < n; ++i) {
    const size_t k = static_cast<size_t>(i);
    ASSERT_EQ(w.data<float>()[i], w_ref[k]) << "w element " << i << (mask[k] ? " (in the mask)" : " (outside)");
    ASSERT_EQ(m.data<float>()[i], m_ref[k]) << "m element " << i;
    ASSERT_EQ(v.data<float>()[i], v_ref[k]) << "v element " << i;
  }
}

TEST(DenseOptimizer, AdagradMatchesTwoHandComputedSteps) {
  OptimizerConfig c;
  c.type = "adagrad";
  c.lr = 0.1;
  c.initial_accumulator = 0.1;
  c.adagrad_eps = 1e-10;
  const std::vector<double> w = two_steps(c);
  for (int i = 0; i < 3; ++i) {
    double p = kW0[i], acc = 0.1;
    for (double g : {kG1[i], kG2[i]}) {
      acc += g * g;
      p -= 0.1 * g / (std::sqrt(acc) + 1e-10);
    }
    EXPECT_NEAR(w[i], p, 1e-15) << "element " << i;
  }
  // Element 0 by hand: acc 0.1 + 0.25 = 0.35, then 0.35 + 0.0625 = 0.4125.
  EXPECT_NEAR(w[0], 1.0 - 0.1 * 0.5 / (std::sqrt(0.35) + 1e-10) + 0.1 * 0.25 / (std::sqrt(0.4125) + 1e-10), 1e-15);
}

TEST(DenseOptimizer, Float32FollowsFloat64) {
  for (const char* type : {"sgd", "adam", "adagrad"}) {
    OptimizerConfig c;
    c.type = type;
    c.lr = 0.05;
    const std::vector<double> ref = two_steps(c);
    auto opt = make_dense_optimizer(c, 3, DType::F32, Device::CPU);
    Tensor w = Tensor::empty({3}, DType::F32), g1 = Tensor::empty({3}, DType::F32), g2 = Tensor::empty({3}, DType::F32);
    for (int i = 0; i < 3; ++i) {
      w.data<float>()[i] = static_cast<float>(kW0[i]);
      g1.data<float>()[i] = static_cast<float>(kG1[i]);
      g2.data<float>()[i] = static_cast<float>(kG2[i]);
    }
    opt->step(w, g1, 1);
    opt->step(w, g2, 2);
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(w.data<float>()[i], ref[i], 1e-6) << type << " element " << i;
  }
}

TEST(DenseOptimizer, UnknownTypeIsAUserErrorNamingTheValidTypes) {
  OptimizerConfig c;
  c.type = "rmsprop";
  try {
    make_dense_optimizer(c, 3, DType::F32, Device::CPU);
    FAIL() << "expected a UserError";
  } catch (const UserError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("rmsprop"), std::string::npos) << msg;
    for (const char* valid : {"sgd", "adam", "adagrad"}) EXPECT_NE(msg.find(valid), std::string::npos) << msg;
  }
}

// ---- weight decay ---------------------------------------------------------------------------

// One step of `config` on kW0 with gradient kG1 and decay mask {1, 0, 1}.
std::vector<double> one_decayed_step(const OptimizerConfig& config) {
  auto opt = make_dense_optimizer(config, 3, DType::F64, Device::CPU);
  opt->set_decay_mask({1, 0, 1});
  Tensor w = f64(kW0);
  opt->step(w, f64(kG1), 1);
  return {w.data<double>(), w.data<double>() + 3};
}

std::vector<double> one_plain_step(OptimizerConfig config) {
  config.weight_decay = 0;
  auto opt = make_dense_optimizer(config, 3, DType::F64, Device::CPU);
  Tensor w = f64(kW0);
  opt->step(w, f64(kG1), 1);
  return {w.data<double>(), w.data<double>() + 3};
}

TEST(WeightDecay, SgdAddsL2ToTheGradientWhereTheDecayMaskIsOne) {
  OptimizerConfig c;
  c.type = "sgd";
  c.lr = 0.1;
  c.weight_decay = 0.01;
  const std::vector<double> w = one_decayed_step(c);
  EXPECT_DOUBLE_EQ(w[0], 1.0 - 0.1 * (0.5 + 0.01 * 1.0));     // 0.949
  EXPECT_DOUBLE_EQ(w[2], 0.25 - 0.1 * (0.0 + 0.01 * 0.25));  // 0.24975: decay alone moves it
  EXPECT_EQ(w[1], one_plain_step(c)[1]) << "outside the decay mask: the plain update, bit for bit";
}

TEST(WeightDecay, AdamDecaysDecoupledFromTheMoments) {
  OptimizerConfig c;
  c.type = "adam";
  c.lr = 0.01;
  c.weight_decay = 0.1;
  const std::vector<double> w = one_decayed_step(c);
  // Step 1: m̂ = g, v̂ = g², so the Adam part is lr·g/(|g| + eps); AdamW adds lr·wd·w.
  EXPECT_NEAR(w[0], 1.0 - 0.01 * (0.5 / (0.5 + 1e-8) + 0.1 * 1.0), 1e-15);
  // A zero gradient: m = v = 0 and only the decay moves it (L2 in Adam would move it by lr).
  EXPECT_NEAR(w[2], 0.25 - 0.01 * 0.1 * 0.25, 1e-15);
  EXPECT_EQ(w[1], one_plain_step(c)[1]) << "outside the decay mask: the plain update, bit for bit";
  // The moments see the raw gradient: with decay they equal the plain run's.
  auto decayed = make_dense_optimizer(c, 3, DType::F64, Device::CPU);
  OptimizerConfig plain_config = c;
  plain_config.weight_decay = 0;
  auto plain = make_dense_optimizer(plain_config, 3, DType::F64, Device::CPU);
  Tensor w1 = f64(kW0), w2 = f64(kW0);
  decayed->step(w1, f64(kG1), 1);
  plain->step(w2, f64(kG1), 1);
  for (size_t k = 0; k < 2; ++k)
    EXPECT_EQ(0, std::memcmp(decayed->state()[k].second->raw(), plain->state()[k].second->raw(), 3 * sizeof(double)))
        << decayed->state()[k].first;
}

TEST(WeightDecay, AdagradAddsL2ToTheGradientInTheAccumulatorToo) {
  OptimizerConfig c;
  c.type = "adagrad";
  c.lr = 0.1;
  c.initial_accumulator = 0.1;
  c.weight_decay = 0.2;
  const std::vector<double> w = one_decayed_step(c);
  const double g0 = 0.5 + 0.2 * 1.0, g2 = 0.0 + 0.2 * 0.25;
  EXPECT_NEAR(w[0], 1.0 - 0.1 * g0 / (std::sqrt(0.1 + g0 * g0) + 1e-10), 1e-15);
  EXPECT_NEAR(w[2], 0.25 - 0.1 * g2 / (std::sqrt(0.1 + g2 * g2) + 1e-10), 1e-15);
  EXPECT_EQ(w[1], one_plain_step(c)[1]) << "outside the decay mask: the plain update, bit for bit";
}

TEST(WeightDecay, AnEmptyDecayMaskDecaysEverythingAndAnAllZeroMaskNothing) {
  for (const char* type : {"sgd", "adam", "adagrad"}) {
    OptimizerConfig c;
    c.type = type;
    c.weight_decay = 0.1;
    const std::vector<double> plain = one_plain_step(c);
    auto everywhere = make_dense_optimizer(c, 3, DType::F64, Device::CPU);
    auto all_ones = make_dense_optimizer(c, 3, DType::F64, Device::CPU);
    auto nowhere = make_dense_optimizer(c, 3, DType::F64, Device::CPU);
    all_ones->set_decay_mask({1, 1, 1});
    nowhere->set_decay_mask({0, 0, 0});
    Tensor a = f64(kW0), b = f64(kW0), z = f64(kW0);
    everywhere->step(a, f64(kG1), 1);
    all_ones->step(b, f64(kG1), 1);
    nowhere->step(z, f64(kG1), 1);
    for (int i = 0; i < 3; ++i) {
      EXPECT_NE(a.data<double>()[i], plain[i]) << type << " element " << i << " not decayed";
      EXPECT_EQ(a.data<double>()[i], b.data<double>()[i]) << type << " element " << i;
      EXPECT_EQ(z.data<double>()[i], plain[i]) << type << " element " << i;
    }
  }
}

TEST(WeightDecay, ANegativeValueIsAConfigError) {
  OptimizerConfig c;
  c.weight_decay = -0.1;
  EXPECT_THROW(make_dense_optimizer(c, 3, DType::F32, Device::CPU), ConfigError);
}

TEST(LearningRate, SetLrChangesTheNextStepAndBaseLrKeepsTheConfiguredRate) {
  OptimizerConfig c;
  c.type = "sgd";
  c.lr = 0.1;
  auto opt = make_dense_optimizer(c, 3, DType::F64, Device::CPU);
  opt->set_lr(0.025);
  EXPECT_EQ(opt->lr(), 0.025);
  EXPECT_EQ(opt->base_lr(), 0.1);
  Tensor w = f64(kW0);
  opt->step(w, f64(kG1), 1);
  EXPECT_DOUBLE_EQ(w.data<double>()[0], 1.0 - 0.025 * 0.5);
  EmbeddingTable table("t", 3, 2, DType::F64, 1, 0.1);
  auto sparse = make_sparse_optimizer(c, table);
  sparse->set_lr(0.5);
  EXPECT_EQ(sparse->lr(), 0.5);
  EXPECT_EQ(sparse->base_lr(), 0.1);
  const double before = table.values().data<double>()[2];
  SparseGrad g;
  g.rows = {1};
  g.values = Tensor::empty({1, 2}, DType::F64);
  g.values.data<double>()[0] = 2.0;
  g.values.data<double>()[1] = 0.0;
  sparse->step(table, g);
  EXPECT_DOUBLE_EQ(table.values().data<double>()[2], before - 0.5 * 2.0);
}

// ---- gradient clipping by global norm --------------------------------------------------------

TEST(ClipGradNorm, ReturnsTheL2NormOverTheMaskAndZeroMaxOnlyMeasures) {
  Tensor g = f64({3.0, 4.0, 12.0});
  const std::vector<uint8_t> mask = {1, 1, 0};
  EXPECT_DOUBLE_EQ(clip_grad_norm(g, 0.0, mask.data()), 5.0);
  EXPECT_DOUBLE_EQ(clip_grad_norm(g, 0.0, nullptr), 13.0);
  EXPECT_EQ(g.data<double>()[0], 3.0);
  EXPECT_EQ(g.data<double>()[2], 12.0);
}

TEST(ClipGradNorm, ANormAboveTheMaxIsScaledToTheMaxKeepingTheDirection) {
  constexpr int64_t n = 50000;
  Tensor g = Tensor::empty({n}, DType::F32);
  Rng rng(7);
  double ref = 0;
  for (int64_t i = 0; i < n; ++i) {
    g.data<float>()[i] = static_cast<float>(rng.uniform(-1, 1));
    ref += static_cast<double>(g.data<float>()[i]) * g.data<float>()[i];
  }
  ref = std::sqrt(ref);
  const Tensor before = g.clone();
  const double max_norm = ref / 3;
  EXPECT_NEAR(clip_grad_norm(g, max_norm, nullptr), ref, 1e-12 * ref) << "returns the norm before clipping";
  EXPECT_NEAR(clip_grad_norm(g, 0.0, nullptr), max_norm, 1e-6 * max_norm) << "the clipped norm is the max";
  const float scale = static_cast<float>(max_norm / ref);
  for (int64_t i = 0; i < n; i += 997) EXPECT_EQ(g.data<float>()[i], before.data<float>()[i] * scale) << i;
}

TEST(ClipGradNorm, ANormAtOrBelowTheMaxLeavesTheGradientBitIdentical) {
  Tensor g = f64({3.0, 4.0, 12.0});
  EXPECT_DOUBLE_EQ(clip_grad_norm(g, 13.0, nullptr), 13.0);
  EXPECT_DOUBLE_EQ(clip_grad_norm(g, 100.0, nullptr), 13.0);
  EXPECT_EQ(g.data<double>()[0], 3.0);
  EXPECT_EQ(g.data<double>()[1], 4.0);
  EXPECT_EQ(g.data<double>()[2], 12.0);
}

// Over a random mask of a buffer not a multiple of the kernel's eight running sums: the masked
// sum of squares, whatever lies outside the mask (an infinity or a NaN there changes nothing).
TEST(ClipGradNorm, AMaskedNormReadsNothingOutsideTheMask) {
  constexpr int64_t n = 100003;
  Tensor g = Tensor::empty({n}, DType::F32);
  std::vector<uint8_t> mask(static_cast<size_t>(n));
  Rng rng(13);
  double ref = 0;
  for (int64_t i = 0; i < n; ++i) {
    mask[static_cast<size_t>(i)] = rng.bernoulli(0.3) ? 1 : 0;
    const float x = static_cast<float>(rng.uniform(-1, 1));
    g.data<float>()[i] = mask[static_cast<size_t>(i)] ? x : (i % 2 ? std::numeric_limits<float>::infinity()
                                                                   : std::numeric_limits<float>::quiet_NaN());
    if (mask[static_cast<size_t>(i)]) ref += static_cast<double>(x) * x;
  }
  ref = std::sqrt(ref);
  EXPECT_NEAR(clip_grad_norm(g, 0.0, mask.data()), ref, 1e-12 * ref);
}

TEST(ClipGradNorm, TheResultDoesNotDependOnTheThreadCount) {
  constexpr int64_t n = 3 << 18;  // many chunks, well above the parallel threshold
  Tensor g = Tensor::empty({n}, DType::F32);
  std::vector<uint8_t> mask(static_cast<size_t>(n));
  Rng rng(11);
  for (int64_t i = 0; i < n; ++i) {
    g.data<float>()[i] = static_cast<float>(rng.uniform(-1, 1) * (i % 1000 == 0 ? 1e3 : 1.0));
    mask[static_cast<size_t>(i)] = rng.bernoulli(0.7) ? 1 : 0;
  }
  const int saved = omp_get_max_threads();
  double norms[2][2];
  Tensor clipped[2];
  for (int threads = 1; threads <= 2; ++threads) {
    omp_set_num_threads(threads);
    Tensor a = g.clone();
    norms[threads - 1][0] = clip_grad_norm(a, 0.0, nullptr);
    clipped[threads - 1] = g.clone();
    norms[threads - 1][1] = clip_grad_norm(clipped[threads - 1], 1.0, mask.data());
  }
  omp_set_num_threads(saved);
  EXPECT_EQ(0, std::memcmp(norms[0], norms[1], sizeof norms[0]));
  EXPECT_EQ(0, std::memcmp(clipped[0].raw(), clipped[1].raw(), clipped[0].nbytes()));
}

// ---- embedding tables and sparse optimizers ------------------------------------------------

TEST(EmbeddingTable, RowInitDependsOnlyOnSeedNameAndRow) {
  const EmbeddingTable small("user", 10, 4, DType::F64, 3, 0.1), large("user", 25, 4, DType::F64, 3, 0.1);
  EXPECT_EQ(0, std::memcmp(small.values().raw(), large.values().raw(), small.values().nbytes()));
  const EmbeddingTable other("item", 10, 4, DType::F64, 3, 0.1), reseeded("user", 10, 4, DType::F64, 4, 0.1);
  EXPECT_NE(0, std::memcmp(small.values().raw(), other.values().raw(), small.values().nbytes()));
  EXPECT_NE(0, std::memcmp(small.values().raw(), reseeded.values().raw(), small.values().nbytes()));
  const EmbeddingTable f32("user", 10, 4, DType::F32, 3, 0.1);
  for (int64_t i = 0; i < 40; ++i)
    EXPECT_EQ(f32.values().data<float>()[i], static_cast<float>(small.values().data<double>()[i]));
}

TEST(EmbeddingTable, InitHasTheRequestedScale) {
  const EmbeddingTable t("big", 4000, 8, DType::F64, 1, 0.05);
  double s = 0, s2 = 0;
  const double* v = t.values().data<double>();
  const int64_t n = t.values().numel();
  for (int64_t i = 0; i < n; ++i) s += v[i], s2 += v[i] * v[i];
  const double mean = s / n, sd = std::sqrt(s2 / n - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.002);  // 4 standard errors: 0.05 / sqrt(32000) ≈ 2.8e-4
  EXPECT_NEAR(sd, 0.05, 0.002);
}

SparseGrad sparse_grad(std::vector<int64_t> rows, int64_t dim, uint64_t seed) {
  SparseGrad g;
  g.values = Tensor::empty({static_cast<int64_t>(rows.size()), dim}, DType::F64);
  Rng rng(seed);
  for (int64_t i = 0; i < g.values.numel(); ++i) g.values.data<double>()[i] = rng.uniform(-1, 1);
  g.rows = std::move(rows);
  return g;
}

// Bytes of row `row` of a [rows, ...] state tensor.
bool row_equal(const Tensor& a, const Tensor& b, int64_t row) {
  const size_t bytes = a.nbytes() / static_cast<size_t>(a.dim(0));
  return std::memcmp(static_cast<const char*>(a.raw()) + row * bytes, static_cast<const char*>(b.raw()) + row * bytes,
                     bytes) == 0;
}

void expect_sparse_follows_dense(const OptimizerConfig& config) {
  constexpr int64_t rows = 10, dim = 4;
  EmbeddingTable table("user", rows, dim, DType::F64, 3, 0.1);
  auto sparse = make_sparse_optimizer(config, table);
  // One dense optimizer per row, stepped only when the row is touched: the lazy reference.
  std::map<int64_t, std::unique_ptr<DenseOptimizer>> dense;
  std::map<int64_t, Tensor> dense_rows;
  std::map<int64_t, int64_t> dense_steps;

  const std::vector<std::vector<int64_t>> batches = {{2, 5, 7}, {0, 5}, {5, 9}};
  for (size_t s = 0; s < batches.size(); ++s) {
    const SparseGrad grad = sparse_grad(batches[s], dim, 100 + s);
    const Tensor before = table.values().clone();
    std::vector<std::pair<std::string, Tensor>> state_before;
    for (auto& [name, t] : sparse->state()) state_before.emplace_back(name, t->clone());

    sparse->step(table, grad);

    for (size_t i = 0; i < grad.rows.size(); ++i) {
      const int64_t row = grad.rows[i];
      if (!dense.count(row)) {
        dense[row] = make_dense_optimizer(config, dim, DType::F64, Device::CPU);
        dense_rows[row] = before.slice_rows(row, row + 1).reshape({dim}).clone();
      }
      const Tensor g = grad.values.slice_rows(static_cast<int64_t>(i), static_cast<int64_t>(i) + 1).reshape({dim});
      dense[row]->step(dense_rows[row], g, ++dense_steps[row]);
      for (int64_t d = 0; d < dim; ++d)
        EXPECT_DOUBLE_EQ(table.values().data<double>()[row * dim + d], dense_rows[row].data<double>()[d])
            << config.type << " step " << s << " row " << row << " element " << d;
    }
    for (int64_t row = 0; row < rows; ++row) {
      if (std::find(grad.rows.begin(), grad.rows.end(), row) != grad.rows.end()) continue;
      EXPECT_TRUE(row_equal(before, table.values(), row)) << config.type << " step " << s << " moved row " << row;
      auto state = sparse->state();
      for (size_t k = 0; k < state.size(); ++k)
        EXPECT_TRUE(row_equal(state_before[k].second, *state[k].second, row))
            << config.type << " step " << s << " changed " << state[k].first << " of row " << row;
    }
  }
}

TEST(SparseOptimizer, AdagradUpdatesTouchedRowsLikeDenseAndLeavesOthersBitIdentical) {
  OptimizerConfig c;
  c.type = "adagrad";
  c.lr = 0.05;
  c.initial_accumulator = 0.1;
  expect_sparse_follows_dense(c);
}

TEST(SparseOptimizer, LazyAdamUsesEachRowsOwnStepCount) {
  OptimizerConfig c;
  c.type = "adam";
  c.lr = 0.01;
  expect_sparse_follows_dense(c);
  // Row 5 was in all three batches, row 0 in one, row 1 in none.
  EmbeddingTable table("user", 10, 4, DType::F64, 3, 0.1);
  auto opt = make_sparse_optimizer(c, table);
  opt->step(table, sparse_grad({2, 5, 7}, 4, 1));
  opt->step(table, sparse_grad({0, 5}, 4, 2));
  auto state = opt->state();
  ASSERT_EQ(state.size(), 3u);
  ASSERT_EQ(state[2].first, "steps");
  const int64_t* steps = state[2].second->data<int64_t>();
  EXPECT_EQ(steps[5], 2);
  EXPECT_EQ(steps[0], 1);
  EXPECT_EQ(steps[1], 0);
}

TEST(SparseOptimizer, SgdUpdatesTouchedRowsOnly) {
  OptimizerConfig c;
  c.type = "sgd";
  c.lr = 0.5;
  expect_sparse_follows_dense(c);
}

TEST(SparseOptimizer, AdagradStartsFromTheConfiguredAccumulator) {
  OptimizerConfig c;
  c.type = "adagrad";
  c.initial_accumulator = 0.25;
  EmbeddingTable table("t", 3, 2, DType::F32, 1, 0.1);
  auto opt = make_sparse_optimizer(c, table);
  const Tensor& acc = *opt->state()[0].second;
  for (int64_t i = 0; i < acc.numel(); ++i) EXPECT_EQ(acc.data<float>()[i], 0.25f);
}

TEST(SparseOptimizer, WeightDecayIsAConfigError) {
  OptimizerConfig c;
  c.weight_decay = 0.01;
  EmbeddingTable table("t", 3, 2, DType::F32, 1, 0.1);
  try {
    make_sparse_optimizer(c, table);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("weight_decay"), std::string::npos) << e.what();
  }
}

TEST(SparseOptimizer, UnknownTypeIsAUserError) {
  OptimizerConfig c;
  c.type = "ftrl";
  EmbeddingTable table("t", 3, 2, DType::F32, 1, 0.1);
  try {
    make_sparse_optimizer(c, table);
    FAIL() << "expected a UserError";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("ftrl"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("adagrad"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ncsrec

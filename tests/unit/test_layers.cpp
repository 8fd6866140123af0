// Specification tests for the dense layers (Linear, MLP) and the pooled embedding lookup:
// finite-difference gradient checks in double, the gradient contract (parameter gradients
// accumulate, input gradients are written), buffer reuse, and bit-identical embedding
// gradients for any thread count.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <vector>

#include "core/error.h"
#include "core/layers/embedding_bag.h"
#include "core/layers/linear.h"
#include "core/params.h"
#include "core/random.h"
#include "tests/unit/gradcheck.h"

namespace ncsrec {
namespace {

using testing::check_gradient;
using testing::dot;
using testing::fill_uniform;
using testing::random_tensor;

// Xavier init leaves biases at zero; random values exercise every term of the gradient.
void randomize(ParamStore& store, uint64_t seed) { fill_uniform(store.values(), seed, -0.6, 0.6); }

// Reference pre-activations x·W + b, [B, out], by plain loops.
std::vector<double> reference_pre(const Tensor& x, const Linear& layer) {
  const int64_t B = x.dim(0), in = layer.in(), out = layer.out();
  const double* xv = x.data<double>();
  const double* W = layer.weight()->value.data<double>();
  const double* b = layer.bias() ? layer.bias()->value.data<double>() : nullptr;
  std::vector<double> pre(static_cast<size_t>(B * out));
  for (int64_t r = 0; r < B; ++r)
    for (int64_t c = 0; c < out; ++c) {
      double s = b ? b[c] : 0.0;
      for (int64_t k = 0; k < in; ++k) s += xv[r * in + k] * W[k * out + c];
      pre[static_cast<size_t>(r * out + c)] = s;
    }
  return pre;
}

double min_abs(const std::vector<double>& v) {
  double m = INFINITY;
  for (double x : v) m = std::min(m, std::abs(x));
  return m;
}

void expect_linear_gradients(Activation act, bool bias) {
  ParamStore store;
  Linear fc(store, "fc", 5, 4, act, bias);
  store.finalize(DType::F64, Device::CPU, 7);
  randomize(store, 8);
  Tensor x = random_tensor({6, 5}, 11);
  const Tensor r = random_tensor({6, 4}, 12);  // dL/dy
  // A kink within the finite-difference step would make the numeric gradient meaningless.
  if (act == Activation::ReLU) ASSERT_GT(min_abs(reference_pre(x, fc)), 1e-3);

  auto loss = [&] { return dot(fc.forward(x), r); };
  loss();
  const Tensor dx = fc.backward(r).clone();
  const Tensor dW = fc.weight()->grad.clone();
  EXPECT_TRUE(check_gradient("fc.weight", loss, fc.weight()->value, dW));
  if (bias) {
    const Tensor db = fc.bias()->grad.clone();
    EXPECT_TRUE(check_gradient("fc.bias", loss, fc.bias()->value, db));
  }
  EXPECT_TRUE(check_gradient("x", loss, x, dx));
}

TEST(Linear, GradientsMatchFiniteDifferences) { expect_linear_gradients(Activation::None, true); }
TEST(Linear, GradientsMatchFiniteDifferencesWithReLU) { expect_linear_gradients(Activation::ReLU, true); }
TEST(Linear, GradientsMatchFiniteDifferencesWithoutBias) { expect_linear_gradients(Activation::ReLU, false); }

TEST(Linear, ForwardMatchesReferenceAndAppliesReLU) {
  ParamStore store;
  Linear fc(store, "fc", 3, 7, Activation::ReLU);
  store.finalize(DType::F64, Device::CPU, 1);
  randomize(store, 2);
  const Tensor x = random_tensor({4, 3}, 3);
  const std::vector<double> pre = reference_pre(x, fc);
  const Tensor& y = fc.forward(x);
  ASSERT_EQ(y.shape(), (Shape{4, 7}));
  for (size_t i = 0; i < pre.size(); ++i) EXPECT_NEAR(y.data<double>()[i], std::max(pre[i], 0.0), 1e-14);
}

TEST(Linear, ParameterGradientsAccumulateAndInputGradientIsWritten) {
  ParamStore store;
  Linear fc(store, "fc", 4, 3, Activation::ReLU);
  store.finalize(DType::F64, Device::CPU, 5);
  randomize(store, 6);
  const Tensor x = random_tensor({5, 4}, 7);
  const Tensor dy = random_tensor({5, 3}, 8);

  fc.forward(x);
  const Tensor dx1 = fc.backward(dy).clone();
  const Tensor dW1 = fc.weight()->grad.clone(), db1 = fc.bias()->grad.clone();
  fc.forward(x);
  const Tensor& dx2 = fc.backward(dy);

  ASSERT_EQ(0, std::memcmp(dx1.raw(), dx2.raw(), dx1.nbytes())) << "dx must be written, not accumulated";
  for (int64_t i = 0; i < dW1.numel(); ++i)
    EXPECT_NEAR(fc.weight()->grad.data<double>()[i], 2 * dW1.data<double>()[i], 1e-14) << "dW[" << i << "]";
  for (int64_t i = 0; i < db1.numel(); ++i)
    EXPECT_NEAR(fc.bias()->grad.data<double>()[i], 2 * db1.data<double>()[i], 1e-14) << "db[" << i << "]";
}

TEST(Linear, NoInputGradientWhenNotNeeded) {
  ParamStore store;
  Linear fc(store, "fc", 4, 3);
  store.finalize(DType::F64, Device::CPU, 5);
  fc.forward(random_tensor({2, 4}, 1));
  EXPECT_FALSE(fc.backward(random_tensor({2, 3}, 2), /*need_dx=*/false).defined());
}

TEST(Linear, SmallerBatchReusesTheBufferAndLargerBatchGrowsIt) {
  ParamStore store;
  Linear fc(store, "fc", 3, 2);
  store.finalize(DType::F64, Device::CPU, 5);
  const void* full = fc.forward(random_tensor({8, 3}, 1)).raw();
  const Tensor small = random_tensor({3, 3}, 2);
  const Tensor& y_small = fc.forward(small);
  EXPECT_EQ(y_small.shape(), (Shape{3, 2}));
  EXPECT_EQ(y_small.raw(), full) << "a smaller batch must use a view of the same buffer";
  const std::vector<double> pre = reference_pre(small, fc);
  for (size_t i = 0; i < pre.size(); ++i) EXPECT_NEAR(y_small.data<double>()[i], pre[i], 1e-14);
  EXPECT_EQ(fc.forward(random_tensor({8, 3}, 3)).raw(), full) << "returning to the old size must not reallocate";
  EXPECT_EQ(fc.forward(random_tensor({9, 3}, 4)).shape(), (Shape{9, 2}));
}

TEST(Linear, RejectsInputOfAnotherDtype) {
  ParamStore store;
  Linear fc(store, "fc", 3, 2);
  store.finalize(DType::F64, Device::CPU, 5);
  EXPECT_THROW(fc.forward(Tensor::zeros({2, 3}, DType::F32)), InternalError);
}

TEST(Linear, Float32MatchesFloat64) {
  ParamStore s64, s32;
  Linear f64(s64, "fc", 6, 5, Activation::ReLU), f32(s32, "fc", 6, 5, Activation::ReLU);
  s64.finalize(DType::F64, Device::CPU, 9);
  s32.finalize(DType::F32, Device::CPU, 9);  // same (seed, name): same initial values up to rounding
  const Tensor x64 = random_tensor({4, 6}, 1), dy64 = random_tensor({4, 5}, 2);
  Tensor x32 = Tensor::empty({4, 6}, DType::F32), dy32 = Tensor::empty({4, 5}, DType::F32);
  for (int64_t i = 0; i < 24; ++i) x32.data<float>()[i] = static_cast<float>(x64.data<double>()[i]);
  for (int64_t i = 0; i < 20; ++i) dy32.data<float>()[i] = static_cast<float>(dy64.data<double>()[i]);
  const Tensor& y64 = f64.forward(x64);
  const Tensor& y32 = f32.forward(x32);
  for (int64_t i = 0; i < y64.numel(); ++i) EXPECT_NEAR(y32.data<float>()[i], y64.data<double>()[i], 1e-5);
  const Tensor& dx64 = f64.backward(dy64);
  const Tensor& dx32 = f32.backward(dy32);
  for (int64_t i = 0; i < dx64.numel(); ++i) EXPECT_NEAR(dx32.data<float>()[i], dx64.data<double>()[i], 1e-5);
  for (int64_t i = 0; i < s64.numel(); ++i)
    EXPECT_NEAR(s32.grads().data<float>()[i], s64.grads().data<double>()[i], 1e-5);
}

// Reference MLP forward by loops; also returns the smallest |pre-activation| of ReLU layers.
std::vector<double> reference_mlp(MLP& mlp, const Tensor& x, bool final_activation, double* min_relu_pre) {
  Tensor h = x.clone();
  *min_relu_pre = INFINITY;
  for (size_t i = 0; i < mlp.depth(); ++i) {
    std::vector<double> pre = reference_pre(h, mlp.layer(i));
    const bool relu = i + 1 < mlp.depth() || final_activation;
    if (relu) {
      *min_relu_pre = std::min(*min_relu_pre, min_abs(pre));
      for (double& v : pre) v = std::max(v, 0.0);
    }
    h = Tensor::empty({x.dim(0), mlp.layer(i).out()}, DType::F64);
    std::copy(pre.begin(), pre.end(), h.data<double>());
  }
  return std::vector<double>(h.data<double>(), h.data<double>() + h.numel());
}

void expect_mlp_gradients(const std::vector<int64_t>& sizes, bool final_activation) {
  ParamStore store;
  MLP mlp(store, "tower", 6, sizes, final_activation);
  store.finalize(DType::F64, Device::CPU, 21);
  randomize(store, 22);
  Tensor x = random_tensor({5, 6}, 23);
  const Tensor r = random_tensor({5, sizes.back()}, 24);
  ASSERT_EQ(mlp.out(), sizes.back());

  double min_pre = 0;
  const std::vector<double> expected = reference_mlp(mlp, x, final_activation, &min_pre);
  ASSERT_GT(min_pre, 1e-3);
  const Tensor& y = mlp.forward(x);
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_NEAR(y.data<double>()[i], expected[i], 1e-13);

  auto loss = [&] { return dot(mlp.forward(x), r); };
  loss();
  const Tensor dx = mlp.backward(r).clone();
  const Tensor grads = store.grads().clone();
  for (const Param& p : store.params()) {
    Tensor value = p.value;
    EXPECT_TRUE(check_gradient(p.name, loss, value, grads.view(p.offset, p.shape)));
  }
  EXPECT_TRUE(check_gradient("x", loss, x, dx));
}

TEST(MLP, GradientsMatchFiniteDifferencesTwoLayers) { expect_mlp_gradients({7, 3}, false); }
TEST(MLP, GradientsMatchFiniteDifferencesThreeLayersWithFinalReLU) { expect_mlp_gradients({8, 5, 3}, true); }

TEST(MLP, NamesParametersByPrefixAndIndex) {
  ParamStore store;
  MLP mlp(store, "shared", 4, {3, 2}, false);
  EXPECT_NE(store.find("shared.0.weight"), nullptr);
  EXPECT_NE(store.find("shared.1.bias"), nullptr);
  EXPECT_EQ(store.find("shared.0.weight")->shape, (Shape{4, 3}));
  EXPECT_THROW(MLP(store, "empty", 4, {}, false), UserError);
}

// ---- embedding bag -------------------------------------------------------------------------

struct Csr {
  std::vector<int64_t> offsets, ids;
};

// Table [7, 3]; two slots share it. Rows with no ids, repeated ids, ids that wrap (10 -> 3,
// -1 -> 6, 100 -> 2, -15 -> 6). Table rows 1 and 4 are never read.
const Csr kSlotA{{0, 2, 2, 5, 6}, {3, -1, 10, 3, 3, 0}};
const Csr kSlotB{{0, 1, 3, 3, 6}, {-8, 2, 2, 100, 5, -15}};
constexpr int64_t kRows = 7, kDim = 3, kBatch = 4, kCols = 2 * kDim + 2;

void expect_embedding_gradients(Pooling pooling_a, Pooling pooling_b) {
  Tensor table = random_tensor({kRows, kDim}, 31);
  Tensor out = Tensor::zeros({kBatch, kCols}, DType::F64);
  const Tensor r = random_tensor({kBatch, kCols}, 32);
  const std::vector<SlotInput> slots = {{kSlotA.offsets.data(), kSlotA.ids.data(), 1, pooling_a},
                                        {kSlotB.offsets.data(), kSlotB.ids.data(), 1 + kDim, pooling_b}};
  auto loss = [&] {
    for (const SlotInput& s : slots) embedding_bag_forward(out, s.col, table, s.offsets, s.ids, kBatch, s.pooling);
    return dot(out, r);
  };
  loss();
  const SparseGrad grad = embedding_bag_backward(r, slots, kBatch, kRows, kDim);
  EXPECT_EQ(grad.rows, (std::vector<int64_t>{0, 2, 3, 5, 6})) << "rows 1 and 4 are not in the batch";
  ASSERT_EQ(grad.values.shape(), (Shape{5, kDim}));

  Tensor dense = Tensor::zeros({kRows, kDim}, DType::F64);
  for (size_t u = 0; u < grad.rows.size(); ++u)
    for (int64_t d = 0; d < kDim; ++d)
      dense.data<double>()[grad.rows[u] * kDim + d] = grad.values.data<double>()[u * kDim + d];
  EXPECT_TRUE(check_gradient("table", loss, table, dense));
}

TEST(EmbeddingBag, SumGradientsMatchFiniteDifferences) { expect_embedding_gradients(Pooling::Sum, Pooling::Sum); }
TEST(EmbeddingBag, MeanGradientsMatchFiniteDifferences) { expect_embedding_gradients(Pooling::Mean, Pooling::Mean); }
TEST(EmbeddingBag, MixedPoolingGradientsMatchFiniteDifferences) {
  expect_embedding_gradients(Pooling::Sum, Pooling::Mean);
}

TEST(EmbeddingBag, ForwardPoolsItsBlockOnlyAndEmptyRowsGiveZeros) {
  const Tensor table = random_tensor({kRows, kDim}, 41);
  Tensor out = Tensor::empty({kBatch, kCols}, DType::F64);
  std::fill_n(out.data<double>(), out.numel(), 9.0);
  embedding_bag_forward(out, 1, table, kSlotA.offsets.data(), kSlotA.ids.data(), kBatch, Pooling::Mean);
  const double* t = table.data<double>();
  const double* o = out.data<double>();
  for (int64_t d = 0; d < kDim; ++d) {
    EXPECT_DOUBLE_EQ(o[0 * kCols + 1 + d], (t[3 * kDim + d] + t[6 * kDim + d]) / 2);  // ids 3, -1
    EXPECT_EQ(o[1 * kCols + 1 + d], 0.0);                                              // no ids
    EXPECT_DOUBLE_EQ(o[2 * kCols + 1 + d], 3 * t[3 * kDim + d] / 3);                   // 10, 3, 3
    EXPECT_EQ(o[3 * kCols + 1 + d], t[0 * kDim + d]);
  }
  for (int64_t r = 0; r < kBatch; ++r) {
    EXPECT_EQ(o[r * kCols + 0], 9.0) << "column before the block was written";
    for (int64_t c = 1 + kDim; c < kCols; ++c) EXPECT_EQ(o[r * kCols + c], 9.0) << "column after the block";
  }
}

TEST(EmbeddingBag, Float32MatchesFloat64) {
  const Tensor t64 = random_tensor({kRows, kDim}, 51), dout64 = random_tensor({kBatch, kCols}, 52);
  Tensor t32 = Tensor::empty({kRows, kDim}, DType::F32), dout32 = Tensor::empty({kBatch, kCols}, DType::F32);
  for (int64_t i = 0; i < t64.numel(); ++i) t32.data<float>()[i] = static_cast<float>(t64.data<double>()[i]);
  for (int64_t i = 0; i < dout64.numel(); ++i) dout32.data<float>()[i] = static_cast<float>(dout64.data<double>()[i]);
  Tensor o64 = Tensor::zeros({kBatch, kCols}, DType::F64), o32 = Tensor::zeros({kBatch, kCols}, DType::F32);
  embedding_bag_forward(o64, 2, t64, kSlotB.offsets.data(), kSlotB.ids.data(), kBatch, Pooling::Mean);
  embedding_bag_forward(o32, 2, t32, kSlotB.offsets.data(), kSlotB.ids.data(), kBatch, Pooling::Mean);
  for (int64_t i = 0; i < o64.numel(); ++i) EXPECT_NEAR(o32.data<float>()[i], o64.data<double>()[i], 1e-6);
  const std::vector<SlotInput> slots = {{kSlotB.offsets.data(), kSlotB.ids.data(), 2, Pooling::Mean}};
  const SparseGrad g64 = embedding_bag_backward(dout64, slots, kBatch, kRows, kDim);
  const SparseGrad g32 = embedding_bag_backward(dout32, slots, kBatch, kRows, kDim);
  ASSERT_EQ(g32.rows, g64.rows);
  ASSERT_EQ(g32.values.dtype(), DType::F32);
  for (int64_t i = 0; i < g64.values.numel(); ++i)
    EXPECT_NEAR(g32.values.data<float>()[i], g64.values.data<double>()[i], 1e-6);
}

TEST(EmbeddingBag, ResultsAreBitIdenticalForOneAndTwoThreads) {
  // Large enough that both the forward (rows) and the backward (unique rows) run in parallel.
  constexpr int64_t rows = 1000, dim = 8, batch = 3000;
  Rng rng(61);
  Csr a, b;
  for (Csr* csr : {&a, &b}) {
    csr->offsets.push_back(0);
    for (int64_t r = 0; r < batch; ++r) {
      const int64_t n = static_cast<int64_t>(rng.below(6));
      for (int64_t k = 0; k < n; ++k) csr->ids.push_back(static_cast<int64_t>(rng.below(5000)) - 2500);
      csr->offsets.push_back(static_cast<int64_t>(csr->ids.size()));
    }
  }
  const Tensor table = random_tensor({rows, dim}, 62);
  const Tensor dout = random_tensor({batch, 2 * dim}, 63);
  const std::vector<SlotInput> slots = {{a.offsets.data(), a.ids.data(), 0, Pooling::Sum},
                                        {b.offsets.data(), b.ids.data(), dim, Pooling::Mean}};
  auto run = [&](int threads, Tensor& out) {
    omp_set_num_threads(threads);
    for (const SlotInput& s : slots) embedding_bag_forward(out, s.col, table, s.offsets, s.ids, batch, s.pooling);
    return embedding_bag_backward(dout, slots, batch, rows, dim);
  };
  const int saved = omp_get_max_threads();
  Tensor out1 = Tensor::zeros({batch, 2 * dim}, DType::F64), out2 = Tensor::zeros({batch, 2 * dim}, DType::F64);
  const SparseGrad g1 = run(1, out1);
  const SparseGrad g2 = run(2, out2);
  omp_set_num_threads(saved);
  ASSERT_GT(g1.rows.size(), 256u);
  EXPECT_EQ(0, std::memcmp(out1.raw(), out2.raw(), out1.nbytes()));
  ASSERT_EQ(g1.rows, g2.rows);
  EXPECT_TRUE(std::is_sorted(g1.rows.begin(), g1.rows.end()));
  EXPECT_EQ(0, std::memcmp(g1.values.raw(), g2.values.raw(), g1.values.nbytes()));
}

// Row numbers of three bytes (three passes of the backward's radix sort), two slots sharing the
// table (sum and mean), ids repeated within bags and across slots, and a reused workspace: each
// row's gradient is the sum of its contributions in (slot, batch row, k) order, bit for bit.
TEST(EmbeddingBag, BackwardSumsEachRowInSlotRowKOrderOnLargeRowNumbers) {
  constexpr int64_t rows = 70000, dim = 4, batch = 500;
  Rng rng(71);
  std::vector<std::vector<int64_t>> offsets(2, {0}), ids(2);
  for (size_t s = 0; s < 2; ++s)
    for (int64_t r = 0; r < batch; ++r) {
      const int64_t n = static_cast<int64_t>(rng.below(5));
      for (int64_t k = 0; k < n; ++k)  // a few hot ids, repeated; the rest anywhere in the rows
        ids[s].push_back(rng.bernoulli(0.3) ? static_cast<int64_t>(rng.below(4)) * 17477 + 300
                                            : static_cast<int64_t>(rng.below(rows)));
      offsets[s].push_back(static_cast<int64_t>(ids[s].size()));
    }
  const std::vector<SlotInput> slots = {{offsets[0].data(), ids[0].data(), 0, Pooling::Sum},
                                        {offsets[1].data(), ids[1].data(), dim, Pooling::Mean}};
  std::map<int64_t, std::vector<double>> want;  // by row, in row order: the batch's rows
  for (size_t s = 0; s < 2; ++s)
    for (int64_t id : ids[s]) want[id].assign(dim, 0.0);
  EmbeddingBagWorkspace workspace;
  SparseGrad grad;
  for (uint64_t seed : {81, 82}) {  // the second call reuses the workspace's memory
    const Tensor dout = random_tensor({batch, 2 * dim}, seed);
    for (auto& [row, v] : want) std::fill(v.begin(), v.end(), 0.0);
    for (size_t s = 0; s < 2; ++s)
      for (int64_t r = 0; r < batch; ++r) {
        const int64_t begin = offsets[s][static_cast<size_t>(r)], end = offsets[s][static_cast<size_t>(r) + 1];
        const double scale = slots[s].pooling == Pooling::Mean ? 1.0 / static_cast<double>(end - begin) : 1.0;
        for (int64_t k = begin; k < end; ++k)
          for (int64_t d = 0; d < dim; ++d)
            want[ids[s][static_cast<size_t>(k)]][static_cast<size_t>(d)] +=
                dout.data<double>()[r * 2 * dim + slots[s].col + d] * scale;
      }
    embedding_bag_backward(grad, workspace, dout, slots, batch, rows, dim);
    ASSERT_EQ(grad.rows.size(), want.size());
    size_t u = 0;
    for (const auto& [row, v] : want) {
      ASSERT_EQ(grad.rows[u], row);
      for (int64_t d = 0; d < dim; ++d)
        EXPECT_EQ(grad.values.data<double>()[static_cast<int64_t>(u) * dim + d], v[static_cast<size_t>(d)])
            << "row " << row << " element " << d;
      ++u;
    }
  }
}

TEST(EmbeddingBag, EmptyBatchGivesAnEmptyGradient) {
  const std::vector<int64_t> offsets = {0, 0, 0};
  const Tensor dout = random_tensor({2, 4}, 1);
  const SparseGrad g = embedding_bag_backward(dout, {{offsets.data(), nullptr, 0, Pooling::Sum}}, 2, 5, 4);
  EXPECT_TRUE(g.rows.empty());
  EXPECT_EQ(g.values.shape(), (Shape{0, 4}));
}

}  // namespace
}  // namespace ncsrec

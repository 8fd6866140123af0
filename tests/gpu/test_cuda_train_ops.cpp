// CUDA/CPU parity of the training entries of the dispatch table (cuda/train_ops.cu): the gate
// (softmax + expert mixture, forward and backward), the fused loss heads, the mask kernels and
// the dense optimizer steps, and the AUC. Inputs are random and never zero; outputs are poisoned (0xFF) with a
// poisoned guard tail that must survive. Bounds follow the operands' magnitudes:
//   gate out           rtol · Σ_e p_e |x_e|
//   gate dlogits       rtol · p_e (Σ_d |g x_e| + Σ_e' p_e' Σ_d |g x_e'|)
//   losses             prob and grad relative rtol (plus rtol · scale absolute), the loss sum rtol
//   masks              exact (a copy or one addition per element)
//   optimizers         relative rtol of each updated array, and elements outside the update mask
//                      bit-identical
//   esmm               as the loss heads, per output
//   interaction        rtol · Σ_k |e_i e_j| (forward), rtol · (|dx| + Σ_j |(g_ij + g_ji) e_j|) (backward)
//   gemm_bias_act      rtol · (Σ_k |a||b| + |bias|), rtol 2e-3 with TF32, 1.6e-2 with BF16
//   auc                equal to the CPU's exact AUC (unit weights), within 1e-12 (weighted)
// with rtol 1e-5 (f32: the device contracts multiply-adds, and its exp/log/pow are within a few
// ulp of glibc's) and 1e-12 (f64). Without a GPU every test skips with the reason.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "core/dispatch.h"
#include "cuda/device.h"
#include "tests/gpu/gpu_test_util.h"

namespace ncsrec {
namespace {

using namespace gpu_test;

class CudaTrainOps : public GpuTest {};

// ---- gate -----------------------------------------------------------------------------------

template <class T>
void check_gate(int64_t rows, int64_t E, int64_t D, uint64_t seed) {
  const std::string what = std::string(dtype_name(dtype_for<T>())) + " gate rows " + std::to_string(rows) + " E " +
                           std::to_string(E) + " D " + std::to_string(D);
  auto logits = random_values<T>(rows * E, seed);
  for (auto& l : logits) l *= T(4);  // spread the softmax
  std::vector<std::vector<T>> experts, dexperts0;
  for (int64_t e = 0; e < E; ++e) {
    experts.push_back(random_values<T>(rows * D, seed + 10 + static_cast<uint64_t>(e)));
    dexperts0.push_back(random_values<T>(rows * D, seed + 100 + static_cast<uint64_t>(e)));
  }
  const auto dout = random_values<T>(rows * D, seed + 5);

  // CPU reference.
  std::vector<T> out_c(static_cast<size_t>(rows * D)), probs_c(static_cast<size_t>(rows * E)),
      dlog_c(static_cast<size_t>(rows * E));
  std::vector<const void*> xs;
  for (auto& x : experts) xs.push_back(x.data());
  cpu().gate_mixture_forward(dtype_for<T>(), out_c.data(), probs_c.data(), logits.data(), xs.data(), rows, E, D);
  std::vector<std::vector<T>> dx_c = dexperts0;
  std::vector<void*> dxs;
  for (int64_t e = 0; e < E; ++e) dxs.push_back(e == 1 ? nullptr : dx_c[static_cast<size_t>(e)].data());  // one skipped
  cpu().gate_mixture_backward(dtype_for<T>(), dlog_c.data(), dxs.data(), dout.data(), probs_c.data(), xs.data(), rows, E,
                              D);

  // GPU.
  DeviceBuffer<T> d_logits(logits), d_out(rows * D), d_probs(rows * E), d_dlog(rows * E), d_dout(dout);
  std::vector<std::unique_ptr<DeviceBuffer<T>>> d_x, d_dx;
  std::vector<const void*> gxs;
  std::vector<void*> gdxs;
  for (int64_t e = 0; e < E; ++e) {
    d_x.push_back(std::make_unique<DeviceBuffer<T>>(experts[static_cast<size_t>(e)]));
    d_dx.push_back(std::make_unique<DeviceBuffer<T>>(dexperts0[static_cast<size_t>(e)]));
    gxs.push_back(d_x.back()->get());
    gdxs.push_back(e == 1 ? nullptr : d_dx.back()->get());
  }
  gpu().gate_mixture_forward(dtype_for<T>(), d_out.get(), d_probs.get(), d_logits.get(), gxs.data(), rows, E, D);
  gpu().gate_mixture_backward(dtype_for<T>(), d_dlog.get(), gdxs.data(), d_dout.get(), d_probs.get(), gxs.data(), rows,
                              E, D);
  const auto out_g = d_out.download(), probs_g = d_probs.download(), dlog_g = d_dlog.download();

  std::vector<double> b_out(out_c.size()), b_dlog(dlog_c.size());
  for (int64_t b = 0; b < rows; ++b) {
    double mix = 0;
    std::vector<double> dots(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) {
      double s = 0;
      for (int64_t d = 0; d < D; ++d)
        s += std::fabs(dout[static_cast<size_t>(b * D + d)] * experts[static_cast<size_t>(e)][static_cast<size_t>(b * D + d)]);
      dots[static_cast<size_t>(e)] = s;
      mix += probs_c[static_cast<size_t>(b * E + e)] * s;
    }
    for (int64_t d = 0; d < D; ++d) {
      double s = 0;
      for (int64_t e = 0; e < E; ++e)
        s += probs_c[static_cast<size_t>(b * E + e)] * std::fabs(experts[static_cast<size_t>(e)][static_cast<size_t>(b * D + d)]);
      b_out[static_cast<size_t>(b * D + d)] = rtol<T>() * s + 1e-30;
    }
    for (int64_t e = 0; e < E; ++e)
      b_dlog[static_cast<size_t>(b * E + e)] = rtol<T>() * probs_c[static_cast<size_t>(b * E + e)] * (dots[static_cast<size_t>(e)] + mix) + 1e-30;
  }
  expect_close(probs_g, probs_c, relative_bound(probs_c, rtol<T>()), what + " probs");
  expect_close(out_g, out_c, b_out, what + " out");
  expect_close(dlog_g, dlog_c, b_dlog, what + " dlogits");
  for (int64_t e = 0; e < E; ++e) {
    const auto got = d_dx[static_cast<size_t>(e)]->download();
    const auto& want = dx_c[static_cast<size_t>(e)];
    std::vector<double> bound(want.size());
    for (size_t i = 0; i < want.size(); ++i) bound[i] = rtol<T>() * (std::fabs(want[i]) + std::fabs(dout[i]));
    if (e == 1) EXPECT_EQ(got, dexperts0[1]) << what << ": a null dexperts entry was written";
    else expect_close(got, want, bound, what + " dexperts[" + std::to_string(e) + "] (accumulated)");
  }
}

TEST_F(CudaTrainOps, GateMixtureForwardAndBackward) {
  for (auto [rows, E, D] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {7, 3, 5}, {300, 4, 64}, {1000, 8, 257},
                            {33, 64, 16}}) {
    check_gate<float>(rows, E, D, 17);
    check_gate<double>(rows, E, D, 18);
  }
}

// ---- loss heads -----------------------------------------------------------------------------

enum class Head { Bce, Focal, Mse };

template <class T>
void check_loss(Head head, int64_t n, bool weighted, double normalizer, uint64_t seed) {
  const std::string what = std::string(dtype_name(dtype_for<T>())) + (head == Head::Bce ? " bce" : head == Head::Focal ? " focal" : " mse") +
                           " n " + std::to_string(n) + (weighted ? " weighted" : "") + " normalizer " +
                           std::to_string(normalizer);
  auto logits = random_values<T>(n, seed);
  for (int64_t i = 0; i < n; ++i) logits[static_cast<size_t>(i)] *= static_cast<T>(1 + (i % 7) * 5);  // up to ±31
  if (n > 4) {
    logits[0] = T(60);  // saturated logits stay finite on both sides
    logits[1] = T(-60);
  }
  std::vector<float> labels(static_cast<size_t>(n)), weights;
  for (int64_t i = 0; i < n; ++i) labels[static_cast<size_t>(i)] = static_cast<float>((i * 7919) % 3 == 0);
  if (weighted) {
    const auto w = random_values<float>(n, seed + 1);
    for (float x : w) weights.push_back(std::fabs(x) * 2);
  }
  const float* wptr = weighted ? weights.data() : nullptr;
  auto run = [&](const OpTable& ops, const void* l, const float* y, const float* w, void* p, void* g) {
    if (head == Head::Bce) return ops.sigmoid_bce(dtype_for<T>(), l, y, w, n, normalizer, p, g);
    if (head == Head::Focal) return ops.focal_loss(dtype_for<T>(), l, y, w, n, 0.75, 2.0, normalizer, p, g);
    return ops.sigmoid_mse(dtype_for<T>(), l, y, w, n, normalizer, p, g);
  };
  std::vector<T> prob_c(static_cast<size_t>(n)), grad_c(static_cast<size_t>(n));
  const double loss_c = run(cpu(), logits.data(), labels.data(), wptr, prob_c.data(), grad_c.data());

  DeviceBuffer<T> d_logits(logits), d_prob(n), d_grad(n);
  DeviceBuffer<float> d_labels(labels);
  std::unique_ptr<DeviceBuffer<float>> d_weights;
  if (weighted) d_weights = std::make_unique<DeviceBuffer<float>>(weights);
  const double loss_g = run(gpu(), d_logits.get(), d_labels.get(), weighted ? d_weights->get() : nullptr, d_prob.get(),
                            d_grad.get());
  const auto prob_g = d_prob.download(), grad_g = d_grad.download();
  const double scale = normalizer != 0 ? 1.0 / normalizer : 0.0;
  std::vector<double> bp = relative_bound(prob_c, rtol<T>()), bg = relative_bound(grad_c, rtol<T>());
  for (size_t i = 0; i < bp.size(); ++i) {
    bp[i] += rtol<T>() * 1e-6;  // probabilities near 0 carry an absolute error of the device exp
    bg[i] += rtol<T>() * scale * 2;
  }
  expect_close(prob_g, prob_c, bp, what + " prob");
  expect_close(grad_g, grad_c, bg, what + " grad");
  EXPECT_NEAR(loss_g, loss_c, rtol<T>() * std::fabs(loss_c) + 1e-300) << what << " loss";
  if (normalizer == 0) EXPECT_EQ(loss_g, 0.0) << what;
}

TEST_F(CudaTrainOps, LossHeadsFusedWithTheirGradients) {
  for (Head head : {Head::Bce, Head::Focal, Head::Mse})
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{1000}, int64_t{100003}})
      for (bool weighted : {false, true}) {
        check_loss<float>(head, n, weighted, static_cast<double>(n), 3);
        check_loss<double>(head, n, weighted, 17.0, 4);
      }
  check_loss<float>(Head::Bce, 100, false, 0.0, 5);  // a batch without rows for the task: loss 0
}

template <class T>
void check_esmm(int64_t n, bool weighted, uint64_t seed) {
  const std::string what = std::string(dtype_name(dtype_for<T>())) + " esmm n " + std::to_string(n) + (weighted ? " weighted" : "");
  auto a = random_values<T>(n, seed), b = random_values<T>(n, seed + 1);
  for (int64_t i = 0; i < n; ++i) {
    a[static_cast<size_t>(i)] *= static_cast<T>(1 + (i % 5) * 6);
    b[static_cast<size_t>(i)] *= static_cast<T>(1 + (i % 3) * 10);
  }
  if (n > 2) a[0] = b[0] = T(40);  // p near 1: the floored 1 − p and the clamped ratios
  std::vector<float> click(static_cast<size_t>(n)), ctcvr(static_cast<size_t>(n)), weights;
  for (int64_t i = 0; i < n; ++i) {
    click[static_cast<size_t>(i)] = static_cast<float>(i % 4 == 0);
    ctcvr[static_cast<size_t>(i)] = static_cast<float>(i % 12 == 0);
    if (weighted) weights.push_back(0.5f + static_cast<float>(i % 7) / 7.0f);
  }
  const double normalizer = static_cast<double>(n), cw = 1.5;
  std::vector<std::vector<T>> c(5, std::vector<T>(static_cast<size_t>(n)));
  double lc[2], lg[2];
  cpu().esmm_loss(dtype_for<T>(), a.data(), b.data(), click.data(), ctcvr.data(), weighted ? weights.data() : nullptr, n,
                  normalizer, cw, c[0].data(), c[1].data(), c[2].data(), c[3].data(), c[4].data(), lc);
  DeviceBuffer<T> da(a), db(b), d0(n), d1(n), d2(n), d3(n), d4(n);
  DeviceBuffer<float> dclick(click), dctcvr(ctcvr), dw(weighted ? weights : std::vector<float>{1.0f});
  gpu().esmm_loss(dtype_for<T>(), da.get(), db.get(), dclick.get(), dctcvr.get(), weighted ? dw.get() : nullptr, n,
                  normalizer, cw, d0.get(), d1.get(), d2.get(), d3.get(), d4.get(), lg);
  const char* names[] = {"p_ctr", "p_cvr", "p_ctcvr", "grad_ctr", "grad_cvr"};
  DeviceBuffer<T>* outs[] = {&d0, &d1, &d2, &d3, &d4};
  for (int k = 0; k < 5; ++k) {
    std::vector<double> bound = relative_bound(c[static_cast<size_t>(k)], rtol<T>());
    for (auto& x : bound) x += rtol<T>() * (k < 3 ? 1e-6 : 4.0 / normalizer);
    expect_close(outs[k]->download(), c[static_cast<size_t>(k)], bound, what + " " + names[k]);
  }
  EXPECT_NEAR(lg[0], lc[0], rtol<T>() * std::fabs(lc[0])) << what << " ctr loss";
  EXPECT_NEAR(lg[1], lc[1], rtol<T>() * std::fabs(lc[1])) << what << " ctcvr loss";
}

TEST_F(CudaTrainOps, EsmmHeadFusedWithItsGradients) {
  for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{65537}})
    for (bool weighted : {false, true}) {
      check_esmm<float>(n, weighted, 41);
      check_esmm<double>(n, weighted, 42);
    }
}

// ---- interaction ----------------------------------------------------------------------------

template <class T>
void check_interaction(int64_t B, int64_t F, int64_t d, uint64_t seed) {
  const std::string what = std::string(dtype_name(dtype_for<T>())) + " interaction B " + std::to_string(B) + " F " +
                           std::to_string(F) + " d " + std::to_string(d);
  // One buffer as in the model: [embeddings F·d | 3 other columns | products F·F]; the backward
  // reads the products' gradient from the same buffer it accumulates the embeddings' into.
  const int64_t cols = F * d + 3 + F * F, out_col = F * d + 3;
  const auto x = random_values<T>(B * cols, seed);
  std::vector<T> fwd_c = x;
  cpu().pairwise_dot_forward(dtype_for<T>(), fwd_c.data(), cols, out_col, x.data(), cols, 0, B, F, d);
  DeviceBuffer<T> dx_in(x), d_fwd(x);
  gpu().pairwise_dot_forward(dtype_for<T>(), d_fwd.get(), cols, out_col, dx_in.get(), cols, 0, B, F, d);
  std::vector<double> bound(fwd_c.size(), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < F; ++i)
      for (int64_t j = 0; j < F; ++j) {
        double s = 0;
        for (int64_t k = 0; k < d; ++k)
          s += std::fabs(x[static_cast<size_t>(b * cols + i * d + k)] * x[static_cast<size_t>(b * cols + j * d + k)]);
        bound[static_cast<size_t>(b * cols + out_col + i * F + j)] = rtol<T>() * s;
      }
  expect_close(d_fwd.download(), fwd_c, bound, what + " forward (other columns untouched)");

  const auto grad = random_values<T>(B * cols, seed + 1);  // dx columns hold an incoming gradient
  std::vector<T> bwd_c = grad;
  cpu().pairwise_dot_backward(dtype_for<T>(), bwd_c.data(), cols, 0, bwd_c.data(), cols, out_col, x.data(), cols, B, F, d);
  DeviceBuffer<T> d_bwd(grad);
  gpu().pairwise_dot_backward(dtype_for<T>(), d_bwd.get(), cols, 0, d_bwd.get(), cols, out_col, dx_in.get(), cols, B, F, d);
  std::vector<double> bb(bwd_c.size(), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < F; ++i)
      for (int64_t k = 0; k < d; ++k) {
        double s = std::fabs(grad[static_cast<size_t>(b * cols + i * d + k)]);
        for (int64_t j = 0; j < F; ++j)
          s += std::fabs((grad[static_cast<size_t>(b * cols + out_col + i * F + j)] +
                          grad[static_cast<size_t>(b * cols + out_col + j * F + i)]) *
                         x[static_cast<size_t>(b * cols + j * d + k)]);
        bb[static_cast<size_t>(b * cols + i * d + k)] = rtol<T>() * s;
      }
  expect_close(d_bwd.download(), bwd_c, bb, what + " backward (accumulated)");
}

TEST_F(CudaTrainOps, PairwiseInteractionForwardAndBackward) {
  for (auto [B, F, d] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {7, 3, 5}, {4096, 20, 16}, {33, 9, 8}}) {
    check_interaction<float>(B, F, d, 51);
    check_interaction<double>(B, F, d, 52);
  }
}

// ---- masks ----------------------------------------------------------------------------------

template <class T>
void check_masks(int64_t n, uint64_t seed) {
  const auto w = random_values<T>(n, seed), dw = random_values<T>(n, seed + 1), g0 = random_values<T>(n, seed + 2);
  std::vector<uint8_t> bits(static_cast<size_t>((n + 7) / 8));
  std::mt19937 rng(static_cast<uint32_t>(seed));
  for (auto& b : bits) b = static_cast<uint8_t>(rng());
  std::vector<T> out_c(static_cast<size_t>(n)), g_c = g0;
  cpu().apply_mask(dtype_for<T>(), out_c.data(), w.data(), bits.data(), n);
  cpu().add_masked(dtype_for<T>(), g_c.data(), dw.data(), bits.data(), n);
  DeviceBuffer<T> d_w(w), d_dw(dw), d_g(g0), d_out(n);
  DeviceBuffer<uint8_t> d_bits(bits);
  gpu().apply_mask(dtype_for<T>(), d_out.get(), d_w.get(), d_bits.get(), n);
  gpu().add_masked(dtype_for<T>(), d_g.get(), d_dw.get(), d_bits.get(), n);
  EXPECT_EQ(d_out.download(), out_c) << "apply_mask n " << n;
  EXPECT_EQ(d_g.download(), g_c) << "add_masked n " << n;
}

TEST_F(CudaTrainOps, MasksAreExact) {
  for (int64_t n : {int64_t{1}, int64_t{13}, int64_t{720 * 512}, int64_t{1000003}}) {
    check_masks<float>(n, 7);
    check_masks<double>(n, 8);
  }
}

// ---- normalisation layers --------------------------------------------------------------------

// BatchNorm (training with running statistics, evaluation) and LayerNorm, forward and backward,
// against the CPU's entries on random inputs of mean 3 (the two-pass variance matters): outputs,
// x̂, the statistics, the running statistics, dgamma/dbeta (accumulated onto random values) and
// dx within rtol of the operands' magnitudes; outputs poisoned first (DeviceBuffer's guard).
template <class T>
void check_norms(int64_t B, int64_t C, uint64_t seed) {
  SCOPED_TRACE(std::string(dtype_name(dtype_for<T>())) + " B " + std::to_string(B) + " C " + std::to_string(C));
  auto x = random_values<T>(B * C, seed);
  for (auto& v : x) v = static_cast<T>(v + 3);
  const auto gamma = random_values<T>(C, seed + 1), beta = random_values<T>(C, seed + 2);
  const auto dy = random_values<T>(B * C, seed + 3), dg0 = random_values<T>(C, seed + 4), db0 = random_values<T>(C, seed + 5);
  auto rv0 = random_values<T>(C, seed + 6);
  for (auto& v : rv0) v = static_cast<T>(v * v + 0.5);
  const auto rm0 = random_values<T>(C, seed + 7);
  const double tol = rtol<T>();
  auto close = [&](const std::vector<T>& got, const std::vector<T>& want, const char* what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t i = 0; i < want.size(); ++i)
      ASSERT_NEAR(static_cast<double>(got[i]), static_cast<double>(want[i]), tol * (1 + std::abs(static_cast<double>(want[i]))))
          << what << " " << i;
  };
  auto close_d = [&](const std::vector<double>& got, const std::vector<double>& want, const char* what) {
    for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-12 * (1 + std::abs(want[i]))) << what << " " << i;
  };
  for (const int kind : {0, 1, 2}) {  // BatchNorm training, BatchNorm evaluation, LayerNorm
    SCOPED_TRACE(kind == 0 ? "batch norm, training" : kind == 1 ? "batch norm, evaluation" : "layer norm");
    const int64_t S = kind == 2 ? B : C;  // the statistics' length
    std::vector<T> y_c(static_cast<size_t>(B * C)), xh_c(static_cast<size_t>(B * C)), rm_c = rm0, rv_c = rv0;
    std::vector<double> mean_c(static_cast<size_t>(S)), inv_c(static_cast<size_t>(S));
    DeviceBuffer<T> d_x(x), d_g(gamma), d_b(beta), d_y(B * C), d_xh(B * C), d_rm(rm0), d_rv(rv0);
    DeviceBuffer<double> d_mean(S), d_inv(S);
    if (kind == 2) {
      cpu().layer_norm_forward(dtype_for<T>(), x.data(), B, C, gamma.data(), beta.data(), 1e-5, inv_c.data(), xh_c.data(),
                               y_c.data());
      gpu().layer_norm_forward(dtype_for<T>(), d_x.get(), B, C, d_g.get(), d_b.get(), 1e-5, d_inv.get(), d_xh.get(),
                               d_y.get());
    } else {
      const bool training = kind == 0;
      cpu().batch_norm_forward(dtype_for<T>(), x.data(), B, C, gamma.data(), beta.data(), rm_c.data(), rv_c.data(), 0.9,
                               1e-5, training, mean_c.data(), inv_c.data(), xh_c.data(), y_c.data());
      gpu().batch_norm_forward(dtype_for<T>(), d_x.get(), B, C, d_g.get(), d_b.get(), d_rm.get(), d_rv.get(), 0.9, 1e-5,
                               training, d_mean.get(), d_inv.get(), d_xh.get(), d_y.get());
      close(d_rm.download(), rm_c, "running mean");
      close(d_rv.download(), rv_c, "running var");
      close_d(d_mean.download(), mean_c, "mean");
    }
    close(d_y.download(), y_c, "y");
    close(d_xh.download(), xh_c, "xhat");
    close_d(d_inv.download(), inv_c, "inv_std");
    if (kind == 1) continue;  // no backward after an evaluation forward
    std::vector<T> dg_c = dg0, db_c = db0, dx_c(static_cast<size_t>(B * C));
    std::vector<double> sums_c(static_cast<size_t>(2 * C));
    DeviceBuffer<T> d_dy(dy), d_dg(dg0), d_db(db0), d_dx(B * C);
    DeviceBuffer<double> d_sums(2 * C);
    if (kind == 2) {
      cpu().layer_norm_backward(dtype_for<T>(), dy.data(), xh_c.data(), B, C, gamma.data(), inv_c.data(), sums_c.data(),
                                dg_c.data(), db_c.data(), dx_c.data());
      gpu().layer_norm_backward(dtype_for<T>(), d_dy.get(), d_xh.get(), B, C, d_g.get(), d_inv.get(), d_sums.get(),
                                d_dg.get(), d_db.get(), d_dx.get());
    } else {
      cpu().batch_norm_backward(dtype_for<T>(), dy.data(), xh_c.data(), B, C, gamma.data(), inv_c.data(), sums_c.data(),
                                dg_c.data(), db_c.data(), dx_c.data());
      gpu().batch_norm_backward(dtype_for<T>(), d_dy.get(), d_xh.get(), B, C, d_g.get(), d_inv.get(), d_sums.get(),
                                d_dg.get(), d_db.get(), d_dx.get());
    }
    close(d_dg.download(), dg_c, "dgamma");
    close(d_db.download(), db_c, "dbeta");
    close(d_dx.download(), dx_c, "dx");
  }
}

TEST_F(CudaTrainOps, BatchNormAndLayerNormForwardAndBackward) {
  for (const auto& [B, C] : std::vector<std::pair<int64_t, int64_t>>{{2, 1}, {7, 33}, {300, 64}, {4096, 16}}) {
    check_norms<float>(B, C, static_cast<uint64_t>(B * 100 + C));
    check_norms<double>(B, C, static_cast<uint64_t>(B * 100 + C + 1));
  }
}

// ---- APG's per-row products and column blocks -----------------------------------------------

// g_i = h_i·S_i and its backward, and a column block added into another array, against the CPU's
// entries: within rtol of Σ|terms| (each a K-long sum); the columns of ds past K² keep their
// poison, and add_columns leaves the other columns alone.
template <class T>
void check_apg(int64_t B, int64_t K, int64_t extra, uint64_t seed) {
  SCOPED_TRACE(std::string(dtype_name(dtype_for<T>())) + " B " + std::to_string(B) + " K " + std::to_string(K));
  const int64_t s_cols = K * K + extra;
  const auto h = random_values<T>(B * K, seed), s = random_values<T>(B * s_cols, seed + 1);
  const auto dg = random_values<T>(B * K, seed + 2);
  std::vector<T> g_c(static_cast<size_t>(B * K)), dh_c(static_cast<size_t>(B * K));
  std::vector<T> ds_c(static_cast<size_t>(B * s_cols), std::numeric_limits<T>::quiet_NaN());
  cpu().apg_rows_forward(dtype_for<T>(), g_c.data(), h.data(), s.data(), B, K, s_cols);
  cpu().apg_rows_backward(dtype_for<T>(), ds_c.data(), dh_c.data(), h.data(), s.data(), dg.data(), B, K, s_cols);
  const std::vector<T> poison(static_cast<size_t>(B * s_cols), std::numeric_limits<T>::quiet_NaN());
  DeviceBuffer<T> d_h(h), d_s(s), d_dg(dg), d_g(B * K), d_dh(B * K), d_ds(poison);
  gpu().apg_rows_forward(dtype_for<T>(), d_g.get(), d_h.get(), d_s.get(), B, K, s_cols);
  gpu().apg_rows_backward(dtype_for<T>(), d_ds.get(), d_dh.get(), d_h.get(), d_s.get(), d_dg.get(), B, K, s_cols);
  const auto g_g = d_g.download(), dh_g = d_dh.download(), ds_g = d_ds.download();
  for (int64_t i = 0; i < B; ++i)
    for (int64_t c = 0; c < K; ++c) {
      double mag = 0, mag_dh = 0;
      for (int64_t a = 0; a < K; ++a) {
        mag += std::abs(static_cast<double>(h[i * K + a]) * s[i * s_cols + a * K + c]);
        mag_dh += std::abs(static_cast<double>(s[i * s_cols + c * K + a]) * dg[i * K + a]);
      }
      ASSERT_NEAR(g_g[i * K + c], g_c[i * K + c], rtol<T>() * mag + 1e-30) << "g " << i << " " << c;
      ASSERT_NEAR(dh_g[i * K + c], dh_c[i * K + c], rtol<T>() * mag_dh + 1e-30) << "dh " << i << " " << c;
    }
  for (int64_t i = 0; i < B * s_cols; ++i) {
    if (i % s_cols >= K * K) {
      ASSERT_TRUE(std::isnan(static_cast<double>(ds_g[i]))) << "ds column " << i % s_cols << " was written";
      continue;
    }
    ASSERT_EQ(ds_g[i], ds_c[i]) << "ds " << i;  // one product each: exact
  }
  // add_columns: columns [1, 1 + w) of y (width w + 3) += columns [2, 2 + w) of x (width w + 2).
  const int64_t w = K, yw = w + 3, xw = w + 2;
  const auto y0 = random_values<T>(B * yw, seed + 3), x = random_values<T>(B * xw, seed + 4);
  std::vector<T> y_c = y0;
  cpu().add_columns(dtype_for<T>(), y_c.data(), yw, 1, x.data(), xw, 2, B, w);
  DeviceBuffer<T> d_y(y0), d_x(x);
  gpu().add_columns(dtype_for<T>(), d_y.get(), yw, 1, d_x.get(), xw, 2, B, w);
  EXPECT_EQ(d_y.download(), y_c) << "add_columns";
}

TEST_F(CudaTrainOps, ApgRowProductsAndColumnBlocks) {
  for (const auto& [B, K] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {5, 3}, {1000, 8}, {4096, 16}}) {
    check_apg<float>(B, K, 7, static_cast<uint64_t>(B + K));
    check_apg<double>(B, K, 0, static_cast<uint64_t>(B + K + 1));
  }
}

// ---- the three-tower head ----------------------------------------------------------------------

// Logits and the mixed score, and their backward (with and without a loss on each logit and on
// the mixed score), against the CPU's entries: within rtol of Σ|terms| of the d-long dots;
// outputs poisoned first.
template <class T>
void check_three_tower(int64_t B, int nt, int64_t d, bool with_mixed, uint64_t seed) {
  SCOPED_TRACE(std::string(dtype_name(dtype_for<T>())) + " B " + std::to_string(B) + " T " + std::to_string(nt) + " d " +
               std::to_string(d) + (with_mixed ? " mixed" : ""));
  const auto u = random_values<T>(B * d, seed);
  std::vector<std::vector<T>> v, bias, dlogit;
  for (int t = 0; t < nt; ++t) {
    v.push_back(random_values<T>(B * d, seed + 10 + static_cast<uint64_t>(t)));
    bias.push_back(random_values<T>(1, seed + 20 + static_cast<uint64_t>(t)));
    dlogit.push_back(random_values<T>(B, seed + 30 + static_cast<uint64_t>(t)));
  }
  auto w = random_values<T>(B * nt, seed + 1);
  for (auto& x : w) x = std::abs(x);
  const auto dmixed = random_values<T>(B, seed + 2);
  // CPU.
  std::vector<std::vector<T>> l_c(static_cast<size_t>(nt), std::vector<T>(static_cast<size_t>(B)));
  std::vector<T> s_c(static_cast<size_t>(B));
  std::vector<const void*> vp, bp, gp;
  std::vector<void*> lp;
  for (int t = 0; t < nt; ++t) {
    vp.push_back(v[static_cast<size_t>(t)].data());
    bp.push_back(bias[static_cast<size_t>(t)].data());
    lp.push_back(l_c[static_cast<size_t>(t)].data());
    gp.push_back(t == 0 ? nullptr : dlogit[static_cast<size_t>(t)].data());  // task 0: no loss of its own
  }
  cpu().three_tower_forward(dtype_for<T>(), u.data(), vp.data(), bp.data(), w.data(), B, nt, d, lp.data(), s_c.data());
  std::vector<std::vector<T>> dl_c(static_cast<size_t>(nt), std::vector<T>(static_cast<size_t>(B))),
      dv_c(static_cast<size_t>(nt), std::vector<T>(static_cast<size_t>(B * d)));
  std::vector<T> dg_c(static_cast<size_t>(B * nt)), du_c(static_cast<size_t>(B * d));
  std::vector<void*> dlp, dvp;
  std::vector<const void*> lcp;
  for (int t = 0; t < nt; ++t) {
    dlp.push_back(dl_c[static_cast<size_t>(t)].data());
    dvp.push_back(dv_c[static_cast<size_t>(t)].data());
    lcp.push_back(l_c[static_cast<size_t>(t)].data());
  }
  cpu().three_tower_backward(dtype_for<T>(), gp.data(), with_mixed ? dmixed.data() : nullptr, u.data(), vp.data(),
                             lcp.data(), w.data(), B, nt, d, dlp.data(), dg_c.data(), du_c.data(), dvp.data());
  // GPU.
  std::vector<std::unique_ptr<DeviceBuffer<T>>> d_v, d_b, d_g, d_l, d_dl, d_dv;
  std::vector<const void*> gvp, gbp, ggp, glcp;
  std::vector<void*> glp, gdlp, gdvp;
  for (int t = 0; t < nt; ++t) {
    d_v.push_back(std::make_unique<DeviceBuffer<T>>(v[static_cast<size_t>(t)]));
    d_b.push_back(std::make_unique<DeviceBuffer<T>>(bias[static_cast<size_t>(t)]));
    d_g.push_back(std::make_unique<DeviceBuffer<T>>(dlogit[static_cast<size_t>(t)]));
    d_l.push_back(std::make_unique<DeviceBuffer<T>>(B));
    d_dl.push_back(std::make_unique<DeviceBuffer<T>>(B));
    d_dv.push_back(std::make_unique<DeviceBuffer<T>>(B * d));
    gvp.push_back(d_v.back()->get());
    gbp.push_back(d_b.back()->get());
    ggp.push_back(t == 0 ? nullptr : d_g.back()->get());
    glp.push_back(d_l.back()->get());
    glcp.push_back(d_l.back()->get());
    gdlp.push_back(d_dl.back()->get());
    gdvp.push_back(d_dv.back()->get());
  }
  DeviceBuffer<T> d_u(u), d_w(w), d_s(B), d_dm(dmixed), d_dg(B * nt), d_du(B * d);
  gpu().three_tower_forward(dtype_for<T>(), d_u.get(), gvp.data(), gbp.data(), d_w.get(), B, nt, d, glp.data(), d_s.get());
  gpu().three_tower_backward(dtype_for<T>(), ggp.data(), with_mixed ? d_dm.get() : nullptr, d_u.get(), gvp.data(),
                             glcp.data(), d_w.get(), B, nt, d, gdlp.data(), d_dg.get(), d_du.get(), gdvp.data());
  auto close = [&](const std::vector<T>& got, const std::vector<T>& want, const char* what) {
    for (size_t i = 0; i < want.size(); ++i)
      ASSERT_NEAR(static_cast<double>(got[i]), static_cast<double>(want[i]),
                  rtol<T>() * (static_cast<double>(d) + 1) * (1 + std::abs(static_cast<double>(want[i]))))
          << what << " " << i;
  };
  for (int t = 0; t < nt; ++t) {
    close(d_l[static_cast<size_t>(t)]->download(), l_c[static_cast<size_t>(t)], "logit");
    close(d_dl[static_cast<size_t>(t)]->download(), dl_c[static_cast<size_t>(t)], "dl");
    close(d_dv[static_cast<size_t>(t)]->download(), dv_c[static_cast<size_t>(t)], "dv");
  }
  close(d_s.download(), s_c, "mixed");
  close(d_dg.download(), dg_c, "dgate");
  close(d_du.download(), du_c, "du");
}

TEST_F(CudaTrainOps, ThreeTowerHeadForwardAndBackward) {
  for (const bool mixed : {false, true}) {
    check_three_tower<float>(1, 1, 1, mixed, 3);
    check_three_tower<float>(700, 2, 16, mixed, 4);
    check_three_tower<double>(300, 3, 8, mixed, 5);
  }
}

// ---- dropout -------------------------------------------------------------------------------

// The kept elements and their scaled values are the CPU's to the bit (a function of (key, i)
// alone), out of place and in place; about `rate` of them are dropped.
template <class T>
void check_dropout(int64_t n, double rate, uint64_t key) {
  const auto x = random_values<T>(n, key + 1);
  std::vector<T> want(static_cast<size_t>(n));
  cpu().dropout(dtype_for<T>(), want.data(), x.data(), n, rate, key);
  DeviceBuffer<T> d_x(x), d_out(n);
  gpu().dropout(dtype_for<T>(), d_out.get(), d_x.get(), n, rate, key);
  EXPECT_EQ(d_out.download(), want) << "n " << n << " rate " << rate;
  gpu().dropout(dtype_for<T>(), d_x.get(), d_x.get(), n, rate, key);
  EXPECT_EQ(d_x.download(), want) << "in place, n " << n;
  int64_t dropped = 0;
  for (const T v : want) dropped += v == T(0) ? 1 : 0;
  if (n >= 100000) EXPECT_NEAR(static_cast<double>(dropped) / static_cast<double>(n), rate, 0.01);
}

TEST_F(CudaTrainOps, DropoutDropsTheCpusElements) {
  for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{100003}})
    for (double rate : {0.1, 0.5}) {
      check_dropout<float>(n, rate, 11);
      check_dropout<double>(n, rate, 12);
    }
}

// ---- optimizers -----------------------------------------------------------------------------

template <class T>
void check_optimizer(const std::string& kind, int64_t n, bool masked, double wd, bool decay_mask, uint64_t seed) {
  const std::string what = std::string(dtype_name(dtype_for<T>())) + " " + kind + " n " + std::to_string(n) +
                           (masked ? " masked" : "") + " wd " + std::to_string(wd) + (decay_mask ? " decay-mask" : "");
  const auto w0 = random_values<T>(n, seed), g = random_values<T>(n, seed + 1);
  auto m0 = random_values<T>(n, seed + 2), v0 = random_values<T>(n, seed + 3);
  for (auto& v : v0) v = v * v;  // second moments and accumulators are positive
  std::vector<uint8_t> update, decay;
  std::mt19937 rng(static_cast<uint32_t>(seed));
  for (int64_t i = 0; i < n; ++i) {
    update.push_back(static_cast<uint8_t>(rng() % 3 != 0));
    decay.push_back(static_cast<uint8_t>(rng() % 2));
  }
  const uint8_t* up = masked ? update.data() : nullptr;
  const uint8_t* dp = decay_mask ? decay.data() : nullptr;
  std::vector<T> w_c = w0, m_c = m0, v_c = v0;
  auto step = [&](const OpTable& ops, void* w, void* m, void* v, const void* gg, const uint8_t* u, const uint8_t* dm) {
    if (kind == "sgd") ops.sgd_step(dtype_for<T>(), w, gg, u, dm, n, 0.1, wd);
    else if (kind == "adam") ops.adam_step(dtype_for<T>(), w, gg, m, v, u, dm, n, 0.01, 0.9, 0.999, 1e-8, 1 - 0.9, 1 - 0.999, wd);
    else ops.adagrad_step(dtype_for<T>(), w, gg, v, u, dm, n, 0.05, 1e-10, wd);
  };
  step(cpu(), w_c.data(), m_c.data(), v_c.data(), g.data(), up, dp);
  DeviceBuffer<T> d_w(w0), d_m(m0), d_v(v0), d_g(g);
  DeviceBuffer<uint8_t> d_up(update), d_dp(decay);
  step(gpu(), d_w.get(), d_m.get(), d_v.get(), d_g.get(), masked ? d_up.get() : nullptr, decay_mask ? d_dp.get() : nullptr);
  const auto w_g = d_w.download(), m_g = d_m.download(), v_g = d_v.download();
  auto bound = [&](const std::vector<T>& want, const std::vector<T>& before) {
    std::vector<double> b(want.size());
    for (size_t i = 0; i < want.size(); ++i) b[i] = rtol<T>() * (std::fabs(want[i]) + std::fabs(before[i]));
    return b;
  };
  expect_close(w_g, w_c, bound(w_c, w0), what + " w");
  if (kind == "adam") expect_close(m_g, m_c, bound(m_c, m0), what + " m");
  if (kind != "sgd") expect_close(v_g, v_c, bound(v_c, v0), what + (kind == "adam" ? " v" : " accumulator"));
  if (masked)
    for (int64_t i = 0; i < n; ++i)
      if (!update[static_cast<size_t>(i)]) {
        ASSERT_EQ(w_g[static_cast<size_t>(i)], w0[static_cast<size_t>(i)]) << what << ": element " << i << " outside the update mask moved";
        ASSERT_EQ(v_g[static_cast<size_t>(i)], v0[static_cast<size_t>(i)]) << what << ": state " << i << " outside the update mask moved";
      }
}

TEST_F(CudaTrainOps, DenseOptimizerSteps) {
  for (const char* kind : {"sgd", "adam", "adagrad"})
    for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{533634}})
      for (bool masked : {false, true})
        for (double wd : {0.0, 0.01}) {
          check_optimizer<float>(kind, n, masked, wd, false, 21);
          check_optimizer<double>(kind, n, masked, wd, wd > 0, 22);
        }
}

// ---- fused linear forward (cuBLASLt epilogues) ---------------------------------------------

template <class T>
void check_gemm_bias_act(int64_t M, int64_t N, int64_t K, bool ta, bool tb, bool with_bias, bool relu, int precision,
                         uint64_t seed = 31) {
  const std::string what = std::string(dtype_name(dtype_for<T>())) + " gemm_bias_act " + std::to_string(M) + "x" +
                           std::to_string(N) + "x" + std::to_string(K) + (ta ? " Aᵀ" : "") + (tb ? " Bᵀ" : "") +
                           (with_bias ? " bias" : "") + (relu ? " relu" : "") + (precision == kMatmulTf32 ? " tf32" : "") +
                           (precision == kMatmulBf16 ? " bf16" : "");
  const auto A = random_values<T>(M * K, seed), B = random_values<T>(K * N, seed + 1), bias = random_values<T>(N, seed + 2);
  std::vector<T> c_cpu(static_cast<size_t>(M * N));
  cpu().gemm_bias_act(dtype_for<T>(), ta, tb, M, N, K, A.data(), B.data(), with_bias ? bias.data() : nullptr, relu,
                      kMatmulFp32, c_cpu.data());
  DeviceBuffer<T> dA(A), dB(B), dbias(bias), dC(M * N);
  gpu().gemm_bias_act(dtype_for<T>(), ta, tb, M, N, K, dA.get(), dB.get(), with_bias ? dbias.get() : nullptr, relu,
                      precision, dC.get());
  const auto c_gpu = dC.download();
  // |gpu − cpu| ≤ rtol · (Σ_k |a_ik| |b_kj| + |bias_j|): ReLU is 1-Lipschitz, so the bound holds after it.
  const double rt = precision == kMatmulTf32 ? 2e-3 : precision == kMatmulBf16 ? 1.6e-2 : rtol<T>();
  std::vector<double> absA(A.size()), absB(B.size()), bound(c_cpu.size());
  for (size_t i = 0; i < A.size(); ++i) absA[i] = std::fabs(static_cast<double>(A[i]));
  for (size_t i = 0; i < B.size(); ++i) absB[i] = std::fabs(static_cast<double>(B[i]));
  cpu().gemm(DType::F64, ta, tb, M, N, K, 1.0, absA.data(), absB.data(), 0.0, bound.data());  // Σ_k |a||b|
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double& b = bound[static_cast<size_t>(i * N + j)];
      b = rt * (b + (with_bias ? std::fabs(static_cast<double>(bias[static_cast<size_t>(j)])) : 0.0)) + 1e-30;
    }
  if (precision == kMatmulBf16 && K >= 64) expect_reduced_precision(c_gpu, c_cpu, bound, rt, what);
  expect_close(c_gpu, c_cpu, bound, what);
}

TEST_F(CudaTrainOps, FusedLinearForwardThroughCublasLtEpilogues) {
  for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {7, 33, 65}, {4096, 512, 720}, {257, 128, 256}})
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (bool with_bias : {false, true})
          for (bool relu : {false, true}) {
            check_gemm_bias_act<float>(M, N, K, ta, tb, with_bias, relu, kMatmulFp32);
            check_gemm_bias_act<double>(M, N, K, ta, tb, with_bias, relu, kMatmulFp32);
          }
  for (bool relu : {false, true}) {
    check_gemm_bias_act<float>(4096, 512, 720, false, false, true, relu, kMatmulTf32);
    check_gemm_bias_act<float>(4096, 512, 720, false, false, true, relu, kMatmulBf16);
  }
  // A shape seen before, with new operands and a new bias buffer: the cached plan takes this
  // call's bias pointer.
  check_gemm_bias_act<float>(257, 128, 256, false, false, true, true, kMatmulFp32, 41);
}

// ---- the gradient's norm ------------------------------------------------------------------

// masked_sum_squares (clip_grad_norm): both sum the same squares in double, so they differ by the
// order of the additions only: ≤ 1e-12 of the sum. The masked-out elements are large, so
// counting one of them is far outside the bound.
TEST_F(CudaTrainOps, MaskedSumOfSquaresForTheGradientNorm) {
  for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{533634}}) {
    auto x = random_values<float>(n, 51);
    std::vector<uint8_t> mask(static_cast<size_t>(n));
    std::mt19937_64 rng(52);
    for (int64_t i = 0; i < n; ++i) {
      mask[static_cast<size_t>(i)] = (rng() % 3 != 0) || n == 1;
      if (!mask[static_cast<size_t>(i)]) x[static_cast<size_t>(i)] = 1000.0f;
    }
    DeviceBuffer<float> dx(x);
    DeviceBuffer<uint8_t> dm(mask);
    for (bool masked : {false, true}) {
      const double want = cpu().masked_sum_squares(DType::F32, x.data(), masked ? mask.data() : nullptr, n);
      const double got = gpu().masked_sum_squares(DType::F32, dx.get(), masked ? dm.get() : nullptr, n);
      EXPECT_NEAR(got, want, 1e-12 * want) << "n " << n << (masked ? " masked" : "");
    }
  }
}

// ---- AUC ------------------------------------------------------------------------------------

void check_auc(int64_t n, int levels, bool weighted, bool one_class, uint64_t seed) {
  const std::string what = "auc n " + std::to_string(n) + " levels " + std::to_string(levels) +
                           (weighted ? " weighted" : "") + (one_class ? " one class" : "");
  std::mt19937_64 rng(seed);
  std::vector<float> scores(static_cast<size_t>(n)), labels(static_cast<size_t>(n)), weights;
  for (int64_t i = 0; i < n; ++i) {
    // levels > 0: scores on a grid, so that many tie (the half-counted case).
    const double u = std::uniform_real_distribution<double>(0, 1)(rng);
    scores[static_cast<size_t>(i)] = levels > 0 ? static_cast<float>(std::floor(u * levels) / levels) : static_cast<float>(u);
    labels[static_cast<size_t>(i)] = one_class ? 0.0f : static_cast<float>(std::bernoulli_distribution(0.2 + 0.6 * u)(rng));
    if (weighted) weights.push_back(static_cast<float>(0.5 + std::uniform_real_distribution<double>(0, 1)(rng)));
  }
  const double want = cpu().auc(scores.data(), labels.data(), weighted ? weights.data() : nullptr, n);
  DeviceBuffer<float> d_scores(scores), d_labels(labels), d_weights(weighted ? weights : std::vector<float>{0.0f});
  const double got = gpu().auc(d_scores.get(), d_labels.get(), weighted ? d_weights.get() : nullptr, n);
  if (one_class || std::isnan(want)) {  // a class empty by design, or by chance in a tiny draw
    EXPECT_TRUE(std::isnan(got) && std::isnan(want)) << what << ": gpu " << got << " cpu " << want;
    return;
  }
  if (weighted) EXPECT_NEAR(got, want, 1e-12) << what;
  else EXPECT_EQ(got, want) << what;  // every term a multiple of 1/2: exact on both sides
}

TEST_F(CudaTrainOps, AucEqualsTheCpusExactAuc) {
  for (int64_t n : {int64_t{2}, int64_t{1000}, int64_t{500000}})
    for (int levels : {0, 16})
      for (bool weighted : {false, true}) check_auc(n, levels, weighted, false, 9);
  check_auc(1000, 0, false, true, 10);  // no positives: NaN on both sides
  check_auc(1000, 1, false, false, 11);  // every score tied: 0.5
}

}  // namespace
}  // namespace ncsrec

// CPU reference of the loss heads: sigmoid BCE, focal, sigmoid MSE and the ESMM head, loss and
// gradient in one pass.
//
// Every log is taken in a form that cannot overflow or lose all its digits at extreme logits
// (softplus, log σ, log(-expm1)), so logits of ±1000 in f32 give finite losses and gradients.
// The per-element math runs in T (as the CUDA kernels will); only the loss sums are double.
// Not here: learned loss weights or multi-task weighting policies (models/ decides those).
#include "core/layers/losses.h"

#include "core/layers/loss_math.h"

#include <algorithm>
#include <cmath>

namespace ncsrec {
namespace {

using loss_math::log_sigmoid;
using loss_math::one_minus_p_floor;
using loss_math::sigmoid;

}  // namespace

template <class T>
double sigmoid_bce_forward_backward(const T* logits, const float* labels, const float* weights, int64_t n,
                                    double normalizer, T* prob, T* grad) {
  const T scale = normalizer != 0 ? static_cast<T>(1.0 / normalizer) : T(0);
  double loss = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T w = weights ? static_cast<T>(weights[i]) : T(1);
    T dl;
    const T l = loss_math::bce(logits[i], static_cast<T>(labels[i]), &prob[i], &dl);
    grad[i] = w * dl * scale;
    loss += static_cast<double>(w) * static_cast<double>(l);
  }
  return normalizer != 0 ? loss / normalizer : 0.0;
}

// With p = σ(x), q = 1 - p = σ(-x) and dp/dx = pq:
//   dl+/dx = α q^γ (γ p log p - q),   dl-/dx = (1-α) p^γ (p - γ q log q).
// Written this way no power has a negative exponent (no 0^(γ-1) at saturated logits), and
// log p, log q come from log σ, so every factor stays finite for any finite logit.
template <class T>
double focal_forward_backward(const T* logits, const float* labels, const float* weights, int64_t n, double alpha,
                              double gamma, double normalizer, T* prob, T* grad) {
  const T scale = normalizer != 0 ? static_cast<T>(1.0 / normalizer) : T(0);
  const T a = static_cast<T>(alpha), g = static_cast<T>(gamma);
  double loss = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T w = weights ? static_cast<T>(weights[i]) : T(1);
    T dl;
    const T l = loss_math::focal(logits[i], static_cast<T>(labels[i]), a, g, &prob[i], &dl);
    grad[i] = w * dl * scale;
    loss += static_cast<double>(w) * static_cast<double>(l);
  }
  return normalizer != 0 ? loss / normalizer : 0.0;
}

template <class T>
double sigmoid_mse_forward_backward(const T* logits, const float* labels, const float* weights, int64_t n,
                                    double normalizer, T* prob, T* grad) {
  const T scale = normalizer != 0 ? static_cast<T>(1.0 / normalizer) : T(0);
  double loss = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T w = weights ? static_cast<T>(weights[i]) : T(1);
    T dl;
    const T l = loss_math::sigmoid_mse(logits[i], static_cast<T>(labels[i]), &prob[i], &dl);
    grad[i] = w * dl * scale;
    loss += static_cast<double>(w) * static_cast<double>(l);
  }
  return normalizer != 0 ? loss / normalizer : 0.0;
}

// CTCVR part with p = σ(a)σ(b) and label z:
//   l = -(z log p + (1 - z) log(1 - p)),  log p = log σ(a) + log σ(b),  1 - p = -expm1(log p)
//   dl/da = (p - z)/(p(1 - p)) · p(1 - σ(a)) = (p - z) · σ(-a)/(1 - p), and symmetrically for b.
// σ(-a)/(1 - p) lies in [0, 1] because 1 - p >= 1 - σ(a); clamping it keeps the floor of 1 - p
// from turning underflow into a large gradient.
template <class T>
EsmmLoss esmm_forward_backward(const T* logit_ctr, const T* logit_cvr, const float* click, const float* ctcvr_label,
                               const float* weights, int64_t n, double normalizer, double ctcvr_weight, T* p_ctr,
                               T* p_cvr, T* p_ctcvr, T* grad_ctr, T* grad_cvr) {
  const T scale = normalizer != 0 ? static_cast<T>(1.0 / normalizer) : T(0);
  const T cw = static_cast<T>(ctcvr_weight);
  double ctr_loss = 0, ctcvr_loss = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T a = logit_ctr[i], b = logit_cvr[i];
    const T y = static_cast<T>(click[i]), z = static_cast<T>(ctcvr_label[i]);
    const T w = weights ? static_cast<T>(weights[i]) : T(1);
    const T sa = sigmoid(a), sb = sigmoid(b);
    const T log_p = log_sigmoid(a) + log_sigmoid(b);
    const T p = std::exp(log_p);
    const T one_minus_p = std::max(-std::expm1(log_p), one_minus_p_floor<T>());
    p_ctr[i] = sa;
    p_cvr[i] = sb;
    p_ctcvr[i] = p;

    const T l_ctr = std::max(a, T(0)) - a * y + std::log1p(std::exp(-std::abs(a)));
    const T l_ctcvr = -(z * log_p + (T(1) - z) * std::log(one_minus_p));
    ctr_loss += static_cast<double>(w) * static_cast<double>(l_ctr);
    ctcvr_loss += static_cast<double>(w) * static_cast<double>(l_ctcvr);

    const T ratio_a = std::min(sigmoid(-a) / one_minus_p, T(1));  // (1 - σ(a)) / (1 - p)
    const T ratio_b = std::min(sigmoid(-b) / one_minus_p, T(1));
    grad_ctr[i] = w * scale * ((sa - y) + cw * (p - z) * ratio_a);
    grad_cvr[i] = w * scale * (cw * (p - z) * ratio_b);
  }
  if (normalizer == 0) return {};
  return {ctr_loss / normalizer, ctcvr_loss / normalizer};
}

template double sigmoid_bce_forward_backward<float>(const float*, const float*, const float*, int64_t, double, float*,
                                                    float*);
template double sigmoid_bce_forward_backward<double>(const double*, const float*, const float*, int64_t, double,
                                                     double*, double*);
template double focal_forward_backward<float>(const float*, const float*, const float*, int64_t, double, double,
                                              double, float*, float*);
template double focal_forward_backward<double>(const double*, const float*, const float*, int64_t, double, double,
                                               double, double*, double*);
template double sigmoid_mse_forward_backward<float>(const float*, const float*, const float*, int64_t, double, float*,
                                                    float*);
template double sigmoid_mse_forward_backward<double>(const double*, const float*, const float*, int64_t, double,
                                                     double*, double*);
template EsmmLoss esmm_forward_backward<float>(const float*, const float*, const float*, const float*, const float*,
                                               int64_t, double, double, float*, float*, float*, float*, float*);
template EsmmLoss esmm_forward_backward<double>(const double*, const double*, const float*, const float*,
                                                const float*, int64_t, double, double, double*, double*, double*,
                                                double*, double*);

}  // namespace ncsrec

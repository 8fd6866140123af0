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
    const T w = weights ? static_cast<T>(weights[i]) : T(1);
    const loss_math::EsmmElement<T> e = loss_math::esmm(logit_ctr[i], logit_cvr[i], static_cast<T>(click[i]),
                                                         static_cast<T>(ctcvr_label[i]), cw);
    p_ctr[i] = e.p_ctr;
    p_cvr[i] = e.p_cvr;
    p_ctcvr[i] = e.p_ctcvr;
    ctr_loss += static_cast<double>(w) * static_cast<double>(e.l_ctr);
    ctcvr_loss += static_cast<double>(w) * static_cast<double>(e.l_ctcvr);
    grad_ctr[i] = w * scale * e.d_ctr;
    grad_cvr[i] = w * scale * e.d_cvr;
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

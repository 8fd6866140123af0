// The per-element arithmetic of the loss heads (core/layers/losses.h), shared by the CPU loops
// (losses.cpp) and the CUDA kernels (cuda/train_ops.cu), so both compute the same formulas in
// the same order. Every log is taken in a form that cannot overflow or lose all its digits at
// extreme logits (softplus, log σ, log(-expm1)).
#pragma once

#include <cmath>

#include "core/host_device.h"

namespace ncsrec::loss_math {

template <class T>
NCSREC_HOST_DEVICE inline T max_of(T a, T b) { return a > b ? a : b; }
template <class T>
NCSREC_HOST_DEVICE inline T min_of(T a, T b) { return a < b ? a : b; }

// softplus(x) = log(1 + e^x), without overflow for large x or lost digits for very negative x.
template <class T>
NCSREC_HOST_DEVICE inline T softplus(T x) { return max_of(x, T(0)) + std::log1p(std::exp(-std::abs(x))); }
// log σ(x) = -softplus(-x)
template <class T>
NCSREC_HOST_DEVICE inline T log_sigmoid(T x) { return -softplus(-x); }
// σ(x) from whichever side keeps exp() from overflowing.
template <class T>
NCSREC_HOST_DEVICE inline T sigmoid(T x) {
  if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
  const T e = std::exp(x);
  return e / (T(1) + e);
}
// Smallest 1 - p we divide by or take the log of: only reached when 1 - p underflows.
template <class T>
NCSREC_HOST_DEVICE inline T one_minus_p_floor() { return sizeof(T) == 4 ? T(1e-12) : T(1e-300); }

// BCE with logits for one element: *p = σ(x), *dl = dl/dx = p - y; returns
// l = max(x, 0) - x·y + log1p(e^{-|x|}) = -[y log σ(x) + (1 - y) log(1 - σ(x))].
template <class T>
NCSREC_HOST_DEVICE inline T bce(T x, T y, T* p, T* dl) {
  *p = sigmoid(x);
  *dl = *p - y;
  return max_of(x, T(0)) - x * y + std::log1p(std::exp(-std::abs(x)));
}

// Focal loss for one element, with p = σ(x), q = 1 - p = σ(-x) and dp/dx = pq:
//   dl+/dx = α q^γ (γ p log p - q),   dl-/dx = (1-α) p^γ (p - γ q log q).
// Written this way no power has a negative exponent (no 0^(γ-1) at saturated logits), and
// log p, log q come from log σ, so every factor stays finite for any finite logit.
template <class T>
NCSREC_HOST_DEVICE inline T focal(T x, T y, T a, T g, T* p_out, T* dl) {
  const T p = sigmoid(x), q = sigmoid(-x);
  const T log_p = log_sigmoid(x), log_q = log_sigmoid(-x);
  const T q_pow = std::pow(q, g), p_pow = std::pow(p, g);
  *p_out = p;
  const T l_pos = -a * q_pow * log_p;
  const T l_neg = -(T(1) - a) * p_pow * log_q;
  const T d_pos = a * q_pow * (g * p * log_p - q);
  const T d_neg = (T(1) - a) * p_pow * (p - g * q * log_q);
  *dl = y * d_pos + (T(1) - y) * d_neg;
  return y * l_pos + (T(1) - y) * l_neg;
}

// Squared error on the probability for one element: l = (σ(x) - y)², dl/dx = 2(σ - y) σ (1 - σ),
// with 1 - σ taken as σ(-x) (keeps its digits near σ = 1).
template <class T>
NCSREC_HOST_DEVICE inline T sigmoid_mse(T x, T y, T* p_out, T* dl) {
  const T p = sigmoid(x), q = sigmoid(-x);
  const T d = p - y;
  *p_out = p;
  *dl = T(2) * d * p * q;
  return d * d;
}

// The ESMM head for one element, pCTR = σ(a), pCVR = σ(b), pCTCVR = p = σ(a)σ(b), click y, the
// CTCVR label z and the CTCVR loss weight cw:
//   l_ctr = BCE(y, σ(a)),  l_ctcvr = -(z log p + (1 - z) log(1 - p)),  log p = log σ(a) + log σ(b),
//   1 - p = -expm1(log p), floored where it underflows;
//   dL/da = (σ(a) - y) + cw (p - z) · σ(-a)/(1 - p),  dL/db = cw (p - z) · σ(-b)/(1 - p),
// the ratios σ(-·)/(1 - p) clamped to 1 (they lie in [0, 1]; the clamp keeps the floor of 1 - p
// from turning underflow into a large gradient).
template <class T>
struct EsmmElement {
  T p_ctr, p_cvr, p_ctcvr, d_ctr, d_cvr, l_ctr, l_ctcvr;
};
template <class T>
NCSREC_HOST_DEVICE inline EsmmElement<T> esmm(T a, T b, T y, T z, T cw) {
  EsmmElement<T> r;
  r.p_ctr = sigmoid(a);
  r.p_cvr = sigmoid(b);
  const T log_p = log_sigmoid(a) + log_sigmoid(b);
  const T p = std::exp(log_p);
  const T one_minus_p = max_of(-std::expm1(log_p), one_minus_p_floor<T>());
  r.p_ctcvr = p;
  r.l_ctr = max_of(a, T(0)) - a * y + std::log1p(std::exp(-std::abs(a)));
  r.l_ctcvr = -(z * log_p + (T(1) - z) * std::log(one_minus_p));
  const T ratio_a = min_of(sigmoid(-a) / one_minus_p, T(1));  // (1 - σ(a)) / (1 - p)
  const T ratio_b = min_of(sigmoid(-b) / one_minus_p, T(1));
  r.d_ctr = (r.p_ctr - y) + cw * (p - z) * ratio_a;
  r.d_cvr = cw * (p - z) * ratio_b;
  return r;
}

}  // namespace ncsrec::loss_math

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

}  // namespace ncsrec::loss_math

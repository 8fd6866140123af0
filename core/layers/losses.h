// Losses on logits, with their gradients fused (one pass computes probability, loss and dL/dlogit).
//
// Normalisation is explicit: the loss is sum_i w_i * l_i / `normalizer`, where the caller
// passes the global batch size (or another all-reduced count), so that data-parallel ranks
// agree. A normalizer of 0 gives loss 0 and zero gradients, never NaN.
#pragma once

#include <cstdint>

namespace ncsrec {

// Binary cross-entropy with logits: l_i = -[y log σ(x) + (1-y) log(1-σ(x))], computed stably.
// Writes prob[i] = σ(x_i) and grad[i] = dL/dx_i = w_i (σ(x_i) - y_i) / normalizer.
// `weights` may be null (all 1). Returns the (weighted, normalised) loss sum.
template <class T>
double sigmoid_bce_forward_backward(const T* logits, const float* labels, const float* weights, int64_t n,
                                    double normalizer, T* prob, T* grad);

// Focal loss on logits (Lin et al. 2017; the NCS4CVR CTR loss uses alpha = 0.75, gamma = 2),
// with p = σ(x):  l+ = -α (1-p)^γ log p  (y = 1),  l- = -(1-α) p^γ log(1-p)  (y = 0), and
// l = y l+ + (1-y) l- for soft labels y in [0, 1]. γ = 0, α = 0.5 is half of BCE. Needs γ >= 0.
// Writes prob[i] = σ(x_i) and grad[i] = dL/dx_i; `weights` may be null (all 1).
template <class T>
double focal_forward_backward(const T* logits, const float* labels, const float* weights, int64_t n, double alpha,
                              double gamma, double normalizer, T* prob, T* grad);

// Squared error on the probability (the NCS4CVR CVR loss, "weighted MSE"): l_i = (σ(x_i) - y_i)².
// Writes prob[i] = σ(x_i) and grad[i] = w_i · 2(σ - y) σ (1 - σ) / normalizer. The paper's
// weighting (w = 1 on positives only, normalizer = their count, as TF's default reduction
// divides by the number of nonzero weights) is the caller's choice of weights and normalizer.
template <class T>
double sigmoid_mse_forward_backward(const T* logits, const float* labels, const float* weights, int64_t n,
                                    double normalizer, T* prob, T* grad);

// ESMM head (Ma et al. 2018): pCTR = σ(a), pCVR = σ(b), pCTCVR = pCTR·pCVR.
// Loss over all impressions: BCE(click, pCTR) + ctcvr_weight · BCE(click∧conversion, pCTCVR),
// each sum_i w_i l_i / normalizer. Writes the three probabilities and the exact gradients
// dL/da and dL/db (pCVR gets no loss of its own). Returns {ctr loss, ctcvr loss}, the latter
// without ctcvr_weight: the loss the gradients belong to is ctr + ctcvr_weight · ctcvr.
struct EsmmLoss {
  double ctr = 0, ctcvr = 0;
};
template <class T>
EsmmLoss esmm_forward_backward(const T* logit_ctr, const T* logit_cvr, const float* click, const float* ctcvr_label,
                               const float* weights, int64_t n, double normalizer, double ctcvr_weight, T* p_ctr,
                               T* p_cvr, T* p_ctcvr, T* grad_ctr, T* grad_cvr);

}  // namespace ncsrec

// Tensor-level ops: shape and dtype checks, then one call into the dispatch table of the
// tensors' device. Layers call these, never the kernels directly.
#pragma once

#include <vector>

#include "core/dispatch.h"
#include "core/tensor.h"

namespace ncsrec::ops {

// C = alpha * op(A) * op(B) + beta * C, all 2-D.
void gemm(Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b, double alpha = 1.0,
          double beta = 0.0);
// A linear layer's forward: y = act(x·W + b) (b may be null; ReLU when `relu`), fused on a
// device (cuBLASLt epilogue, at matmul_precision()), the three ops in turn on the CPU.
void linear_forward(Tensor& y, const Tensor& x, const Tensor& W, const Tensor* b, bool relu);
// y[r, :] += b
void bias_add(Tensor& y, const Tensor& b);
// db += column sums of dy
void bias_grad(Tensor& db, const Tensor& dy);
void relu_forward(Tensor& y, const Tensor& x);
void relu_backward(Tensor& dx, const Tensor& dy, const Tensor& y);
void sigmoid(Tensor& y, const Tensor& x);
void softmax_rows(Tensor& y, const Tensor& x);
void axpy(Tensor& y, double a, const Tensor& x);
void scale(Tensor& x, double a);
double sum(const Tensor& x);
double sum_squares(const Tensor& x);

// MMoE/PLE gate mixture (see OpTable::gate_mixture_forward): logits [B, E], E experts of
// [B, D] -> probs [B, E] (row softmax), out [B, D] = Σ_e probs[:, e] · experts[e].
void gate_mixture_forward(Tensor& out, Tensor& probs, const Tensor& logits, const std::vector<const Tensor*>& experts);
// dlogits [B, E] is written; dexperts[e] [B, D] ACCUMULATES probs[:, e] · dout (an expert feeds
// several gates); a null dexperts[e] skips that expert.
void gate_mixture_backward(Tensor& dlogits, const std::vector<Tensor*>& dexperts, const Tensor& dout,
                           const Tensor& probs, const std::vector<const Tensor*>& experts);

}  // namespace ncsrec::ops

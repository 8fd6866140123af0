// MMoE/PLE gate: a linear map from the gate input to one logit per expert, a softmax over the
// experts, and the probability-weighted mixture of the experts' outputs.
//
// Shapes: gate input [B, in], W [in, E] (Xavier uniform), b [E] (zeros), logits and probs
// [B, E], each expert [B, dim], output [B, dim]. The softmax and the mixture are one op
// (ops::gate_mixture_*), so backward needs only the probabilities and the experts.
// Gradient contract: dW and db accumulate (+=); the expert gradients ACCUMULATE too, because
// one expert feeds several gates (every task's gate in MMoE, the shared experts in PLE); the
// gate-input gradient is written.
#pragma once

#include <string>
#include <vector>

#include "core/layers/linear.h"
#include "core/params.h"
#include "core/tensor.h"

namespace ncsrec {

class Gate {
 public:
  // Parameters `<name>.weight` [in, num_experts] and `<name>.bias` [num_experts].
  Gate(ParamStore& store, const std::string& name, int64_t in, int64_t num_experts, int64_t dim);
  // Returns Σ_e softmax(x·W + b)_e · experts[e], [B, dim] (this layer's buffer, valid until the
  // next forward). The caller keeps gate_input and the experts unchanged until backward.
  const Tensor& forward(const Tensor& gate_input, const std::vector<const Tensor*>& experts);
  // Given dout = dL/d(output) [B, dim]: accumulates dW, db and dexperts[e] (a null entry skips
  // that expert); returns dL/d(gate_input) [B, in] when `need_dinput`, else an undefined tensor.
  const Tensor& backward(const Tensor& dout, const std::vector<Tensor*>& dexperts, bool need_dinput = true);

  // The last forward's gate weights [B, num_experts]; each row sums to 1.
  const Tensor& probs() const { return probs_; }
  Param* weight() const { return logits_.weight(); }
  Param* bias() const { return logits_.bias(); }
  int64_t in() const { return logits_.in(); }
  int64_t num_experts() const { return num_experts_; }
  int64_t dim() const { return dim_; }

 private:
  Linear logits_;
  int64_t num_experts_, dim_;
  std::vector<Tensor> experts_;  // cached expert outputs (share the callers' storage)
  std::vector<const Tensor*> expert_ptrs_;
  Tensor out_buf_, out_, probs_buf_, probs_, dlogits_buf_, dlogits_;
};

}  // namespace ncsrec

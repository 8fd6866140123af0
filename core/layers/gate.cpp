// Gate: the logits come from the plain Linear layer; the softmax and the expert mixture are
// one dispatch-table op, so the layer runs wherever that op is implemented.
#include "core/layers/gate.h"

#include "core/error.h"
#include "core/ops.h"

namespace ncsrec {

Gate::Gate(ParamStore& store, const std::string& name, int64_t in, int64_t num_experts, int64_t dim)
    : logits_(store, name, in, num_experts, Activation::None, /*bias=*/true), num_experts_(num_experts), dim_(dim) {
  NCSREC_CHECK(num_experts > 0 && dim > 0,
               "gate " << name << " needs positive sizes, got " << num_experts << " experts of width " << dim);
}

const Tensor& Gate::forward(const Tensor& gate_input, const std::vector<const Tensor*>& experts) {
  NCSREC_CHECK(static_cast<int64_t>(experts.size()) == num_experts_,
               "gate expects " << num_experts_ << " experts, got " << experts.size());
  const Tensor& logits = logits_.forward(gate_input);
  const int64_t B = gate_input.dim(0);
  probs_ = ensure_buffer(probs_buf_, B, num_experts_, logits.dtype(), logits.device());
  out_ = ensure_buffer(out_buf_, B, dim_, logits.dtype(), logits.device());
  ops::gate_mixture_forward(out_, probs_, logits, experts);
  experts_.resize(experts.size());
  expert_ptrs_.resize(experts.size());
  for (size_t e = 0; e < experts.size(); ++e) {
    experts_[e] = *experts[e];
    expert_ptrs_[e] = &experts_[e];
  }
  return out_;
}

const Tensor& Gate::backward(const Tensor& dout, const std::vector<Tensor*>& dexperts, bool need_dinput) {
  NCSREC_CHECK(out_.defined(), "gate backward before forward");
  NCSREC_CHECK(dout.shape() == out_.shape(),
               "gate backward expects dout " << out_.describe() << ", got " << dout.describe());
  dlogits_ = ensure_buffer(dlogits_buf_, probs_.dim(0), num_experts_, dout.dtype(), dout.device());
  ops::gate_mixture_backward(dlogits_, dexperts, dout, probs_, expert_ptrs_);
  return logits_.backward(dlogits_, need_dinput);
}

}  // namespace ncsrec

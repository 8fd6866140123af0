// MaskedLinear and MaskedMLP (see masked_linear.h): Linear with W replaced by W ⊙ M_t and the
// weight gradient masked by M_t, with one set of buffers per task.
//
// Not here: the plain dense layer (linear.cpp), pruning (masks.cpp).
#include "core/layers/masked_linear.h"

#include "core/error.h"
#include "core/ops.h"

namespace ncsrec {

MaskedLinear::MaskedLinear(ParamStore& store, const std::string& name, int64_t in, int64_t out, int num_tasks,
                           Activation act)
    : in_(in), out_(out), act_(act) {
  NCSREC_CHECK(in > 0 && out > 0, "masked linear layer " << name << " needs positive sizes, got " << in << " -> "
                                                         << out);
  NCSREC_CHECK(num_tasks >= 1, "masked linear layer " << name << " needs at least one task, got " << num_tasks);
  weight_ = store.add(name + ".weight", {in, out}, Init::XavierUniform);
  bias_ = store.add(name + ".bias", {out}, Init::Zeros);
  tasks_.resize(static_cast<size_t>(num_tasks));
  for (TaskState& t : tasks_) t.mask = BitMask::ones(in, out);
}

MaskedLinear::TaskState& MaskedLinear::task_state(int task, const char* what) {
  NCSREC_CHECK(task >= 0 && task < num_tasks(), "masked linear " << what << ": task " << task << " of "
                                                                 << num_tasks());
  return tasks_[static_cast<size_t>(task)];
}

void MaskedLinear::set_mask(int task, const BitMask& mask) {
  TaskState& t = task_state(task, "set_mask");
  NCSREC_CHECK(mask.same_shape(in_, out_), "mask [" << mask.rows << ", " << mask.cols << "] for a [" << in_ << ", "
                                                    << out_ << "] weight");
  NCSREC_CHECK(static_cast<int64_t>(mask.bits.size()) == (mask.size() + 7) / 8,
               "mask [" << mask.rows << ", " << mask.cols << "] holds " << mask.bits.size() << " bytes");
  t.mask = mask;
  t.device_bits_stale = true;
}

const uint8_t* MaskedLinear::mask_bits_on_device(TaskState& t) {
  const Device device = weight_->value.device();
  if (device == Device::CPU) return nullptr;  // the kernels read t.mask.bits
  if (t.device_bits_stale || !t.device_bits.defined()) {
    t.device_bits = Tensor::from_bytes(t.mask.bits, device);
    t.device_bits_stale = false;
  }
  return static_cast<const uint8_t*>(t.device_bits.raw());
}

const BitMask& MaskedLinear::mask(int task) const {
  NCSREC_CHECK(task >= 0 && task < num_tasks(), "masked linear mask: task " << task << " of " << num_tasks());
  return tasks_[static_cast<size_t>(task)].mask;
}

BitMask& MaskedLinear::mutable_mask(int task) {
  TaskState& t = task_state(task, "mutable_mask");
  t.device_bits_stale = true;  // the caller may change it
  return t.mask;
}

const Tensor& MaskedLinear::forward(int task, const Tensor& x) {  // x [B, in] -> y_t [B, out]
  TaskState& t = task_state(task, "forward");
  const Tensor& W = weight_->value;
  NCSREC_CHECK(W.defined(), "masked linear forward before the parameter store was finalised");
  NCSREC_CHECK(x.ndim() == 2 && x.dim(1) == in_, "masked linear expects [B, " << in_ << "], got " << x.describe());
  NCSREC_CHECK(x.dtype() == W.dtype() && x.device() == W.device(),
               "masked linear input " << x.describe() << " does not match its weight " << W.describe());
  NCSREC_CHECK(t.mask.same_shape(in_, out_), "task " << task << " mask [" << t.mask.rows << ", " << t.mask.cols
                                                     << "] no longer fits the [" << in_ << ", " << out_
                                                     << "] weight");
  const int64_t B = x.dim(0);
  Tensor w_masked = ensure_buffer(t.w_masked, in_, out_, W.dtype(), W.device());
  apply_mask(w_masked, W, t.mask, mask_bits_on_device(t));
  t.y = ensure_buffer(t.y_buf, B, out_, x.dtype(), x.device());
  ops::linear_forward(t.y, x, w_masked, &bias_->value, act_ == Activation::ReLU);
  t.x = x;  // shares storage: the caller keeps x unchanged until backward
  return t.y;
}

void MaskedLinear::set_score_grad(int task, const Tensor& grad) {
  TaskState& t = task_state(task, "set_score_grad");
  NCSREC_CHECK(grad.numel() == in_ * out_ && grad.dtype() == weight_->value.dtype(),
               "score gradient " << grad.describe() << " for a [" << in_ << ", " << out_ << "] layer");
  t.score_grad = grad;
}

const Tensor& MaskedLinear::backward(int task, const Tensor& dy, bool need_dx) {  // dy [B, out] -> dx [B, in]
  TaskState& t = task_state(task, "backward");
  NCSREC_CHECK(t.x.defined(), "masked linear backward for task " << task << " before its forward");
  const int64_t B = t.x.dim(0);
  NCSREC_CHECK(dy.ndim() == 2 && dy.dim(0) == B && dy.dim(1) == out_,
               "masked linear backward expects dy [" << B << ", " << out_ << "], got " << dy.describe());
  const Tensor* dpre = &dy;
  if (act_ == Activation::ReLU) {
    // dpre = dy * (y > 0): y > 0 exactly where the pre-activation was > 0.
    t.dpre = ensure_buffer(t.dpre_buf, B, out_, dy.dtype(), dy.device());
    ops::relu_backward(t.dpre, dy, t.y);
    dpre = &t.dpre;
  }
  // dW += (xᵀ·dpre) ⊙ M_t: the unmasked product goes to scratch first, so weights outside
  // M_t receive exactly 0 (not a product that merely happens to be small).
  Tensor dw = ensure_buffer(dw_scratch_, in_, out_, dy.dtype(), dy.device());
  ops::gemm(dw, t.x, true, *dpre, false, 1.0, 0.0);
  add_masked(weight_->grad, dw, t.mask, mask_bits_on_device(t));
  if (t.score_grad.defined()) {
    NCSREC_CHECK(dw.device() == Device::CPU, "learned masks train on the CPU only");
    // dS += dw ⊙ W (the straight-through estimator of the mask's gradient).
    auto accumulate = [&](auto* g, const auto* d, const auto* w) {
      const int64_t n = in_ * out_;
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
      for (int64_t i = 0; i < n; ++i) g[i] += d[i] * w[i];
    };
    if (dw.dtype() == DType::F32) accumulate(t.score_grad.data<float>(), dw.data<float>(), weight_->value.data<float>());
    else accumulate(t.score_grad.data<double>(), dw.data<double>(), weight_->value.data<double>());
  }
  ops::bias_grad(bias_->grad, *dpre);  // db += colsum(dpre)
  if (!need_dx) return none_;
  t.dx = ensure_buffer(t.dx_buf, B, in_, dy.dtype(), dy.device());
  // dx = dpre·(W ⊙ M_t)ᵀ with the masked weight this task's forward used.
  ops::gemm(t.dx, *dpre, false, t.w_masked, true, 1.0, 0.0);
  return t.dx;
}

MaskedMLP::MaskedMLP(ParamStore& store, const std::string& prefix, int64_t in, const std::vector<int64_t>& sizes,
                     int num_tasks, bool final_activation)
    : in_(in) {
  if (sizes.empty()) throw UserError("masked MLP " + prefix + " needs at least one layer size");
  layers_.reserve(sizes.size());
  int64_t width = in;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] <= 0)
      throw UserError(NCSREC_STR_("masked MLP " << prefix << ": layer " << i << " has size " << sizes[i]
                                                << "; sizes must be positive"));
    const bool last = i + 1 == sizes.size();
    const Activation act = (!last || final_activation) ? Activation::ReLU : Activation::None;
    layers_.emplace_back(store, prefix + "." + std::to_string(i), width, sizes[i], num_tasks, act);
    width = sizes[i];
  }
}

const Tensor& MaskedMLP::forward(int task, const Tensor& x) {
  const Tensor* h = &x;
  for (MaskedLinear& layer : layers_) h = &layer.forward(task, *h);
  return *h;
}

const Tensor& MaskedMLP::backward(int task, const Tensor& dy, bool need_dx) {
  const Tensor* g = &dy;
  for (size_t i = layers_.size(); i-- > 0;) g = &layers_[i].backward(task, *g, i > 0 || need_dx);
  return *g;
}

std::vector<const Tensor*> MaskedMLP::masked_weights() const {
  std::vector<const Tensor*> w;
  for (const MaskedLinear& layer : layers_) w.push_back(&layer.weight()->value);
  return w;
}

std::vector<BitMask*> MaskedMLP::task_masks(int task) {
  std::vector<BitMask*> m;
  for (MaskedLinear& layer : layers_) m.push_back(&layer.mutable_mask(task));
  return m;
}

std::vector<const BitMask*> MaskedMLP::task_masks(int task) const {
  std::vector<const BitMask*> m;
  for (const MaskedLinear& layer : layers_) m.push_back(&layer.mask(task));
  return m;
}

void MaskedMLP::set_task_masks(int task, const std::vector<BitMask>& masks) {
  NCSREC_CHECK(masks.size() == layers_.size(), "masked MLP of " << layers_.size() << " layers given " << masks.size()
                                                                << " masks");
  for (size_t i = 0; i < layers_.size(); ++i) layers_[i].set_mask(task, masks[i]);
}

int64_t MaskedMLP::masked_weight_count() const {
  int64_t n = 0;
  for (const MaskedLinear& layer : layers_) n += layer.in() * layer.out();
  return n;
}

MaskSplit MaskedMLP::split() const {
  MaskSplit total;
  for (const MaskedLinear& layer : layers_) {
    std::vector<const BitMask*> per_task;
    for (int t = 0; t < layer.num_tasks(); ++t) per_task.push_back(&layer.mask(t));
    total += split_connections(per_task);
  }
  return total;
}

}  // namespace ncsrec

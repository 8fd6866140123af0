#include "models/feed_forward.h"

#include "core/error.h"
#include "core/ops.h"
#include "core/random.h"

namespace ncsrec {

struct FeedForward::Stage {
  int64_t in = 0, out = 0;
  std::unique_ptr<Linear> linear;
  std::unique_ptr<ApgLinear> apg;
  std::unique_ptr<BatchNorm> bn;
  std::unique_ptr<LayerNorm> ln;
  bool separate_relu = false;  // ReLU after a norm; otherwise fused into the linear layer
  std::unique_ptr<Dropout> dropout;
  uint64_t dropout_salt = 0;
  Tensor act_buf, act, dact_buf, dact;
};

FeedForward::FeedForward(ParamStore& store, const std::string& prefix, int64_t in, const std::vector<int64_t>& sizes,
                         bool final_activation, const LayerOptions& options)
    : prefix_(prefix), in_(in), options_(options) {
  if (sizes.empty()) throw UserError("MLP " + prefix + " needs at least one layer size");
  int64_t width = in;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] <= 0)
      throw UserError(NCSREC_STR_("MLP " << prefix << ": layer " << i << " has size " << sizes[i]
                                         << "; sizes must be positive"));
    const bool hidden = i + 1 < sizes.size() || final_activation;
    const std::string name = prefix + "." + std::to_string(i);
    auto s = std::make_unique<Stage>();
    s->in = width;
    s->out = sizes[i];
    const bool norm = hidden && options.norm != Norm::None;
    s->separate_relu = norm;
    const Activation fused = hidden && !norm ? Activation::ReLU : Activation::None;
    if (hidden && options.apg) {
      ApgOptions apg = options.apg_options;
      apg.self_condition = options.condition_dim == 0;
      const int64_t cond = apg.self_condition ? width : options.condition_dim;
      s->apg = std::make_unique<ApgLinear>(store, name, width, sizes[i], cond, apg, fused);
    } else {
      s->linear = std::make_unique<Linear>(store, name, width, sizes[i], fused);
    }
    if (norm && options.norm == Norm::Batch)
      s->bn = std::make_unique<BatchNorm>(store, name + ".bn", sizes[i], options.norm_momentum);
    if (norm && options.norm == Norm::Layer) s->ln = std::make_unique<LayerNorm>(store, name + ".ln", sizes[i]);
    if (hidden && options.dropout > 0) {
      s->dropout = std::make_unique<Dropout>(options.dropout);
      s->dropout_salt = hash_combine(hash_string(prefix), i);
    }
    stages_.push_back(std::move(s));
    width = sizes[i];
  }
  out_ = width;
}

FeedForward::~FeedForward() = default;

const Tensor& FeedForward::forward(const Tensor& x, const Pass& pass) {
  const bool group_condition = options_.apg && options_.condition_dim > 0;
  NCSREC_CHECK(!group_condition || pass.condition, "MLP " << prefix_ << ": group-wise APG needs its condition");
  const Tensor* h = &x;
  for (auto& sp : stages_) {
    Stage& s = *sp;
    if (s.apg) h = group_condition ? &s.apg->forward(*h, *pass.condition) : &s.apg->forward(*h);
    else h = &s.linear->forward(*h);
    if (s.bn) h = &s.bn->forward(*h, pass.training);
    if (s.ln) h = &s.ln->forward(*h);
    if (s.separate_relu) {
      s.act = ensure_buffer(s.act_buf, h->dim(0), s.out, h->dtype(), h->device());
      ops::relu_forward(s.act, *h);
      h = &s.act;
    }
    if (s.dropout) h = &s.dropout->forward(*h, pass.training, hash_combine(pass.dropout_key, s.dropout_salt));
  }
  return *h;
}

const Tensor& FeedForward::backward(const Tensor& dy, bool need_dx) {
  const bool group_condition = options_.apg && options_.condition_dim > 0;
  dcond_.reset();
  const Tensor* g = &dy;
  for (size_t i = stages_.size(); i-- > 0;) {
    Stage& s = *stages_[i];
    const bool need = i > 0 || need_dx;
    if (s.dropout) g = &s.dropout->backward(*g);
    if (s.separate_relu) {
      s.dact = ensure_buffer(s.dact_buf, g->dim(0), s.out, g->dtype(), g->device());
      ops::relu_backward(s.dact, *g, s.act);
      g = &s.dact;
    }
    if (s.bn) g = &s.bn->backward(*g);
    if (s.ln) g = &s.ln->backward(*g);
    if (s.apg) {
      // A self-wise layer's dx includes its hypernetwork path; a group-wise one hands its
      // condition's gradient to the caller through dcondition().
      g = &s.apg->backward(*g, need, group_condition);
      if (group_condition) dcond_.add(s.apg->dz());
    } else {
      g = &s.linear->backward(*g, need);
    }
    if (!need) return none_;
  }
  return *g;
}

int64_t FeedForward::multiply_adds_per_row() const {
  int64_t n = 0;
  for (const auto& s : stages_) n += s->apg ? s->apg->multiply_adds_per_row() : s->in * s->out;
  return n;
}

}  // namespace ncsrec

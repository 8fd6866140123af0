#include "models/shared_block.h"

#include "core/error.h"
#include "core/ops.h"

namespace ncsrec {

namespace {

// A [rows, cols] zeroed view of `buffer` shaped like `like`'s dtype and device.
Tensor zeroed(Tensor& buffer, int64_t rows, int64_t cols, const Tensor& like) {
  Tensor t = ensure_buffer(buffer, rows, cols, like.dtype(), like.device());
  t.zero_();
  return t;
}

// ---------------------------------------------------------------------------------------------

class BottomBlock final : public SharedBlock {
 public:
  BottomBlock(ParamStore& store, int64_t in, const std::vector<int64_t>& sizes, const LayerOptions& layers)
      : mlp_(store, "bottom", in, sizes, /*final_activation=*/true, layers) {}
  int64_t out_dim() const override { return mlp_.out(); }
  void forward(const Tensor& x, const std::vector<bool>&, const Pass& pass) override { out_ = mlp_.forward(x, pass); }
  const Tensor& output(size_t) override { return out_; }
  const Tensor& backward(const std::vector<const Tensor*>& dy) override {
    dsum_.reset();
    for (const Tensor* d : dy)
      if (d) dsum_.add(*d);
    NCSREC_CHECK(dsum_.any, "shared bottom backward without a task gradient");
    return mlp_.backward(dsum_.sum, true);
  }
  int64_t multiply_adds_per_row() const override { return mlp_.multiply_adds_per_row(); }

 private:
  FeedForward mlp_;
  Tensor out_;
  GradientSum dsum_;
};

// ---------------------------------------------------------------------------------------------

class MaskedBlock final : public SharedBlock {
 public:
  MaskedBlock(ParamStore& store, int64_t in, const std::vector<int64_t>& sizes, const std::vector<int64_t>& masked,
              int num_tasks)
      : mlp_(store, "shared", in, sizes, num_tasks, /*final_activation=*/true), masked_(masked),
        out_(static_cast<size_t>(num_tasks), nullptr) {}
  MaskedMLP* mlp() { return &mlp_; }
  int64_t out_dim() const override { return mlp_.out(); }
  // The active tasks go through the MLP together, layer by layer (one fused product per layer
  // where the layer's route is fused).
  void forward(const Tensor& x, const std::vector<bool>& active, const Pass&) override {
    std::vector<int> tasks;
    for (size_t t = 0; t < active.size(); ++t)
      if (active[t]) tasks.push_back(static_cast<int>(t));
    if (tasks.empty()) return;
    mlp_.forward_tasks(tasks, x);
    for (int t : tasks) out_[static_cast<size_t>(t)] = &mlp_.output(t);
  }
  const Tensor& output(size_t t) override { return *out_[t]; }
  const Tensor& backward(const std::vector<const Tensor*>& dy) override {
    std::vector<int> tasks;
    std::vector<const Tensor*> grads;
    for (size_t t = 0; t < dy.size(); ++t)
      if (dy[t]) {
        tasks.push_back(static_cast<int>(t));
        grads.push_back(dy[t]);
      }
    NCSREC_CHECK(!tasks.empty(), "masked block backward without a task gradient");
    return mlp_.backward_tasks_sum(tasks, grads);
  }
  std::vector<MaskedLayerRef> masked_layers() override {
    std::vector<MaskedLayerRef> refs;
    for (int64_t l : masked_) refs.push_back({"shared." + std::to_string(l), &mlp_.layer(static_cast<size_t>(l))});
    return refs;
  }
  int64_t multiply_adds_per_row() const override {
    int64_t n = 0;
    for (size_t l = 0; l < mlp_.depth(); ++l) n += mlp_.layer(l).in() * mlp_.layer(l).out();
    return n * mlp_.num_tasks();
  }

 private:
  MaskedMLP mlp_;
  std::vector<int64_t> masked_;
  std::vector<const Tensor*> out_;
};

// ---------------------------------------------------------------------------------------------

// A set of experts on one input: unmasked experts run once per forward and their gradients are
// summed over the gates that read them; masked experts run once per task that reads them.
class ExpertGroup {
 public:
  ExpertGroup(ParamStore& store, const std::string& prefix, int64_t in, int count, const ExpertOptions& opts,
              int num_tasks)
      : opts_(opts), num_tasks_(num_tasks) {
    NCSREC_CHECK(!opts.sizes.empty(), "experts need sizes");
    for (int j = 0; j < count; ++j) {
      const std::string name = prefix + "." + std::to_string(j);
      if (opts.masked)
        masked_.push_back(std::make_unique<MaskedMLP>(store, name, in, opts.sizes, num_tasks, true));
      else
        plain_.push_back(std::make_unique<FeedForward>(store, name, in, opts.sizes, true, opts.layers));
      names_.push_back(name);
    }
    outs_.assign(static_cast<size_t>(num_tasks), std::vector<const Tensor*>(static_cast<size_t>(count), nullptr));
    grad_bufs_.assign(static_cast<size_t>(opts.masked ? num_tasks : 1),
                      std::vector<Tensor>(static_cast<size_t>(count)));
    grads_ = grad_bufs_;
    touched_.assign(grad_bufs_.size(), false);
  }
  int count() const { return static_cast<int>(names_.size()); }
  int64_t out_dim() const { return opts_.sizes.back(); }

  // Runs the experts for the tasks in `tasks` (masked) or once (unmasked) on x.
  void forward(const Tensor& x, const std::vector<bool>& tasks, const Pass& pass) {
    rows_ = x.dim(0);
    like_ = x;
    for (size_t j = 0; j < names_.size(); ++j) {
      if (!opts_.masked) {
        const Tensor* e = &plain_[j]->forward(x, pass);
        for (auto& o : outs_) o[j] = e;
        continue;
      }
      std::vector<int> active;
      for (size_t t = 0; t < tasks.size(); ++t)
        if (tasks[t]) active.push_back(static_cast<int>(t));
      if (active.empty()) continue;
      masked_[j]->forward_tasks(active, x);  // every task through expert j at once
      for (int t : active) outs_[static_cast<size_t>(t)][j] = &masked_[j]->output(t);
    }
    std::fill(touched_.begin(), touched_.end(), false);
  }
  // Expert outputs as task t sees them (t ignored for unmasked experts).
  void outputs(size_t t, std::vector<const Tensor*>& into) const {
    for (const Tensor* e : outs_[t]) into.push_back(e);
  }
  // Zeroed gradient slots of the outputs task t sees, to pass to a gate's backward (they
  // accumulate). Zeroed once per backward per slot set.
  void gradients(size_t t, std::vector<Tensor*>& into) {
    const size_t k = opts_.masked ? t : 0;
    if (!touched_[k]) {
      for (size_t j = 0; j < names_.size(); ++j) grads_[k][j] = zeroed(grad_bufs_[k][j], rows_, out_dim(), like_);
      touched_[k] = true;
    }
    for (auto& g : grads_[k]) into.push_back(&g);
  }
  // Backward of every expert that received gradient; adds dL/dx into `dx`.
  // Masked experts run every touched task at once (one fused product per layer where the
  // route is fused); dx sums in the same order either way: task by task, expert by expert.
  void backward(GradientSum& dx) {
    if (opts_.masked) {
      std::vector<int> tasks;
      for (size_t k = 0; k < grads_.size(); ++k)
        if (touched_[k]) tasks.push_back(static_cast<int>(k));
      for (size_t j = 0; j < names_.size() && !tasks.empty(); ++j) {
        std::vector<const Tensor*> grads;
        for (int k : tasks) grads.push_back(&grads_[static_cast<size_t>(k)][j]);
        masked_[j]->backward_tasks(tasks, grads, true);
      }
      for (int k : tasks)
        for (size_t j = 0; j < names_.size(); ++j) dx.add(masked_[j]->input_grad(k));
      return;
    }
    for (size_t k = 0; k < grads_.size(); ++k) {
      if (!touched_[k]) continue;
      for (size_t j = 0; j < names_.size(); ++j) dx.add(plain_[j]->backward(grads_[k][j], true));
    }
  }
  void masked_layers(std::vector<MaskedLayerRef>& refs) {
    for (size_t j = 0; j < masked_.size(); ++j)
      for (int64_t l : opts_.masked_layers)
        refs.push_back({names_[j] + "." + std::to_string(l), &masked_[j]->layer(static_cast<size_t>(l))});
  }
  int64_t multiply_adds_per_row() const {
    int64_t n = 0;
    for (const auto& e : plain_) n += e->multiply_adds_per_row();
    for (const auto& e : masked_)
      for (size_t l = 0; l < e->depth(); ++l) n += e->layer(l).in() * e->layer(l).out() * num_tasks_;
    return n;
  }

 private:
  ExpertOptions opts_;
  int num_tasks_;
  std::vector<std::string> names_;
  std::vector<std::unique_ptr<FeedForward>> plain_;
  std::vector<std::unique_ptr<MaskedMLP>> masked_;
  std::vector<std::vector<const Tensor*>> outs_;  // [task][expert]
  std::vector<std::vector<Tensor>> grad_bufs_, grads_;  // [task or 0][expert]
  std::vector<bool> touched_;
  int64_t rows_ = 0;
  Tensor like_;
};

// ---------------------------------------------------------------------------------------------

class MmoeBlock final : public SharedBlock {
 public:
  MmoeBlock(ParamStore& store, int64_t in, int num_experts, const ExpertOptions& experts,
            const std::vector<std::string>& tasks)
      : experts_(store, "expert", in, num_experts, experts, static_cast<int>(tasks.size())),
        out_(tasks.size(), nullptr) {
    for (size_t t = 0; t < tasks.size(); ++t) {
      gates_.push_back(std::make_unique<Gate>(store, "gate." + tasks[t], in, num_experts, experts_.out_dim()));
      mark_task_owned(store, "gate." + tasks[t] + ".", static_cast<int>(t));
    }
  }
  int64_t out_dim() const override { return experts_.out_dim(); }
  void forward(const Tensor& x, const std::vector<bool>& active, const Pass& pass) override {
    experts_.forward(x, active, pass);
    for (size_t t = 0; t < active.size(); ++t) {
      if (!active[t]) continue;
      std::vector<const Tensor*> e;
      experts_.outputs(t, e);
      out_[t] = &gates_[t]->forward(x, e);
    }
  }
  const Tensor& output(size_t t) override { return *out_[t]; }
  const Tensor& backward(const std::vector<const Tensor*>& dy) override {
    dx_.reset();
    for (size_t t = 0; t < dy.size(); ++t) {
      if (!dy[t]) continue;
      std::vector<Tensor*> de;
      experts_.gradients(t, de);
      dx_.add(gates_[t]->backward(*dy[t], de, true));
    }
    experts_.backward(dx_);
    NCSREC_CHECK(dx_.any, "MMoE backward without a task gradient");
    return dx_.sum;
  }
  std::vector<MaskedLayerRef> masked_layers() override {
    std::vector<MaskedLayerRef> refs;
    experts_.masked_layers(refs);
    return refs;
  }
  int64_t multiply_adds_per_row() const override {
    int64_t n = experts_.multiply_adds_per_row();
    for (const auto& g : gates_) n += g->weight()->value.numel() + experts_.count() * experts_.out_dim();
    return n;
  }

 private:
  ExpertGroup experts_;
  std::vector<std::unique_ptr<Gate>> gates_;
  std::vector<const Tensor*> out_;
  GradientSum dx_;
};

// ---------------------------------------------------------------------------------------------

class PleBlock final : public SharedBlock {
 public:
  PleBlock(ParamStore& store, int64_t in, int levels, int task_experts, int shared_experts,
           const ExpertOptions& experts, const std::vector<std::string>& tasks)
      : tasks_(tasks.size()), out_dim_(experts.sizes.back()) {
    NCSREC_CHECK(levels >= 1 && task_experts >= 0 && shared_experts >= 0 && task_experts + shared_experts >= 1,
                 "PLE needs levels >= 1 and at least one expert per gate");
    NCSREC_CHECK(!experts.masked || levels == 1,
                 "masked experts in PLE need levels: 1 (the shared gate of a deeper PLE has no task mask)");
    const int T = static_cast<int>(tasks.size());
    int64_t width = in;
    for (int l = 0; l < levels; ++l) {
      Level lv;
      const std::string p = "ple." + std::to_string(l) + ".";
      ExpertOptions task_opts = experts;
      task_opts.masked = false;  // task-specific experts are private: nothing to mask
      for (int t = 0; t < T; ++t) {
        const std::string tp = p + tasks[static_cast<size_t>(t)];
        lv.task.push_back(task_experts > 0
                              ? std::make_unique<ExpertGroup>(store, tp + ".expert", width, task_experts, task_opts, T)
                              : nullptr);
        lv.task_gate.push_back(
            std::make_unique<Gate>(store, tp + ".gate", width, task_experts + shared_experts, experts.sizes.back()));
        mark_task_owned(store, tp + ".", t);
      }
      if (shared_experts > 0)
        lv.shared = std::make_unique<ExpertGroup>(store, p + "shared.expert", width, shared_experts, experts, T);
      if (l + 1 < levels)
        lv.shared_gate = std::make_unique<Gate>(store, p + "shared.gate", width, T * task_experts + shared_experts,
                                                experts.sizes.back());
      lv.task_out.assign(tasks_, nullptr);
      lv.dtask.resize(tasks_);
      levels_.push_back(std::move(lv));
      width = experts.sizes.back();
    }
  }
  int64_t out_dim() const override { return out_dim_; }
  void forward(const Tensor& x, const std::vector<bool>& active, const Pass& pass) override {
    const size_t L = levels_.size();
    for (size_t l = 0; l < L; ++l) {
      Level& lv = levels_[l];
      const bool final = l + 1 == L;
      // A non-final level feeds the shared gate, which reads every task's experts.
      lv.computed.assign(tasks_, false);
      for (size_t t = 0; t < tasks_; ++t) lv.computed[t] = final ? active[t] : true;
      for (size_t t = 0; t < tasks_; ++t) {
        if (!lv.computed[t] || !lv.task[t]) continue;
        std::vector<bool> only(tasks_, false);
        only[t] = true;
        lv.task[t]->forward(task_input(l, t, x), only, pass);
      }
      if (lv.shared) lv.shared->forward(shared_input(l, x), lv.computed, pass);
      for (size_t t = 0; t < tasks_; ++t) {
        if (!lv.computed[t]) continue;
        std::vector<const Tensor*> e;
        if (lv.task[t]) lv.task[t]->outputs(t, e);
        if (lv.shared) lv.shared->outputs(t, e);
        lv.task_out[t] = &lv.task_gate[t]->forward(task_input(l, t, x), e);
      }
      if (lv.shared_gate) {
        std::vector<const Tensor*> e;
        for (size_t t = 0; t < tasks_; ++t)
          if (lv.task[t]) lv.task[t]->outputs(t, e);
        if (lv.shared) lv.shared->outputs(0, e);  // unmasked (masked experts need one level)
        lv.shared_out = &lv.shared_gate->forward(shared_input(l, x), e);
      }
    }
  }
  const Tensor& output(size_t t) override { return *levels_.back().task_out[t]; }
  const Tensor& backward(const std::vector<const Tensor*>& dy) override {
    const size_t L = levels_.size();
    std::vector<const Tensor*> dtask(dy);  // gradient of each task path's level output
    const Tensor* dshared = nullptr;
    for (size_t l = L; l-- > 0;) {
      Level& lv = levels_[l];
      for (auto& d : lv.dtask) d.reset();
      lv.dshared.reset();
      // Gates: their gradients flow into the experts' output slots and into the gate inputs.
      for (size_t t = 0; t < tasks_; ++t) {
        if (!dtask[t] || !lv.computed[t]) continue;
        std::vector<Tensor*> de;
        if (lv.task[t]) lv.task[t]->gradients(t, de);
        if (lv.shared) lv.shared->gradients(t, de);
        lv.dtask[t].add(lv.task_gate[t]->backward(*dtask[t], de, true));
      }
      if (lv.shared_gate && dshared) {
        std::vector<Tensor*> de;
        for (size_t t = 0; t < tasks_; ++t)
          if (lv.task[t]) lv.task[t]->gradients(t, de);
        if (lv.shared) lv.shared->gradients(0, de);
        lv.dshared.add(lv.shared_gate->backward(*dshared, de, true));
      }
      // Experts: into their own path's input gradient.
      for (size_t t = 0; t < tasks_; ++t)
        if (lv.task[t] && lv.computed[t]) lv.task[t]->backward(lv.dtask[t]);
      if (lv.shared) lv.shared->backward(lv.dshared);
      for (size_t t = 0; t < tasks_; ++t) dtask[t] = lv.dtask[t].any ? &lv.dtask[t].sum : nullptr;
      dshared = lv.dshared.any ? &lv.dshared.sum : nullptr;
    }
    // Level 0 reads x on every path.
    dx_.reset();
    for (const Tensor* d : dtask)
      if (d) dx_.add(*d);
    if (dshared) dx_.add(*dshared);
    NCSREC_CHECK(dx_.any, "PLE backward without a task gradient");
    return dx_.sum;
  }
  std::vector<MaskedLayerRef> masked_layers() override {
    std::vector<MaskedLayerRef> refs;
    for (auto& lv : levels_)
      if (lv.shared) lv.shared->masked_layers(refs);
    return refs;
  }
  int64_t multiply_adds_per_row() const override {
    int64_t n = 0;
    for (const auto& lv : levels_) {
      for (const auto& g : lv.task) n += g ? g->multiply_adds_per_row() : 0;
      if (lv.shared) n += lv.shared->multiply_adds_per_row();
      for (const auto& g : lv.task_gate) n += 2 * g->weight()->value.numel();
      if (lv.shared_gate) n += 2 * lv.shared_gate->weight()->value.numel();
    }
    return n;
  }

 private:
  struct Level {
    std::vector<std::unique_ptr<ExpertGroup>> task;  // [task], null when task_experts is 0
    std::unique_ptr<ExpertGroup> shared;             // null when shared_experts is 0
    std::vector<std::unique_ptr<Gate>> task_gate;    // [task]
    std::unique_ptr<Gate> shared_gate;               // non-final levels
    std::vector<bool> computed;                      // [task]: this forward ran the task's path
    std::vector<const Tensor*> task_out;
    const Tensor* shared_out = nullptr;
    std::vector<GradientSum> dtask;  // [task]: gradient of the level's input on the task's path
    GradientSum dshared;
  };
  const Tensor& task_input(size_t l, size_t t, const Tensor& x) const {
    return l == 0 ? x : *levels_[l - 1].task_out[t];
  }
  const Tensor& shared_input(size_t l, const Tensor& x) const { return l == 0 ? x : *levels_[l - 1].shared_out; }

  size_t tasks_;
  int64_t out_dim_;
  std::vector<Level> levels_;
  GradientSum dx_;
};

}  // namespace

void mark_task_owned(ParamStore& store, const std::string& prefix, int task) {
  for (Param& p : store.params())
    if (p.name.rfind(prefix, 0) == 0) p.task = task;
}

std::unique_ptr<SharedBlock> make_bottom_block(ParamStore& store, int64_t in, const std::vector<int64_t>& sizes,
                                               const LayerOptions& layers) {
  return std::make_unique<BottomBlock>(store, in, sizes, layers);
}

std::unique_ptr<SharedBlock> make_masked_block(ParamStore& store, int64_t in, const std::vector<int64_t>& sizes,
                                               const std::vector<int64_t>& masked_layers, int num_tasks,
                                               MaskedMLP** mlp) {
  auto block = std::make_unique<MaskedBlock>(store, in, sizes, masked_layers, num_tasks);
  if (mlp) *mlp = block->mlp();
  return block;
}

std::unique_ptr<SharedBlock> make_mmoe_block(ParamStore& store, int64_t in, int num_experts,
                                             const ExpertOptions& experts, const std::vector<std::string>& tasks) {
  return std::make_unique<MmoeBlock>(store, in, num_experts, experts, tasks);
}

std::unique_ptr<SharedBlock> make_ple_block(ParamStore& store, int64_t in, int levels, int task_experts,
                                            int shared_experts, const ExpertOptions& experts,
                                            const std::vector<std::string>& tasks) {
  return std::make_unique<PleBlock>(store, in, levels, task_experts, shared_experts, experts, tasks);
}

}  // namespace ncsrec

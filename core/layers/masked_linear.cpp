// MaskedLinear and MaskedMLP (see masked_linear.h): Linear with W replaced by W ⊙ M_t and the
// weight gradient masked by M_t, with one set of buffers per task.
//
// Not here: the plain dense layer (linear.cpp), pruning (masks.cpp).
#include "core/layers/masked_linear.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <tuple>

#include "core/crc32c.h"
#include "core/error.h"
#include "core/ops.h"
#include "core/random.h"

namespace ncsrec {

// ---- the route of the products ---------------------------------------------------------------

namespace {

std::atomic<int> g_route{static_cast<int>(MaskedRoute::Auto)};

// auto's measurements: per layer shape, whether the fused route won, and the list for reports.
// The batch's rows are not part of the key: the first batch decides (the training batch size,
// measured when the step's memory is planned), and a smaller last batch takes the same route.
struct RouteKey {
  Device device;
  DType dtype;
  int tasks;
  int64_t in, out;
  bool relu;
  int precision;  // run.matmul: the plain route's products
  bool operator<(const RouteKey& o) const {
    return std::tie(device, dtype, tasks, in, out, relu, precision) <
           std::tie(o.device, o.dtype, o.tasks, o.in, o.out, o.relu, o.precision);
  }
};
std::mutex g_route_mutex;
std::map<RouteKey, bool> g_route_cache;        // guarded by g_route_mutex
std::vector<MaskedRouteChoice> g_route_log;    // guarded by g_route_mutex

std::atomic<bool> g_cpu_fused_taken{false}, g_cpu_plain_taken{false};

constexpr double kFusedMargin = 0.95;  // fused must take at most 95% of the plain route's time

}  // namespace

const std::vector<std::string>& masked_route_names() {
  static const std::vector<std::string> names = {"auto", "plain", "fused"};
  return names;
}

MaskedRoute parse_masked_route(const std::string& name) {
  const std::vector<std::string>& names = masked_route_names();
  const auto it = std::find(names.begin(), names.end(), name);
  if (it == names.end()) throw ConfigError("masked route '" + name + "': expected auto, plain or fused");
  return static_cast<MaskedRoute>(it - names.begin());
}

void set_masked_route(MaskedRoute route) { g_route.store(static_cast<int>(route)); }
MaskedRoute masked_route() { return static_cast<MaskedRoute>(g_route.load()); }

std::vector<MaskedRouteChoice> masked_route_choices() {
  std::lock_guard<std::mutex> lock(g_route_mutex);
  return g_route_log;
}

std::string describe_masked_route_choices() {
  std::string text;
  for (const MaskedRouteChoice& c : masked_route_choices()) {
    char line[256];
    std::snprintf(line, sizeof line, "%lld→%lld, %d task%s, %lld rows (%s %s): plain %.3f ms, fused %.3f ms: %s\n",
                  static_cast<long long>(c.in), static_cast<long long>(c.out), c.tasks, c.tasks == 1 ? "" : "s",
                  static_cast<long long>(c.rows), c.device.c_str(), c.dtype.c_str(), c.plain_ms, c.fused_ms,
                  c.fused ? "fused" : "plain");
    text += line;
  }
  return text;
}

std::string cpu_masked_routes_taken() {
  const bool fused = g_cpu_fused_taken.load(), plain = g_cpu_plain_taken.load();
  return fused && plain ? "fused and plain" : fused ? "fused" : plain ? "plain" : "none";
}

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
    t.device_bits.assign_bytes(t.mask.bits, device);  // a changed mask reuses the memory
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

MaskedLinear::TaskState& MaskedLinear::check_input(int task, const Tensor& x) {
  TaskState& t = task_state(task, "forward");
  const Tensor& W = weight_->value;
  NCSREC_CHECK(W.defined(), "masked linear forward before the parameter store was finalised");
  NCSREC_CHECK(x.ndim() == 2 && x.dim(1) == in_, "masked linear expects [B, " << in_ << "], got " << x.describe());
  NCSREC_CHECK(x.dtype() == W.dtype() && x.device() == W.device(),
               "masked linear input " << x.describe() << " does not match its weight " << W.describe());
  NCSREC_CHECK(t.mask.same_shape(in_, out_), "task " << task << " mask [" << t.mask.rows << ", " << t.mask.cols
                                                     << "] no longer fits the [" << in_ << ", " << out_
                                                     << "] weight");
  return t;
}

void MaskedLinear::forward_plain(TaskState& t, const Tensor& x) {
  const Tensor& W = weight_->value;
  Tensor w_masked = ensure_buffer(t.w_masked, in_, out_, W.dtype(), W.device());
  apply_mask(w_masked, W, t.mask, mask_bits_on_device(t));
  t.y = ensure_buffer(t.y_buf, x.dim(0), out_, x.dtype(), x.device());
  ops::linear_forward(t.y, x, w_masked, &bias_->value, act_ == Activation::ReLU);
  t.x = x;  // shares storage: the caller keeps x unchanged until backward
  t.fused = false;
}

const MaskedSparsePlan& MaskedLinear::sparse_plan(TaskState& t) {
  const uint32_t crc = crc32c(t.mask.bits.data(), t.mask.bits.size());
  if (!t.sparse || crc != t.sparse_crc) {
    t.sparse = std::make_unique<const MaskedSparsePlan>(plan_masked_sparse(t.mask));
    t.sparse_crc = crc;
  }
  return *t.sparse;
}

bool MaskedLinear::cpu_sparse_pays(const std::vector<int>& tasks, int64_t rows) const {
  if (rows < kCpuSparseRows) return false;
  for (int task : tasks)
    if (tasks_[static_cast<size_t>(task)].mask.density() > kCpuSparseDensity) return false;
  return true;
}

bool MaskedLinear::fused_route(const std::vector<int>& task_ids, int64_t rows) {
  const Device device = weight_->value.device();
  for (const TaskState& t : tasks_)
    if (t.score_grad.defined()) return false;  // learned masks: the plain route's score gradient
  if (device == Device::CPU) {
    const bool fused = weight_->value.dtype() == DType::F32 && masked_sparse_available() &&
                       (masked_route() == MaskedRoute::Fused ||
                        (masked_route() == MaskedRoute::Auto && cpu_sparse_pays(task_ids, rows)));
    (fused ? g_cpu_fused_taken : g_cpu_plain_taken).store(true);
    return fused;
  }
  if (!ops::fused_masked_linear_available(device)) return false;
  const int tasks = static_cast<int>(task_ids.size());
  switch (masked_route()) {
    case MaskedRoute::Plain: return false;
    case MaskedRoute::Fused: return true;
    case MaskedRoute::Auto: break;
  }
  const RouteKey key{device, weight_->value.dtype(), tasks, in_, out_, act_ == Activation::ReLU,
                     static_cast<int>(matmul_precision())};
  {
    std::lock_guard<std::mutex> lock(g_route_mutex);
    const auto it = g_route_cache.find(key);
    if (it != g_route_cache.end()) return it->second;
  }
  const bool fused = measure_fused_faster(tasks, rows);
  std::lock_guard<std::mutex> lock(g_route_mutex);
  g_route_cache.emplace(key, fused);
  return fused;
}

bool MaskedLinear::measure_fused_faster(int tasks, int64_t rows) {
  // Operands of the shape, on the weight's device: random inputs and gradients, the layer's own
  // weight and its first `tasks` masks (tasks <= num_tasks()); outputs and gradients go to
  // scratch (the layer's state and its parameter gradients are not touched).
  const Tensor& W = weight_->value;
  const Device device = W.device();
  const DType dtype = W.dtype();
  auto random = [&](int64_t r, int64_t c, uint64_t seed) {
    Tensor host = Tensor::empty({r, c}, dtype);
    Rng rng(seed);
    if (dtype == DType::F32)
      for (int64_t i = 0; i < r * c; ++i) host.data<float>()[i] = static_cast<float>(rng.uniform(-1, 1));
    else
      for (int64_t i = 0; i < r * c; ++i) host.data<double>()[i] = rng.uniform(-1, 1);
    return host.to(device);
  };
  std::vector<Tensor> x, dy, y, dx;
  std::vector<const uint8_t*> bits;
  for (int t = 0; t < tasks; ++t) {
    x.push_back(random(rows, in_, 2 * t + 1));
    dy.push_back(random(rows, out_, 2 * t + 2));
    y.push_back(Tensor::empty({rows, out_}, dtype, device));
    dx.push_back(Tensor::empty({rows, in_}, dtype, device));
    bits.push_back(mask_bits_on_device(tasks_[static_cast<size_t>(t)]));
  }
  Tensor w_masked = Tensor::empty({in_, out_}, dtype, device), dw = Tensor::zeros({in_, out_}, dtype, device),
         product = Tensor::empty({in_, out_}, dtype, device);
  const bool relu = act_ == Activation::ReLU;
  auto plain = [&] {
    for (int t = 0; t < tasks; ++t) {
      const BitMask& mask = tasks_[static_cast<size_t>(t)].mask;
      apply_mask(w_masked, W, mask, bits[static_cast<size_t>(t)]);
      ops::linear_forward(y[static_cast<size_t>(t)], x[static_cast<size_t>(t)], w_masked, &bias_->value, relu);
      ops::gemm(product, x[static_cast<size_t>(t)], true, dy[static_cast<size_t>(t)], false, 1.0, 0.0);
      add_masked(dw, product, mask, bits[static_cast<size_t>(t)]);
      ops::gemm(dx[static_cast<size_t>(t)], dy[static_cast<size_t>(t)], false, w_masked, true, 1.0, 0.0);
    }
  };
  std::vector<Tensor*> ys, dxs;
  std::vector<const Tensor*> xs, dys;
  for (int t = 0; t < tasks; ++t) {
    ys.push_back(&y[static_cast<size_t>(t)]);
    dxs.push_back(&dx[static_cast<size_t>(t)]);
    xs.push_back(&x[static_cast<size_t>(t)]);
    dys.push_back(&dy[static_cast<size_t>(t)]);
  }
  auto fused = [&] {
    ops::masked_linear_forward(ys, xs, W, bits, &bias_->value, relu);
    ops::masked_linear_weight_grad(dw, xs, dys, bits);
    ops::masked_linear_input_grad(dxs, dys, W, bits);
  };
  const OpTable& table = ops_for(device);
  auto time_ms = [&](auto&& run) {
    table.synchronize();
    const auto start = std::chrono::steady_clock::now();
    run();
    table.synchronize();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  };
  plain();  // warm-up: plans, workspaces, first launches
  fused();
  double plain_ms = 1e300, fused_ms = 1e300;
  for (int rep = 0; rep < 3; ++rep) {  // alternating, the best of three each
    plain_ms = std::min(plain_ms, time_ms(plain));
    fused_ms = std::min(fused_ms, time_ms(fused));
  }
  MaskedRouteChoice choice;
  choice.device = device_name(device);
  choice.dtype = dtype_name(dtype);
  choice.tasks = tasks;
  choice.rows = rows;
  choice.in = in_;
  choice.out = out_;
  choice.plain_ms = plain_ms;
  choice.fused_ms = fused_ms;
  choice.fused = fused_ms <= kFusedMargin * plain_ms;
  std::lock_guard<std::mutex> lock(g_route_mutex);
  g_route_log.push_back(choice);
  return choice.fused;
}

const Tensor& MaskedLinear::forward(int task, const Tensor& x) {  // x [B, in] -> y_t [B, out]
  forward_tasks({task}, {&x});
  return tasks_[static_cast<size_t>(task)].y;
}

void MaskedLinear::forward_tasks(const std::vector<int>& tasks, const std::vector<const Tensor*>& xs) {
  NCSREC_CHECK(!tasks.empty() && tasks.size() == xs.size(),
               "masked linear forward_tasks: " << tasks.size() << " tasks, " << xs.size() << " inputs");
  std::vector<bool> seen(tasks_.size(), false);
  bool same_rows = true;
  for (size_t i = 0; i < tasks.size(); ++i) {
    NCSREC_CHECK(xs[i] != nullptr, "masked linear forward_tasks: input " << i << " is null");
    check_input(tasks[i], *xs[i]).chained = false;
    NCSREC_CHECK(!seen[static_cast<size_t>(tasks[i])], "masked linear forward_tasks: task " << tasks[i] << " twice");
    seen[static_cast<size_t>(tasks[i])] = true;
    same_rows = same_rows && xs[i]->dim(0) == xs[0]->dim(0);
  }
  if (!same_rows || !fused_route(tasks, xs[0]->dim(0))) {
    for (size_t i = 0; i < tasks.size(); ++i) forward_plain(tasks_[static_cast<size_t>(tasks[i])], *xs[i]);
    return;
  }
  const Tensor& W = weight_->value;
  const int64_t B = xs[0]->dim(0);
  if (W.device() == Device::CPU) {  // the mask's connections only (core/sparse_train.h)
    std::vector<MaskedSparseTask> parts(tasks.size());  // tasks on one x share its transposition
    for (size_t i = 0; i < tasks.size(); ++i) {
      TaskState& t = tasks_[static_cast<size_t>(tasks[i])];
      t.y = ensure_buffer(t.y_buf, B, out_, W.dtype(), W.device());
      t.x = *xs[i];
      t.fused = true;
      parts[i].plan = &sparse_plan(t);
      parts[i].x = xs[i]->data<float>();
      parts[i].y = t.y.data<float>();
    }
    masked_sparse_forward(parts, B, W.data<float>(), bias_->value.data<float>(), act_ == Activation::ReLU);
    return;
  }
  std::vector<Tensor*> ys;
  std::vector<const uint8_t*> bits;
  for (size_t i = 0; i < tasks.size(); ++i) {
    TaskState& t = tasks_[static_cast<size_t>(tasks[i])];
    t.y = ensure_buffer(t.y_buf, B, out_, W.dtype(), W.device());
    t.x = *xs[i];
    t.fused = true;
    ys.push_back(&t.y);
    bits.push_back(mask_bits_on_device(t));
  }
  ops::masked_linear_forward(ys, xs, W, bits, &bias_->value, act_ == Activation::ReLU);
}

const Tensor& MaskedLinear::output(int task) const {
  NCSREC_CHECK(task >= 0 && task < num_tasks(), "masked linear output: task " << task << " of " << num_tasks());
  const TaskState& t = tasks_[static_cast<size_t>(task)];
  NCSREC_CHECK(!t.chained || t.y.defined(), "masked linear output for task "
                                                << task << ": its forward ran inside its masked MLP's chain, which "
                                                          "keeps only the MLP's output; read it from the MLP");
  return t.y;
}

const Tensor& MaskedLinear::input_grad(int task) const {
  NCSREC_CHECK(task >= 0 && task < num_tasks(), "masked linear input_grad: task " << task << " of " << num_tasks());
  return tasks_[static_cast<size_t>(task)].dx;  // undefined when not asked for, or inside a chain
}

void MaskedLinear::set_score_grad(int task, const Tensor& grad) {
  TaskState& t = task_state(task, "set_score_grad");
  NCSREC_CHECK(grad.numel() == in_ * out_ && grad.dtype() == weight_->value.dtype(),
               "score gradient " << grad.describe() << " for a [" << in_ << ", " << out_ << "] layer");
  t.score_grad = grad;
}

void MaskedLinear::check_output_grad(int task, const TaskState& t, const Tensor& dy) const {
  NCSREC_CHECK(!t.chained, "masked linear backward for task " << task
                               << ": its forward ran inside its masked MLP's chain; run the backward through the MLP");
  NCSREC_CHECK(t.x.defined(), "masked linear backward for task " << task << " before its forward");
  const int64_t B = t.x.dim(0);
  NCSREC_CHECK(dy.ndim() == 2 && dy.dim(0) == B && dy.dim(1) == out_,
               "masked linear backward expects dy [" << B << ", " << out_ << "], got " << dy.describe());
  NCSREC_CHECK(dy.dtype() == t.x.dtype() && dy.device() == t.x.device(),
               "masked linear backward: dy " << dy.describe() << " does not match the input " << t.x.describe());
}

const Tensor& MaskedLinear::pre_activation_grad(int task, TaskState& t, const Tensor& dy) {
  check_output_grad(task, t, dy);
  const int64_t B = t.x.dim(0);
  if (act_ != Activation::ReLU) return dy;
  // dpre = dy * (y > 0): y > 0 exactly where the pre-activation was > 0.
  t.dpre = ensure_buffer(t.dpre_buf, B, out_, dy.dtype(), dy.device());
  ops::relu_backward(t.dpre, dy, t.y);
  return t.dpre;
}

void MaskedLinear::backward_plain(TaskState& t, const Tensor& dpre, bool need_dx) {
  // dW += (xᵀ·dpre) ⊙ M_t: the unmasked product goes to scratch first, so weights outside
  // M_t receive exactly 0 (not a product that merely happens to be small).
  Tensor dw = ensure_buffer(dw_scratch_, in_, out_, dpre.dtype(), dpre.device());
  ops::gemm(dw, t.x, true, dpre, false, 1.0, 0.0);
  add_masked(weight_->grad, dw, t.mask, mask_bits_on_device(t));
  if (t.score_grad.defined())
    ops::multiply_accumulate(t.score_grad, dw, weight_->value);  // dS += dw ⊙ W (straight-through)
  ops::bias_grad(bias_->grad, dpre);  // db += colsum(dpre)
  if (!need_dx) {
    t.dx = Tensor();
    return;
  }
  t.dx = ensure_buffer(t.dx_buf, t.x.dim(0), in_, dpre.dtype(), dpre.device());
  // dx = dpre·(W ⊙ M_t)ᵀ with the masked weight this task's forward used.
  ops::gemm(t.dx, dpre, false, t.w_masked, true, 1.0, 0.0);
}

const Tensor& MaskedLinear::backward(int task, const Tensor& dy, bool need_dx) {  // dy [B, out] -> dx [B, in]
  backward_tasks({task}, {&dy}, need_dx);
  return need_dx ? tasks_[static_cast<size_t>(task)].dx : none_;
}

void MaskedLinear::backward_tasks(const std::vector<int>& tasks, const std::vector<const Tensor*>& dys, bool need_dx) {
  backward_tasks(tasks, dys, need_dx, nullptr);
}

const Tensor& MaskedLinear::backward_tasks_sum(const std::vector<int>& tasks, const std::vector<const Tensor*>& dys) {
  dx_sum_.reset();
  backward_tasks(tasks, dys, true, &dx_sum_);
  if (!dx_sum_.any) {  // each task's dx was made: their sum, in task order
    for (int task : tasks) dx_sum_.add(tasks_[static_cast<size_t>(task)].dx);
    for (int task : tasks) tasks_[static_cast<size_t>(task)].dx = Tensor();
  }
  return dx_sum_.sum;
}

void MaskedLinear::backward_tasks(const std::vector<int>& tasks, const std::vector<const Tensor*>& dys, bool need_dx,
                                  GradientSum* dx_sum) {
  NCSREC_CHECK(!tasks.empty() && tasks.size() == dys.size(),
               "masked linear backward_tasks: " << tasks.size() << " tasks, " << dys.size() << " gradients");
  std::vector<const Tensor*> xs, dpres;
  std::vector<const uint8_t*> bits;
  bool fused = true;
  for (size_t i = 0; i < tasks.size(); ++i) {
    NCSREC_CHECK(dys[i] != nullptr, "masked linear backward_tasks: gradient " << i << " is null");
    TaskState& t = task_state(tasks[i], "backward");
    check_output_grad(tasks[i], t, *dys[i]);
    xs.push_back(&t.x);
    fused = fused && t.fused && t.x.dim(0) == xs[0]->dim(0);
  }
  if (fused && weight_->value.device() == Device::CPU) {
    // The mask's connections only (core/sparse_train.h), through the plan the forward ran with
    // (as the plain route's input gradient uses the forward's W ⊙ M_t); the kernels apply the
    // ReLU's gate to dy as they read it and add the bias gradient, so dy ⊙ act'(y) is never
    // written out. All tasks in one call: tasks on one x share its transposition, and with
    // dx_sum the tasks' input gradients are summed as they are made.
    const int64_t B = xs[0]->dim(0);
    const bool relu = act_ == Activation::ReLU;
    std::vector<MaskedSparseTask> parts(tasks.size());
    for (size_t i = 0; i < tasks.size(); ++i) {
      TaskState& t = tasks_[static_cast<size_t>(tasks[i])];
      parts[i].plan = t.sparse.get();
      parts[i].x = t.x.data<float>();
      parts[i].dy = dys[i]->data<float>();
      parts[i].relu_y = relu ? t.y.data<float>() : nullptr;
      t.dx = need_dx && !dx_sum ? ensure_buffer(t.dx_buf, B, in_, t.x.dtype(), t.x.device()) : Tensor();
      if (t.dx.defined()) parts[i].dx = t.dx.data<float>();
    }
    masked_sparse_weight_grad(parts, B, weight_->grad.data<float>(), bias_->grad.data<float>());
    if (dx_sum) {
      dx_sum->sum = ensure_buffer(dx_sum->buffer, B, in_, xs[0]->dtype(), xs[0]->device());
      dx_sum->any = true;
      masked_sparse_input_grad(parts, B, weight_->value.data<float>(), dx_sum->sum.data<float>());
    } else if (need_dx) {
      masked_sparse_input_grad(parts, B, weight_->value.data<float>(), nullptr);
    }
    return;
  }
  for (size_t i = 0; i < tasks.size(); ++i)
    dpres.push_back(&pre_activation_grad(tasks[i], tasks_[static_cast<size_t>(tasks[i])], *dys[i]));
  if (!fused) {  // the plain route, one task after the other
    for (size_t i = 0; i < tasks.size(); ++i) {
      TaskState& t = tasks_[static_cast<size_t>(tasks[i])];
      if (t.fused) {  // its forward was fused with other rows: run this task's product fused alone
        backward_tasks({tasks[i]}, {dys[i]}, need_dx);
        continue;
      }
      backward_plain(t, *dpres[i], need_dx);
    }
    return;
  }
  for (int task : tasks) bits.push_back(mask_bits_on_device(tasks_[static_cast<size_t>(task)]));
  ops::masked_linear_weight_grad(weight_->grad, xs, dpres, bits);
  for (const Tensor* dpre : dpres) ops::bias_grad(bias_->grad, *dpre);
  std::vector<Tensor*> dxs;
  for (int task : tasks) {
    TaskState& t = tasks_[static_cast<size_t>(task)];
    if (!need_dx) {
      t.dx = Tensor();
      continue;
    }
    t.dx = ensure_buffer(t.dx_buf, t.x.dim(0), in_, t.x.dtype(), t.x.device());
    dxs.push_back(&t.dx);
  }
  if (need_dx) ops::masked_linear_input_grad(dxs, dpres, weight_->value, bits);
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
  chains_.resize(static_cast<size_t>(std::max(num_tasks, 0)));
}

const Tensor& MaskedMLP::forward(int task, const Tensor& x) {
  forward_tasks({task}, x);
  return output(task);
}

const Tensor& MaskedMLP::backward(int task, const Tensor& dy, bool need_dx) {
  backward_tasks({task}, {&dy}, need_dx);
  return need_dx ? input_grad(task) : none_;
}

bool MaskedMLP::chained_route(const std::vector<int>& tasks, const Tensor& x) {
  NCSREC_CHECK(!tasks.empty(), "masked MLP forward without a task");
  std::vector<bool> seen(chains_.size(), false);
  for (int task : tasks) {
    layers_.front().check_input(task, x);  // the task's index, x's shape, dtype and device, the mask's shape
    NCSREC_CHECK(!seen[static_cast<size_t>(task)], "masked MLP forward: task " << task << " twice");
    seen[static_cast<size_t>(task)] = true;
  }
  if (layers_.size() < 2 || x.device() != Device::CPU || x.dtype() != DType::F32) return false;
  for (MaskedLinear& layer : layers_)
    if (!layer.fused_route(tasks, x.dim(0))) return false;
  return true;
}

bool MaskedMLP::chained(int task) const {
  for (const MaskedLinear& layer : layers_)
    if (layer.tasks_[static_cast<size_t>(task)].chained) return true;
  return false;
}

void MaskedMLP::forward_tasks(const std::vector<int>& tasks, const Tensor& x) {
  if (chained_route(tasks, x)) {
    forward_chained(tasks, x);
    return;
  }
  std::vector<const Tensor*> inputs(tasks.size(), &x);
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (l > 0)
      for (size_t i = 0; i < tasks.size(); ++i) inputs[i] = &layers_[l - 1].output(tasks[i]);
    layers_[l].forward_tasks(tasks, inputs);
  }
}

void MaskedMLP::forward_chained(const std::vector<int>& tasks, const Tensor& x) {
  const int64_t B = x.dim(0);
  const size_t L = layers_.size();
  for (int task : tasks) {
    Chain& c = chains_[static_cast<size_t>(task)];
    c.rows = B;
    c.x = x;  // shares storage: the caller keeps x unchanged until backward
    c.y_buf.resize(L - 1);
    c.y.resize(L - 1);
    c.dpre_buf.resize(L - 1);
    c.dpre.resize(L - 1);
    for (size_t l = 0; l + 1 < L; ++l) {
      const int64_t n = layers_[l].out();
      c.y[l] = ensure_buffer(c.y_buf[l], masked_tiled_rows(B), n, DType::F32, Device::CPU);
    }
  }
  for (size_t l = 0; l < L; ++l) {
    MaskedLinear& layer = layers_[l];
    const bool last = l + 1 == L;
    std::vector<MaskedSparseTask> parts(tasks.size());
    for (size_t i = 0; i < tasks.size(); ++i) {
      MaskedLinear::TaskState& t = layer.tasks_[static_cast<size_t>(tasks[i])];
      NCSREC_CHECK(t.mask.same_shape(layer.in(), layer.out()),
                   "task " << tasks[i] << " mask [" << t.mask.rows << ", " << t.mask.cols << "] no longer fits the ["
                           << layer.in() << ", " << layer.out() << "] weight of masked layer " << l);
      Chain& c = chains_[static_cast<size_t>(tasks[i])];
      parts[i].plan = &layer.sparse_plan(t);
      parts[i].x = l == 0 ? x.data<float>() : c.y[l - 1].data<float>();
      parts[i].x_tiled = l > 0;
      t.y = last ? ensure_buffer(t.y_buf, B, layer.out(), DType::F32, Device::CPU) : Tensor();
      parts[i].y = last ? t.y.data<float>() : c.y[l].data<float>();
      parts[i].y_tiled = !last;
      t.x = Tensor();
      t.dx = Tensor();
      t.fused = true;
      t.chained = true;
    }
    masked_sparse_forward(parts, B, layer.weight()->value.data<float>(), layer.bias()->value.data<float>(),
                          layer.activation() == Activation::ReLU);
  }
}

void MaskedMLP::backward_chained(const std::vector<int>& tasks, const std::vector<const Tensor*>& dys, bool need_dx,
                                 GradientSum* dx_sum) {
  const size_t L = layers_.size();
  const int64_t B = chains_[static_cast<size_t>(tasks[0])].rows;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const Tensor& dy = *dys[i];
    NCSREC_CHECK(dy.ndim() == 2 && dy.dim(0) == B && dy.dim(1) == out() && dy.dtype() == DType::F32 &&
                     dy.device() == Device::CPU,
                 "masked MLP backward for task " << tasks[i] << " expects dy [" << B << ", " << out()
                                                 << "] (f32, cpu), got " << dy.describe());
    Chain& c = chains_[static_cast<size_t>(tasks[i])];
    for (size_t l = 0; l + 1 < L; ++l) {
      const int64_t n = layers_[l].out();
      c.dpre[l] = ensure_buffer(c.dpre_buf[l], masked_tiled_rows(B), n, DType::F32, Device::CPU);
    }
  }
  for (size_t l = L; l-- > 0;) {
    MaskedLinear& layer = layers_[l];
    const bool last = l + 1 == L;
    std::vector<MaskedSparseTask> parts(tasks.size());
    for (size_t i = 0; i < tasks.size(); ++i) {
      MaskedLinear::TaskState& t = layer.tasks_[static_cast<size_t>(tasks[i])];
      NCSREC_CHECK(t.chained && t.sparse, "masked MLP backward for task " << tasks[i] << ": layer " << l
                                                                         << " ran outside the chain since its forward");
      Chain& c = chains_[static_cast<size_t>(tasks[i])];
      parts[i].plan = t.sparse.get();
      parts[i].x = l == 0 ? c.x.data<float>() : c.y[l - 1].data<float>();
      parts[i].x_tiled = l > 0;
      if (last) {  // the MLP's output gradient, gated by the last layer's ReLU as the tiles are read
        parts[i].dy = dys[i]->data<float>();
        parts[i].relu_y = layer.activation() == Activation::ReLU ? t.y.data<float>() : nullptr;
      } else {  // already gated, by the layer above as it wrote it
        parts[i].dy = c.dpre[l].data<float>();
        parts[i].dy_tiled = true;
      }
      t.dx = Tensor();
      if (l > 0) {
        parts[i].dx = c.dpre[l - 1].data<float>();
        parts[i].dx_tiled = true;
        if (layers_[l - 1].activation() == Activation::ReLU) parts[i].dx_gate = c.y[l - 1].data<float>();
      } else if (need_dx && !dx_sum) {
        t.dx = ensure_buffer(t.dx_buf, B, layer.in(), DType::F32, Device::CPU);
        parts[i].dx = t.dx.data<float>();
      }
    }
    masked_sparse_weight_grad(parts, B, layer.weight()->grad.data<float>(), layer.bias()->grad.data<float>());
    const float* w = layer.weight()->value.data<float>();
    if (l > 0 || (need_dx && !dx_sum)) {
      masked_sparse_input_grad(parts, B, w, nullptr);
    } else if (dx_sum) {
      dx_sum->sum = ensure_buffer(dx_sum->buffer, B, in_, DType::F32, Device::CPU);
      dx_sum->any = true;
      masked_sparse_input_grad(parts, B, w, dx_sum->sum.data<float>());
    }
  }
}

const Tensor* MaskedMLP::backward_any(const std::vector<int>& tasks, const std::vector<const Tensor*>& dys,
                                      bool need_dx, bool sum) {
  NCSREC_CHECK(!tasks.empty() && tasks.size() == dys.size(),
               "masked MLP backward_tasks: " << tasks.size() << " tasks, " << dys.size() << " gradients");
  bool all = true, none = true;
  std::vector<bool> seen(chains_.size(), false);
  for (size_t i = 0; i < tasks.size(); ++i) {
    NCSREC_CHECK(tasks[i] >= 0 && tasks[i] < num_tasks(), "masked MLP backward: task " << tasks[i] << " of "
                                                                                       << num_tasks());
    NCSREC_CHECK(!seen[static_cast<size_t>(tasks[i])], "masked MLP backward_tasks: task " << tasks[i] << " twice");
    seen[static_cast<size_t>(tasks[i])] = true;
    NCSREC_CHECK(dys[i] != nullptr, "masked MLP backward_tasks: gradient " << i << " is null");
    const bool on = chained(tasks[i]);
    all = all && on && chains_[static_cast<size_t>(tasks[i])].rows == chains_[static_cast<size_t>(tasks[0])].rows;
    none = none && !on;
  }
  if (all) {
    if (sum) dx_sum_.reset();
    backward_chained(tasks, dys, need_dx, sum ? &dx_sum_ : nullptr);
    return sum ? &dx_sum_.sum : nullptr;
  }
  if (none) {
    const std::vector<const Tensor*> grads = backward_above_first(tasks, dys);
    if (sum) return &layers_.front().backward_tasks_sum(tasks, grads);
    layers_.front().backward_tasks(tasks, grads, need_dx);
    return nullptr;
  }
  // Chained and unchained tasks (or chains of different batches): one task after the other, in
  // order, which adds each layer's parameter gradients in the same order; the input gradients
  // summed in task order.
  dx_sum_.reset();
  for (size_t i = 0; i < tasks.size(); ++i) {
    backward_any({tasks[i]}, {dys[i]}, need_dx || sum, false);
    if (!sum) continue;
    dx_sum_.add(input_grad(tasks[i]));
    layers_.front().tasks_[static_cast<size_t>(tasks[i])].dx = Tensor();  // as backward_tasks_sum promises
  }
  return sum ? &dx_sum_.sum : nullptr;
}

void MaskedMLP::backward_tasks(const std::vector<int>& tasks, const std::vector<const Tensor*>& dys, bool need_dx) {
  backward_any(tasks, dys, need_dx, false);
}

const Tensor& MaskedMLP::backward_tasks_sum(const std::vector<int>& tasks, const std::vector<const Tensor*>& dys) {
  return *backward_any(tasks, dys, true, true);
}

std::vector<const Tensor*> MaskedMLP::backward_above_first(const std::vector<int>& tasks,
                                                          const std::vector<const Tensor*>& dys) {
  std::vector<const Tensor*> grads = dys;
  for (size_t l = layers_.size(); l-- > 1;) {
    layers_[l].backward_tasks(tasks, grads, true);
    for (size_t i = 0; i < tasks.size(); ++i) grads[i] = &layers_[l].input_grad(tasks[i]);
  }
  return grads;
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

// Masked linear layer and MLP for neuron-connection sharing (NCS4CVR / LT4REC, PAPERS.md §1–2):
// one weight W shared by all tasks, one fixed binary mask per task, y_t = act(x·(W ⊙ M_t) + b).
//
// Shapes: x [B, in], W [in, out] (row-major, as in Linear), M_t [in, out] bit-packed, b [out],
// y_t [B, out]. Only W is masked; the bias is shared and unmasked (as in the reference code).
// Gradient routing is the point of the layer: ∂y_t/∂W is zero outside M_t, so task t's
// backward adds exactly 0 to dW there. Weights in every mask are shared, weights in some masks
// are task-private, weights in none are dead (see split_connections in core/masks.h).
//
// Per-task state: each task has its own masked-weight, output, cached-input and gradient
// buffers, so a joint step may run forward(0), forward(1), backward(1), backward(0).
// Gradient contract (as Linear): dW and db accumulate (+=); dx is written (=).
//
// Two routes run the products (MaskedRoute). The plain route materialises W ⊙ M_t
// (apply_mask) and runs one dense product per task. The fused route skips that: on a device,
// forward_tasks / backward_tasks hand every task of a call to one kernel that reads W once and
// applies each task's mask on the fly (dispatch.h masked_linear_*; the masks use a device copy
// of each task's bits); on the CPU, each task's products run over its mask's connections only
// (core/sparse_train.h, planned once per mask). Learned masks' score gradients always take the
// plain route.
//
// Not here: mask learning (IMP is prune_global_magnitude plus a trainer); CSR inference and
// export (core/sparse.h).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/layers/linear.h"
#include "core/masks.h"
#include "core/params.h"
#include "core/sparse_train.h"
#include "core/tensor.h"

namespace ncsrec {

// How a masked layer runs its products (run.masked_route):
//   plain  W ⊙ M_t written by apply_mask, then one dense product per task (on a device through
//          cuBLASLt forward with its epilogue, at run.matmul's precision; cuBLAS backward);
//   fused  on a device: one kernel per product serving every task of the call, the masks
//          applied on the fly (FP32 or FP64 sums, no tensor cores); on the CPU: the products
//          over each task's mask connections only (core/sparse_train.h; f32 with AVX-512F,
//          the plain route otherwise);
//   auto   on a device, for each layer shape (device, dtype, tasks, in, out, activation,
//          run.matmul), the route that a measurement at the shape's first use, at that batch's
//          rows, finds faster (forward and backward); fused only when it is at least 5% faster.
//          Training measures at its batch size when it plans the step's memory, and smaller
//          batches take the same route. Each process measures anew (a --resume too), close
//          timings may choose differently, and the two routes round differently: set plain or
//          fused for bit-reproducible device runs and resumes.
//          On the CPU, a rule instead of a measurement, so that runs and resumes repeat bit for
//          bit: fused when every task of the call keeps at most kCpuSparseDensity of the weights
//          and the batch has at least kCpuSparseRows rows (the break-even measured in
//          docs/results/bench.md).
enum class MaskedRoute : int { Auto = 0, Plain = 1, Fused = 2 };
constexpr double kCpuSparseDensity = 0.4;
constexpr int64_t kCpuSparseRows = 256;
// "auto", "plain", "fused", in MaskedRoute order.
const std::vector<std::string>& masked_route_names();
// A name to its route; ConfigError for anything else.
MaskedRoute parse_masked_route(const std::string& name);
// The route for the whole process (default auto).
void set_masked_route(MaskedRoute route);
MaskedRoute masked_route();

// One measurement of `auto`: a layer shape, the rows it was measured at, and the two routes' times for one forward and backward of
// every task (milliseconds, the best of three after a warm-up), and which route it chose.
struct MaskedRouteChoice {
  std::string device, dtype;
  int tasks = 0;
  int64_t rows = 0, in = 0, out = 0;
  double plain_ms = 0, fused_ms = 0;
  bool fused = false;
};
// Every measurement so far in this process, in the order they were made.
std::vector<MaskedRouteChoice> masked_route_choices();
// One line per measurement: "720→512, 2 tasks, 4096 rows (cuda f32): plain 0.31 ms, fused 0.45 ms: plain".
std::string describe_masked_route_choices();
// The routes CPU masked layers have taken in this process: "fused", "plain", "fused and plain",
// or "none" (no masked layer ran on the CPU).
std::string cpu_masked_routes_taken();

class MaskedLinear {
 public:
  // Parameters `<name>.weight` [in, out] (Xavier uniform) and `<name>.bias` [out] (zeros);
  // `num_tasks` masks, all ones (every task sees the dense layer) until set_mask.
  MaskedLinear(ParamStore& store, const std::string& name, int64_t in, int64_t out, int num_tasks,
               Activation act = Activation::None);

  // Replaces task `task`'s mask; it must be [in, out]. Takes effect at the next forward.
  void set_mask(int task, const BitMask& mask);
  const BitMask& mask(int task) const;
  // For in-place pruning (prune_global_magnitude); the shape must stay [in, out].
  BitMask& mutable_mask(int task);

  // y_t = act(x·(W ⊙ M_t) + b). Returns task `task`'s output buffer, valid until that task's
  // next forward. Re-materialises W ⊙ M_t every call, because W moves between steps. x must
  // stay unchanged until this task's backward (it is cached by reference).
  const Tensor& forward(int task, const Tensor& x);
  // Given dy = dL/dy_t [B, out] for task `task`'s last forward: dW += (xᵀ·dpre) ⊙ M_t,
  // db += colsum(dpre); returns dx = dpre·(W ⊙ M_t)ᵀ [B, in] (this task's buffer) when
  // `need_dx`, else an undefined tensor. dpre = dy ⊙ act'(y_t).
  const Tensor& backward(int task, const Tensor& dy, bool need_dx = true);

  // forward(t, x_t) for every task t in `tasks` (distinct; inputs xs[i] for tasks[i]), as one
  // fused product where the layer's route for the shape is fused; output(t) is then y_t.
  void forward_tasks(const std::vector<int>& tasks, const std::vector<const Tensor*>& xs);
  // backward(t, dy_t, need_dx) for every task in `tasks`; input_grad(t) is then dx_t. The weight
  // and bias gradients accumulate in task order, as the calls one by one would.
  void backward_tasks(const std::vector<int>& tasks, const std::vector<const Tensor*>& dys, bool need_dx = true);
  // backward_tasks for tasks that all read one input, returning Σ_t dx_t (this layer's buffer),
  // the gradient of that input; input_grad(t) is then undefined. Bit-identical to summing the
  // tasks' dx in task order; the CPU's fused route sums them as it makes them, writing no
  // task's own.
  const Tensor& backward_tasks_sum(const std::vector<int>& tasks, const std::vector<const Tensor*>& dys);
  const Tensor& output(int task) const;
  const Tensor& input_grad(int task) const;

  // Learned masks (ours, PAPERS.md §8): when set, task `task`'s backward also accumulates the
  // straight-through gradient of its mask scores, dL/dS_t += dL/d(W⊙M_t) ⊙ W = (xᵀ·dpre) ⊙ W,
  // over every weight (a weight outside the mask still learns whether it should be in).
  // `grad` is an [in, out] view of the store's gradient buffer.
  void set_score_grad(int task, const Tensor& grad);

  int64_t in() const { return in_; }
  int64_t out() const { return out_; }
  int num_tasks() const { return static_cast<int>(tasks_.size()); }
  Activation activation() const { return act_; }
  Param* weight() const { return weight_; }
  Param* bias() const { return bias_; }

 private:
  friend class MaskedMLP;  // its chained route (MaskedMLP::forward_tasks) runs the layers' products itself

  struct TaskState {
    BitMask mask;             // [in, out]
    Tensor w_masked;          // [in, out]: W ⊙ M_t as of this task's last forward
    Tensor x;                 // cached input (a reference to the caller's tensor)
    Tensor y_buf, y, dpre_buf, dpre, dx_buf, dx;
    Tensor score_grad;        // learned masks: dL/dS_t [in, out] (undefined: not learned)
    Tensor device_bits;       // the mask's bytes in the weight's device memory (a device layer)
    bool device_bits_stale = true;
    bool fused = false;       // the last forward took the fused route (its backward must too)
    bool chained = false;     // the last forward ran inside its MaskedMLP's chain
    // The CPU's fused route: the plan of the last forward (its backward runs the same one).
    std::unique_ptr<const MaskedSparsePlan> sparse;
    uint32_t sparse_crc = 0;  // CRC-32C of the mask's bytes the plan was made from
  };
  // The CPU's fused route: the task's mask in the sparse kernels' orientations, planned again
  // when the mask's bytes changed (checked by CRC at every call, so that a mask edited through a
  // reference held from mutable_mask cannot leave a stale plan).
  const MaskedSparsePlan& sparse_plan(TaskState& t);
  // The task's mask bits in the weight's device memory (copied up when the mask changed);
  // null for a CPU layer, whose kernels read the mask itself.
  const uint8_t* mask_bits_on_device(TaskState& t);
  TaskState& task_state(int task, const char* what);
  // Checks x for task `task`'s forward; returns the task's state.
  TaskState& check_input(int task, const Tensor& x);
  void forward_plain(TaskState& t, const Tensor& x);
  void backward_plain(TaskState& t, const Tensor& dpre, bool need_dx);
  // backward_tasks; with dx_sum, the CPU's fused route writes Σ_t dx_t there (and sets it to a
  // view of its buffer) instead of each task's dx; the other routes ignore it.
  void backward_tasks(const std::vector<int>& tasks, const std::vector<const Tensor*>& dys, bool need_dx,
                      GradientSum* dx_sum);
  // dy [B, out] for the task's last forward (of B rows), of the input's dtype and device.
  void check_output_grad(int task, const TaskState& t, const Tensor& dy) const;
  // dy ⊙ act'(y_t) for the task's last forward (dy itself without an activation).
  const Tensor& pre_activation_grad(int task, TaskState& t, const Tensor& dy);
  // Whether `tasks` tasks at `rows` rows run fused here (route, device, backend, measurement).
  bool fused_route(const std::vector<int>& tasks, int64_t rows);
  // The CPU's rule for auto: every task's mask sparse enough and the batch large enough.
  bool cpu_sparse_pays(const std::vector<int>& tasks, int64_t rows) const;
  // auto's measurement for this layer's shape: true when the fused route is faster.
  bool measure_fused_faster(int tasks, int64_t rows);

  int64_t in_, out_;
  Activation act_;
  Param* weight_ = nullptr;
  Param* bias_ = nullptr;
  std::vector<TaskState> tasks_;
  Tensor dw_scratch_;  // [in, out]: xᵀ·dpre before masking; shared, used only inside backward
  Tensor none_;
  GradientSum dx_sum_;  // backward_tasks_sum's result
};

// A stack of MaskedLinear layers, ReLU between them; `<prefix>.<i>.weight` / `.bias`.
// `final_activation` applies ReLU after the last layer too (the NCS shared MLP uses it, so its
// 128-wide output feeds the unmasked task heads through a ReLU).
//
// The chained route. When every layer takes the CPU's fused route for the tasks of a forward
// (core/sparse_train.h), the MLP runs them as one chain: the activations between its layers,
// and their gradients, stay in the sparse kernels' tiled layout (never written row-major and
// transposed again by the next layer), and the gradient coming down from a layer is gated by
// the ReLU below as it is written. Only the MLP's input, output and their gradients are
// row-major. The results are bit-identical to the layers one by one. Inside a chain, a layer's
// own output and backward are not available (they say so) and its input gradient is undefined:
// go through the MLP. A layer run on its own after a chained forward takes that task out of the
// chain: the MLP's backward then goes through the layers.
class MaskedMLP {
 public:
  MaskedMLP(ParamStore& store, const std::string& prefix, int64_t in, const std::vector<int64_t>& sizes,
            int num_tasks, bool final_activation);
  const Tensor& forward(int task, const Tensor& x);
  const Tensor& backward(int task, const Tensor& dy, bool need_dx = true);
  // forward(t, x) for every task in `tasks` on one input, layer by layer, so that each layer
  // may serve all of them in one fused product; output(t) is then task t's output.
  void forward_tasks(const std::vector<int>& tasks, const Tensor& x);
  // backward(t, dys[i], need_dx) for tasks[i], layer by layer; input_grad(t) is then task t's
  // dx (when need_dx). Gradients accumulate in the order of the calls one task at a time.
  void backward_tasks(const std::vector<int>& tasks, const std::vector<const Tensor*>& dys, bool need_dx = true);
  // backward_tasks after forward_tasks, returning Σ_t dx_t, the gradient of the tasks' one input
  // (MaskedLinear::backward_tasks_sum); input_grad(t) is then undefined.
  const Tensor& backward_tasks_sum(const std::vector<int>& tasks, const std::vector<const Tensor*>& dys);
  const Tensor& output(int task) const { return layers_.back().output(task); }
  const Tensor& input_grad(int task) const { return layers_.front().input_grad(task); }
  // Learned masks (ours, PAPERS.md §8): when set, task `task`'s backward also accumulates the
  // straight-through gradient of its mask scores, dL/dS_t += dL/d(W⊙M_t) ⊙ W = (xᵀ·dpre) ⊙ W,
  // over every weight (a weight outside the mask still learns whether it should be in).
  // `grad` is an [in, out] view of the store's gradient buffer.
  void set_score_grad(int task, const Tensor& grad);

  int64_t in() const { return in_; }
  int64_t out() const { return layers_.back().out(); }
  size_t depth() const { return layers_.size(); }
  int num_tasks() const { return layers_.front().num_tasks(); }
  MaskedLinear& layer(size_t i) { return layers_[i]; }
  const MaskedLinear& layer(size_t i) const { return layers_[i]; }

  // The masked weights' values, layer by layer (valid after the store is finalised), and the
  // matching masks of one task: together the arguments of prune_global_magnitude.
  std::vector<const Tensor*> masked_weights() const;
  std::vector<BitMask*> task_masks(int task);
  std::vector<const BitMask*> task_masks(int task) const;
  // Sets one task's masks, one per layer, each [in_l, out_l].
  void set_task_masks(int task, const std::vector<BitMask>& masks);
  // Number of maskable weights (sum of in_l · out_l; 532,480 for 720 → 512 → 256 → 128).
  int64_t masked_weight_count() const;
  // Shared / private / dead connections summed over all layers.
  MaskSplit split() const;

 private:
  // A task's chained forward: its input and rows, and per layer but the last, the tiled output
  // and the tiled gradient of that output (gated by its ReLU).
  struct Chain {
    int64_t rows = 0;
    Tensor x;
    std::vector<Tensor> y_buf, y, dpre_buf, dpre;
  };
  // Whether `tasks` run chained on x: at least two layers, each taking the CPU's fused route.
  bool chained_route(const std::vector<int>& tasks, const Tensor& x);
  // Whether the task's last forward ran the chain and it is still what its backward goes from:
  // a layer that ran the task since (on its own, or through an unchained forward) has left it.
  bool chained(int task) const;
  void forward_chained(const std::vector<int>& tasks, const Tensor& x);
  // The backward of chained tasks of one batch size; with dx_sum, Σ_t dx_t goes there instead
  // of each task's own dx (as MaskedLinear::backward_tasks_sum).
  void backward_chained(const std::vector<int>& tasks, const std::vector<const Tensor*>& dys, bool need_dx,
                        GradientSum* dx_sum);
  // backward_tasks, or with `sum` backward_tasks_sum (returning the sum), for any mix of chained
  // and unchained tasks.
  const Tensor* backward_any(const std::vector<int>& tasks, const std::vector<const Tensor*>& dys, bool need_dx,
                             bool sum);
  // The backward of every layer but the first, last to second; returns the first layer's dy.
  std::vector<const Tensor*> backward_above_first(const std::vector<int>& tasks, const std::vector<const Tensor*>& dys);

  int64_t in_;
  std::vector<MaskedLinear> layers_;
  std::vector<Chain> chains_;  // by task
  GradientSum dx_sum_;         // backward_tasks_sum's result when it is summed here
  Tensor none_;
};

}  // namespace ncsrec

// What sits between the input vector and the task towers: the part of a multi-task model where
// the tasks share (or do not share) computation.
//
//   BottomBlock  one MLP every task reads (hard sharing)
//   MaskedBlock  NCS: one masked MLP, each task through its own masks (PAPERS.md §1–2)
//   MmoeBlock    n experts, one softmax gate per task over them (PAPERS.md §6)
//   PleBlock     levels of CGC: task-specific and shared experts, task gates over
//                [own; shared], a shared gate over all experts on non-final levels
//
// Experts of MMoE, and the shared experts of a one-level PLE (CGC), may be masked shared layers:
// expert j is then one MaskedMLP, and task t's gate mixes the experts as seen through t's masks,
// so masks and gates combine. (On a multi-level PLE the shared gate also reads the shared
// experts and no task's mask is the right one for it, so masked experts need levels: 1.)
//
// A block computes the outputs of the active tasks only (a single-task step of the alternating
// schedule) and returns the gradient of its input summed over them.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/layers/gate.h"
#include "core/layers/masked_linear.h"
#include "models/feed_forward.h"

namespace ncsrec {

// A masked linear layer of a block and its stable name (masks are saved and loaded by it).
struct MaskedLayerRef {
  std::string name;  // "shared.0", "expert.2.1", "ple.0.shared.expert.1.0"
  MaskedLinear* layer = nullptr;
};

class SharedBlock {
 public:
  virtual ~SharedBlock() = default;
  virtual int64_t out_dim() const = 0;
  // Computes task t's output for every t with active[t].
  virtual void forward(const Tensor& x, const std::vector<bool>& active, const Pass& pass) = 0;
  // Task t's output of the last forward (t active then).
  virtual const Tensor& output(size_t task) = 0;
  // dy[t]: dL/d output(t), null for a task not active. Returns dL/dx (the block's buffer, which
  // the caller may write into: the block does not read it again before its next backward).
  virtual const Tensor& backward(const std::vector<const Tensor*>& dy) = 0;
  // Every masked layer, in a stable order (empty for unmasked blocks).
  virtual std::vector<MaskedLayerRef> masked_layers() { return {}; }
  // Multiply-adds per input row for one joint forward of every task, for cost tables.
  virtual int64_t multiply_adds_per_row() const = 0;
};

// An expert: a FeedForward every task reads, or (masked) a MaskedMLP each task reads through
// its own masks.
struct ExpertOptions {
  std::vector<int64_t> sizes;  // hidden sizes, ReLU after each (the last included)
  LayerOptions layers;         // norm, dropout, APG (unmasked experts only)
  bool masked = false;
  std::vector<int64_t> masked_layers;  // which of an expert's layers carry masks (masked experts)
};

std::unique_ptr<SharedBlock> make_bottom_block(ParamStore& store, int64_t in, const std::vector<int64_t>& sizes,
                                               const LayerOptions& layers);
std::unique_ptr<SharedBlock> make_masked_block(ParamStore& store, int64_t in, const std::vector<int64_t>& sizes,
                                               const std::vector<int64_t>& masked_layers, int num_tasks,
                                               MaskedMLP** mlp);
// Gates named `gate.<task>`; experts `expert.<j>`.
std::unique_ptr<SharedBlock> make_mmoe_block(ParamStore& store, int64_t in, int num_experts,
                                             const ExpertOptions& experts, const std::vector<std::string>& tasks);
// Level l: `ple.<l>.<task>.expert.<j>`, `ple.<l>.shared.expert.<j>`, gates `ple.<l>.<task>.gate`
// and `ple.<l>.shared.gate`. Task-owned parameters are marked with Param::task.
std::unique_ptr<SharedBlock> make_ple_block(ParamStore& store, int64_t in, int levels, int task_experts,
                                            int shared_experts, const ExpertOptions& experts,
                                            const std::vector<std::string>& tasks);

// Marks every parameter whose name starts with `prefix` as owned by `task` (Param::task).
void mark_task_owned(ParamStore& store, const std::string& prefix, int task);

}  // namespace ncsrec

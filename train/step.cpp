#include "train/step.h"

#include <algorithm>

#include "core/dispatch.h"
#include "train/replicas.h"

namespace ncsrec {

Device training_device(const TrainConfig& config) {
  if (config.device == "cpu") return Device::CPU;
  const bool backend = device_available(Device::CUDA);
  if (config.device == "cuda") {
    if (!backend) throw ConfigError("run.device is cuda but no GPU backend is available; set run.device: cpu or auto");
    return Device::CUDA;
  }
  return backend ? Device::CUDA : Device::CPU;
}

Optimizers make_optimizers(const OptimizerConfig& dense, const OptimizerConfig& sparse, MultiTaskModel& model) {
  Optimizers o;
  o.dense = make_dense_optimizer(dense, model.params().numel(), model.dtype(), model.device());
  o.dense->set_decay_mask(model.params().decay_mask());
  for (auto& table : model.tables()) o.sparse.push_back(make_sparse_optimizer(sparse, table.shard()));
  std::vector<std::vector<std::pair<std::string, Tensor*>>> state;
  for (const auto& s : o.sparse) state.push_back(s->state());
  model.place_tables_on_device(sparse, state);
  return o;
}

Optimizers make_optimizers(const TrainConfig& config, MultiTaskModel& model) {
  Optimizers o = make_optimizers(config.dense_optimizer, config.sparse_optimizer, model);
  validate_lr_schedule(config.train.lr_schedule);
  o.lr_schedule = config.train.lr_schedule;
  o.clip_grad_norm = config.train.clip_grad_norm;
  return o;
}

namespace {

// The dense gradient's sum over ranks, started bucket by bucket as the backward finishes each
// range of the buffer and finished after it (one call after it where the buffer is not in the
// memory the communicator takes). Buckets are cut from the end of each range, the same on
// every rank.
class DenseGradientSum {
 public:
  DenseGradientSum(Communicator& comm, Tensor& grads, int64_t bucket_bytes)
      : comm_(comm), grads_(grads),
        bucket_(std::max<int64_t>(1, bucket_bytes / static_cast<int64_t>(dtype_size(grads.dtype())))),
        overlapped_(comm.world_size() > 1 && comm.takes_in_place(grads)) {}

  void ready(int64_t begin, int64_t end) {
    if (!overlapped_) return;
    const size_t elem = dtype_size(grads_.dtype());
    for (int64_t hi = end; hi > begin;) {
      const int64_t lo = std::max(begin, hi - bucket_);
      comm_.start_all_reduce_sum(static_cast<char*>(grads_.raw()) + static_cast<size_t>(lo) * elem, hi - lo,
                                 grads_.dtype());
      hi = lo;
    }
  }

  // A step that throws between the first start and the finish gives its sums up: nobody may
  // wait for them, and the gradient buffer may be freed during the unwinding.
  ~DenseGradientSum() { comm_.abandon_all_reduces(); }  // nothing once finished
  DenseGradientSum(const DenseGradientSum&) = delete;
  DenseGradientSum& operator=(const DenseGradientSum&) = delete;

  void finish() {
    if (overlapped_) comm_.finish_all_reduces();
    else comm_.all_reduce_sum(grads_);
  }

 private:
  Communicator& comm_;
  Tensor& grads_;
  int64_t bucket_;
  bool overlapped_;
};

}  // namespace

void plan_step_memory(MultiTaskModel& model, int64_t rows) {
  if (model.device() == Device::CPU) return;  // nothing on a device to plan
  model.plan_memory(rows);
  const uint8_t* all = model.params().trainable_mask_on_device();
  for (int task = -1; task < static_cast<int>(model.config().tasks.size()); ++task) model.update_mask_on_device(task);
  clip_grad_norm(model.params().grads(), 0.0, all);  // measures only (the gradient is 0)
}

StepLoss train_one_step(MultiTaskModel& model, Optimizers& optimizers, const Block& batch, int task, int64_t step,
                        bool exact_masks, Communicator& comm, StepStats* stats, Communicator* dense_comm,
                        int64_t bucket_bytes) {
  PhaseClock& clock = model.phase_clock();
  clock.start();
  std::vector<double> norms = model.local_normalizers(batch);
  comm.all_reduce_sum(norms.data(), static_cast<int64_t>(norms.size()));
  model.params().zero_grad();
  model.set_step(step);  // dropout masks: a function of (seed, step)
  clock.mark(StepPhase::AllReduce);
  DenseGradientSum dense_sum(dense_comm ? *dense_comm : comm, model.params().grads(), bucket_bytes);
  model.set_gradient_ready([&dense_sum](int64_t begin, int64_t end) { dense_sum.ready(begin, end); });
  struct Unhook {
    MultiTaskModel& model;
    ~Unhook() { model.set_gradient_ready(nullptr); }
  } unhook{model};
  // The rates follow the step alone (every rank alike); the tables on a device take theirs
  // during the backward, where their rows are updated.
  const double factor = lr_factor(optimizers.lr_schedule, step);
  optimizers.dense->set_lr(optimizers.dense->base_lr() * factor);
  for (auto& s : optimizers.sparse) s->set_lr(s->base_lr() * factor);
  if (!optimizers.sparse.empty()) model.set_device_table_lr(optimizers.sparse.front()->lr());
  StepLoss loss = model.train_step(batch, norms, task);
  // Each rank's loss is its share of the global mean: the sum over ranks is the loss. A task
  // not stepped reports NaN on every rank, and stays NaN.
  comm.all_reduce_sum(loss.per_task.data(), static_cast<int64_t>(loss.per_task.size()));
  comm.all_reduce_sum(&loss.total, 1);
  dense_sum.finish();
  clock.mark(StepPhase::AllReduce);

  // Every rank holds the same reduced gradient and step, so every rank clips alike.
  // The update mask where the parameters are (the host's own on the CPU).
  const uint8_t* update = exact_masks ? model.update_mask_on_device(task) : model.params().trainable_mask_on_device();
  const double grad_norm = clip_grad_norm(model.params().grads(), optimizers.clip_grad_norm, update);

  optimizers.dense->step(model.params().values(), model.params().grads(), step, update);
  model.apply_mask_penalty(task, optimizers.dense->lr());  // learned masks, sparsity: penalty
  clock.mark(StepPhase::DenseOptimizer);
  for (size_t t = 0; t < model.sparse_grads().size(); ++t) {  // empty for tables stepped on the device
    const SparseGrad& grad = model.sparse_grads()[t];
    if (grad.rows.empty()) continue;
    EmbeddingTable& shard = model.tables()[t].shard();
    optimizers.sparse[t]->step(shard, grad);
    for (int64_t row : grad.rows) shard.updated_step()[static_cast<size_t>(row)] = step;
  }
  clock.mark(StepPhase::SparseOptimizer);
  average_state_over_ranks(model, comm);  // BatchNorm's running statistics, from each rank's slice
  clock.mark(StepPhase::AllReduce);
  if (stats) {
    stats->grad_norm = grad_norm;
    stats->clipped = optimizers.clip_grad_norm > 0 && grad_norm > optimizers.clip_grad_norm;
    stats->lr = optimizers.dense->lr();
    stats->sparse_lr = optimizers.sparse.empty() ? 0.0 : optimizers.sparse.front()->lr();
  }
  return loss;
}

}  // namespace ncsrec

#include "train/step.h"

namespace ncsrec {

Optimizers make_optimizers(const OptimizerConfig& dense, const OptimizerConfig& sparse, MultiTaskModel& model) {
  Optimizers o;
  o.dense = make_dense_optimizer(dense, model.params().numel(), model.dtype(), Device::CPU);
  for (auto& table : model.tables()) o.sparse.push_back(make_sparse_optimizer(sparse, table));
  return o;
}

StepLoss train_one_step(MultiTaskModel& model, Optimizers& optimizers, const Block& batch, int task, int64_t step,
                        bool exact_masks, Communicator& comm) {
  std::vector<double> norms = model.local_normalizers(batch);
  comm.all_reduce_sum(norms.data(), static_cast<int64_t>(norms.size()));
  model.params().zero_grad();
  StepLoss loss = model.train_step(batch, norms, task);
  // Each rank's loss is its share of the global mean: the sum over ranks is the loss. A task
  // not stepped reports NaN on every rank, and stays NaN.
  comm.all_reduce_sum(loss.per_task.data(), static_cast<int64_t>(loss.per_task.size()));
  comm.all_reduce_sum(&loss.total, 1);
  comm.all_reduce_sum(model.params().grads());
  optimizers.dense->step(model.params().values(), model.params().grads(), step,
                         exact_masks ? model.update_mask(task) : nullptr);
  for (size_t t = 0; t < model.tables().size(); ++t)
    if (!model.sparse_grads()[t].rows.empty()) optimizers.sparse[t]->step(model.tables()[t], model.sparse_grads()[t]);
  return loss;
}

}  // namespace ncsrec

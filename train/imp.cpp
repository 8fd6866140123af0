#include "train/imp.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/data/reader.h"
#include "core/error.h"
#include "core/random.h"
#include "models/multitask_model.h"
#include "train/evaluate.h"
#include "train/json.h"
#include "train/mask_io.h"
#include "train/step.h"

namespace ncsrec {
namespace fs = std::filesystem;

namespace {

double mask_density(const std::vector<BitMask>& masks) {
  int64_t ones = 0, size = 0;
  for (const auto& m : masks) {
    ones += m.count();
    size += m.size();
  }
  return size ? static_cast<double>(ones) / static_cast<double>(size) : 1.0;
}

double task_auc(const EvalReport& report, const std::string& task) {
  for (const auto& v : report.views)
    if (v.name == task) return v.metrics.auc;
  return std::nan("");
}

}  // namespace

ModelSnapshot ModelSnapshot::capture(MultiTaskModel& model) {
  ModelSnapshot s;
  s.params = model.params().values().clone();
  for (auto& table : model.tables()) s.tables.push_back(table.shard().values().clone());
  return s;
}

void ModelSnapshot::restore(MultiTaskModel& model) const {
  model.params().values().copy_from(params);
  for (size_t i = 0; i < tables.size(); ++i) model.tables()[i].shard().values().copy_from(tables[i]);
}

ImpResult find_masks_imp(const TrainConfig& config, const DataSchema& schema, const std::vector<std::string>& train_files,
                         const std::vector<std::string>& valid_files, const std::string& run_dir, Communicator& comm,
                         Communicator* dense_comm) {
  const MaskSpec& spec = config.model.masks;
  const size_t T = config.model.tasks.size();
  const double p = imp_prune_fraction(spec.final_density, spec.rounds);
  ImpResult result;
  result.rounds.resize(T);
  std::vector<std::vector<std::vector<BitMask>>> all_masks(T);  // [task][round][layer]

  for (size_t t = 0; t < T; ++t) {
    const std::string& task = config.model.tasks[t].name;
    // One θ₀ for all tasks by default; the paper's code drew one per task.
    const uint64_t seed = spec.shared_init ? config.seed : hash_combine(config.seed, t + 1);
    MultiTaskModel model(config.model, schema, DType::F32, seed, &comm, training_device(config));
    const ModelSnapshot theta0 = ModelSnapshot::capture(model);
    std::vector<BitMask> masks;
    for (int l = 0; l < model.num_masked_layers(); ++l) masks.push_back(model.mask(static_cast<int>(t), l));

    for (int round = 0; round <= spec.rounds; ++round) {
      for (int l = 0; l < model.num_masked_layers(); ++l) model.set_mask(static_cast<int>(t), l, masks[static_cast<size_t>(l)]);
      // Rewinding covers the optimizer state too: a fresh optimizer starts from zero moments.
      // The step count, and so the lr schedule, restarts with each round.
      Optimizers optimizers = make_optimizers(config, model);
      int64_t step = 0;
      for (int64_t e = 0; e < spec.epochs_per_round; ++e) {
        Reader reader(training_reader_options(config, train_files, comm.rank(), comm.world_size(), e));
        Block batch;
        while (reader.next(batch)) {
          StepStats stats;
          const StepLoss loss =
              train_one_step(model, optimizers, batch, static_cast<int>(t), ++step, true, comm, &stats, dense_comm,
                             config.bucket_bytes());
          if (!std::isfinite(loss.total) || !std::isfinite(stats.grad_norm))
            throw UserError("IMP for task " + task + " diverged in round " + std::to_string(round) + " (" +
                            (std::isfinite(loss.total) ? "the dense gradient" : "loss") +
                            " is not finite): lower optimizer.lr or set train.clip_grad_norm");
        }
      }
      const EvalReport report = evaluate(model, valid_files, config, comm);
      ImpRound r;
      r.round = round;
      r.density = mask_density(masks);
      r.valid_auc = task_auc(report, task);
      result.rounds[t].push_back(r);
      all_masks[t].push_back(masks);
      if (comm.rank() == 0)
        std::fprintf(stderr, "imp: task %s round %d/%d: density %.2f%%, valid AUC %.4f\n", task.c_str(), round,
                     spec.rounds, 100 * r.density, r.valid_auc);
      if (round == spec.rounds) break;
      std::vector<BitMask*> mask_ptrs;
      for (auto& m : masks) mask_ptrs.push_back(&m);
      // Pruning reads the weights on the host.
      std::vector<Tensor> host_weights;
      for (const Tensor* w : model.masked_weights()) host_weights.push_back(w->to(Device::CPU));
      std::vector<const Tensor*> weights;
      for (const Tensor& w : host_weights) weights.push_back(&w);
      prune_global_magnitude(weights, mask_ptrs, p);
      // Rewind every parameter to θ₀ for the next round.
      theta0.restore(model);
    }
    int best = 0;
    for (const auto& r : result.rounds[t])
      if (r.valid_auc > result.rounds[t][static_cast<size_t>(best)].valid_auc) best = r.round;
    if (spec.keep == "last") best = spec.rounds;  // the final_density masks, whatever their AUC
    result.chosen.push_back(best);
    result.masks.push_back(all_masks[t][static_cast<size_t>(best)]);
  }

  if (comm.rank() == 0) {
    // Every round's masks (all tasks) and the chosen ones, as mask files any run can load.
    fs::create_directories(run_dir + "/masks");
    MultiTaskModel holder(config.model, schema, DType::F32, config.seed);
    for (int round = 0; round <= spec.rounds; ++round) {
      for (size_t t = 0; t < T; ++t)
        for (int l = 0; l < holder.num_masked_layers(); ++l)
          holder.set_mask(static_cast<int>(t), l, all_masks[t][static_cast<size_t>(round)][static_cast<size_t>(l)]);
      write_mask_file(run_dir + "/masks/round-" + std::to_string(round) + ".h5", holder);
    }
    for (size_t t = 0; t < T; ++t)
      for (int l = 0; l < holder.num_masked_layers(); ++l)
        holder.set_mask(static_cast<int>(t), l, result.masks[t][static_cast<size_t>(l)]);
    write_mask_file(run_dir + "/masks/chosen.h5", holder);
    JsonObject tasks;
    for (size_t t = 0; t < T; ++t) {
      std::string rounds = "[";
      for (const auto& r : result.rounds[t])
        rounds += (r.round ? ", " : "") +
                  JsonObject().add("round", r.round).add("density", r.density).add("valid_auc", r.valid_auc).str();
      rounds += "]";
      tasks.add_raw(config.model.tasks[t].name,
                    JsonObject().add("chosen_round", result.chosen[t]).add_raw("rounds", rounds).str());
    }
    std::ofstream(run_dir + "/masks/imp.json") << JsonObject()
                                                      .add("final_density", spec.final_density)
                                                      .add("rounds", spec.rounds)
                                                      .add("prune_fraction", p)
                                                      .add("keep", spec.keep)
                                                      .add("tasks", tasks)
                                                      .str()
                                               << "\n";
  }
  return result;
}

}  // namespace ncsrec

#include "train/init_from.h"

#include <fnmatch.h>

#include "core/error.h"
#include "core/hdf5_util.h"
#include "train/mask_io.h"

namespace ncsrec {

std::string map_param_name(const std::string& name, const std::vector<std::pair<std::string, std::string>>& map) {
  for (const auto& [from, to] : map)
    if (name.compare(0, from.size(), from) == 0) return to + name.substr(from.size());
  return name;
}

namespace {

bool matches_any(const std::string& name, const std::vector<std::string>& patterns) {
  for (const std::string& p : patterns)
    if (::fnmatch(p.c_str(), name.c_str(), 0) == 0) return true;
  return false;
}

}  // namespace

InitReport init_from_checkpoint(const InitSpec& spec, const TrainingState& state) {
  InitReport report;
  report.meta = read_checkpoint_meta(spec.from);  // recovers and verifies
  const std::string& dir = spec.from;
  const h5::File f = h5::File::open_read(dir + "/rank-0.h5");
  MultiTaskModel& model = *state.model;
  DenseOptimizer* dense_opt = spec.optimizer_state ? state.dense_optimizer : nullptr;

  auto absent = [&](const std::string& name, const std::string& source) {
    if (spec.strict)
      throw UserError("init.from " + dir + ": the model's '" + name + "'" +
                      (source != name ? " (read as '" + source + "' through init.map)" : std::string()) +
                      " is not in the checkpoint: map it to a name the checkpoint has (init.map), leave it fresh "
                      "(init.reinit), or set init.strict: false");
    report.missing.push_back(name);
  };

  for (Param& p : model.params().params()) {
    if (matches_any(p.name, spec.reinit)) {
      report.reinitialised.push_back(p.name);
      continue;
    }
    const std::string source = map_param_name(p.name, spec.map);
    if (!f.exists("dense/" + source)) {
      absent(p.name, source);
      continue;
    }
    read_checkpoint_tensor(f, "dense/" + source, p.value, dir);
    if (dense_opt)
      for (auto& [slot, buffer] : dense_opt->state()) {
        Tensor view = buffer->view(p.offset, p.shape);
        const std::string name = "optim/" + source + "/" + slot;
        if (!f.exists(name))
          throw UserError("init.from " + dir + ": no " + name + " (the checkpoint's optimizer is not " +
                          "the config's; set init.optimizer_state: false to start the optimizer afresh)");
        read_checkpoint_tensor(f, name, view, dir);
      }
    report.loaded.push_back(p.name);
  }

  auto& tables = model.tables();
  std::vector<std::string> sources(tables.size());
  for (size_t i = 0; i < tables.size(); ++i) {
    const std::string name = "embedding." + tables[i].name();
    if (matches_any(name, spec.reinit)) {
      report.reinitialised.push_back(name);
      continue;
    }
    const std::string source = map_param_name(name, spec.map);
    if (source.rfind("embedding.", 0) != 0 || !f.exists("embedding/" + source.substr(10) + "/keys")) {
      absent(name, source);
      continue;
    }
    sources[i] = source.substr(10);
    report.loaded.push_back(name);
  }
  std::vector<SparseOptimizer*> sparse;
  if (spec.optimizer_state) sparse = state.sparse_optimizers;
  load_table_rows(dir, report.meta.world_size, tables, sparse, &sources);

  if (spec.masks && model.num_masked_layers() > 0) {
    bool has_masks = true;
    for (int t = 0; t < static_cast<int>(model.config().tasks.size()) && has_masks; ++t)
      has_masks = f.exists("mask/" + model.config().tasks[static_cast<size_t>(t)].name);
    if (has_masks) {
      read_masks(f, model);
      report.masks_loaded = true;
    }
  }
  return report;
}

}  // namespace ncsrec

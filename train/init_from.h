// Initialising a new run from another run's checkpoint (`init.from`, `ncsrec train --init-from`):
// the daily incremental cycle (yesterday's model, optimizer state carried) and transfer between
// models (E-CDCTR's CPM -> A-CTR) by parameter name, with a name map and a list of parameters
// to leave at their fresh initialisation.
//
// Names: dense parameters by their ParamStore name (`tower.ctr.0.weight`), embedding tables as
// `embedding.<table>`. `map` rewrites a prefix of the new model's name into the checkpoint's
// (the first entry whose key is a prefix wins); `reinit` holds fnmatch(3) patterns (`*` also
// matches dots) of new names that keep their fresh initialisation (and fresh optimizer state).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "train/checkpoint.h"

namespace ncsrec {

struct InitReport {
  CheckpointMeta meta;                   // the source checkpoint's
  std::vector<std::string> loaded;       // new names loaded (tables as embedding.<table>)
  std::vector<std::string> reinitialised;  // matched by reinit
  std::vector<std::string> missing;      // not in the checkpoint (strict: false only)
  bool masks_loaded = false;
};

// The checkpoint name of new name `name` under `map`.
std::string map_param_name(const std::string& name, const std::vector<std::pair<std::string, std::string>>& map);

// Loads what `spec` asks from checkpoint `spec.from` into `state` (its optimizers' state too
// when spec.optimizer_state and the pointers are set). Verifies the checkpoint first. Shapes
// must match; a table's rows are found by key on any number of ranks. Throws UserError naming
// the checkpoint and the parameter.
InitReport init_from_checkpoint(const InitSpec& spec, const TrainingState& state);

}  // namespace ncsrec

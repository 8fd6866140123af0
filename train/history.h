// `ncsrec history`: E-CDCTR's historical embedding features (docs/ecdctr.md) from the last K
// snapshots of the tiny pre-training model (TPM). A snapshot is a folder holding `snapshot.h5`
// (an `ncsrec export` of the TPM after one day) and `_DONE`, written last by whoever made it: a
// folder without `_DONE` is still being written and is refused. The output folder gets
// `features.h5` (models/history_features.h reads it) and `_DONE`, written as OUT.tmp/ and
// renamed, so a reader never sees half of it.
//
// features.h5:
//   root attributes  format "ncsrec-history", format_version 1, k, version (the snapshots'
//                    "<day>@<step>" newest first, comma-separated), snapshot_dirs, snapshot_days
//                    (comma-separated), snapshot_steps (int64 array)
//   tables/<name>/   keys int64 [N] ascending (the union of the snapshots' keys), values float32
//                    [N, K, dim] (snapshot k's vector, newest first; zeros where absent), present
//                    uint8 [N, K]; attributes kind (hash | fixed), rows, dim
#pragma once

#include <string>
#include <vector>

namespace ncsrec {

struct HistorySummary {
  std::string version;
  int64_t k = 0;
  std::vector<int64_t> rows;  // per table: ids in the output
};

// `snapshots`: folders, newest first. `tables`: table names in the snapshots' exports.
HistorySummary build_history_features(const std::vector<std::string>& snapshots, const std::vector<std::string>& tables,
                                      const std::string& out_dir);

}  // namespace ncsrec

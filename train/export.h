// `ncsrec export`: the serving view of a checkpoint in one HDF5 file (docs/export.md, DESIGN.md
// "Files/Export"). Everything a scorer needs and nothing it does not:
//   meta     format, format_version, kind (full), the source checkpoint's step/day, the serving
//            config YAML (APG factors folded: model.apg.overparam 0)
//   schema   the data schema the model was built for (labels, slots, dense width)
//   model    type, tasks, outputs, layer sizes and options, as attributes
//   input    how a data row becomes the input vector: slot order, the table each slot reads
//   dense/<name>           every inference parameter (BatchNorm running statistics included)
//   masked/<layer>/<task>  each task's W ⊙ M_t of every NCS masked layer, dense [in, out] or
//                          CSR of the same matrix when the mask's density is below csr_below
//   tables/<table>         keys (global rows, or a hash table's ids; ascending) and values of
//                          every embedding table: all rows, or (delta) the rows inserted or
//                          updated since a checkpoint and the keys evicted since
// Left out: optimizer state, mask scores, the shared W of masked layers (only W ⊙ M_t serves),
// learned loss weights, the masks themselves (their pattern is W ⊙ M_t's).
//
// Written as FILE.tmp, fsynced, renamed to FILE: a failure leaves FILE as it was (or absent).
// Not here: a scorer (tests/e2e/export_numpy.py is the reference one).
#pragma once

#include <cstdint>
#include <string>

#include "core/data/block.h"

namespace ncsrec {

constexpr int64_t kExportFormatVersion = 2;  // 2: model/tasks/<task>.logit_offset

struct ExportOptions {
  // A task's masked weight is stored as CSR when its mask's density (ones / (in·out)) is below
  // this; otherwise dense. 0: always dense; above 1: always CSR.
  double csr_below = 0.3;
  // A delta export: only the table rows inserted or updated since checkpoint `since` (by
  // updated_step), and the ids it held that are gone (evicted); dense parameters in full.
  std::string since;
};

struct ExportSummary {
  int64_t step = 0;
  std::string day;
  int64_t dense_tensors = 0;   // datasets under dense/
  int64_t masked_dense = 0;    // masked/<layer>/<task> stored dense
  int64_t masked_csr = 0;      // ... stored as CSR
  int64_t tables = 0, table_rows = 0;
  int64_t evicted = 0;         // delta: keys evicted since the checkpoint
  int64_t since_step = -1;     // delta: the checkpoint's step
  uint64_t bytes = 0;          // size of the written file
};

// Loads checkpoint `checkpoint` (written by any number of ranks) in this process for data of
// `schema`, builds its serving form (models/serving.h) and writes it to `out` atomically.
// UserError for a missing or damaged checkpoint, a folder that cannot take `out`, or a model
// that does not fit `schema`.
ExportSummary export_checkpoint(const std::string& checkpoint, const DataSchema& schema, const std::string& out,
                                const ExportOptions& options);

}  // namespace ncsrec

// `ncsrec export`: the serving view of a checkpoint in one HDF5 file (train/export.h,
// docs/export.md). This file only parses the arguments, finds the data schema the model was
// built for, and reports.
#include <cstdio>
#include <string>
#include <vector>

#include "apps/args.h"
#include "apps/commands.h"
#include "core/data/hdf5_shard.h"
#include "core/error.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/export.h"
#include "train/train_config.h"

namespace ncsrec {
namespace {

const char* kExportHelp = R"(usage: ncsrec export (--run-dir DIR | --checkpoint DIR) --out FILE.h5 [--since CKPT] [--csr-below DENSITY]
                     [--data PATH ...]

Writes the serving view of a checkpoint (default: DIR/checkpoints/final) to one HDF5 file,
readable with h5py alone (docs/export.md): the serving config (APG factors multiplied out),
the schema and input layout, every inference parameter (BatchNorm running statistics
included), each task's masked weight W ⊙ M of every NCS masked layer, and every embedding
table in full. No optimizer state, mask scores or learned loss weights. A checkpoint written
by several ranks is read whole by this one process. FILE is written as FILE.tmp, synced and
renamed: a failed export leaves no partial FILE.

  --out FILE.h5          the file to write (replaced only when the new one is complete)
  --since CKPT           a delta: only the embedding rows inserted or updated after checkpoint
                         CKPT's step (an earlier checkpoint of the same run, or the one this run
                         was initialised from), plus the keys CKPT held that are gone; dense
                         parameters in full. Yesterday's full export + today's delta = today's
                         full export (docs/export.md "Deltas")
  --csr-below DENSITY    store a task's masked weight as CSR (indptr, indices, data) when its
                         mask's density is below DENSITY, dense otherwise (default 0.3;
                         0: all dense; 1.01: every mask that is not all ones as CSR)
  --data PATH            a shard or day folder of the model's data, for the schema (dense
                         width, slots, labels) the model was built for; default: the
                         checkpoint config's data.eval, else data.train
)";

// The data schema the checkpoint's model reads: from --data, else from the saved config's data.
DataSchema export_schema(const Args& args, const std::string& checkpoint) {
  std::vector<std::string> entries = args.all("data");
  std::string what = "--data";
  if (entries.empty()) {
    const TrainConfig c = parse_train_config(read_checkpoint_meta(checkpoint).config_yaml, checkpoint + " (saved config)");
    entries = !c.data.eval.empty() ? c.data.eval : c.data.train;
    what = !c.data.eval.empty() ? "the checkpoint config's data.eval" : "the checkpoint config's data.train";
    if (entries.empty()) throw ConfigError("ncsrec export: the checkpoint's config names no data: give --data PATH");
    try {
      const std::vector<std::string> files = expand_data_paths(entries, what);
      int64_t rows = 0;
      return read_shard_schema(files.at(0), &rows);
    } catch (const UserError& e) {
      throw UserError(std::string(e.what()) + "; export reads the data's schema (dense width, slots, labels): "
                      "give --data PATH, one shard of the model's data");
    }
  }
  const std::vector<std::string> files = expand_data_paths(entries, what);
  int64_t rows = 0;
  return read_shard_schema(files.at(0), &rows);
}

}  // namespace

int cmd_export(int argc, char** argv) {
  for (int i = 2; i < argc; ++i)
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") return std::fputs(kExportHelp, stdout), 0;
  Args args("export", argc, argv, 2, {"run-dir", "checkpoint", "out", "csr-below", "data", "since"}, {});
  args.no_positionals();
  if (!args.has("run-dir") && !args.has("checkpoint"))
    throw ConfigError("ncsrec export: give --run-dir DIR or --checkpoint DIR (see --help)");
  const std::string checkpoint =
      args.has("checkpoint") ? args.get("checkpoint") : args.get("run-dir") + "/checkpoints/final";
  const std::string out = args.required("out");
  ExportOptions options;
  options.csr_below = args.get_double("csr-below", options.csr_below);
  if (!(options.csr_below >= 0)) throw ConfigError("ncsrec export: --csr-below must be a density >= 0");
  options.since = args.get("since", "");
  const DataSchema schema = export_schema(args, checkpoint);
  const ExportSummary s = export_checkpoint(checkpoint, schema, out, options);
  std::printf("exported %s (step %lld%s%s) to %s: %lld dense tensors, %lld masked weights (%lld as CSR), "
              "%lld tables of %lld rows%s, %.1f MB\n",
              checkpoint.c_str(), static_cast<long long>(s.step), s.day.empty() ? "" : ", day ", s.day.c_str(),
              out.c_str(), static_cast<long long>(s.dense_tensors),
              static_cast<long long>(s.masked_dense + s.masked_csr), static_cast<long long>(s.masked_csr),
              static_cast<long long>(s.tables), static_cast<long long>(s.table_rows),
              options.since.empty() ? " in all"
                                    : (" inserted or updated since step " + std::to_string(s.since_step) + ", " +
                                       std::to_string(s.evicted) + " keys evicted").c_str(),
              static_cast<double>(s.bytes) / 1e6);
  return 0;
}

}  // namespace ncsrec

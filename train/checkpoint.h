// Checkpoints (DESIGN.md "Files/Checkpoints"): a folder per checkpoint, written as `X.tmp/`
// (every rank writes and fsyncs its `rank-R.h5`), a barrier, then rank 0 writes `manifest`
// (size and CRC32C of every file), fsyncs, and renames the folder to `X`. A crash at any
// moment leaves the old checkpoint or the new one whole, never half of one. Readable with h5py:
//   meta            attributes: config (YAML), step, epoch, data_position, world_size,
//                   format_version, seed, optimizer_step, day (the data day last trained on,
//                   "" if none), init_from (the checkpoint the run started from, "" if none),
//                   first_step (the step it started from: its optimizer_step, else 0),
//                   history_file and history_version (model.history: the features file and the
//                   snapshots it was built from; "" without history features)
//   dense/<name>    every dense parameter, its own shape
//   optim/<name>/<slot>        the dense optimizer's state for that parameter (m, v, accumulator)
//   embedding/<table>/{keys, values, optim/<slot>}
#pragma once

#include <string>
#include <vector>

#include "core/hdf5_util.h"
#include "core/optim.h"
#include "dist/communicator.h"
#include "embedding/embedding_table.h"
#include "embedding/sharded_table.h"
#include "models/multitask_model.h"
#include "train/train_config.h"

namespace ncsrec {

constexpr int64_t kCheckpointFormatVersion = 1;

struct CheckpointMeta {
  std::string config_yaml;
  int64_t step = 0, epoch = 0, data_position = 0, world_size = 1, seed = 0, optimizer_step = 0;
  int64_t format_version = kCheckpointFormatVersion;
  std::string day, init_from;  // absent in older checkpoints: read as ""
  int64_t first_step = 0;      // the step the run started from (init.from with optimizer state)
  std::string history_file, history_version;  // written from the model's history features
};

struct TrainingState {  // what a checkpoint saves and restores, borrowed from the trainer
  MultiTaskModel* model = nullptr;
  DenseOptimizer* dense_optimizer = nullptr;               // may be null (inference)
  std::vector<SparseOptimizer*> sparse_optimizers;         // one per table, or empty
};

// Writes checkpoint folder `dir` atomically (see above). An existing `dir` is replaced only
// after the new one is complete.
void save_checkpoint(const std::string& dir, const TrainingState& state, const CheckpointMeta& meta,
                     Communicator& comm);
// After a crash between the two renames of a save, puts the newest whole copy (`dir.tmp`
// with a verified manifest, else `dir.old`) back under `dir`. Nothing to do when `dir` exists.
// Called by save and by the readers, so a crash at any moment loses no whole checkpoint.
void recover_checkpoint(const std::string& dir);
// Checks the manifest (every file present, sizes and CRC32C match). Throws UserError naming
// the checkpoint, the file and what to do.
void verify_checkpoint(const std::string& dir);
CheckpointMeta read_checkpoint_meta(const std::string& dir);
// Loads the parameters (and optimizer state, where the pointers are set) into `state`;
// verifies the manifest first. Shapes must match the model's.
// Embedding rows (and their sparse optimizer state) are found by key in every rank's file, so a
// checkpoint loads onto any number of ranks and any placement.
CheckpointMeta load_checkpoint(const std::string& dir, const TrainingState& state);
// The model saved in checkpoint `dir`: built from its saved config for data of `schema` (on the
// ranks of `comm`, null for one process) and loaded, without optimizer state, with its dense
// part on `device` (checkpoints are the same on every device). `config` and `meta`, if given,
// receive the saved config and metadata.
std::unique_ptr<MultiTaskModel> load_model(const std::string& dir, const DataSchema& schema, Communicator* comm,
                                           TrainConfig* config = nullptr, CheckpointMeta* meta = nullptr,
                                           Device device = Device::CPU);
// The checkpoint a resumed run continues from: of `checkpoints_dir`/step-<N> and /final (after
// recovering any a crash interrupted), the one with the highest step ("final" on a tie); ""
// when there is none.
std::string newest_checkpoint(const std::string& checkpoints_dir);
// Removes all but the newest `keep` of `checkpoints_dir`/step-<N> (by N). `final` is never removed.
void prune_step_checkpoints(const std::string& checkpoints_dir, int64_t keep);

// The rows each table holds on this rank (and their sparse optimizer state, where
// `optimizers[i]` is set), from checkpoint `dir` written by `world_size` ranks. `sources`, if
// given, names each table's table in the checkpoint ("" = leave that table as it is).
void load_table_rows(const std::string& dir, int64_t world_size, std::vector<ShardedTable>& tables,
                     const std::vector<SparseOptimizer*>& optimizers,
                     const std::vector<std::string>* sources = nullptr);
// fsync of a file (or, `directory`, a folder, for a rename in it); a UserError starting with
// `what` when it fails.
void fsync_path(const std::string& path, bool directory, const char* what = "checkpoint");
// Reads dataset `name` of checkpoint file `f` (of checkpoint `dir`) into `t`, whose shape it
// must have (else a UserError naming both shapes).
void read_checkpoint_tensor(const h5::File& f, const std::string& name, Tensor& t, const std::string& dir);

}  // namespace ncsrec

// Mask files: the per-task masks of a model's masked layers in HDF5, the same datasets a
// checkpoint holds: `mask/<task>/<layer>` = the packed bits (uint8 [ceil(rows·cols/8)],
// numpy.packbits(bitorder='little') order) with attributes rows, cols, bitorder="little" and
// ones (the count of set bits). Readable with h5py and numpy.unpackbits, no ncsrec code.
#pragma once

#include <string>

#include "core/hdf5_util.h"
#include "models/multitask_model.h"

namespace ncsrec {

void write_masks(h5::File& file, const MultiTaskModel& model);
// Writes a mask file atomically (path.tmp, then rename).
void write_mask_file(const std::string& path, const MultiTaskModel& model);
// Loads every task's masks from `file`.
void read_masks(const h5::File& file, MultiTaskModel& model);
// `path` is a mask file or a checkpoint folder (its rank-0.h5 is read, after verification).
void load_masks(const std::string& path, MultiTaskModel& model);

}  // namespace ncsrec

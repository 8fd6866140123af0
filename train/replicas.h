// What data parallelism needs beyond the step itself: non-trainable state kept equal on every
// rank, and a check that the replicas really are equal.
#pragma once

#include <cstdint>

#include "dist/communicator.h"
#include "models/multitask_model.h"

namespace ncsrec {

// Replaces every non-trainable state parameter (BatchNorm's running statistics, updated by
// each rank's forward pass on its own slice of the batch) by its mean over the ranks, so the
// replicas stay identical. No-op on one rank or without state.
void average_state_over_ranks(MultiTaskModel& model, Communicator& comm);

// CRC32C of what must be identical on every rank: the dense parameters (state included) and
// every mask.
uint32_t replica_checksum(MultiTaskModel& model);

// Throws an internal error naming the step when the ranks' replica checksums differ (a bug:
// every rank applies the same reduced gradient to the same weights).
void check_replicas_agree(MultiTaskModel& model, Communicator& comm, int64_t step);

}  // namespace ncsrec

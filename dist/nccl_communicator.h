// The NCCL communicator: the Communicator interface on DEVICE buffers, one rank per GPU.
//
// Every pointer passed to its collectives (all_reduce_sum, all_reduce_max, all_to_all_v,
// all_gather, broadcast) must be device memory (cudaMalloc or managed) on this rank's GPU; a
// host pointer is refused with InternalError. The count arrays of all_to_all_v stay on the
// host. The helpers that pass host vectors (all_gather_v) therefore need a host communicator.
//
// Ordering: collectives run on a stream of the communicator's own that is ordered after the
// legacy default stream (where the CUDA backend runs), and each call returns only when the
// collective has finished, like the MPI communicator. Work on other non-blocking streams must
// be finished by the caller first.
//
// Not here: multiple GPUs per process, overlap of communication with compute.
//
// Available only in builds with CUDA and NCCL (the ncsrec_dist_nccl library, which defines
// NCSREC_HAVE_NCCL).
#pragma once

#include <memory>

#include "dist/communicator.h"

namespace ncsrec {

// Creates the NCCL communicator over the ranks of `bootstrap` (an MPI communicator, or the
// local one for world size 1): same world size, same ranks. Collective over `bootstrap`: rank 0
// creates the NCCL unique id and broadcasts it with `bootstrap` (as bytes), then every rank
// initialises NCCL, waiting at most options.timeout_seconds (env NCSREC_COMM_TIMEOUT overrides;
// 0 waits forever). The GPU is the node-local rank (the first of OMPI_COMM_WORLD_LOCAL_RANK,
// SLURM_LOCALID, MPI_LOCALRANKID, LOCAL_RANK that is set, else 0) modulo the number of visible
// GPUs; it becomes this thread's current device. `bootstrap` is only used here (its liveness
// probe, a communicator of its own, lives on in the NCCL communicator).
//
// Throws UserError when there is no GPU or NCCL fails to initialise, and CommTimeout when the
// initialisation does not finish in time. A collective that times out or fails asynchronously
// aborts the NCCL communicator (ncclCommAbort), prints one line to stderr naming the call (and,
// for a timeout over several ranks, the ranks that did not answer `bootstrap`'s liveness
// pings: make_peer_probe), and throws CommTimeout (UserError for an NCCL error); every later
// call then throws too.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, const CommOptions& options = {});

// The GPU make_nccl_communicator gives this rank (node-local rank modulo the visible GPUs);
// UserError when there is none. NCCL needs a GPU of its own for every rank of a node.
int nccl_device_for_this_rank();

}  // namespace ncsrec

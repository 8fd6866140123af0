// Communicators: the collectives the trainer needs, behind one interface, with three
// implementations: local (one process), MPI on host buffers (the CPU path) and NCCL on device
// buffers (the GPU path).
//
// Every collective is called by every rank in the same order. Counts are in elements of
// `dtype`. A collective that waits longer than the communicator's timeout ends the job with
// one message naming the call and the peer(s) it waits on (CommTimeout on the rank that saw
// it; the MPI implementation then aborts the job so no rank hangs).
//
// Byte counters: every call adds the payload bytes this rank sends to other ranks (its own
// share excluded) to `stats()`, so tests can assert what a step moves.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace ncsrec {

// A collective waited past the bound. `what()` names the call, its sequence number and the
// ranks that did not arrive.
class CommTimeout : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct CommStats {
  int64_t all_reduce_calls = 0, all_reduce_bytes = 0;
  int64_t all_to_all_calls = 0, all_to_all_bytes = 0;  // bytes sent to other ranks
  int64_t all_gather_calls = 0, all_gather_bytes = 0;  // bytes sent to other ranks
  int64_t broadcast_calls = 0, broadcast_bytes = 0;
  int64_t barrier_calls = 0;
  // Wall time inside collectives, waiting for slower ranks included.
  double seconds = 0;
  int64_t total_bytes() const { return all_reduce_bytes + all_to_all_bytes + all_gather_bytes + broadcast_bytes; }
};

// Who is alive, asked apart from the collectives: the MPI communicator's liveness pings (see
// mpi_communicator.cpp), lent to a communicator layered over its ranks (NCCL) so that its
// watchdog, too, names the rank it waits on. Collective numbers are the layered
// communicator's own; `op` is a collective's kind where the caller has one, else -1.
class PeerProbe {
 public:
  virtual ~PeerProbe() = default;
  // While waiting in collective #seq: answers the ranks that timed out and ask who is alive.
  virtual void answer(int64_t seq, int64_t op) = 0;
  // After a timeout in collective #seq: asks every other rank, listens for at most
  // `listen_seconds` (answering the others meanwhile), and says what it heard, as text to append
  // to the timeout's message: "; no answer from rank 1 (stopped, hung or dead?)", or that every
  // rank answered, and which ranks answered from another collective.
  virtual std::string diagnose(int64_t seq, int64_t op, double listen_seconds) = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // "local", "mpi" or "nccl".
  virtual const char* kind() const = 0;
  // Whether the collectives take device memory (NCCL) rather than host memory (MPI, local).
  virtual bool takes_device_memory() const { return false; }
  // A liveness probe over this communicator's ranks for a communicator layered over it (null
  // where there is none: the local communicator). Collective: every rank calls it.
  virtual std::unique_ptr<PeerProbe> make_peer_probe() { return nullptr; }
  // Whether `t` is in the kind of memory the collectives take (else all_reduce_sum(Tensor&)
  // stages it through a copy).
  bool takes_in_place(const Tensor& t) const { return (t.device() != Device::CPU) == takes_device_memory(); }

  // In-place sum across ranks (F32, F64 or I64). A tensor in the other kind of memory than the
  // communicator takes (a device tensor over MPI) is staged through a copy.
  void all_reduce_sum(Tensor& buffer);
  void all_reduce_sum(double* values, int64_t n);
  void all_reduce_sum(int64_t* values, int64_t n);
  void all_reduce_sum(void* data, int64_t n, DType dtype);
  // In-place maximum across ranks (used for agreement checks).
  void all_reduce_max(double* values, int64_t n);

  // The overlapped all-reduce (the dense gradient's buckets, started during the backward):
  // start_all_reduce_sum begins an in-place sum of n elements at `data` (memory of the kind the
  // communicator takes) and returns while it runs where the implementation can (MPI:
  // MPI_Iallreduce; NCCL: queued on its stream behind the compute queued so far; local: done at
  // once). The data must not be touched until finish_all_reduces(), which waits for every sum
  // started, under the watchdog. Each start is a collective: every rank starts the same sums in
  // the same order relative to its other collectives. n == 0 starts nothing on every rank.
  void start_all_reduce_sum(void* data, int64_t n, DType dtype);
  void finish_all_reduces();
  int64_t all_reduces_in_flight() const { return in_flight_; }
  // For a step that fails with sums in flight: they are given up, never waited for (their
  // buffers may be freed next). MPI leaves the requests to the job's end (MPI_Abort, no
  // MPI_Finalize); NCCL aborts the communicator, which stops its kernels. The communicator is
  // unusable afterwards, as after a timeout.
  void abandon_all_reduces();

  // send holds world_size() consecutive blocks, block r (send_counts[r] elements) going to rank
  // r; recv receives block s (recv_counts[s] elements) from rank s, in rank order. Both count
  // arrays have world_size() entries; each rank's recv_counts[s] must equal rank s's
  // send_counts[rank()] (exchange the counts first with all_to_all of one I64 per rank).
  void all_to_all_v(const void* send, const int64_t* send_counts, void* recv, const int64_t* recv_counts, DType dtype);
  // recv [world_size() * count]: rank r's `count` elements at r * count.
  void all_gather(const void* send, int64_t count, void* recv, DType dtype);
  void broadcast(Tensor& buffer, int root);
  void broadcast(void* data, int64_t n, DType dtype, int root);
  void barrier();

  const CommStats& stats() const { return stats_; }
  void reset_stats() { stats_ = CommStats{}; }

 private:
  // Runs `collective` on `buffer`, or (several ranks, the other kind of memory than the
  // communicator takes) on a copy in the memory it takes, copied back after.
  void in_memory_taken(Tensor& buffer, const std::function<void(Tensor&)>& collective);

 protected:
  virtual void do_all_reduce(void* data, int64_t n, DType dtype, bool max) = 0;
  virtual void do_all_to_all_v(const void* send, const int64_t* send_counts, void* recv, const int64_t* recv_counts,
                               DType dtype) = 0;
  virtual void do_all_gather(const void* send, int64_t count, void* recv, DType dtype) = 0;
  virtual void do_broadcast(void* data, int64_t n, DType dtype, int root) = 0;
  virtual void do_barrier() = 0;
  // The default runs the sum at once (no overlap); MPI and NCCL start it and wait in finish.
  virtual void do_start_all_reduce(void* data, int64_t n, DType dtype) { do_all_reduce(data, n, dtype, false); }
  virtual void do_finish_all_reduces() {}
  virtual void do_abandon_all_reduces() {}

 private:
  CommStats stats_;
  int64_t in_flight_ = 0;
};

// Variable-size all-gather built on all_to_all_v: every rank contributes `send` (any length,
// including 0); returns the concatenation in rank order, and each rank's length in `counts`.
template <class T>
std::vector<T> all_gather_v(Communicator& comm, const std::vector<T>& send, std::vector<int64_t>* counts = nullptr);

// The communicator of a single process (world size 1): every collective is the identity.
std::unique_ptr<Communicator> make_local_communicator();

struct CommOptions {
  double timeout_seconds = 60;  // a collective waiting longer ends the job
};

// The bound in force: NCSREC_COMM_TIMEOUT (seconds) when set, else options.timeout_seconds;
// 0 waits forever. A malformed or negative value is a UserError.
double comm_timeout_seconds(const CommOptions& options);

// The MPI communicator over MPI_COMM_WORLD (initialises MPI with thread support on first use;
// MPI is finalised at exit). Throws UserError when the build has no MPI.
std::unique_ptr<Communicator> make_mpi_communicator(const CommOptions& options = {});
// MPI when launched under an MPI launcher (launched_under_mpi, core/launcher.h), local otherwise.
std::unique_ptr<Communicator> make_default_communicator(const CommOptions& options = {});

// When this process is one rank of an MPI job with more than one rank, ends the whole job
// (MPI_Abort with exit_code) so no other rank waits for this one; otherwise returns. Call it
// before returning an error exit code from main().
void end_job_after_error(int exit_code);

}  // namespace ncsrec

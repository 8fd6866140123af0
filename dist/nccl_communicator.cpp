// The NCCL communicator: collectives on device buffers, one rank per GPU, each enqueued on the
// communicator's own stream and waited for by a watchdog, so a peer that stops or dies ends the
// job with one message instead of a hang (the same contract as the MPI communicator).
//
// Streams. The communicator's stream is non-blocking: each collective is ordered behind the
// compute queued before it on the legacy default stream by an event (cudaEventRecord +
// cudaStreamWaitEvent), not by a host sync. The blocking collectives then wait for the stream;
// start_all_reduce_sum only waits until NCCL has enqueued its all-reduce, so it runs while the
// compute queued after it (the rest of the backward) runs, and finish_all_reduces waits for
// the stream under the watchdog. One stream for every collective keeps them in one order on
// every rank (NCCL does not promise that two of its kernels progress concurrently).
//
// Naming the missing rank: NCCL has no side channel for it, so the communicator borrows one
// from the bootstrap communicator (Communicator::make_peer_probe: MPI's liveness pings on a
// communicator of their own). While waiting, a rank answers the pings of ranks that timed out;
// a rank that times out pings every other rank and names those that do not answer (a rank
// stopped, busy outside the communicator, or dead), as the MPI communicator does. Over the local
// communicator (one process) there is no probe and nothing to name.
//
// Not here: several GPUs per process.
//
// Watchdog. The NCCL communicator is non-blocking (ncclConfig_t::blocking = 0): no NCCL call
// blocks the host, and initialisation, enqueueing and the collective itself are all waited for
// by polling ncclCommGetAsyncError (ncclInProgress until enqueued) and then cudaStreamQuery,
// against a deadline (CommOptions::timeout_seconds, env NCSREC_COMM_TIMEOUT overrides; 0 waits
// forever). On a timeout or an asynchronous NCCL error the rank aborts the NCCL communicator
// (ncclCommAbort, which also stops its kernels), prints one line to stderr, and throws
// CommTimeout (UserError for an NCCL error); the communicator then refuses every later call.
// Ending the whole job is left to the caller's end_job_after_error, as with MPI.
#include "dist/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <exception>
#include <iomanip>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <utility>

#include "core/error.h"
#include "core/launcher.h"
#include "cuda/check.h"

namespace ncsrec {
namespace {

using Clock = std::chrono::steady_clock;

// The GPU of this rank; UserError when there is none.
int select_device() {
  int count = 0;  // left unwritten by cudaGetDeviceCount when there is no driver
  const cudaError_t err = cudaGetDeviceCount(&count);
  (void)cudaGetLastError();  // clear the "no driver" error so later calls start clean
  NCSREC_USER_CHECK(err == cudaSuccess && count > 0,
                    "NCCL communicator: no CUDA device ("
                        << (err != cudaSuccess ? std::string("cudaGetDeviceCount: ") + cudaGetErrorName(err) + ": " +
                                                     cudaGetErrorString(err)
                                               : std::string("cudaGetDeviceCount found 0 devices"))
                        << "); use the MPI communicator on CPUs");
  return launcher_local_rank() % count;
}

}  // namespace

int nccl_device_for_this_rank() { return select_device(); }

namespace {

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::I64: return ncclInt64;
    case DType::U8: return ncclUint8;
  }
  NCSREC_CHECK(false, "no NCCL datatype for dtype " << static_cast<int>(dtype));
  return ncclUint8;
}

std::string nccl_error(ncclResult_t code) {
  return NCSREC_STR_("NCCL error " << static_cast<int>(code) << " (" << ncclGetErrorString(code) << ")");
}

bool overlap(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  const auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return a_bytes > 0 && b_bytes > 0 && pa < pb + b_bytes && pb < pa + a_bytes;
}

// A device buffer for the rare copy of an overlapping send buffer; freed when the call ends.
class DeviceCopy {
 public:
  DeviceCopy(const void* source, size_t bytes, cudaStream_t stream) {
    CUDA_CHECK(cudaMalloc(&ptr_, bytes));
    CUDA_CHECK(cudaMemcpyAsync(ptr_, source, bytes, cudaMemcpyDeviceToDevice, stream));
  }
  // A failing cudaFree means the context is already broken, and the error that broke it is
  // reported by the call that saw it.
  ~DeviceCopy() { (void)cudaFree(ptr_); }
  DeviceCopy(const DeviceCopy&) = delete;
  DeviceCopy& operator=(const DeviceCopy&) = delete;
  const void* get() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
};

// One collective call as the watchdog reports it.
struct Collective {
  const char* name;  // "all_reduce_sum", ...; "NCCL communicator setup" for the initialisation
  int64_t seq;       // 1 for the first collective on this communicator; the same on every rank
  int64_t bytes;     // this rank's payload
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(int rank, int size, int device, double timeout_seconds, const ncclUniqueId& id,
                   std::unique_ptr<PeerProbe> probe)
      : rank_(rank), size_(size), device_(device), timeout_(timeout_seconds), probe_(std::move(probe)) {
    try {
      CUDA_CHECK(cudaSetDevice(device_));
      // A non-blocking stream, so that an all-reduce started during the backward does not hold
      // up the compute queued after it on the legacy default stream (where the CUDA backend
      // runs); every collective is ordered behind the compute queued before it by an event.
      CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
      CUDA_CHECK(cudaEventCreateWithFlags(&compute_done_, cudaEventDisableTiming));
      CUDA_CHECK(cudaMalloc(&barrier_scratch_, sizeof(int32_t)));
      CUDA_CHECK(cudaMemset(barrier_scratch_, 0, sizeof(int32_t)));
      ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
      config.blocking = 0;
      const Collective setup{"NCCL communicator setup", 0, 0};
      enqueued(ncclCommInitRankConfig(&comm_, size_, id, rank_, &config), "ncclCommInitRankConfig", setup);
      wait(setup, /*on_stream=*/false);
    } catch (...) {
      release(/*abort=*/true);
      throw;
    }
  }

  ~NcclCommunicator() override {
    // With an exception in flight a peer may still be inside a collective: do not wait for it.
    release(/*abort=*/dead_ || (std::uncaught_exceptions() > 0 && size_ > 1));
  }

  int rank() const override { return rank_; }
  int world_size() const override { return size_; }
  const char* kind() const override { return "nccl"; }
  bool takes_device_memory() const override { return true; }

 protected:
  void do_all_reduce(void* data, int64_t n, DType dtype, bool max) override {
    NCSREC_CHECK(dtype != DType::U8, "all-reduce of u8");
    const size_t bytes = static_cast<size_t>(n) * dtype_size(dtype);
    const char* name = max ? "all_reduce_max" : "all_reduce_sum";
    require_device_memory(data, bytes, name, "buffer");
    const Collective what = begin(name, static_cast<int64_t>(bytes));
    enqueued(ncclAllReduce(data, data, static_cast<size_t>(n), nccl_type(dtype), max ? ncclMax : ncclSum, comm_,
                           stream_),
             "ncclAllReduce", what);
    wait(what);
  }

  // Queued on the stream (behind the compute queued so far) and waited for only until NCCL has
  // enqueued it; do_finish_all_reduces waits for the stream, which runs them in order.
  void do_start_all_reduce(void* data, int64_t n, DType dtype) override {
    NCSREC_CHECK(dtype != DType::U8, "all-reduce of u8");
    const size_t bytes = static_cast<size_t>(n) * dtype_size(dtype);
    require_device_memory(data, bytes, "all_reduce_sum", "buffer");
    const Collective what = begin("all_reduce_sum (started)", static_cast<int64_t>(bytes));
    enqueued(ncclAllReduce(data, data, static_cast<size_t>(n), nccl_type(dtype), ncclSum, comm_, stream_),
             "ncclAllReduce", what);
    wait(what, /*on_stream=*/false);
    started_.push_back(what);
  }

  void do_finish_all_reduces() override {
    if (started_.empty()) return;
    const Collective last = started_.back();
    started_.clear();
    require_alive();
    wait(last);  // the stream is done: every started all-reduce is
  }

  // The step failed with all-reduces queued: abort NCCL so its kernels stop (a free of their
  // buffers, or any device synchronisation, would otherwise wait for them without a watchdog).
  void do_abandon_all_reduces() override {
    if (started_.empty() || dead_) {
      started_.clear();
      return;
    }
    const Collective last = started_.back();
    started_.clear();
    die(describe(last) + ": the step failed with the dense gradient's all-reduce in flight; the NCCL communicator "
                         "is aborted",
        /*timed_out=*/false);
  }

  void do_all_to_all_v(const void* send, const int64_t* send_counts, void* recv, const int64_t* recv_counts,
                       DType dtype) override {
    const size_t elem = dtype_size(dtype);
    int64_t send_total = 0, recv_total = 0;
    for (int r = 0; r < size_; ++r) {
      send_total += send_counts[r];
      recv_total += recv_counts[r];
    }
    NCSREC_CHECK(send_counts[rank_] == recv_counts[rank_],
                 "all-to-all: rank " << rank_ << " sends itself " << send_counts[rank_] << " elements and receives "
                                     << recv_counts[rank_]);
    const size_t send_bytes = static_cast<size_t>(send_total) * elem;
    const size_t recv_bytes = static_cast<size_t>(recv_total) * elem;
    require_device_memory(send, send_bytes, "all_to_all_v", "send buffer");
    require_device_memory(recv, recv_bytes, "all_to_all_v", "receive buffer");
    const Collective what = begin("all_to_all_v", static_cast<int64_t>(send_bytes));
    // A peer may still be reading a send block while ours is written: send from a copy if they overlap.
    std::unique_ptr<DeviceCopy> send_copy;
    if (overlap(send, send_bytes, recv, recv_bytes)) {
      send_copy = std::make_unique<DeviceCopy>(send, send_bytes, stream_);
      send = send_copy->get();
    }
    const auto* send_bytes_at = static_cast<const uint8_t*>(send);
    auto* recv_bytes_at = static_cast<uint8_t*>(recv);
    // Offsets of each rank's block, in bytes.
    size_t send_offset = 0, recv_offset = 0, self_send = 0, self_recv = 0;
    const ncclDataType_t type = nccl_type(dtype);
    bool any_peer = false;
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) {
        self_send = send_offset;
        self_recv = recv_offset;
      } else {
        any_peer = any_peer || send_counts[r] > 0 || recv_counts[r] > 0;
      }
      send_offset += static_cast<size_t>(send_counts[r]) * elem;
      recv_offset += static_cast<size_t>(recv_counts[r]) * elem;
    }
    if (send_counts[rank_] > 0)
      cuda_on_stream(cudaMemcpyAsync(recv_bytes_at + self_recv, send_bytes_at + self_send,
                                     static_cast<size_t>(send_counts[rank_]) * elem, cudaMemcpyDeviceToDevice, stream_),
                     "cudaMemcpyAsync (the block to itself)", what);
    if (any_peer) {
      enqueued(ncclGroupStart(), "ncclGroupStart", what);
      ncclResult_t posted = ncclSuccess;
      const char* call = "ncclSend";
      send_offset = recv_offset = 0;
      for (int r = 0; r < size_ && posts(posted); ++r) {
        const size_t send_count = static_cast<size_t>(send_counts[r]), recv_count = static_cast<size_t>(recv_counts[r]);
        if (r != rank_ && send_count > 0) {
          call = "ncclSend";
          posted = ncclSend(send_bytes_at + send_offset, send_count, type, r, comm_, stream_);
        }
        if (r != rank_ && recv_count > 0 && posts(posted)) {
          call = "ncclRecv";
          posted = ncclRecv(recv_bytes_at + recv_offset, recv_count, type, r, comm_, stream_);
        }
        send_offset += send_count * elem;
        recv_offset += recv_count * elem;
      }
      // The group is closed also after a failed post, so NCCL's group state is left clean.
      const ncclResult_t ended = ncclGroupEnd();
      enqueued(posted, call, what);
      enqueued(ended, "ncclGroupEnd", what);
    }
    wait(what);
  }

  void do_all_gather(const void* send, int64_t count, void* recv, DType dtype) override {
    const size_t bytes = static_cast<size_t>(count) * dtype_size(dtype);
    require_device_memory(send, bytes, "all_gather", "send buffer");
    require_device_memory(recv, bytes * static_cast<size_t>(size_), "all_gather", "receive buffer");
    const Collective what = begin("all_gather", static_cast<int64_t>(bytes));
    if (count == 0) return;  // every rank passes the same count
    // In place (NCCL's rule) when this rank's block already sits at its slot of recv; a copy for any other overlap.
    std::unique_ptr<DeviceCopy> send_copy;
    if (send != static_cast<uint8_t*>(recv) + bytes * static_cast<size_t>(rank_) &&
        overlap(send, bytes, recv, bytes * static_cast<size_t>(size_))) {
      send_copy = std::make_unique<DeviceCopy>(send, bytes, stream_);
      send = send_copy->get();
    }
    enqueued(ncclAllGather(send, recv, static_cast<size_t>(count), nccl_type(dtype), comm_, stream_), "ncclAllGather",
             what);
    wait(what);
  }

  void do_broadcast(void* data, int64_t n, DType dtype, int root) override {
    const size_t bytes = static_cast<size_t>(n) * dtype_size(dtype);
    require_device_memory(data, bytes, "broadcast", "buffer");
    const Collective what = begin("broadcast", static_cast<int64_t>(bytes));
    if (n == 0) return;  // every rank passes the same count
    enqueued(ncclBroadcast(data, data, static_cast<size_t>(n), nccl_type(dtype), root, comm_, stream_),
             "ncclBroadcast", what);
    wait(what);
  }

  void do_barrier() override {
    const Collective what = begin("barrier", 0);
    enqueued(ncclAllReduce(barrier_scratch_, barrier_scratch_, 1, ncclInt32, ncclSum, comm_, stream_),
             "ncclAllReduce (barrier)", what);
    wait(what);
  }

 private:
  void require_alive() const {
    if (!dead_) return;
    const std::string message = failure_message_ + " (the NCCL communicator is unusable after this)";
    if (timed_out_) throw CommTimeout(message);
    throw UserError(message);
  }

  Collective begin(const char* name, int64_t bytes) {
    require_alive();
    const Collective what{name, ++seq_, bytes};
    // Behind the compute queued so far on the legacy default stream: what it reads is written.
    cuda_on_stream(cudaEventRecord(compute_done_, cudaStreamLegacy), "cudaEventRecord", what);
    cuda_on_stream(cudaStreamWaitEvent(stream_, compute_done_, 0), "cudaStreamWaitEvent", what);
    return what;
  }

  std::string describe(const Collective& what) const {
    std::ostringstream os;
    os << "rank " << rank_ << ": " << what.name;
    if (what.seq > 0) os << " (collective #" << what.seq << ", " << what.bytes << " bytes)";
    return os.str();
  }

  // NCCL takes device memory of this rank's GPU: a host pointer would fault inside a kernel.
  // Checked before anything is enqueued; the communicator stays usable.
  void require_device_memory(const void* ptr, size_t bytes, const char* call, const char* which) const {
    if (bytes == 0) return;
    cudaPointerAttributes attributes{};
    const cudaError_t err = cudaPointerGetAttributes(&attributes, ptr);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      NCSREC_CHECK(false, "NCCL communicator: " << call << ": the " << which << " is not CUDA memory ("
                                                << cudaGetErrorName(err) << ")");
    }
    NCSREC_CHECK(attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged,
                 "NCCL communicator: " << call << ": the " << which
                                       << " is host memory; the NCCL communicator takes device buffers");
    NCSREC_CHECK(attributes.type == cudaMemoryTypeManaged || attributes.device == device_,
                 "NCCL communicator: " << call << ": the " << which << " is on GPU " << attributes.device
                                       << "; this rank's communicator uses GPU " << device_);
  }

  // The status of an enqueueing NCCL call: ncclInProgress means "still enqueueing" for a
  // non-blocking communicator, which wait() then polls for.
  static bool posts(ncclResult_t result) { return result == ncclSuccess || result == ncclInProgress; }
  void enqueued(ncclResult_t result, const char* call, const Collective& what) {
    if (!posts(result)) fail_nccl(what, call, result);
  }

  void cuda_on_stream(cudaError_t err, const char* call, const Collective& what) {
    if (err != cudaSuccess) fail_cuda(what, call, err);
  }

  // Polls until `what` is enqueued (and, with on_stream, finished on the stream) or the
  // deadline passes. Spins briefly, because most collectives finish in microseconds, then
  // yields and finally sleeps between polls, leaving the core to NCCL's proxy thread.
  void wait(const Collective& what, bool on_stream = true) {
    const Clock::time_point start = Clock::now();
    auto pause = std::chrono::microseconds(20);
    for (int64_t polls = 0;; ++polls) {
      ncclResult_t state = ncclSuccess;
      const ncclResult_t queried = ncclCommGetAsyncError(comm_, &state);
      if (queried != ncclSuccess) fail_nccl(what, "ncclCommGetAsyncError", queried);
      if (state != ncclSuccess && state != ncclInProgress) fail_nccl(what, "the asynchronous NCCL state", state);
      if (state == ncclSuccess) {  // enqueued: now the stream tells whether it is done
        if (!on_stream) return;
        const cudaError_t err = cudaStreamQuery(stream_);
        if (err == cudaSuccess) return;
        if (err != cudaErrorNotReady) fail_cuda(what, "cudaStreamQuery", err);
      }
      const double waited = std::chrono::duration<double>(Clock::now() - start).count();
      if (timeout_ > 0 && waited > timeout_) fail_timeout(what, waited);
      if (polls < 200) continue;
      if (probe_) probe_->answer(what.seq, -1);  // a timed-out peer asks who is alive
      if (polls < 2000) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(pause);
        pause = std::min(pause * 2, std::chrono::microseconds(200));
      }
    }
  }

  // Marks the communicator dead, aborts NCCL (its kernels stop) and prints the message once.
  void die(std::string message, bool timed_out) {
    dead_ = true;
    timed_out_ = timed_out;
    if (comm_) {
      const ncclResult_t aborted = ncclCommAbort(comm_);
      comm_ = nullptr;
      if (aborted != ncclSuccess) message += "; ncclCommAbort itself failed: " + nccl_error(aborted);
    }
    failure_message_ = "ncsrec: " + message;
    std::fprintf(stderr, "%s\n", failure_message_.c_str());
    std::fflush(stderr);
  }

  [[noreturn]] void fail_timeout(const Collective& what, double waited) {
    std::ostringstream os;
    os << describe(what) << " waited " << std::setprecision(3) << waited << " s";
    if (what.seq == 0) os << " (a rank that never started NCCL, or ranks that cannot connect?)";
    // Which rank it waits on, asked over the bootstrap's ranks (at most 10 s, or half the bound).
    if (probe_) os << probe_->diagnose(what.seq, -1, std::min(10.0, timeout_ / 2));
    os << ": ending the job (ncclCommAbort)";
    die(os.str(), /*timed_out=*/true);
    throw CommTimeout(failure_message_);
  }

  [[noreturn]] void fail_nccl(const Collective& what, const char* call, ncclResult_t code) {
    std::ostringstream os;
    os << describe(what) << ": " << call << ": " << nccl_error(code);
    // Read before the abort frees the communicator.
    const char* last = comm_ ? ncclGetLastError(comm_) : nullptr;
    if (last && *last) os << ": " << last;
    os << ": ending the job (ncclCommAbort)";
    die(os.str(), /*timed_out=*/false);
    throw UserError(failure_message_);
  }

  [[noreturn]] void fail_cuda(const Collective& what, const char* call, cudaError_t err) {
    (void)cudaGetLastError();
    std::ostringstream os;
    os << describe(what) << ": " << call << ": CUDA error " << static_cast<int>(err) << " (" << cudaGetErrorName(err)
       << ": " << cudaGetErrorString(err) << "): ending the job (ncclCommAbort)";
    die(os.str(), /*timed_out=*/false);
    throw InternalError(failure_message_);
  }

  // Never throws: a failure here is printed, since the destructor cannot report it otherwise.
  void release(bool abort) noexcept {
    if (comm_) {
      if (abort) report_nccl(ncclCommAbort(comm_), "ncclCommAbort");
      else finalize_and_destroy();
      comm_ = nullptr;
    }
    if (barrier_scratch_) report_cuda(cudaFree(barrier_scratch_), "cudaFree");
    if (stream_) report_cuda(cudaStreamDestroy(stream_), "cudaStreamDestroy");
    if (compute_done_) report_cuda(cudaEventDestroy(compute_done_), "cudaEventDestroy");
    barrier_scratch_ = nullptr;
    stream_ = nullptr;
    compute_done_ = nullptr;
  }

  // ncclCommFinalize flushes and waits (non-blocking: polled, with the same deadline) until
  // the communicator is quiescent; then ncclCommDestroy frees it without blocking. Whatever
  // fails on the way ends in ncclCommAbort.
  void finalize_and_destroy() noexcept {
    ncclResult_t state = ncclCommFinalize(comm_);
    const Clock::time_point start = Clock::now();
    while (state == ncclSuccess || state == ncclInProgress) {
      const ncclResult_t queried = ncclCommGetAsyncError(comm_, &state);
      if (queried != ncclSuccess) state = queried;
      if (state != ncclInProgress) break;
      if (timeout_ > 0 && std::chrono::duration<double>(Clock::now() - start).count() > timeout_) {
        std::fprintf(stderr, "ncsrec: rank %d: ncclCommFinalize did not finish in %g s: aborting it\n", rank_,
                     timeout_);
        break;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    if (state == ncclSuccess) {
      report_nccl(ncclCommDestroy(comm_), "ncclCommDestroy");
      return;
    }
    if (state != ncclInProgress) report_nccl(state, "ncclCommFinalize");
    report_nccl(ncclCommAbort(comm_), "ncclCommAbort");
  }

  void report_nccl(ncclResult_t result, const char* call) const noexcept {
    if (result == ncclSuccess) return;
    std::fprintf(stderr, "ncsrec: rank %d: closing the NCCL communicator: %s: %s\n", rank_, call,
                 nccl_error(result).c_str());
  }

  void report_cuda(cudaError_t err, const char* call) const noexcept {
    if (err == cudaSuccess || err == cudaErrorCudartUnloading) return;  // unloading: the process is exiting
    (void)cudaGetLastError();
    std::fprintf(stderr, "ncsrec: rank %d: closing the NCCL communicator: %s: %s\n", rank_, call,
                 cudaGetErrorString(err));
  }

  int rank_, size_, device_;
  double timeout_;
  std::unique_ptr<PeerProbe> probe_;  // liveness pings over the bootstrap's ranks, or null
  cudaStream_t stream_ = nullptr;
  cudaEvent_t compute_done_ = nullptr;  // recorded on the legacy default stream before each collective
  std::vector<Collective> started_;     // all-reduces started and not yet finished
  int32_t* barrier_scratch_ = nullptr;  // the one element a barrier all-reduces
  ncclComm_t comm_ = nullptr;
  int64_t seq_ = 0;
  bool dead_ = false, timed_out_ = false;
  std::string failure_message_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, const CommOptions& options) {
  const double timeout = comm_timeout_seconds(options);
  const int rank = bootstrap.rank(), size = bootstrap.world_size();
  const int device = select_device();
  CUDA_CHECK(cudaSetDevice(device));
  // Byte 0: rank 0's ncclGetUniqueId status, so every rank fails alike when it fails; then the id.
  uint8_t message[1 + sizeof(ncclUniqueId)] = {};
  ncclUniqueId id{};
  if (rank == 0) {
    message[0] = static_cast<uint8_t>(ncclGetUniqueId(&id));
    std::memcpy(message + 1, &id, sizeof id);
  }
  bootstrap.broadcast(message, static_cast<int64_t>(sizeof message), DType::U8, 0);
  const auto created = static_cast<ncclResult_t>(message[0]);
  NCSREC_USER_CHECK(created == ncclSuccess,
                    "NCCL communicator: rank 0 could not create the NCCL unique id: " << nccl_error(created));
  std::memcpy(&id, message + 1, sizeof id);
  std::unique_ptr<PeerProbe> probe = size > 1 ? bootstrap.make_peer_probe() : nullptr;
  return std::make_unique<NcclCommunicator>(rank, size, device, timeout, id, std::move(probe));
}

}  // namespace ncsrec

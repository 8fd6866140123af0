// The MPI communicator: collectives on host buffers over a duplicate of MPI_COMM_WORLD, each
// issued non-blocking and waited for by a watchdog, so a rank that stops, hangs or dies makes
// the others end the job with one message naming it instead of waiting forever.
//
// Not here: device buffers (the NCCL communicator), sub-communicators, point-to-point traffic.
//
// Watchdog. Every collective is waited for by polling MPI_Test against a deadline
// (CommOptions::timeout_seconds, overridden by env NCSREC_COMM_TIMEOUT; 0 waits forever). A rank
// whose deadline passes asks who is still alive on a second communicator (`diag_`): it sends
// every other rank a small ping {collective #, which collective} and listens for
// min(10 s, timeout / 2). Every rank that is waiting in any collective answers pings while it
// polls, and ranks that time out ping each other, so every live rank is heard from even when
// it entered later or has run ahead (a broadcast root); a rank that is SIGSTOPped, busy outside
// MPI or dead never answers and is named. The rank then prints one line to stderr and throws
// CommTimeout; the communicator refuses all later collectives and its destructor calls
// MPI_Abort, so the job ends even where the exception is only caught in main().
//
// MPI lifetime: initialised once (MPI_Init_thread, at least MPI_THREAD_SERIALIZED) by the first
// communicator, or reused when someone else did it; when we initialised it, it is finalised at
// exit, unless an error was seen (a timeout, a communicator destroyed by an exception,
// end_job_after_error): MPI_Finalize synchronises with every rank and would wait on a dead
// peer, and a rank that exits without finalising makes mpirun end the job.
#include <mpi.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <iomanip>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "dist/communicator.h"

namespace ncsrec {
namespace {

using Clock = std::chrono::steady_clock;

// Exit code of a job ended by a collective timeout (MPI_Abort in the destructor).
constexpr int kTimeoutExitCode = 1;
// Tags on the diagnostic communicator.
constexpr int kPingTag = 1;  // "I timed out; who is alive?"
constexpr int kPongTag = 2;  // "alive", sent in answer to a ping
// How long a timed-out rank listens for the others, at most.
constexpr double kMaxListenSeconds = 10;

// MPI is process-wide state, so its lifetime is too: whether an error makes finalising unsafe.
std::mutex g_init_mutex;
std::atomic<bool> g_error_seen{false};

void finalise_at_exit() {
  int initialised = 0, finalised = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  if (!initialised || finalised || g_error_seen) return;
  MPI_Finalize();
}

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<size_t>(length));
}

void mpi_check(int code, const char* call) {
  if (code != MPI_SUCCESS) throw UserError(NCSREC_STR_(call << " failed: " << mpi_error_string(code)));
}

const char* thread_level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE: return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED: return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED: return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE: return "MPI_THREAD_MULTIPLE";
  }
  return "unknown";
}

// Initialises MPI with thread support, or checks the level of an MPI someone else initialised.
void ensure_mpi_initialised() {
  std::lock_guard<std::mutex> lock(g_init_mutex);
  int initialised = 0, finalised = 0;
  mpi_check(MPI_Initialized(&initialised), "MPI_Initialized");
  mpi_check(MPI_Finalized(&finalised), "MPI_Finalized");
  NCSREC_USER_CHECK(!finalised, "MPI communicator: MPI was already finalised in this process (it cannot be restarted)");
  int provided = MPI_THREAD_SINGLE;
  if (initialised) {
    mpi_check(MPI_Query_thread(&provided), "MPI_Query_thread");
  } else {
    mpi_check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
    std::atexit(finalise_at_exit);
  }
  // The trainer's data-reader thread runs beside the collectives; the communicator itself is
  // used by one thread at a time, which MPI_THREAD_SERIALIZED allows.
  NCSREC_USER_CHECK(provided >= MPI_THREAD_SERIALIZED,
                    "MPI provides thread support " << thread_level_name(provided)
                                                   << "; ncsrec needs at least MPI_THREAD_SERIALIZED (use an MPI "
                                                      "built with thread support, e.g. OpenMPI 4)");
}
MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    case DType::I64: return MPI_INT64_T;
    case DType::U8: return MPI_UINT8_T;
  }
  NCSREC_CHECK(false, "no MPI datatype for dtype " << static_cast<int>(dtype));
  return MPI_DATATYPE_NULL;
}

// The collectives, in the order of their names; the index travels in pings.
enum class Op : int64_t { kSetup, kAllReduceSum, kAllReduceMax, kAllToAllV, kAllGather, kBroadcast, kBarrier };
const char* op_name(int64_t op) {
  static const char* const names[] = {"communicator setup", "all_reduce_sum", "all_reduce_max", "all_to_all_v",
                                      "all_gather",         "broadcast",      "barrier"};
  if (op < 0) return "a collective";  // a layered communicator's (PeerProbe)
  return op < static_cast<int64_t>(std::size(names)) ? names[op] : "an unknown collective";
}

// One collective call as the watchdog reports it.
struct Collective {
  Op op;
  int64_t seq;    // 1 for the first collective on this communicator; the same on every rank
  int64_t bytes;  // this rank's payload
};

// MPI counts are int: larger buffers are refused rather than silently truncated.
int int_count(int64_t count, const char* what) {
  NCSREC_USER_CHECK(count >= 0 && count <= INT_MAX, what << ": " << count
                                                         << " elements is more than MPI's int counts allow ("
                                                         << INT_MAX << "): split the buffer");
  return static_cast<int>(count);
}

bool overlap(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  const auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return a_bytes > 0 && b_bytes > 0 && pa < pb + b_bytes && pb < pa + a_bytes;
}

std::string rank_list(const std::vector<int>& ranks) {
  constexpr size_t kShown = 16;
  std::ostringstream os;
  os << (ranks.size() == 1 ? "rank " : "ranks ");
  for (size_t i = 0; i < ranks.size() && i < kShown; ++i) os << (i ? ", " : "") << ranks[i];
  if (ranks.size() > kShown) os << " and " << ranks.size() - kShown << " more";
  return os.str();
}

// The liveness pings (the watchdog above) on a communicator of their own, `diag`: answered by
// every rank that waits in a collective, sent by a rank that timed out. Used by the MPI
// communicator itself and lent to a communicator layered over its ranks (make_peer_probe).
class MpiPeerProbe final : public PeerProbe {
 public:
  // `owned`: the probe frees `diag` when it is destroyed.
  MpiPeerProbe(MPI_Comm diag, bool owned) : diag_(diag), owned_(owned) {
    mpi_check(MPI_Comm_rank(diag_, &rank_), "MPI_Comm_rank");
    mpi_check(MPI_Comm_size(diag_, &size_), "MPI_Comm_size");
  }
  ~MpiPeerProbe() override {
    int finalised = 0;
    MPI_Finalized(&finalised);
    // Answers may still be in flight only when a peer timed out and the job is ending.
    if (!finalised && owned_ && outgoing_.empty() && diag_ != MPI_COMM_NULL) MPI_Comm_free(&diag_);
  }
  MpiPeerProbe(const MpiPeerProbe&) = delete;
  MpiPeerProbe& operator=(const MpiPeerProbe&) = delete;

  bool sends_in_flight() const { return !outgoing_.empty(); }

  void answer(int64_t seq, int64_t op) override {
    Message ping;
    int tag = 0;
    for (int from; (from = receive(kPingTag, &ping, &tag)) >= 0;) send(from, kPongTag, Message{seq, op});
    while (!outgoing_.empty()) {  // drop finished sends
      int done = 0;
      if (outgoing_.front().request != MPI_REQUEST_NULL &&
          (MPI_Test(&outgoing_.front().request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || !done))
        break;
      outgoing_.pop_front();
    }
  }

  std::string diagnose(int64_t seq, int64_t op, double listen_seconds) override {
    // Ask every other rank whether it is alive, and listen for pings and answers alike.
    std::vector<char> heard(static_cast<size_t>(size_), 0);
    std::vector<Message> where(static_cast<size_t>(size_), Message{0, 0});
    heard[static_cast<size_t>(rank_)] = 1;
    for (int r = 0; r < size_; ++r)
      if (r != rank_) send(r, kPingTag, Message{seq, op});
    const Clock::time_point start = Clock::now();
    int missing = size_ - 1;
    while (missing > 0 && std::chrono::duration<double>(Clock::now() - start).count() < listen_seconds) {
      Message message;
      int tag = 0;
      const int from = receive(MPI_ANY_TAG, &message, &tag);
      if (from < 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
      if (tag == kPingTag) send(from, kPongTag, Message{seq, op});
      if (!heard[static_cast<size_t>(from)]) --missing;
      heard[static_cast<size_t>(from)] = 1;
      where[static_cast<size_t>(from)] = message;
    }
    std::vector<int> silent, elsewhere;
    for (int r = 0; r < size_; ++r) {
      if (!heard[static_cast<size_t>(r)]) silent.push_back(r);
      else if (r != rank_ && where[static_cast<size_t>(r)][0] != seq) elsewhere.push_back(r);
    }
    std::ostringstream os;
    if (!silent.empty()) {
      os << "; no answer from " << rank_list(silent) << " (stopped, hung or dead?)";
    } else {
      os << "; every rank answered, so none is stuck outside MPI (a transport problem, or a timeout too short?)";
    }
    // A broadcast root may legitimately be a collective ahead; with no silent rank, ranks in
    // different collectives are the likely cause of the hang.
    for (size_t i = 0; i < elsewhere.size() && i < 4; ++i) {
      const Message& m = where[static_cast<size_t>(elsewhere[i])];
      os << "; rank " << elsewhere[i] << " answered from " << op_name(m[1]) << " (collective #" << m[0] << ")";
    }
    if (!elsewhere.empty() && silent.empty()) os << " (ranks calling collectives in different orders?)";
    return os.str();
  }

 private:
  // A ping or its answer: {collective #, Op} of the sender.
  using Message = std::array<int64_t, 2>;
  struct Outgoing {
    Message message;
    MPI_Request request;
  };

  void send(int to, int tag, const Message& message) {
    outgoing_.push_back(Outgoing{message, MPI_REQUEST_NULL});
    Outgoing& out = outgoing_.back();
    // Never waited for: a stopped peer never receives it. A failure (a dead peer) only means
    // that peer will not answer.
    if (MPI_Isend(out.message.data(), 2, MPI_INT64_T, to, tag, diag_, &out.request) != MPI_SUCCESS)
      out.request = MPI_REQUEST_NULL;
  }

  // Receives one message if one has arrived; returns its source or -1.
  int receive(int tag, Message* message, int* received_tag) {
    int arrived = 0;
    MPI_Status status;
    if (MPI_Iprobe(MPI_ANY_SOURCE, tag, diag_, &arrived, &status) != MPI_SUCCESS || !arrived) return -1;
    if (MPI_Recv(message->data(), 2, MPI_INT64_T, status.MPI_SOURCE, status.MPI_TAG, diag_, MPI_STATUS_IGNORE) !=
        MPI_SUCCESS)
      return -1;
    *received_tag = status.MPI_TAG;
    return status.MPI_SOURCE;
  }

  MPI_Comm diag_;
  bool owned_;
  int rank_ = 0, size_ = 1;
  std::deque<Outgoing> outgoing_;  // a deque: buffers of sends in flight must not move
};

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(double timeout_seconds) : timeout_(timeout_seconds) {
    mpi_check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    mpi_check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
    // Duplicating is collective: done non-blocking so a rank that never gets here is caught too.
    MPI_Request requests[2];
    mpi_check(MPI_Comm_idup(MPI_COMM_WORLD, &diag_, &requests[0]), "MPI_Comm_idup");
    mpi_check(MPI_Comm_idup(MPI_COMM_WORLD, &comm_, &requests[1]), "MPI_Comm_idup");
    const Collective setup{Op::kSetup, 0, 0};
    for (MPI_Request& request : requests) wait(request, setup, "MPI_Comm_idup");
    mpi_check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    mpi_check(MPI_Comm_set_errhandler(diag_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    probe_ = std::make_unique<MpiPeerProbe>(diag_, /*owned=*/false);
  }

  ~MpiCommunicator() override {
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (finalised) return;
    if (timed_out_) {
      if (size_ > 1) MPI_Abort(MPI_COMM_WORLD, kTimeoutExitCode);
      return;
    }
    if (std::uncaught_exceptions() > 0 && size_ > 1) {
      // Destroyed by an error: peers may be waiting for this rank, so MPI_Finalize could hang.
      g_error_seen = true;
      return;
    }
    if (!started_.empty() || abandoned_) {
      // All-reduces still active: freeing the communicator (or MPI_Finalize) with them is erroneous.
      g_error_seen = true;
      return;
    }
    // Answers to pings may still be in flight only when a peer timed out and the job is ending.
    if (probe_ && probe_->sends_in_flight()) return;
    probe_.reset();
    if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
    if (diag_ != MPI_COMM_NULL) MPI_Comm_free(&diag_);
  }

  int rank() const override { return rank_; }
  int world_size() const override { return size_; }
  const char* kind() const override { return "mpi"; }

  std::unique_ptr<PeerProbe> make_peer_probe() override {
    if (timed_out_) throw CommTimeout(timeout_message_ + " (the communicator is unusable after a timeout)");
    // Collective, so non-blocking and watched like the constructor's duplicates.
    MPI_Comm diag = MPI_COMM_NULL;
    MPI_Request request;
    const Collective setup{Op::kSetup, 0, 0};
    check(MPI_Comm_idup(MPI_COMM_WORLD, &diag, &request), "MPI_Comm_idup", setup);
    wait(request, setup, "MPI_Comm_idup");
    check(MPI_Comm_set_errhandler(diag, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler", setup);
    return std::make_unique<MpiPeerProbe>(diag, /*owned=*/true);
  }

 protected:
  void do_all_reduce(void* data, int64_t n, DType dtype, bool max) override {
    const Op op = max ? Op::kAllReduceMax : Op::kAllReduceSum;
    const int count = int_count(n, op_name(static_cast<int64_t>(op)));
    const Collective what = begin(op, n * static_cast<int64_t>(dtype_size(dtype)));
    MPI_Request request;
    check(MPI_Iallreduce(MPI_IN_PLACE, data, count, mpi_type(dtype), max ? MPI_MAX : MPI_SUM, comm_, &request),
          "MPI_Iallreduce", what);
    wait(request, what, "MPI_Iallreduce");
  }

  // Started like do_all_reduce and waited for, in the order started, by do_finish_all_reduces.
  // MPI progresses them inside the MPI calls made meanwhile (other collectives' polls).
  void do_start_all_reduce(void* data, int64_t n, DType dtype) override {
    const int count = int_count(n, "all_reduce_sum");
    const Collective what = begin(Op::kAllReduceSum, n * static_cast<int64_t>(dtype_size(dtype)));
    MPI_Request request;
    check(MPI_Iallreduce(MPI_IN_PLACE, data, count, mpi_type(dtype), MPI_SUM, comm_, &request), "MPI_Iallreduce",
          what);
    started_.push_back(Started{request, what});
  }

  // One deadline for all of them, from the finish's start.
  void do_finish_all_reduces() override {
    std::vector<Started> started;
    started.swap(started_);
    const Clock::time_point start = Clock::now();
    for (Started& s : started) wait(s.request, s.what, "MPI_Iallreduce", start);
  }

  // The requests stay active: MPI may still write their buffers, so the job must end by
  // MPI_Abort (end_job_after_error), never MPI_Finalize.
  void do_abandon_all_reduces() override {
    if (started_.empty()) return;
    started_.clear();
    abandoned_ = true;
    g_error_seen = true;
  }

  void do_all_to_all_v(const void* send, const int64_t* send_counts, void* recv, const int64_t* recv_counts,
                       DType dtype) override {
    const size_t elem = dtype_size(dtype);
    std::vector<int> scounts(static_cast<size_t>(size_)), sdispls(scounts.size());
    std::vector<int> rcounts(scounts.size()), rdispls(scounts.size());
    int64_t send_total = 0, recv_total = 0;
    for (int r = 0; r < size_; ++r) {
      scounts[r] = int_count(send_counts[r], "all_to_all_v");
      rcounts[r] = int_count(recv_counts[r], "all_to_all_v");
      sdispls[r] = int_count(send_total, "all_to_all_v (send offset)");
      rdispls[r] = int_count(recv_total, "all_to_all_v (receive offset)");
      send_total += send_counts[r];
      recv_total += recv_counts[r];
    }
    int_count(send_total, "all_to_all_v (send total)");
    int_count(recv_total, "all_to_all_v (receive total)");
    // MPI forbids overlapping send and receive buffers.
    std::vector<uint8_t> send_copy;
    if (overlap(send, static_cast<size_t>(send_total) * elem, recv, static_cast<size_t>(recv_total) * elem)) {
      send_copy.assign(static_cast<const uint8_t*>(send), static_cast<const uint8_t*>(send) + send_total * elem);
      send = send_copy.data();
    }
    const Collective what = begin(Op::kAllToAllV, send_total * static_cast<int64_t>(elem));
    const MPI_Datatype type = mpi_type(dtype);
    MPI_Request request;
    check(MPI_Ialltoallv(send, scounts.data(), sdispls.data(), type, recv, rcounts.data(), rdispls.data(), type, comm_,
                         &request),
          "MPI_Ialltoallv", what);
    wait(request, what, "MPI_Ialltoallv");
  }

  void do_all_gather(const void* send, int64_t n, void* recv, DType dtype) override {
    const int count = int_count(n, "all_gather");
    int_count(n * size_, "all_gather (receive total)");
    const size_t bytes = static_cast<size_t>(n) * dtype_size(dtype);
    // In place when this rank's block already sits at its slot of recv; a copy for any other overlap.
    std::vector<uint8_t> send_copy;
    if (send == static_cast<uint8_t*>(recv) + bytes * static_cast<size_t>(rank_)) {
      send = MPI_IN_PLACE;
    } else if (overlap(send, bytes, recv, bytes * static_cast<size_t>(size_))) {
      send_copy.assign(static_cast<const uint8_t*>(send), static_cast<const uint8_t*>(send) + bytes);
      send = send_copy.data();
    }
    const Collective what = begin(Op::kAllGather, static_cast<int64_t>(bytes));
    const MPI_Datatype type = mpi_type(dtype);
    MPI_Request request;
    check(MPI_Iallgather(send, count, type, recv, count, type, comm_, &request), "MPI_Iallgather", what);
    wait(request, what, "MPI_Iallgather");
  }

  void do_broadcast(void* data, int64_t n, DType dtype, int root) override {
    const int count = int_count(n, "broadcast");
    const Collective what = begin(Op::kBroadcast, n * static_cast<int64_t>(dtype_size(dtype)));
    MPI_Request request;
    check(MPI_Ibcast(data, count, mpi_type(dtype), root, comm_, &request), "MPI_Ibcast", what);
    wait(request, what, "MPI_Ibcast");
  }

  void do_barrier() override {
    const Collective what = begin(Op::kBarrier, 0);
    MPI_Request request;
    check(MPI_Ibarrier(comm_, &request), "MPI_Ibarrier", what);
    wait(request, what, "MPI_Ibarrier");
  }

 private:
  Collective begin(Op op, int64_t bytes) {
    if (timed_out_) throw CommTimeout(timeout_message_ + " (the communicator is unusable after a timeout)");
    return Collective{op, ++seq_, bytes};
  }

  std::string describe(const Collective& what) const {
    std::ostringstream os;
    os << op_name(static_cast<int64_t>(what.op));
    if (what.op != Op::kSetup) os << " (collective #" << what.seq << ", " << what.bytes << " bytes)";
    return os.str();
  }

  void check(int code, const char* call, const Collective& what) const {
    if (code != MPI_SUCCESS)
      throw UserError(NCSREC_STR_("rank " << rank_ << ": " << call << " in " << describe(what)
                                          << " failed: " << mpi_error_string(code)));
  }

  // Polls `request` until it completes or the deadline passes (then names the missing ranks and
  // throws CommTimeout). Spins briefly, because most collectives finish in microseconds, then
  // yields and finally sleeps between polls: a waiting rank must leave the core to the ranks it
  // waits for when there are more ranks than cores.
  void wait(MPI_Request& request, const Collective& what, const char* call,
            Clock::time_point start = Clock::now()) {
    current_ = what;
    auto pause = std::chrono::microseconds(20);
    for (int64_t polls = 0;; ++polls) {
      int done = 0;
      check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), call, what);
      if (done) return;
      if (polls < 200) continue;
      answer_pings();
      const double waited = std::chrono::duration<double>(Clock::now() - start).count();
      if (timeout_ > 0 && waited > timeout_) report_timeout(what, waited);
      if (polls < 2000) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(pause);
        pause = std::min(pause * 2, std::chrono::microseconds(200));
      }
    }
  }

  // While waiting in any collective: tell a timed-out peer that this rank is alive and where.
  void answer_pings() {
    if (probe_) probe_->answer(current_.seq, static_cast<int64_t>(current_.op));
  }

  [[noreturn]] void report_timeout(const Collective& what, double waited) {
    timed_out_ = true;
    g_error_seen = true;
    std::ostringstream os;
    os << "ncsrec: rank " << rank_ << ": " << describe(what) << " waited " << std::setprecision(3) << waited << " s";
    if (!probe_) {
      os << "; a rank never created its communicator (crashed or stuck before it?): ending the job";
    } else {
      os << probe_->diagnose(what.seq, static_cast<int64_t>(what.op), std::min(kMaxListenSeconds, timeout_ / 2))
         << ": ending the job";
    }
    timeout_message_ = os.str();
    std::fprintf(stderr, "%s\n", timeout_message_.c_str());
    std::fflush(stderr);
    throw CommTimeout(timeout_message_);
  }

  double timeout_;
  int rank_ = 0, size_ = 1;
  MPI_Comm comm_ = MPI_COMM_NULL;  // the collectives
  MPI_Comm diag_ = MPI_COMM_NULL;  // liveness pings after a timeout, apart from the collectives
  std::unique_ptr<MpiPeerProbe> probe_;  // on diag_, once set up (MPI_Comm_idup completes later than it returns)
  Collective current_{Op::kSetup, 0, 0};  // the collective being waited for, for answers to pings
  int64_t seq_ = 0;
  struct Started {
    MPI_Request request;
    Collective what;
  };
  std::vector<Started> started_;  // all-reduces started and not yet waited for
  bool abandoned_ = false;        // some were given up (abandon_all_reduces): still active
  bool timed_out_ = false;
  std::string timeout_message_;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(const CommOptions& options) {
  const double timeout = comm_timeout_seconds(options);
  ensure_mpi_initialised();
  return std::make_unique<MpiCommunicator>(timeout);
}

void end_job_after_error(int exit_code) {
  int initialised = 0, finalised = 0;
  if (MPI_Initialized(&initialised) != MPI_SUCCESS || !initialised) return;
  if (MPI_Finalized(&finalised) != MPI_SUCCESS || finalised) return;
  int size = 1;
  if (MPI_Comm_size(MPI_COMM_WORLD, &size) != MPI_SUCCESS || size <= 1) return;
  g_error_seen = true;
  std::fflush(stdout);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, exit_code);
}

}  // namespace ncsrec

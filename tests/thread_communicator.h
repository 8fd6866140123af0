// A Communicator for tests where N ranks are N threads of one process, so multi-rank code runs
// in the unit suite without mpirun.
//
// Every collective is two barriers around shared memory: each rank copies what it sends into
// its own slot, waits for all, reads what it needs from the others' slots, and waits again
// before the slots may be reused. Sums run in rank order, so results are deterministic and
// identical on every rank. A rank that throws aborts the others (they leave their barrier
// with an error instead of hanging); a rank that returns while others wait in a collective,
// or a barrier waiting longer than the timeout, is reported as CommTimeout naming the call.
//
// Not for production: no overlap, every payload copied twice.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "dist/communicator.h"

namespace ncsrec::testing {

// State shared by the ranks of one run_ranks call.
class ThreadGroup {
 public:
  explicit ThreadGroup(int n, double timeout_seconds) : n_(n), timeout_(timeout_seconds), slots_(static_cast<size_t>(n)) {}
  int size() const { return n_; }

  struct Slot {
    std::vector<char> data;       // a copy of what the rank sends
    std::vector<int64_t> counts;  // all-to-all: elements for each destination rank
  };
  Slot& slot(int rank) { return slots_[static_cast<size_t>(rank)]; }

  // Returns when every rank has arrived; throws if the group aborted, a rank has returned, or
  // the wait exceeds the timeout.
  void wait(int rank, const std::string& call) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (aborted_) throw std::runtime_error("thread communicator: rank " + std::to_string(rank) + " in " + call +
                                           ": another rank failed");
    const uint64_t generation = generation_;
    if (++arrived_ == n_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    (void)cv_.wait_for(lock, std::chrono::duration<double>(timeout_),
                                   [&] { return generation_ != generation || aborted_ || returned_ > 0; });
    if (generation_ != generation) return;
    if (aborted_) throw std::runtime_error("thread communicator: rank " + std::to_string(rank) + " in " + call +
                                           ": another rank failed");
    if (returned_ > 0)
      throw CommTimeout("thread communicator: rank " + std::to_string(rank) + " waits in " + call + " but " +
                        std::to_string(returned_) + " rank(s) already returned (ranks called different collectives)");
    throw CommTimeout("thread communicator: rank " + std::to_string(rank) + " waited " + std::to_string(timeout_) +
                      " s in " + call + " for " + std::to_string(n_ - arrived_) + " rank(s)");
  }
  void abort() {
    std::lock_guard<std::mutex> lock(mutex_);
    aborted_ = true;
    cv_.notify_all();
  }
  void returned() {
    std::lock_guard<std::mutex> lock(mutex_);
    ++returned_;
    cv_.notify_all();
  }

 private:
  const int n_;
  const double timeout_;
  std::vector<Slot> slots_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0, returned_ = 0;
  uint64_t generation_ = 0;
  bool aborted_ = false;
};

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(ThreadGroup& group, int rank) : group_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int world_size() const override { return group_.size(); }
  const char* kind() const override { return "thread"; }

 protected:
  void do_all_reduce(void* data, int64_t n, DType dtype, bool max) override {
    const std::string call = begin("all_reduce");
    publish(data, n * elem(dtype));
    group_.wait(rank_, call);
    std::vector<char> result(group_.slot(0).data);
    for (int s = 1; s < world_size(); ++s) {
      const std::vector<char>& other = group_.slot(s).data;
      NCSREC_CHECK(other.size() == result.size(), call << ": rank " << s << " reduces " << other.size()
                                                       << " bytes, rank 0 " << result.size());
      if (dtype == DType::F32) combine<float>(result, other, n, max);
      else if (dtype == DType::F64) combine<double>(result, other, n, max);
      else if (dtype == DType::I64) combine<int64_t>(result, other, n, max);
      else NCSREC_CHECK(false, call << " of " << dtype_name(dtype));
    }
    group_.wait(rank_, call);
    std::memcpy(data, result.data(), result.size());
  }

  void do_all_to_all_v(const void* send, const int64_t* send_counts, void* recv, const int64_t* recv_counts,
                       DType dtype) override {
    const std::string call = begin("all_to_all_v");
    const int n = world_size();
    int64_t total = 0;
    for (int r = 0; r < n; ++r) total += send_counts[r];
    publish(send, total * elem(dtype));
    group_.slot(rank_).counts.assign(send_counts, send_counts + n);
    group_.wait(rank_, call);
    char* out = static_cast<char*>(recv);
    for (int s = 0; s < n; ++s) {
      const ThreadGroup::Slot& from = group_.slot(s);
      int64_t offset = 0;
      for (int r = 0; r < rank_; ++r) offset += from.counts[static_cast<size_t>(r)];
      const int64_t count = from.counts[static_cast<size_t>(rank_)];
      NCSREC_CHECK(count == recv_counts[s], call << ": rank " << rank_ << " expects " << recv_counts[s]
                                                 << " elements from rank " << s << ", which sends " << count);
      if (count > 0) std::memcpy(out, from.data.data() + offset * elem(dtype), static_cast<size_t>(count * elem(dtype)));
      out += count * elem(dtype);
    }
    group_.wait(rank_, call);
  }

  void do_all_gather(const void* send, int64_t count, void* recv, DType dtype) override {
    const std::string call = begin("all_gather");
    publish(send, count * elem(dtype));
    group_.wait(rank_, call);
    const int64_t bytes = count * elem(dtype);
    for (int s = 0; s < world_size(); ++s) {
      const std::vector<char>& from = group_.slot(s).data;
      NCSREC_CHECK(static_cast<int64_t>(from.size()) == bytes,
                   call << ": rank " << s << " gathers " << from.size() << " bytes, rank " << rank_ << " " << bytes);
      if (bytes > 0) std::memcpy(static_cast<char*>(recv) + s * bytes, from.data(), static_cast<size_t>(bytes));
    }
    group_.wait(rank_, call);
  }

  void do_broadcast(void* data, int64_t n, DType dtype, int root) override {
    const std::string call = begin("broadcast");
    if (rank_ == root) publish(data, n * elem(dtype));
    group_.wait(rank_, call);
    const std::vector<char>& from = group_.slot(root).data;
    NCSREC_CHECK(static_cast<int64_t>(from.size()) == n * elem(dtype),
                 call << ": root " << root << " sends " << from.size() << " bytes, rank " << rank_ << " expects "
                      << n * elem(dtype));
    if (rank_ != root && n > 0) std::memcpy(data, from.data(), from.size());
    group_.wait(rank_, call);
  }

  void do_barrier() override { group_.wait(rank_, begin("barrier")); }

 private:
  static int64_t elem(DType dtype) { return static_cast<int64_t>(dtype_size(dtype)); }
  std::string begin(const char* name) { return std::string(name) + " #" + std::to_string(++sequence_); }
  void publish(const void* data, int64_t bytes) {
    const char* p = static_cast<const char*>(data);
    group_.slot(rank_).data.assign(p, p + bytes);
  }
  template <class T>
  static void combine(std::vector<char>& acc, const std::vector<char>& other, int64_t n, bool max) {
    T* a = reinterpret_cast<T*>(acc.data());
    const T* b = reinterpret_cast<const T*>(other.data());
    for (int64_t i = 0; i < n; ++i) a[i] = max ? (b[i] > a[i] ? b[i] : a[i]) : a[i] + b[i];
  }

  ThreadGroup& group_;
  const int rank_;
  int64_t sequence_ = 0;
};

// Runs fn on n threads, thread r with the communicator of rank r; rethrows the first exception
// (the others' "another rank failed" errors are dropped).
inline void run_ranks(int n, const std::function<void(Communicator&)>& fn, double timeout_seconds = 60) {
  NCSREC_CHECK(n >= 1, "run_ranks with " << n << " ranks");
  ThreadGroup group(n, timeout_seconds);
  std::vector<std::unique_ptr<ThreadCommunicator>> comms;
  for (int r = 0; r < n; ++r) comms.push_back(std::make_unique<ThreadCommunicator>(group, r));
  std::mutex first_mutex;
  std::exception_ptr first;
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(*comms[static_cast<size_t>(r)]);
        group.returned();
      } catch (...) {
        {
          std::lock_guard<std::mutex> lock(first_mutex);
          if (!first) first = std::current_exception();
        }
        group.abort();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  if (first) std::rethrow_exception(first);
}

}  // namespace ncsrec::testing

// The byte-counting wrappers every communicator shares, and the variable-size all-gather.
#include "dist/communicator.h"

#include <chrono>
#include <cmath>
#include <cstdlib>

#include "core/error.h"
#include "core/launcher.h"

namespace ncsrec {
namespace {

// Adds the lifetime of the object to `seconds`.
class Timed {
 public:
  explicit Timed(double& seconds) : seconds_(seconds), start_(std::chrono::steady_clock::now()) {}
  ~Timed() { seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }

 private:
  double& seconds_;
  std::chrono::steady_clock::time_point start_;
};

int64_t bytes_of(int64_t n, DType dtype) { return n * static_cast<int64_t>(dtype_size(dtype)); }

void check_reducible(DType dtype) {
  NCSREC_CHECK(dtype == DType::F32 || dtype == DType::F64 || dtype == DType::I64,
               "all-reduce of " << dtype_name(dtype) << " (only f32, f64 and i64 can be summed)");
}

}  // namespace

void Communicator::in_memory_taken(Tensor& buffer, const std::function<void(Tensor&)>& collective) {
  if (world_size() == 1 || takes_in_place(buffer)) {
    collective(buffer);
    return;
  }
  Tensor staged = buffer.to(takes_device_memory() ? Device::CUDA : Device::CPU);
  collective(staged);
  buffer.copy_from(staged);
}

void Communicator::all_reduce_sum(Tensor& buffer) {
  NCSREC_CHECK(buffer.defined(), "all-reduce of an undefined tensor");
  in_memory_taken(buffer, [&](Tensor& t) { all_reduce_sum(t.raw(), t.numel(), t.dtype()); });
}
void Communicator::all_reduce_sum(double* values, int64_t n) { all_reduce_sum(values, n, DType::F64); }
void Communicator::all_reduce_sum(int64_t* values, int64_t n) { all_reduce_sum(values, n, DType::I64); }
void Communicator::all_reduce_sum(void* data, int64_t n, DType dtype) {
  check_reducible(dtype);
  NCSREC_CHECK(n >= 0, "all-reduce of " << n << " elements");
  Timed timed(stats_.seconds);
  ++stats_.all_reduce_calls;
  if (world_size() > 1) stats_.all_reduce_bytes += bytes_of(n, dtype);
  if (n > 0) do_all_reduce(data, n, dtype, false);
  else if (world_size() > 1) do_barrier();  // every rank still meets every collective
}
void Communicator::start_all_reduce_sum(void* data, int64_t n, DType dtype) {
  check_reducible(dtype);
  NCSREC_CHECK(n >= 0, "all-reduce of " << n << " elements");
  if (n == 0) return;
  Timed timed(stats_.seconds);
  ++stats_.all_reduce_calls;
  if (world_size() > 1) stats_.all_reduce_bytes += bytes_of(n, dtype);
  do_start_all_reduce(data, n, dtype);
  ++in_flight_;
}
void Communicator::finish_all_reduces() {
  if (in_flight_ == 0) return;
  Timed timed(stats_.seconds);
  in_flight_ = 0;
  do_finish_all_reduces();
}
void Communicator::abandon_all_reduces() {
  if (in_flight_ == 0) return;
  in_flight_ = 0;
  do_abandon_all_reduces();
}
void Communicator::all_reduce_max(double* values, int64_t n) {
  Timed timed(stats_.seconds);
  ++stats_.all_reduce_calls;
  if (world_size() > 1) stats_.all_reduce_bytes += bytes_of(n, DType::F64);
  if (n > 0) do_all_reduce(values, n, DType::F64, true);
  else if (world_size() > 1) do_barrier();
}

void Communicator::all_to_all_v(const void* send, const int64_t* send_counts, void* recv, const int64_t* recv_counts,
                                DType dtype) {
  Timed timed(stats_.seconds);
  ++stats_.all_to_all_calls;
  for (int r = 0; r < world_size(); ++r) {
    NCSREC_CHECK(send_counts[r] >= 0 && recv_counts[r] >= 0, "all-to-all with a negative count for rank " << r);
    if (r != rank()) stats_.all_to_all_bytes += bytes_of(send_counts[r], dtype);
  }
  do_all_to_all_v(send, send_counts, recv, recv_counts, dtype);
}

void Communicator::all_gather(const void* send, int64_t count, void* recv, DType dtype) {
  NCSREC_CHECK(count >= 0, "all-gather of " << count << " elements");
  Timed timed(stats_.seconds);
  ++stats_.all_gather_calls;
  stats_.all_gather_bytes += bytes_of(count, dtype) * (world_size() - 1);
  do_all_gather(send, count, recv, dtype);
}

void Communicator::broadcast(Tensor& buffer, int root) {
  NCSREC_CHECK(buffer.defined(), "broadcast of an undefined tensor");
  in_memory_taken(buffer, [&](Tensor& t) { broadcast(t.raw(), t.numel(), t.dtype(), root); });
}
void Communicator::broadcast(void* data, int64_t n, DType dtype, int root) {
  NCSREC_CHECK(root >= 0 && root < world_size(), "broadcast from rank " << root << " of " << world_size());
  Timed timed(stats_.seconds);
  ++stats_.broadcast_calls;
  if (rank() == root) stats_.broadcast_bytes += bytes_of(n, dtype) * (world_size() - 1);
  do_broadcast(data, n, dtype, root);
}

void Communicator::barrier() {
  Timed timed(stats_.seconds);
  ++stats_.barrier_calls;
  do_barrier();
}

template <class T>
std::vector<T> all_gather_v(Communicator& comm, const std::vector<T>& send, std::vector<int64_t>* counts) {
  const int n = comm.world_size();
  std::vector<int64_t> sizes(static_cast<size_t>(n));
  const int64_t mine = static_cast<int64_t>(send.size());
  comm.all_gather(&mine, 1, sizes.data(), DType::I64);
  // Every rank sends its whole vector to every rank.
  std::vector<T> out_send;
  out_send.reserve(send.size() * static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) out_send.insert(out_send.end(), send.begin(), send.end());
  std::vector<int64_t> send_counts(static_cast<size_t>(n), mine);
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  std::vector<T> out(static_cast<size_t>(total));
  comm.all_to_all_v(out_send.data(), send_counts.data(), out.data(), sizes.data(), dtype_of<T>());
  if (counts) *counts = std::move(sizes);
  return out;
}
template std::vector<float> all_gather_v(Communicator&, const std::vector<float>&, std::vector<int64_t>*);
template std::vector<double> all_gather_v(Communicator&, const std::vector<double>&, std::vector<int64_t>*);
template std::vector<int64_t> all_gather_v(Communicator&, const std::vector<int64_t>&, std::vector<int64_t>*);
template std::vector<uint8_t> all_gather_v(Communicator&, const std::vector<uint8_t>&, std::vector<int64_t>*);

double comm_timeout_seconds(const CommOptions& options) {
  double seconds = options.timeout_seconds;
  if (const char* env = std::getenv("NCSREC_COMM_TIMEOUT"); env && *env) {
    char* end = nullptr;
    seconds = std::strtod(env, &end);
    NCSREC_USER_CHECK(end && *end == '\0' && std::isfinite(seconds) && seconds >= 0,
                      "NCSREC_COMM_TIMEOUT='" << env << "': expected a number of seconds >= 0 (0 waits forever)");
  }
  NCSREC_USER_CHECK(std::isfinite(seconds) && seconds >= 0,
                    "communicator timeout " << seconds << " s: expected a number of seconds >= 0 (0 waits forever)");
  return seconds;
}

std::unique_ptr<Communicator> make_default_communicator(const CommOptions& options) {
  return launched_under_mpi() ? make_mpi_communicator(options) : make_local_communicator();
}

}  // namespace ncsrec

// NCCL communicator conformance at world size 1: the checks of tests/mpi/test_communicator.cpp
// on device buffers, with the local communicator as the bootstrap. NCCL refuses two ranks on
// one GPU, and our GPU machines have one, so world size 1 is what we can test: every collective
// must then return its input (all-reduce, broadcast) or copy it to the output (all-to-all-v,
// all-gather), and count what it moved.
//
// Inputs are random, never zero; outputs that differ from the inputs are poisoned with 0xFF
// bytes first, and every device buffer carries a poisoned guard tail that must stay intact.
// Without a GPU these tests skip with the reason, and NcclNoGpu checks that the factory reports
// the absence cleanly. Built only with CUDA and NCCL (tests/CMakeLists.txt: ncsrec_nccl_tests).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/random.h"
#include "core/tensor.h"
#include "dist/communicator.h"
#include "dist/nccl_communicator.h"

namespace ncsrec {
namespace {

constexpr int64_t kGuard = 37;  // poisoned elements after every device buffer

void cuda_ok(cudaError_t err, const char* call) {
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    throw std::runtime_error(std::string(call) + ": " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
  }
}

// Why there is no usable GPU, or "" when there is one.
std::string no_gpu_reason() {
  int count = 0;  // left unwritten by cudaGetDeviceCount when there is no driver
  const cudaError_t err = cudaGetDeviceCount(&count);
  (void)cudaGetLastError();
  if (err != cudaSuccess) return std::string("cudaGetDeviceCount: ") + cudaGetErrorName(err);
  if (count <= 0) return "cudaGetDeviceCount found 0 devices";
  return "";
}

// One communicator per process, created by the first test that needs it and closed by the
// environment's TearDown, before static destruction (when the CUDA runtime may be gone).
std::unique_ptr<Communicator> g_bootstrap, g_comm;
Communicator& comm() {
  if (!g_comm) {
    g_bootstrap = make_local_communicator();
    g_comm = make_nccl_communicator(*g_bootstrap, CommOptions{30});
  }
  return *g_comm;
}
class CloseCommunicator : public ::testing::Environment {
 public:
  void TearDown() override {
    g_comm.reset();
    g_bootstrap.reset();
  }
};
[[maybe_unused]] ::testing::Environment* const g_close = ::testing::AddGlobalTestEnvironment(new CloseCommunicator);

// Element i of stream `seed`: an integer in ±[1, 1000], never zero, scaled as in the MPI suite.
template <class T>
T value(uint64_t seed, int64_t i) {
  const uint64_t h = hash_combine(seed, static_cast<uint64_t>(i));
  const int64_t magnitude = 1 + static_cast<int64_t>(h % 1000);
  const int64_t v = (h >> 32) & 1 ? magnitude : -magnitude;
  if constexpr (std::is_same_v<T, int64_t>) return v * (int64_t{1} << 40);  // needs 64 bits
  else if constexpr (std::is_same_v<T, uint8_t>) return static_cast<uint8_t>(1 + h % 254);  // never 0 or 0xFF
  else return static_cast<T>(v) / T(64);
}

template <class T>
std::vector<T> values(uint64_t seed, int64_t n) {
  std::vector<T> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = value<T>(seed, i);
  return v;
}

// n elements of device memory plus a guard tail, all poisoned (0xFF bytes) at first.
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(int64_t n) : n_(n) {
    cuda_ok(cudaMalloc(&ptr_, bytes(n + kGuard)), "cudaMalloc");
    poison();
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(static_cast<int64_t>(host.size())) { upload(host); }
  ~DeviceBuffer() { (void)cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() { return ptr_; }
  void poison() { cuda_ok(cudaMemset(ptr_, 0xFF, bytes(n_ + kGuard)), "cudaMemset"); }
  void upload(const std::vector<T>& host) {
    cuda_ok(cudaMemcpy(ptr_, host.data(), bytes(static_cast<int64_t>(host.size())), cudaMemcpyHostToDevice),
            "cudaMemcpy");
  }
  std::vector<T> download() const {
    std::vector<T> all(static_cast<size_t>(n_));
    cuda_ok(cudaMemcpy(all.data(), ptr_, bytes(n_), cudaMemcpyDeviceToHost), "cudaMemcpy");
    return all;
  }
  // True when every byte after the n elements is still 0xFF.
  bool guard_intact() const {
    std::vector<unsigned char> guard(bytes(kGuard));
    cuda_ok(cudaMemcpy(guard.data(), ptr_ + n_, guard.size(), cudaMemcpyDeviceToHost), "cudaMemcpy");
    for (unsigned char c : guard)
      if (c != 0xFF) return false;
    return true;
  }

 private:
  static size_t bytes(int64_t n) { return static_cast<size_t>(n) * sizeof(T); }
  int64_t n_;
  T* ptr_ = nullptr;
};

class Nccl : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = no_gpu_reason();
    if (!why.empty()) GTEST_SKIP() << "the NCCL communicator needs a GPU: " << why;
  }
};

template <class T>
void expect_sum_is_the_input(int64_t n, uint64_t seed) {
  const std::vector<T> input = values<T>(seed, n);
  DeviceBuffer<T> buffer(input);
  comm().all_reduce_sum(buffer.get(), n, dtype_of<T>());
  EXPECT_EQ(buffer.download(), input);
  EXPECT_TRUE(buffer.guard_intact());
}

TEST_F(Nccl, KindRankAndWorldSizeComeFromTheBootstrap) {
  EXPECT_STREQ(comm().kind(), "nccl");
  EXPECT_EQ(comm().rank(), 0);
  EXPECT_EQ(comm().world_size(), 1);
}

TEST_F(Nccl, AllReduceSumF32IsTheInput) { expect_sum_is_the_input<float>(1000, 11); }
TEST_F(Nccl, AllReduceSumF64IsTheInput) { expect_sum_is_the_input<double>(1001, 12); }
TEST_F(Nccl, AllReduceSumI64IsTheInput) { expect_sum_is_the_input<int64_t>(999, 13); }
TEST_F(Nccl, AllReduceSumOf3MFloatsIsTheInput) { expect_sum_is_the_input<float>(3'000'000, 14); }

TEST_F(Nccl, AllReduceMaxIsTheInput) {
  const std::vector<double> input = values<double>(31, 513);
  DeviceBuffer<double> buffer(input);
  comm().all_reduce_max(buffer.get(), 513);
  EXPECT_EQ(buffer.download(), input);
  EXPECT_TRUE(buffer.guard_intact());
}

TEST_F(Nccl, ZeroLengthAllReduceIsCounted) {
  comm().reset_stats();
  comm().all_reduce_sum(static_cast<float*>(nullptr), 0, DType::F32);
  comm().all_reduce_max(nullptr, 0);
  EXPECT_EQ(comm().stats().all_reduce_calls, 2);
  EXPECT_EQ(comm().stats().all_reduce_bytes, 0);
  expect_sum_is_the_input<double>(5, 32);  // still usable
}

template <class T>
void expect_self_block_is_copied(int64_t count, uint64_t seed) {
  const std::vector<T> input = values<T>(seed, count);
  DeviceBuffer<T> send(input), recv(count);
  const int64_t counts[1] = {count};
  comm().all_to_all_v(send.get(), counts, recv.get(), counts, dtype_of<T>());
  EXPECT_EQ(recv.download(), input);
  EXPECT_EQ(send.download(), input);  // the send buffer is only read
  EXPECT_TRUE(recv.guard_intact());
  EXPECT_TRUE(send.guard_intact());
}

TEST_F(Nccl, AllToAllVCopiesTheBlockToItselfF32) { expect_self_block_is_copied<float>(37, 41); }
TEST_F(Nccl, AllToAllVCopiesTheBlockToItselfF64) { expect_self_block_is_copied<double>(1, 42); }
TEST_F(Nccl, AllToAllVCopiesTheBlockToItselfI64) { expect_self_block_is_copied<int64_t>(4099, 43); }
TEST_F(Nccl, AllToAllVCopiesTheBlockToItselfU8) { expect_self_block_is_copied<uint8_t>(1001, 44); }

TEST_F(Nccl, AllToAllVInPlaceAndAllZeroCounts) {
  const std::vector<float> input = values<float>(45, 250);
  DeviceBuffer<float> buffer(input);
  const int64_t counts[1] = {250}, zeros[1] = {0};
  comm().all_to_all_v(buffer.get(), counts, buffer.get(), counts, DType::F32);
  EXPECT_EQ(buffer.download(), input);
  comm().all_to_all_v(nullptr, zeros, nullptr, zeros, DType::F32);
  EXPECT_TRUE(buffer.guard_intact());
  expect_sum_is_the_input<float>(3, 46);  // still usable
}

// The documented way to learn recv_counts (communicator.h): an all_to_all of one I64 per rank,
// here on device buffers. (all_gather_v, the host-vector helper built on it, has no NCCL
// counterpart: NCCL refuses host buffers, HostBuffersAreRejectedAndTheCommunicatorStaysUsable.)
TEST_F(Nccl, CountsExchangedWithOneI64PerRank) {
  DeviceBuffer<int64_t> send(std::vector<int64_t>{4242}), recv(1);
  recv.poison();
  const int64_t ones[1] = {1};
  comm().all_to_all_v(send.get(), ones, recv.get(), ones, DType::I64);
  EXPECT_EQ(recv.download(), std::vector<int64_t>{4242});
  EXPECT_TRUE(recv.guard_intact());
}

TEST_F(Nccl, AllGatherCopiesTheOnlyBlock) {
  const std::vector<double> input = values<double>(51, 37);
  DeviceBuffer<double> send(input), recv(37);
  comm().all_gather(send.get(), 37, recv.get(), DType::F64);
  EXPECT_EQ(recv.download(), input);
  EXPECT_TRUE(recv.guard_intact());
}

TEST_F(Nccl, AllGatherInPlaceU8AndZeroCount) {
  const std::vector<uint8_t> input = values<uint8_t>(52, 5);
  DeviceBuffer<uint8_t> buffer(input);
  comm().all_gather(buffer.get(), 5, buffer.get(), DType::U8);  // rank 0's slot is the start
  EXPECT_EQ(buffer.download(), input);
  comm().all_gather(nullptr, 0, nullptr, DType::I64);
  EXPECT_TRUE(buffer.guard_intact());
}

TEST_F(Nccl, BroadcastFromTheOnlyRootKeepsTheBuffer) {
  const std::vector<double> f64 = values<double>(71, 100);
  DeviceBuffer<double> a(f64);
  comm().broadcast(a.get(), 100, DType::F64, 0);
  EXPECT_EQ(a.download(), f64);
  EXPECT_TRUE(a.guard_intact());
  const std::vector<int64_t> i64 = values<int64_t>(72, 36);
  DeviceBuffer<int64_t> b(i64);
  comm().broadcast(b.get(), 36, DType::I64, 0);
  EXPECT_EQ(b.download(), i64);
  comm().broadcast(nullptr, 0, DType::F32, 0);
  EXPECT_THROW(comm().broadcast(b.get(), 36, DType::I64, 1), InternalError);  // no rank 1
}

TEST_F(Nccl, BarrierPassesAndIsCounted) {
  comm().reset_stats();
  for (int i = 0; i < 3; ++i) comm().barrier();
  EXPECT_EQ(comm().stats().barrier_calls, 3);
  EXPECT_EQ(comm().stats().total_bytes(), 0);
}

TEST_F(Nccl, StatsCountCallsAndNoBytesToOtherRanks) {
  comm().reset_stats();
  DeviceBuffer<float> f(values<float>(81, 1000));
  comm().all_reduce_sum(f.get(), 1000, DType::F32);
  DeviceBuffer<double> d(values<double>(82, 10)), gathered(10);
  comm().all_reduce_max(d.get(), 10);
  const int64_t counts[1] = {10};
  DeviceBuffer<double> recv(10);
  comm().all_to_all_v(d.get(), counts, recv.get(), counts, DType::F64);
  comm().all_gather(d.get(), 10, gathered.get(), DType::F64);
  comm().broadcast(d.get(), 10, DType::F64, 0);
  const CommStats& s = comm().stats();
  EXPECT_EQ(s.all_reduce_calls, 2);
  EXPECT_EQ(s.all_to_all_calls, 1);
  EXPECT_EQ(s.all_gather_calls, 1);
  EXPECT_EQ(s.broadcast_calls, 1);
  EXPECT_EQ(s.total_bytes(), 0);  // one rank sends nothing to others
  EXPECT_GT(s.seconds, 0);
}

TEST_F(Nccl, CollectivesSeeWorkQueuedOnTheDefaultStream) {
  // The communicator's stream is ordered after the legacy default stream, where the CUDA
  // backend runs, by an event: a memset queued there and not waited for must be what is gathered.
  const int64_t n = 1 << 22;
  DeviceBuffer<uint8_t> send(n), recv(n);
  cuda_ok(cudaMemsetAsync(send.get(), 0x5A, static_cast<size_t>(n), /*stream=*/0), "cudaMemsetAsync");
  comm().all_gather(send.get(), n, recv.get(), DType::U8);
  const std::vector<uint8_t> got = recv.download();
  int64_t wrong = 0;
  for (uint8_t b : got) wrong += b != 0x5A;
  EXPECT_EQ(wrong, 0);
}

TEST_F(Nccl, StartedAllReducesReadEarlierWorkAndAreDoneAtTheFinish) {
  // Started on the communicator's (non-blocking) stream behind the compute queued before them:
  // a memset queued on the default stream and not waited for is what the second one sums.
  comm().reset_stats();
  const std::vector<float> a_in = values<float>(61, 1000);
  const std::vector<double> c_in = values<double>(63, 77);
  const int64_t n = 1 << 20;
  DeviceBuffer<float> a(a_in), b(values<float>(62, n));
  DeviceBuffer<double> c(c_in);
  cuda_ok(cudaMemsetAsync(b.get(), 0, static_cast<size_t>(n) * sizeof(float), /*stream=*/0), "cudaMemsetAsync");
  comm().start_all_reduce_sum(a.get(), 1000, DType::F32);
  comm().start_all_reduce_sum(b.get(), n, DType::F32);
  comm().start_all_reduce_sum(c.get(), 77, DType::F64);
  EXPECT_EQ(comm().all_reduces_in_flight(), 3);
  comm().finish_all_reduces();
  EXPECT_EQ(comm().all_reduces_in_flight(), 0);
  EXPECT_EQ(a.download(), a_in);
  EXPECT_EQ(b.download(), std::vector<float>(static_cast<size_t>(n), 0.0f));
  EXPECT_EQ(c.download(), c_in);
  EXPECT_TRUE(a.guard_intact() && b.guard_intact() && c.guard_intact());
  EXPECT_EQ(comm().stats().all_reduce_calls, 3);
  EXPECT_EQ(comm().stats().all_reduce_bytes, 0) << "world size 1: nothing to other ranks";
}

TEST_F(Nccl, AllReduceOfBytesIsRejectedAndTheCommunicatorStaysUsable) {
  DeviceBuffer<uint8_t> bytes(values<uint8_t>(91, 8));
  EXPECT_THROW(comm().all_reduce_sum(bytes.get(), 8, DType::U8), InternalError);
  expect_sum_is_the_input<float>(9, 92);
}

TEST_F(Nccl, HostBuffersAreRejectedAndTheCommunicatorStaysUsable) {
  std::vector<float> host = values<float>(93, 16);
  try {
    comm().all_reduce_sum(host.data(), 16, DType::F32);
    ADD_FAILURE() << "a host buffer was accepted";
  } catch (const InternalError& e) {
    EXPECT_NE(std::string(e.what()).find("host memory"), std::string::npos) << e.what();
  }
  const int64_t counts[1] = {16};
  DeviceBuffer<float> recv(16);
  EXPECT_THROW(comm().all_to_all_v(host.data(), counts, recv.get(), counts, DType::F32), InternalError);
  expect_sum_is_the_input<float>(9, 94);
}

// Runs where there is no GPU (and skips where there is one): the factory must say why.
TEST(NcclNoGpu, FactoryReportsTheMissingDevice) {
  if (no_gpu_reason().empty()) GTEST_SKIP() << "a GPU is present";
  auto bootstrap = make_local_communicator();
  try {
    make_nccl_communicator(*bootstrap);
    ADD_FAILURE() << "an NCCL communicator was created without a GPU";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("no CUDA device"), std::string::npos) << e.what();
  }
}

// Runs everywhere: a malformed timeout is refused before any GPU or NCCL call.
TEST(NcclOptions, MalformedTimeoutIsAUserError) {
  const char* old = std::getenv("NCSREC_COMM_TIMEOUT");
  const std::string saved = old ? old : "";
  auto bootstrap = make_local_communicator();
  setenv("NCSREC_COMM_TIMEOUT", "ten", 1);
  EXPECT_THROW(make_nccl_communicator(*bootstrap), UserError);
  unsetenv("NCSREC_COMM_TIMEOUT");
  EXPECT_THROW(make_nccl_communicator(*bootstrap, CommOptions{-1}), UserError);
  if (old) setenv("NCSREC_COMM_TIMEOUT", saved.c_str(), 1);
}

}  // namespace
}  // namespace ncsrec

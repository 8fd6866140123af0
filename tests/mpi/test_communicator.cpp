// Communicator conformance: one suite that every implementation must pass, run once per
// implementation and world size (ctest: comm.local, comm.mpi.np1/np2/np4, and where CUDA and
// NCCL are built nccl.conformance). The communicator is chosen by env
// NCSREC_TEST_COMM=local|mpi|nccl (unset: the default for how we were launched). NCCL takes
// device buffers: its build of this file (NCSREC_TEST_NCCL) runs every test through DeviceStaged,
// which copies each collective's host buffers to device memory and back, so the NCCL
// collectives meet exactly the tests the host communicators meet; without a GPU it exits 77
// (ctest: skipped).
//
// Every rank runs every test and so calls every collective in the same order; each rank
// computes the expected result from every rank's (seeded) inputs and checks its own output
// exactly. Results are checked with EXPECT, never ASSERT before a collective, so a failing
// rank still meets the others. Only rank 0 prints gtest's report; other ranks print their
// failures tagged with their rank, and a failure on any rank fails every rank's exit code.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/random.h"
#include "core/tensor.h"
#include "dist/communicator.h"
#ifdef NCSREC_TEST_NCCL
#include "core/dispatch.h"
#include "cuda/device.h"
#include "dist/nccl_communicator.h"
#endif

namespace ncsrec {
namespace {

Communicator* g_comm = nullptr;
Communicator& comm() { return *g_comm; }
int rank() { return g_comm->rank(); }
int world() { return g_comm->world_size(); }

// Rank r's i-th input of stream `seed`: an integer in ±[1, 1000], never zero. Small integers
// (scaled by a power of two) keep every sum exact in f32, f64 and i64.
int64_t small_int(uint64_t seed, int r, int64_t i) {
  const uint64_t h = hash_combine(seed, static_cast<uint64_t>(r), static_cast<uint64_t>(i));
  const int64_t magnitude = 1 + static_cast<int64_t>(h % 1000);
  return (h >> 32) & 1 ? magnitude : -magnitude;
}

template <class T>
T value(uint64_t seed, int r, int64_t i) {
  if constexpr (std::is_same_v<T, int64_t>) return small_int(seed, r, i) * (int64_t{1} << 40);  // needs 64 bits
  else return static_cast<T>(small_int(seed, r, i)) / T(64);
}

template <class T>
void expect_sum_is_exact(int64_t n, uint64_t seed) {
  std::vector<T> buffer(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) buffer[i] = value<T>(seed, rank(), i);
  comm().all_reduce_sum(buffer.data(), n, dtype_of<T>());
  int64_t wrong = 0;
  for (int64_t i = 0; i < n; ++i) {
    T expected = 0;
    for (int r = 0; r < world(); ++r) expected += value<T>(seed, r, i);
    if (buffer[i] != expected && wrong++ < 3) {
      ADD_FAILURE() << "element " << i << ": " << buffer[i] << " != " << expected;
    }
  }
  EXPECT_EQ(wrong, 0) << "of " << n << " elements";
}

TEST(Communicator, KindIsTheOneAskedFor) {
  const char* want = std::getenv("NCSREC_TEST_COMM");
  if (want && *want) {
    EXPECT_STREQ(comm().kind(), want);
  }
  EXPECT_GE(rank(), 0);
  EXPECT_LT(rank(), world());
  if (std::string(comm().kind()) == "local") {
    EXPECT_EQ(world(), 1);
  }
}

TEST(AllReduce, SumF32IsExact) { expect_sum_is_exact<float>(1000, 11); }
TEST(AllReduce, SumF64IsExact) { expect_sum_is_exact<double>(1001, 12); }
TEST(AllReduce, SumI64IsExact) { expect_sum_is_exact<int64_t>(999, 13); }
TEST(AllReduce, SumOfLargeBufferOf3MFloatsIsExact) { expect_sum_is_exact<float>(3'000'000, 14); }

TEST(AllReduce, SumOfTensorAndTypedOverloads) {
  Tensor t = Tensor::empty({7, 5}, DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = value<float>(21, rank(), i);
  comm().all_reduce_sum(t);
  std::vector<double> d(17);
  for (size_t i = 0; i < d.size(); ++i) d[i] = value<double>(22, rank(), static_cast<int64_t>(i));
  comm().all_reduce_sum(d.data(), static_cast<int64_t>(d.size()));
  std::vector<int64_t> k(3);
  for (size_t i = 0; i < k.size(); ++i) k[i] = value<int64_t>(23, rank(), static_cast<int64_t>(i));
  comm().all_reduce_sum(k.data(), static_cast<int64_t>(k.size()));
  for (int64_t i = 0; i < t.numel(); ++i) {
    float expected = 0;
    for (int r = 0; r < world(); ++r) expected += value<float>(21, r, i);
    EXPECT_EQ(t.data<float>()[i], expected) << i;
  }
  for (size_t i = 0; i < d.size(); ++i) {
    double expected = 0;
    for (int r = 0; r < world(); ++r) expected += value<double>(22, r, static_cast<int64_t>(i));
    EXPECT_EQ(d[i], expected) << i;
  }
  for (size_t i = 0; i < k.size(); ++i) {
    int64_t expected = 0;
    for (int r = 0; r < world(); ++r) expected += value<int64_t>(23, r, static_cast<int64_t>(i));
    EXPECT_EQ(k[i], expected) << i;
  }
}

TEST(AllReduce, MaxIsTheLargestOfAnyRank) {
  const int64_t n = 513;
  std::vector<double> buffer(n);
  for (int64_t i = 0; i < n; ++i) buffer[i] = value<double>(31, rank(), i) * 1.37;
  comm().all_reduce_max(buffer.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    double expected = value<double>(31, 0, i) * 1.37;
    for (int r = 1; r < world(); ++r) expected = std::max(expected, value<double>(31, r, i) * 1.37);
    EXPECT_EQ(buffer[i], expected) << i;
  }
}

TEST(AllReduce, ZeroLengthIsMetByEveryRankAndCounted) {
  comm().reset_stats();
  comm().all_reduce_sum(static_cast<float*>(nullptr), 0, DType::F32);
  comm().all_reduce_max(nullptr, 0);
  EXPECT_EQ(comm().stats().all_reduce_calls, 2);
  EXPECT_EQ(comm().stats().all_reduce_bytes, 0);
  expect_sum_is_exact<double>(5, 32);  // still in step with the other ranks
}

// The overlapped form: sums started together, with a blocking collective between the starts
// and the finish (the embeddings' exchange during the backward), are exact at the finish; a
// zero-length start starts nothing; calls and bytes are counted as blocking sums are.
template <class T>
bool sum_is_exact(const std::vector<T>& buffer, uint64_t seed) {
  for (size_t i = 0; i < buffer.size(); ++i) {
    T expected = 0;
    for (int r = 0; r < world(); ++r) expected += value<T>(seed, r, static_cast<int64_t>(i));
    if (buffer[i] != expected) return false;
  }
  return true;
}

TEST(StartedAllReduce, SumsStartedTogetherAndFinishedAfterOtherCollectivesAreExact) {
  comm().reset_stats();
  std::vector<float> a(1000);
  std::vector<double> b(3001);
  std::vector<int64_t> c(7);
  for (size_t i = 0; i < a.size(); ++i) a[i] = value<float>(81, rank(), static_cast<int64_t>(i));
  for (size_t i = 0; i < b.size(); ++i) b[i] = value<double>(82, rank(), static_cast<int64_t>(i));
  for (size_t i = 0; i < c.size(); ++i) c[i] = value<int64_t>(83, rank(), static_cast<int64_t>(i));
  comm().start_all_reduce_sum(a.data(), static_cast<int64_t>(a.size()), DType::F32);
  comm().start_all_reduce_sum(b.data(), static_cast<int64_t>(b.size()), DType::F64);
  comm().start_all_reduce_sum(nullptr, 0, DType::F32);  // nothing, on every rank
  expect_sum_is_exact<double>(17, 84);                  // a blocking collective meanwhile
  comm().start_all_reduce_sum(c.data(), static_cast<int64_t>(c.size()), DType::I64);
  EXPECT_EQ(comm().all_reduces_in_flight(), 3);
  comm().finish_all_reduces();
  EXPECT_EQ(comm().all_reduces_in_flight(), 0);
  comm().finish_all_reduces();  // nothing in flight: a no-op
  EXPECT_TRUE(sum_is_exact(a, 81));
  EXPECT_TRUE(sum_is_exact(b, 82));
  EXPECT_TRUE(sum_is_exact(c, 83));
  EXPECT_EQ(comm().stats().all_reduce_calls, 4);
  const int64_t bytes = world() > 1 ? 1000 * 4 + 3001 * 8 + 17 * 8 + 7 * 8 : 0;
  EXPECT_EQ(comm().stats().all_reduce_bytes, bytes);
}

// Rank s sends count(s, r) elements to rank r: uneven, rank-dependent, zero for about a third
// of the pairs, and nothing at all from the last rank to anyone but itself.
int64_t pair_count(int s, int r) {
  if (s == world() - 1 && s != r && world() > 2) return 0;
  return static_cast<int64_t>(hash_combine(41, static_cast<uint64_t>(s), static_cast<uint64_t>(r)) % 3) * (s + 1) * 5;
}
// Element k of the block rank s sends to rank r.
template <class T>
T pair_value(int s, int r, int64_t k) {
  return value<T>(42 + static_cast<uint64_t>(r) * 1000, s, k);
}

template <class T>
void expect_blocks_in_rank_order() {
  const int n = world();
  std::vector<int64_t> send_counts(n), recv_counts(n);
  std::vector<T> send;
  for (int r = 0; r < n; ++r) {
    send_counts[r] = pair_count(rank(), r);
    recv_counts[r] = pair_count(r, rank());
    for (int64_t k = 0; k < send_counts[r]; ++k) send.push_back(pair_value<T>(rank(), r, k));
  }
  std::vector<T> expected;
  for (int s = 0; s < n; ++s)
    for (int64_t k = 0; k < recv_counts[s]; ++k) expected.push_back(pair_value<T>(s, rank(), k));
  std::vector<T> recv(expected.size(), T(0));
  comm().all_to_all_v(send.data(), send_counts.data(), recv.data(), recv_counts.data(), dtype_of<T>());
  EXPECT_EQ(recv, expected);
}

TEST(AllToAllV, UnevenBlocksWithZeroCountsArriveInRankOrderF32) { expect_blocks_in_rank_order<float>(); }
TEST(AllToAllV, UnevenBlocksWithZeroCountsArriveInRankOrderF64) { expect_blocks_in_rank_order<double>(); }
TEST(AllToAllV, UnevenBlocksWithZeroCountsArriveInRankOrderI64) { expect_blocks_in_rank_order<int64_t>(); }

TEST(AllToAllV, UnevenByteBlocksArriveInRankOrder) {
  const int n = world();
  auto byte = [](int s, int r, int64_t k) { return static_cast<uint8_t>(1 + (s * 31 + r * 7 + k) % 255); };
  std::vector<int64_t> send_counts(n), recv_counts(n);
  std::vector<uint8_t> send, expected;
  for (int r = 0; r < n; ++r) {
    send_counts[r] = pair_count(rank(), r) + 1;  // +1: every pair exchanges some bytes
    recv_counts[r] = pair_count(r, rank()) + 1;
    for (int64_t k = 0; k < send_counts[r]; ++k) send.push_back(byte(rank(), r, k));
    for (int64_t k = 0; k < recv_counts[r]; ++k) expected.push_back(byte(r, rank(), k));
  }
  std::vector<uint8_t> recv(expected.size(), 0);
  comm().all_to_all_v(send.data(), send_counts.data(), recv.data(), recv_counts.data(), DType::U8);
  EXPECT_EQ(recv, expected);
}

TEST(AllToAllV, AllCountsZeroIsMetByEveryRank) {
  std::vector<int64_t> zeros(world(), 0);
  comm().all_to_all_v(nullptr, zeros.data(), nullptr, zeros.data(), DType::F32);
  expect_sum_is_exact<float>(3, 43);
}

TEST(AllToAllV, CountsExchangedWithOneI64PerRank) {
  // The documented way to learn recv_counts: all_to_all of one count per rank.
  const int n = world();
  std::vector<int64_t> send_counts(n), recv_counts(n, -1), ones(n, 1);
  for (int r = 0; r < n; ++r) send_counts[r] = pair_count(rank(), r);
  comm().all_to_all_v(send_counts.data(), ones.data(), recv_counts.data(), ones.data(), DType::I64);
  for (int s = 0; s < n; ++s) EXPECT_EQ(recv_counts[s], pair_count(s, rank())) << "from rank " << s;
}

TEST(AllGather, EveryRanksBlockInRankOrder) {
  const int64_t count = 37;
  std::vector<double> send(count), recv(count * world(), 0);
  for (int64_t i = 0; i < count; ++i) send[i] = value<double>(51, rank(), i);
  comm().all_gather(send.data(), count, recv.data(), DType::F64);
  for (int r = 0; r < world(); ++r)
    for (int64_t i = 0; i < count; ++i) EXPECT_EQ(recv[r * count + i], value<double>(51, r, i)) << r << "," << i;
}

TEST(AllGather, InPlaceFromOwnSlotAndU8) {
  const int64_t count = 5;
  std::vector<uint8_t> buffer(count * world(), 0);
  for (int64_t i = 0; i < count; ++i) buffer[rank() * count + i] = static_cast<uint8_t>(1 + rank() * 10 + i);
  comm().all_gather(buffer.data() + rank() * count, count, buffer.data(), DType::U8);
  for (int r = 0; r < world(); ++r)
    for (int64_t i = 0; i < count; ++i) EXPECT_EQ(buffer[r * count + i], 1 + r * 10 + i) << r << "," << i;
}

TEST(AllGatherV, EmptyContributionFromOneRank) {
  // Rank r contributes 3r + 2 values, except the last rank, which contributes none.
  auto length = [](int r) { return r == world() - 1 ? int64_t{0} : 3 * r + 2; };
  std::vector<int64_t> mine(static_cast<size_t>(length(rank())));
  for (size_t i = 0; i < mine.size(); ++i) mine[i] = value<int64_t>(61, rank(), static_cast<int64_t>(i));
  std::vector<int64_t> counts;
  const std::vector<int64_t> all = all_gather_v(comm(), mine, &counts);
  std::vector<int64_t> expected, expected_counts;
  for (int r = 0; r < world(); ++r) {
    expected_counts.push_back(length(r));
    for (int64_t i = 0; i < length(r); ++i) expected.push_back(value<int64_t>(61, r, i));
  }
  EXPECT_EQ(counts, expected_counts);
  EXPECT_EQ(all, expected);
}

TEST(AllGatherV, FloatsOfEveryLength) {
  std::vector<float> mine(static_cast<size_t>(rank() + 1));
  for (size_t i = 0; i < mine.size(); ++i) mine[i] = value<float>(62, rank(), static_cast<int64_t>(i));
  const std::vector<float> all = all_gather_v(comm(), mine);
  std::vector<float> expected;
  for (int r = 0; r < world(); ++r)
    for (int64_t i = 0; i <= r; ++i) expected.push_back(value<float>(62, r, i));
  EXPECT_EQ(all, expected);
}

TEST(Broadcast, FromEveryRoot) {
  for (int root = 0; root < world(); ++root) {
    const int64_t n = 100 + root;
    std::vector<double> buffer(n);
    for (int64_t i = 0; i < n; ++i) buffer[i] = value<double>(71 + root, rank(), i);  // differs per rank
    comm().broadcast(buffer.data(), n, DType::F64, root);
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(buffer[i], value<double>(71 + root, root, i)) << "root " << root;
  }
}

TEST(Broadcast, TensorFromLastRoot) {
  Tensor t = Tensor::empty({4, 9}, DType::I64);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<int64_t>()[i] = value<int64_t>(81, rank(), i);
  comm().broadcast(t, world() - 1);
  for (int64_t i = 0; i < t.numel(); ++i) EXPECT_EQ(t.data<int64_t>()[i], value<int64_t>(81, world() - 1, i)) << i;
}

TEST(Barrier, EveryRankPassesAndIsCounted) {
  comm().reset_stats();
  for (int i = 0; i < 3; ++i) comm().barrier();
  EXPECT_EQ(comm().stats().barrier_calls, 3);
  EXPECT_EQ(comm().stats().total_bytes(), 0);
}

TEST(Stats, CountThePayloadSentToOtherRanks) {
  const int n = world();
  comm().reset_stats();
  std::vector<float> f(1000, 1.0f);
  comm().all_reduce_sum(f.data(), 1000, DType::F32);
  std::vector<double> d(10, 1.0);
  comm().all_reduce_max(d.data(), 10);
  EXPECT_EQ(comm().stats().all_reduce_calls, 2);
  EXPECT_EQ(comm().stats().all_reduce_bytes, n > 1 ? 4000 + 80 : 0);

  std::vector<int64_t> send_counts(n), recv_counts(n);
  int64_t sent_elsewhere = 0, send_total = 0, recv_total = 0;
  for (int r = 0; r < n; ++r) {
    send_counts[r] = pair_count(rank(), r);
    recv_counts[r] = pair_count(r, rank());
    send_total += send_counts[r];
    recv_total += recv_counts[r];
    if (r != rank()) sent_elsewhere += send_counts[r];
  }
  std::vector<double> send(send_total, 2.0), recv(recv_total);
  comm().all_to_all_v(send.data(), send_counts.data(), recv.data(), recv_counts.data(), DType::F64);
  EXPECT_EQ(comm().stats().all_to_all_calls, 1);
  EXPECT_EQ(comm().stats().all_to_all_bytes, sent_elsewhere * 8);

  std::vector<int64_t> mine(3, rank()), gathered(3 * n);
  comm().all_gather(mine.data(), 3, gathered.data(), DType::I64);
  EXPECT_EQ(comm().stats().all_gather_calls, 1);
  EXPECT_EQ(comm().stats().all_gather_bytes, 3 * 8 * (n - 1));

  std::vector<uint8_t> bytes(50, 1);
  comm().broadcast(bytes.data(), 50, DType::U8, 0);
  EXPECT_EQ(comm().stats().broadcast_calls, 1);
  EXPECT_EQ(comm().stats().broadcast_bytes, rank() == 0 ? 50 * (n - 1) : 0);
  EXPECT_EQ(comm().stats().total_bytes(),
            comm().stats().all_reduce_bytes + sent_elsewhere * 8 + 3 * 8 * (n - 1) + (rank() == 0 ? 50 * (n - 1) : 0));
}

// The liveness probe a communicator lends to one layered over its ranks (NCCL's watchdog):
// none for the local communicator; over MPI, ranks that time out together hear each other, a
// rank that waits (answer) is heard with the collective it waits in, and a rank that does
// neither is named.
TEST(PeerProbe, RanksThatAnswerAreHeardAndASilentRankIsNamed) {
  std::unique_ptr<PeerProbe> probe = comm().make_peer_probe();
  if (std::string(comm().kind()) != "mpi") {  // local has none; NCCL borrows one, it lends none
    EXPECT_EQ(probe, nullptr);
    return;
  }
  ASSERT_NE(probe, nullptr);
  // Each part on a probe of its own, so that no message left from one part reaches the next.
  // Every rank times out in collective #5 at once: each hears all the others.
  const std::string together = probe->diagnose(5, -1, 5.0);
  EXPECT_NE(together.find("every rank answered"), std::string::npos) << together;
  EXPECT_EQ(together.find("answered from"), std::string::npos) << together;
  comm().barrier();
  if (world() == 1) return;
  // Rank 0 times out in collective #7; the others wait in #8 and answer (for 1.5 s).
  probe = comm().make_peer_probe();
  if (rank() == 0) {
    const std::string heard = probe->diagnose(7, -1, 5.0);
    EXPECT_NE(heard.find("every rank answered"), std::string::npos) << heard;
    EXPECT_NE(heard.find("rank 1 answered from a collective (collective #8)"), std::string::npos) << heard;
  } else {
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
    while (std::chrono::steady_clock::now() < until) {
      probe->answer(8, -1);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  comm().barrier();
  // The last rank neither answers nor asks: the others name it after listening for 1 s.
  probe = comm().make_peer_probe();
  const int silent = world() - 1;
  if (rank() != silent) {
    const std::string named = probe->diagnose(9, -1, 1.0);
    EXPECT_NE(named.find("no answer from rank " + std::to_string(silent) + " "), std::string::npos) << named;
  }
  comm().barrier();
}

TEST(Errors, AllReduceOfBytesIsRejectedAndTheCommunicatorStaysUsable) {
  std::vector<uint8_t> bytes(8, 1);
  EXPECT_THROW(comm().all_reduce_sum(bytes.data(), 8, DType::U8), InternalError);
  Tensor t = Tensor::zeros({8}, DType::U8);
  EXPECT_THROW(comm().all_reduce_sum(t), InternalError);
  expect_sum_is_exact<float>(9, 91);
}

TEST(Errors, CountsBeyondMpiIntAreRejectedBeforeAnythingIsSent) {
  if (std::string(comm().kind()) != "mpi") GTEST_SKIP() << "MPI's int counts only";
  float one = 1;
  const int64_t too_many = int64_t{INT_MAX} + 1;
  EXPECT_THROW(comm().all_reduce_sum(&one, too_many, DType::F32), UserError);
  EXPECT_THROW(comm().broadcast(&one, too_many, DType::F32, 0), UserError);
  std::vector<int64_t> counts(world(), too_many);
  EXPECT_THROW(comm().all_to_all_v(&one, counts.data(), &one, counts.data(), DType::U8), UserError);
  expect_sum_is_exact<float>(9, 92);  // nothing half-issued: the ranks are still in step
}

// On ranks other than 0: print each failure, tagged with the rank, instead of gtest's report.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  // The name is kept here: UnitTest::current_test_info() would deadlock inside OnTestPartResult.
  void OnTestStart(const ::testing::TestInfo& test) override {
    test_name_ = std::string(test.test_suite_name()) + "." + test.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s failed at %s:%d\n%s\n", rank_, test_name_.c_str(),
                 result.file_name() ? result.file_name() : "?", result.line_number(), result.message());
  }

 private:
  int rank_;
  std::string test_name_;
};

#ifdef NCSREC_TEST_NCCL
// The NCCL communicator behind host buffers: each collective's buffers go to device memory, the
// NCCL collective runs there, and what it wrote comes back. The base class counts the calls and
// bytes as for any communicator, so the suite's statistics tests hold unchanged.
class DeviceStaged final : public Communicator {
 public:
  DeviceStaged(std::unique_ptr<Communicator> bootstrap, std::unique_ptr<Communicator> nccl)
      : bootstrap_(std::move(bootstrap)), nccl_(std::move(nccl)) {}
  ~DeviceStaged() override {
    for (Staged& s : started_) ops().free(s.device);
  }
  int rank() const override { return nccl_->rank(); }
  int world_size() const override { return nccl_->world_size(); }
  const char* kind() const override { return nccl_->kind(); }

 protected:
  void do_all_reduce(void* data, int64_t n, DType dtype, bool max) override {
    DeviceCopy bytes(data, bytes_of(n, dtype));
    if (max) nccl_->all_reduce_max(static_cast<double*>(bytes.device), n);
    else nccl_->all_reduce_sum(bytes.device, n, dtype);
    bytes.back(data);
  }
  void do_start_all_reduce(void* data, int64_t n, DType dtype) override {
    const size_t size = bytes_of(n, dtype);
    void* device = ops().alloc(size);
    ops().copy(device, data, size, CopyKind::HostToDevice);
    started_.push_back({data, device, size});
    nccl_->start_all_reduce_sum(device, n, dtype);
  }
  void do_finish_all_reduces() override {
    nccl_->finish_all_reduces();
    for (Staged& s : started_) {
      ops().copy(s.host, s.device, s.bytes, CopyKind::DeviceToHost);
      ops().free(s.device);
    }
    started_.clear();
  }
  void do_abandon_all_reduces() override {
    nccl_->abandon_all_reduces();
    for (Staged& s : started_) ops().free(s.device);
    started_.clear();
  }
  void do_all_to_all_v(const void* send, const int64_t* send_counts, void* recv, const int64_t* recv_counts,
                       DType dtype) override {
    int64_t sent = 0, received = 0;
    for (int r = 0; r < world_size(); ++r) {
      sent += send_counts[r];
      received += recv_counts[r];
    }
    DeviceCopy in(send, bytes_of(sent, dtype)), out(recv, bytes_of(received, dtype));
    nccl_->all_to_all_v(in.device, send_counts, out.device, recv_counts, dtype);
    out.back(recv);
  }
  void do_all_gather(const void* send, int64_t count, void* recv, DType dtype) override {
    // In place (send inside recv) stays in place on the device.
    const size_t total = bytes_of(count * world_size(), dtype);
    DeviceCopy out(recv, total);
    const auto* s = static_cast<const char*>(send);
    const auto* r = static_cast<const char*>(recv);
    if (s >= r && s < r + total) {
      nccl_->all_gather(static_cast<char*>(out.device) + (s - r), count, out.device, dtype);
    } else {
      DeviceCopy in(send, bytes_of(count, dtype));
      nccl_->all_gather(in.device, count, out.device, dtype);
    }
    out.back(recv);
  }
  void do_broadcast(void* data, int64_t n, DType dtype, int root) override {
    DeviceCopy bytes(data, bytes_of(n, dtype));
    nccl_->broadcast(bytes.device, n, dtype, root);
    bytes.back(data);
  }
  void do_barrier() override { nccl_->barrier(); }

 private:
  static const OpTable& ops() { return ops_for(Device::CUDA); }
  static size_t bytes_of(int64_t n, DType dtype) { return static_cast<size_t>(n) * dtype_size(dtype); }
  // A host buffer's device copy for the length of a call (nothing for 0 bytes).
  struct DeviceCopy {
    void* device = nullptr;
    size_t bytes;
    DeviceCopy(const void* host, size_t size) : bytes(size) {
      if (bytes == 0) return;
      device = ops().alloc(bytes);
      ops().copy(device, host, bytes, CopyKind::HostToDevice);
    }
    ~DeviceCopy() {
      if (device) ops().free(device);
    }
    DeviceCopy(const DeviceCopy&) = delete;
    DeviceCopy& operator=(const DeviceCopy&) = delete;
    void back(void* host) const {
      if (bytes) ops().copy(host, device, bytes, CopyKind::DeviceToHost);
    }
  };
  struct Staged {
    void* host;
    void* device;
    size_t bytes;
  };
  std::unique_ptr<Communicator> bootstrap_;  // kept: the NCCL communicator's liveness probe is MPI's
  std::unique_ptr<Communicator> nccl_;
  std::vector<Staged> started_;
};
#endif

std::unique_ptr<Communicator> make_test_communicator() {
  const char* want = std::getenv("NCSREC_TEST_COMM");
  const std::string kind = want ? want : "";
  if (kind == "local") return make_local_communicator();
  if (kind == "mpi") return make_mpi_communicator();
#ifdef NCSREC_TEST_NCCL
  if (kind == "nccl") {
    std::unique_ptr<Communicator> bootstrap = make_default_communicator();
    std::unique_ptr<Communicator> nccl = make_nccl_communicator(*bootstrap);
    return std::make_unique<DeviceStaged>(std::move(bootstrap), std::move(nccl));
  }
#endif
  NCSREC_USER_CHECK(kind.empty(), "NCSREC_TEST_COMM='" << kind << "': expected local, mpi or nccl (nccl: the NCCL build)");
  return make_default_communicator();
}

}  // namespace
}  // namespace ncsrec

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
#ifdef NCSREC_TEST_NCCL
  if (std::string why; !ncsrec::cuda_register_if_available(&why)) {
    std::printf("SKIP: the NCCL conformance suite needs a GPU: %s\n", why.c_str());
    return 77;
  }
#endif
  std::unique_ptr<ncsrec::Communicator> comm;
  try {
    comm = ncsrec::make_test_communicator();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    ncsrec::end_job_after_error(2);
    return 2;
  }
  ncsrec::g_comm = comm.get();
  const int rank = comm->rank();
  if (rank != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new ncsrec::RankFailurePrinter(rank));
  }
  int64_t failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  const int64_t failed_here = failed;
  try {
    comm->all_reduce_sum(&failed, 1);  // a failure on any rank fails every rank
  } catch (const ncsrec::CommTimeout&) {  // already reported by the communicator
    ncsrec::end_job_after_error(1);
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[rank %d] error: %s\n", rank, e.what());
    ncsrec::end_job_after_error(1);
    return 1;
  }
  if (rank == 0 && failed && !failed_here) std::fprintf(stderr, "FAILED on another rank (see its [rank N] lines)\n");
  ncsrec::g_comm = nullptr;
  comm.reset();
  return failed ? 1 : 0;
}

// The dense gradient's sum over ranks in buckets (train/step.h): started range by range during
// the backward, cut into buckets of at most the bucket size from each range's end, covering the
// buffer once a step, finished once; and the step's result does not depend on the bucket size.
// The real MPI path is run by the data-parallel tests (tests/mpi/), which compare 2-rank steps
// with 1-rank steps.
#include <gtest/gtest.h>

#include <cstring>
#include <utility>
#include <vector>

#include "dist/communicator.h"
#include "models/multitask_model.h"
#include "tests/model_inputs.h"
#include "tests/unit/config_checks.h"
#include "core/error.h"
#include "train/step.h"
#include "train/train_config.h"

namespace ncsrec {
namespace {

// A 2-rank communicator that sums nothing (the other rank adds zeros) and records the dense
// gradient's started sums.
class RecordingComm final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 2; }
  const char* kind() const override { return "recording"; }
  std::vector<std::pair<const char*, int64_t>> started;
  int blocking = 0, finishes = 0, abandons = 0;
  size_t fail_at_start = 0;  // > 0: that start (1-based) throws, as a dead peer's would

 protected:
  void do_all_reduce(void*, int64_t, DType, bool) override { ++blocking; }
  void do_start_all_reduce(void* data, int64_t n, DType) override {
    started.emplace_back(static_cast<const char*>(data), n);
    if (started.size() == fail_at_start) throw UserError("rank 1 is gone");
  }
  void do_finish_all_reduces() override { ++finishes; }
  void do_abandon_all_reduces() override { ++abandons; }
  void do_all_to_all_v(const void* send, const int64_t* send_counts, void* recv, const int64_t*, DType dtype) override {
    std::memcpy(recv, send, static_cast<size_t>(send_counts[0]) * dtype_size(dtype));  // sharded tables: none here
  }
  void do_all_gather(const void*, int64_t, void*, DType) override { ADD_FAILURE() << "no all-gather expected"; }
  void do_broadcast(void*, int64_t, DType, int) override {}
  void do_barrier() override {}
};

TEST(DenseBuckets, BucketsCoverTheGradientOnceBackToFrontAndDoNotChangeTheStep) {
  const DataSchema schema = testing::test_schema();
  const ModelConfig config = testing::model_config("ncs");
  const OptimizerConfig adam{"adam", 0.01}, adagrad{"adagrad", 0.05};
  const Block batch = testing::random_batch(schema, 16, 3);
  auto local = make_local_communicator();
  MultiTaskModel reference(config, schema, DType::F32, 5);
  Optimizers o_ref = make_optimizers(adam, adagrad, reference);
  for (const int64_t bucket_bytes : {int64_t{64}, int64_t{1000}, kDenseBucketBytes}) {
    SCOPED_TRACE(bucket_bytes);
    MultiTaskModel model(config, schema, DType::F32, 5);
    Optimizers o = make_optimizers(adam, adagrad, model);
    RecordingComm comm;
    for (int64_t step = 1; step <= 2; ++step) {
      comm.started.clear();
      train_one_step(model, o, batch, -1, step, true, comm, nullptr, nullptr, bucket_bytes);
      const char* buffer = static_cast<const char*>(model.params().grads().raw());
      const int64_t numel = model.params().numel(), bucket = std::max<int64_t>(1, bucket_bytes / 4);
      int64_t next_end = numel;  // back to front, no gap, no overlap
      for (const auto& [at, n] : comm.started) {
        EXPECT_LE(n, bucket);
        EXPECT_GT(n, 0);
        EXPECT_EQ(at + n * 4, buffer + next_end * 4);
        next_end -= n;
      }
      EXPECT_EQ(next_end, 0) << "the buckets reach the buffer's start";
      if (bucket_bytes == 64) EXPECT_GT(comm.started.size(), 10u);
    }
    EXPECT_EQ(comm.finishes, 2);
    EXPECT_EQ(comm.blocking, 2 * 3) << "the normalisers and the two loss sums, blocking; the gradient not";
    if (bucket_bytes == 64)
      for (int64_t step = 1; step <= 2; ++step) train_one_step(reference, o_ref, batch, -1, step, true, *local);
    const Tensor a = reference.params().values(), b = model.params().values();
    EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << "the step depends on the bucket size";
  }
}

TEST(DenseBuckets, RunBucketMbSetsTheBucketSizeAndIsChecked) {
  const std::string base = "data: {train: [\"unused\"]}\nmodel:\n  type: ncs\n  shared: [8]\n  embedding_dim: 4\n"
                           "  tables: {user: {rows: 4}}\n  tasks: {ctr: {label: click}, cvr: {label: conversion}}\n";
  EXPECT_EQ(parse_train_config(base, "m.yaml").bucket_bytes(), kDenseBucketBytes);
  EXPECT_EQ(parse_train_config("run: {bucket_mb: 0.5}\n" + base, "m.yaml").bucket_bytes(), 512 * 1024);
  testing::expect_config_error_naming("run: {bucket_mb: 0}\n" + base, "run.bucket_mb");
}

// A step that fails with sums in flight gives them up (nobody waits for them; NCCL would abort)
// and leaves the model without the step's hook.
TEST(DenseBuckets, AStepThatFailsWithSumsInFlightAbandonsThem) {
  const DataSchema schema = testing::test_schema();
  const Block batch = testing::random_batch(schema, 16, 3);
  MultiTaskModel model(testing::model_config("ncs"), schema, DType::F32, 5);
  Optimizers o = make_optimizers(OptimizerConfig{"adam", 0.01}, OptimizerConfig{"adagrad", 0.05}, model);
  RecordingComm comm;
  comm.fail_at_start = 2;  // the shared block's range, after the towers' started
  EXPECT_THROW(train_one_step(model, o, batch, -1, 1, true, comm, nullptr, nullptr, 64), UserError);
  EXPECT_EQ(comm.abandons, 1);
  EXPECT_EQ(comm.finishes, 0);
  EXPECT_EQ(comm.all_reduces_in_flight(), 0);
  const size_t starts = comm.started.size();
  model.params().zero_grad();
  model.train_step(batch, model.local_normalizers(batch));  // no hook left behind
  EXPECT_EQ(comm.started.size(), starts);
}

}  // namespace
}  // namespace ncsrec

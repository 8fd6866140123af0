// `ncsrec bench` (apps/cmd_bench.cpp): its help, a tiny run on configs/ncs_bench_tiny.yaml that
// prints samples/s and the split by phase and writes its JSON, and a usage error.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "core/sparse_train.h"
#include "run_command.h"
#include "scratch_dir.h"

namespace {

using Result = ncsrec::testing::CommandResult;
Result run(const std::string& args) { return ncsrec::testing::run_ncsrec(args); }

TEST(Bench, Help) {
  const Result r = run("bench --help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("usage: ncsrec bench"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("training step only"), std::string::npos) << r.output;
}

TEST(Bench, TinyRunPrintsSamplesPerSecond) {
  ncsrec::testing::ScratchDir dir("bench");
  const std::string json = (dir.path / "bench.json").string();
  const Result r = run(std::string("bench --config '") + NCSREC_SOURCE_DIR +
                       "/configs/ncs_bench_tiny.yaml' --steps 2 --warmup 1 --batch 64 --threads 1 --json '" + json +
                       "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("samples/s: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("mask density 0.2000"), std::string::npos) << r.output;
  std::ifstream f(json);
  std::stringstream s;
  s << f.rdbuf();
  EXPECT_NE(s.str().find("\"samples_per_s\": "), std::string::npos) << s.str();
  EXPECT_NE(s.str().find("\"batch\": 64"), std::string::npos) << s.str();
  // The split by phase, printed and in the JSON.
  EXPECT_NE(r.output.find("time per step by phase (10 more steps"), std::string::npos) << r.output;
  for (const char* phase : {"dense forward", "dense backward", "sparse optimizer (embedding rows)", "sum"})
    EXPECT_NE(r.output.find(std::string("    ") + phase), std::string::npos) << phase << "\n" << r.output;
  EXPECT_NE(s.str().find("\"phases_ms_per_step\": {\"input (lookups"), std::string::npos) << s.str();
  // 64 rows: auto keeps the masked layers on the dense products, and says so.
  EXPECT_NE(r.output.find("masked layers' route (run.masked_route: auto): plain\n"), std::string::npos) << r.output;
  EXPECT_NE(s.str().find("\"masked_route\": \"plain\""), std::string::npos) << s.str();

  const Result alt = run(std::string("bench --config '") + NCSREC_SOURCE_DIR +
                         "/configs/ncs_bench_tiny.yaml' --steps 2 --warmup 0 --batch 32 --schedule alternating "
                         "--phase-steps 0 --masked-route fused");
  EXPECT_EQ(alt.exit_code, 0) << alt.output;
  EXPECT_NE(alt.output.find("alternating schedule"), std::string::npos) << alt.output;
  EXPECT_EQ(alt.output.find("by phase"), std::string::npos) << "--phase-steps 0 prints no split\n" << alt.output;
  // Forced fused: the products over the masks' connections, where the CPU has AVX-512F.
  const std::string taken = ncsrec::masked_sparse_available() ? "fused (products over the masks' connections only)"
                                                              : "plain";
  EXPECT_NE(alt.output.find("masked layers' route (run.masked_route: fused): " + taken), std::string::npos)
      << alt.output;
}

TEST(Bench, BadDensityIsAUsageError) {
  const Result r = run(std::string("bench --config '") + NCSREC_SOURCE_DIR +
                       "/configs/ncs_bench_tiny.yaml' --density 1.5");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--density"), std::string::npos) << r.output;
}

}  // namespace

// Specification tests for the `ncsrec` command's error handling (apps/main.cpp): a user's
// mistake ends the process with exit code 2 (configuration and usage) or 1 (data, paths)
// and one line "error: ..." that names what to fix, never a stack trace or an "internal
// error"; every subcommand's --help succeeds.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "run_command.h"
#include "scratch_dir.h"

namespace {

namespace fs = std::filesystem;

using ncsrec::testing::ScratchDir;

using Result = ncsrec::testing::CommandResult;
std::string quoted(const std::string& s) { return ncsrec::testing::shell_quoted(s); }
Result run_ncsrec(const std::string& args, const fs::path& cwd) { return ncsrec::testing::run_ncsrec(args, cwd.string()); }

// A user error's report: exactly one non-empty line, "error: ...", and no sign of a crash.
void expect_one_error_line(const Result& r, const std::string& context) {
  const std::vector<std::string> lines = r.nonempty_lines();
  ASSERT_EQ(lines.size(), 1u) << context << ": expected one message line, got:\n" << r.output;
  EXPECT_EQ(lines[0].rfind("error: ", 0), 0u) << context << ": " << lines[0];
  EXPECT_EQ(r.output.find("internal error"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("terminate called"), std::string::npos) << r.output;
}

std::string small_config(const std::string& train_path, const std::string& extra_model_line = "") {
  return "run: {seed: 1, threads: 1}\n"
         "data:\n"
         "  train: [\"" + train_path + "\"]\n"
         "model:\n"
         "  type: esmm\n"
         "  embedding_dim: 4\n"
         "  tables: {user_id: {rows: 10}}\n"
         "  tower: [4]\n"
         "  tasks:\n"
         "    ctr: {label: click}\n"
         "    cvr: {label: conversion, given: ctr}\n" +
         extra_model_line +
         "train: {batch_size: 8}\n";
}

TEST(NcsrecCommand, AnUnknownConfigKeyExitsTwoWithOneErrorLineNamingTheFileAndKeyPath) {
  ScratchDir dir("unknown_key");
  const fs::path config = dir.path / "typo.yaml";
  std::ofstream(config) << small_config("data/day=1", "  embeding_init: 0.1\n");
  const Result r = run_ncsrec("train --config " + quoted(config.string()) + " --run-dir run", dir.path);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  expect_one_error_line(r, "unknown key");
  EXPECT_NE(r.output.find(config.string()), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("model.embeding_init"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir.path / "run")) << "a rejected config must not create a run folder";
}

TEST(NcsrecCommand, AnUnknownSetKeyExitsTwoNamingTheKeyPath) {
  ScratchDir dir("unknown_set");
  const fs::path config = dir.path / "ok.yaml";
  std::ofstream(config) << small_config("data/day=1");
  const Result r =
      run_ncsrec("train --config " + quoted(config.string()) + " --set train.batch_sise=4 --run-dir run", dir.path);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  expect_one_error_line(r, "--set unknown key");
  EXPECT_NE(r.output.find("train.batch_sise"), std::string::npos) << r.output;
}

TEST(NcsrecCommand, AnUnknownCommandLineOptionExitsTwo) {
  ScratchDir dir("unknown_option");
  const fs::path config = dir.path / "ok.yaml";
  std::ofstream(config) << small_config("data/day=1");
  for (const std::string& args :
       {"train --config " + quoted(config.string()) + " --epochs 3", std::string("eval --checkpoint x --bogus"),
        std::string("gen --out x --colour red")}) {
    const Result r = run_ncsrec(args, dir.path);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output;
    expect_one_error_line(r, args);
    EXPECT_NE(r.output.find("unknown option"), std::string::npos) << r.output;
  }
}

TEST(NcsrecCommand, AMissingConfigOptionExitsTwo) {
  ScratchDir dir("missing_config");
  const Result r = run_ncsrec("train", dir.path);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  expect_one_error_line(r, "train without --config");
  EXPECT_NE(r.output.find("--config"), std::string::npos) << r.output;
}

TEST(NcsrecCommand, AConfigFileThatDoesNotExistExitsTwoNamingIt) {
  ScratchDir dir("no_file");
  const std::string missing = (dir.path / "nowhere.yaml").string();
  const Result r = run_ncsrec("train --config " + quoted(missing), dir.path);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  expect_one_error_line(r, "missing config file");
  EXPECT_NE(r.output.find(missing), std::string::npos) << r.output;
}

TEST(NcsrecCommand, AnUnknownCommandOrNoCommandExitsTwo) {
  ScratchDir dir("unknown_command");
  EXPECT_EQ(run_ncsrec("trian", dir.path).exit_code, 2);
  EXPECT_EQ(run_ncsrec("", dir.path).exit_code, 2);
}

TEST(NcsrecCommand, EverySubcommandsHelpExitsZeroAndPrintsUsage) {
  ScratchDir dir("help");
  for (const std::string& args : {"--help", "help", "train --help", "eval --help", "predict --help", "gen --help",
                                  "inspect --help", "train -h"}) {
    const Result r = run_ncsrec(args, dir.path);
    EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.output;
    EXPECT_NE(r.output.find("usage:"), std::string::npos) << args << "\n" << r.output;
  }
}

TEST(NcsrecCommand, DataPathsThatMatchNothingExitOneNamingThePath) {
  ScratchDir dir("no_data");
  const std::string pattern = (dir.path / "data" / "day=2026-01-0[1-7]").string();
  const fs::path config = dir.path / "ok.yaml";
  std::ofstream(config) << small_config(pattern);
  const Result r = run_ncsrec("train --config " + quoted(config.string()) + " --run-dir run", dir.path);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find(pattern), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("internal error"), std::string::npos) << r.output;
  // Only the run-folder notice may precede the error.
  int error_lines = 0;
  for (const auto& line : r.nonempty_lines()) error_lines += line.rfind("error: ", 0) == 0;
  EXPECT_EQ(error_lines, 1) << r.output;

  // eval --data with nothing there: the same, for the command-line data path.
  const Result e = run_ncsrec("eval --checkpoint ckpt --data " + quoted(pattern), dir.path);
  EXPECT_EQ(e.exit_code, 1) << e.output;
  expect_one_error_line(e, "eval --data");
  EXPECT_NE(e.output.find(pattern), std::string::npos) << e.output;
}

TEST(NcsrecCommand, InspectingSomethingThatIsNotThereExitsOneNamingIt) {
  ScratchDir dir("inspect");
  const std::string missing = (dir.path / "no_such_shard.h5").string();
  const Result r = run_ncsrec("inspect " + quoted(missing), dir.path);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  expect_one_error_line(r, "inspect");
  EXPECT_NE(r.output.find(missing), std::string::npos) << r.output;
}

}  // namespace

namespace {

// `ncsrec convert` through the command: a schema mistake is a config error (2), a data problem
// a data error (1), and a good conversion is usable by `inspect` (and so by training).
TEST(NcsrecConvertCommand, ASchemaMistakeExitsTwoNamingTheKeyPath) {
  ScratchDir dir("cmd_convert_schema");
  std::ofstream(dir.path / "in.csv") << "a,b\n1,x\n";
  std::ofstream(dir.path / "schema.yaml") << "input: {format: csv, header: true}\nlabels: [{name: y, column: a, equals: '1'}]\n"
                                             "sparse: [{columns: [b]}]\nbogus: 1\n";
  const Result r = run_ncsrec("convert --schema schema.yaml --out out in.csv", dir.path);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  expect_one_error_line(r, "convert with an unknown schema key");
  EXPECT_NE(r.output.find("bogus"), std::string::npos) << r.output;
}

TEST(NcsrecConvertCommand, ATruncatedGzipExitsOneNamingTheFile) {
  ScratchDir dir("cmd_convert_gzip");
  std::string csv = "a,b\n";
  for (int i = 0; i < 20000; ++i) csv += std::to_string(i % 2) + ",v" + std::to_string(i % 97) + "\n";
  std::ofstream(dir.path / "in.csv") << csv;
  ASSERT_EQ(std::system(("gzip -k " + quoted((dir.path / "in.csv").string())).c_str()), 0);
  const auto size = fs::file_size(dir.path / "in.csv.gz");
  fs::resize_file(dir.path / "in.csv.gz", size / 2);
  std::ofstream(dir.path / "schema.yaml") << "input: {format: csv, header: true}\nlabels: [{name: y, column: a, equals: '1'}]\n"
                                             "sparse: [{columns: [b]}]\n";
  const Result r = run_ncsrec("convert --schema schema.yaml --out out in.csv.gz", dir.path);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("in.csv.gz"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("internal error"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir.path / "out" / "_DONE"));
}

TEST(NcsrecConvertCommand, AGoodConversionWritesACompleteFolder) {
  ScratchDir dir("cmd_convert_ok");
  std::ofstream(dir.path / "in.csv") << "a,b\n1,x\n0,y\n1,z\n";
  std::ofstream(dir.path / "schema.yaml") << "input: {format: csv, header: true}\nlabels: [{name: y, column: a, equals: '1'}]\n"
                                             "sparse: [{columns: [b]}]\n";
  const Result r = run_ncsrec("convert --schema schema.yaml --out out in.csv", dir.path);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Result i = run_ncsrec("inspect out", dir.path);
  EXPECT_EQ(i.exit_code, 0) << i.output;
  EXPECT_NE(i.output.find("3 rows"), std::string::npos) << i.output;
}

}  // namespace

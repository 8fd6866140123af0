// Learning-rate schedules: a factor in [0, 1] that multiplies an optimizer's base rate at each
// step. Linear warm-up first, then an optional decay over the steps after warm-up. A pure
// function of the step, so a resumed run (or an IMP round, which restarts its step count)
// gets its rates back from the step alone; nothing about the schedule is checkpointed.
//
// With W = warmup_steps, D = decay_steps and step s counted from 1:
//   s <= W:  s / W                                  (reaches 1 at the last warm-up step)
//   s >  W:  p = min((s - W) / D, 1)
//     none         1
//     linear       1 - (1 - min_ratio) p                 (min_ratio from s = W + D on)
//     cosine       min_ratio + (1 - min_ratio) (1 + cos(pi p)) / 2
//     exponential  decay_rate^((s - W) / D)              (continuous, not clamped at p = 1)
//     step         decay_rate^floor((s - W) / D)         (one drop every D steps)
//   and every decayed factor is floored at min_ratio (exponential and step included).
#pragma once

#include <cstdint>
#include <string>

namespace ncsrec {

struct LrSchedule {
  int64_t warmup_steps = 0;
  std::string decay = "none";  // none | linear | cosine | exponential | step
  int64_t decay_steps = 0;     // > 0 unless decay is none
  double decay_rate = 0.5;     // exponential: factor per decay_steps; step: factor every decay_steps
  double min_ratio = 0.0;      // the floor of the decayed factor
};

// Throws ConfigError naming the problem (unknown decay, decay_steps missing, a value out of range).
void validate_lr_schedule(const LrSchedule& schedule);

// The factor for `step` (from 1). Exactly 1.0 when there is no warm-up and no decay, so an
// unscheduled run uses its configured rate bit for bit.
double lr_factor(const LrSchedule& schedule, int64_t step);

}  // namespace ncsrec

// Learning-rate factors (lr_schedule.h). Everything is computed in double from the integer
// step, so the factor of a step is the same on every rank and thread count.
#include "core/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace ncsrec {

namespace {
constexpr double kPi = 3.14159265358979323846;
}  // namespace

void validate_lr_schedule(const LrSchedule& s) {
  if (s.decay != "none" && s.decay != "linear" && s.decay != "cosine" && s.decay != "exponential" &&
      s.decay != "step")
    throw ConfigError("unknown lr_schedule decay '" + s.decay + "'; valid: none, linear, cosine, exponential, step");
  if (s.warmup_steps < 0)
    throw ConfigError(NCSREC_STR_("lr_schedule warmup_steps must be >= 0, got " << s.warmup_steps));
  if (s.decay != "none" && s.decay_steps <= 0)
    throw ConfigError(NCSREC_STR_("lr_schedule decay_steps must be > 0 when decay is " << s.decay << ", got "
                                                                                       << s.decay_steps));
  if (!(s.decay_rate > 0 && s.decay_rate <= 1))
    throw ConfigError(NCSREC_STR_("lr_schedule decay_rate must lie in (0, 1], got " << s.decay_rate));
  if (!(s.min_ratio >= 0 && s.min_ratio <= 1))
    throw ConfigError(NCSREC_STR_("lr_schedule min_ratio must lie in [0, 1], got " << s.min_ratio));
}

double lr_factor(const LrSchedule& s, int64_t step) {
  NCSREC_CHECK(step >= 1, "learning-rate steps count from 1, got " << step);
  if (step <= s.warmup_steps) return static_cast<double>(step) / static_cast<double>(s.warmup_steps);
  if (s.decay == "none") return 1.0;
  NCSREC_CHECK(s.decay_steps > 0, "lr_schedule decay " << s.decay << " without decay_steps");
  const double since = static_cast<double>(step - s.warmup_steps), span = static_cast<double>(s.decay_steps);
  const double p = std::min(since / span, 1.0);
  double f = 1.0;
  if (s.decay == "linear") f = 1.0 - (1.0 - s.min_ratio) * p;
  else if (s.decay == "cosine") f = s.min_ratio + (1.0 - s.min_ratio) * 0.5 * (1.0 + std::cos(kPi * p));
  else if (s.decay == "exponential") f = std::pow(s.decay_rate, since / span);
  else if (s.decay == "step") f = std::pow(s.decay_rate, static_cast<double>((step - s.warmup_steps) / s.decay_steps));
  else NCSREC_CHECK(false, "unknown lr_schedule decay " << s.decay);
  return std::max(f, s.min_ratio);
}

}  // namespace ncsrec

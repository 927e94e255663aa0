// Learning-rate schedules (lr_schedule.h).
#include "kbit/optim/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>

namespace kbit::optim {

Status check_lr_schedule(const LrSchedule& schedule) {
  if (schedule.warmup_steps < 0) {
    return invalid_argument("learning-rate schedule: warmup_steps = " +
                            std::to_string(schedule.warmup_steps) + " must be >= 0");
  }
  const bool decays =
      schedule.type == LrScheduleType::kLinear || schedule.type == LrScheduleType::kCosine;
  if (decays && schedule.total_steps < 1) {
    return invalid_argument(
        "learning-rate schedule: total_steps = " + std::to_string(schedule.total_steps) +
        " must be >= 1 for the linear and cosine schedules, which decay to 0 "
        "over them");
  }
  return ok_status();
}

double lr_multiplier(const LrSchedule& schedule, std::int64_t step) {
  if (schedule.type == LrScheduleType::kConstant) return 1.0;
  const std::int64_t warmup = schedule.warmup_steps;
  if (step < warmup) {
    return static_cast<double>(step) / static_cast<double>(std::max<std::int64_t>(1, warmup));
  }
  const double decay_steps =
      static_cast<double>(std::max<std::int64_t>(1, schedule.total_steps - warmup));
  switch (schedule.type) {
    case LrScheduleType::kLinear:
      return std::max(0.0, static_cast<double>(schedule.total_steps - step) / decay_steps);
    case LrScheduleType::kCosine: {
      const double progress = static_cast<double>(step - warmup) / decay_steps;
      return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * progress)));
    }
    case LrScheduleType::kConstant:
    case LrScheduleType::kConstantWithWarmup:
      break;
  }
  return 1.0;
}

Result<LrScheduleType> parse_lr_schedule_type(std::string_view name) {
  if (name == "constant") return LrScheduleType::kConstant;
  if (name == "constant_with_warmup") return LrScheduleType::kConstantWithWarmup;
  if (name == "linear") return LrScheduleType::kLinear;
  if (name == "cosine") return LrScheduleType::kCosine;
  return invalid_argument("unknown learning-rate schedule \"" + std::string(name) +
                          "\"; use constant, constant_with_warmup, linear or cosine");
}

}  // namespace kbit::optim

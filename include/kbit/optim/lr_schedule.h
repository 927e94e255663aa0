// Learning-rate schedules as transformers' get_scheduler builds them for the Trainer: the
// learning rate of optimizer step `step` (0 for the first) is base_lr · lr_multiplier(schedule,
// step), with, for w = warmup_steps and T = total_steps,
//   constant               1
//   constant_with_warmup   step / max(1, w) while step < w, then 1
//   linear                 step / max(1, w) while step < w, then max(0, (T − step) / max(1, T − w))
//   cosine                 step / max(1, w) while step < w, then
//                          max(0, ½ · (1 + cos(π · (step − w) / max(1, T − w))))
// in double precision, as Python computes them (get_cosine_schedule_with_warmup with its default
// half cycle). Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <string_view>

#include "kbit/core/status.h"

namespace kbit::optim {

enum class LrScheduleType { kConstant, kConstantWithWarmup, kLinear, kCosine };

struct LrSchedule {
  LrScheduleType type = LrScheduleType::kLinear;  // the Trainer's default
  std::int64_t warmup_steps = 0;                  // >= 0
  std::int64_t total_steps = 0;                   // >= 1 for linear and cosine; unused otherwise
};

// Ok, or kInvalidArgument naming the field out of range and its range.
Status check_lr_schedule(const LrSchedule& schedule);

// The multiplier of the base learning rate at optimizer step `step` (>= 0). Past total_steps
// linear stays at 0 while cosine, as transformers' formula does, rises again; a run that sets
// total_steps never gets there. Requires a schedule check_lr_schedule accepts.
double lr_multiplier(const LrSchedule& schedule, std::int64_t step);

// transformers' SchedulerType names: "constant", "constant_with_warmup", "linear", "cosine".
// kInvalidArgument for any other name, listing these.
Result<LrScheduleType> parse_lr_schedule_type(std::string_view name);

}  // namespace kbit::optim

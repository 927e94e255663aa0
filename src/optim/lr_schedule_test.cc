// The learning-rate schedules against values worked out by hand from transformers' definitions
// (optimization.py: get_constant_schedule_with_warmup, get_linear_schedule_with_warmup,
// get_cosine_schedule_with_warmup), and their checks.
#include "kbit/optim/lr_schedule.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <numbers>

namespace kbit::optim {
namespace {

struct Expected {
  std::int64_t step;
  double multiplier;
};

void expect_multipliers(const LrSchedule& schedule, std::initializer_list<Expected> expected) {
  ASSERT_TRUE(check_lr_schedule(schedule).ok());
  for (const Expected& e : expected) {
    EXPECT_DOUBLE_EQ(lr_multiplier(schedule, e.step), e.multiplier) << "step " << e.step;
  }
}

TEST(LrSchedule, ConstantIsOneThroughout) {
  expect_multipliers({LrScheduleType::kConstant, 0, 0}, {{0, 1.0}, {1, 1.0}, {1000000, 1.0}});
}

TEST(LrSchedule, ConstantWithWarmupRampsThenHolds) {
  expect_multipliers({LrScheduleType::kConstantWithWarmup, 4, 0},
                     {{0, 0.0}, {1, 0.25}, {3, 0.75}, {4, 1.0}, {400, 1.0}});
}

TEST(LrSchedule, LinearRampsThenDecaysToZero) {
  // Warmup 10 of 110 steps: the decay spans 100 steps.
  expect_multipliers(
      {LrScheduleType::kLinear, 10, 110},
      {{0, 0.0}, {5, 0.5}, {10, 1.0}, {35, 0.75}, {60, 0.5}, {109, 0.01}, {110, 0.0}, {500, 0.0}});
  // No warmup: the first step has the full rate.
  expect_multipliers({LrScheduleType::kLinear, 0, 4}, {{0, 1.0}, {1, 0.75}, {4, 0.0}});
}

TEST(LrSchedule, CosineFollowsHalfACycle) {
  expect_multipliers({LrScheduleType::kCosine, 10, 110},
                     {{0, 0.0},
                      {5, 0.5},
                      {10, 1.0},
                      {35, 0.5 * (1.0 + std::cos(std::numbers::pi * 0.25))},
                      {60, 0.5 * (1.0 + std::cos(std::numbers::pi * 0.5))},
                      {110, 0.0},
                      {300, 0.5 * (1.0 + std::cos(std::numbers::pi * 2.9))}});
}

TEST(LrSchedule, WarmupLongerThanTheRunStillRamps) {
  // transformers divides by max(1, total − warmup): the decay, if ever reached, drops to 0.
  expect_multipliers({LrScheduleType::kLinear, 8, 4}, {{2, 0.25}, {7, 0.875}, {8, 0.0}});
}

TEST(LrSchedule, RejectsWhatTheDefinitionsCannotTake) {
  EXPECT_EQ(check_lr_schedule({LrScheduleType::kConstant, -1, 0}).code(),
            StatusCode::kInvalidArgument);
  const Status no_total = check_lr_schedule({LrScheduleType::kCosine, 0, 0});
  EXPECT_EQ(no_total.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(no_total.message().find("total_steps"), std::string::npos) << no_total.to_string();
  EXPECT_TRUE(check_lr_schedule({LrScheduleType::kConstantWithWarmup, 3, 0}).ok());
}

TEST(LrSchedule, ParsesTransformersNames) {
  EXPECT_EQ(parse_lr_schedule_type("constant").value(), LrScheduleType::kConstant);
  EXPECT_EQ(parse_lr_schedule_type("constant_with_warmup").value(),
            LrScheduleType::kConstantWithWarmup);
  EXPECT_EQ(parse_lr_schedule_type("linear").value(), LrScheduleType::kLinear);
  EXPECT_EQ(parse_lr_schedule_type("cosine").value(), LrScheduleType::kCosine);
  const Result<LrScheduleType> unknown = parse_lr_schedule_type("cosine_with_restarts");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("cosine_with_restarts"), std::string::npos);
}

}  // namespace
}  // namespace kbit::optim

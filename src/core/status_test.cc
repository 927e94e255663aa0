#include "kbit/core/status.h"

#include <gtest/gtest.h>

namespace kbit {
namespace {

Result<int> parse_positive(int value) {
  if (value <= 0) return invalid_argument("value " + std::to_string(value) + " is not positive");
  return value;
}

Result<int> doubled(int value) {
  KBIT_ASSIGN_OR_RETURN(int parsed, parse_positive(value));
  return parsed * 2;
}

TEST(StatusTest, OkAndErrors) {
  EXPECT_TRUE(ok_status().ok());
  const Status error = not_found("tensor 'x' is missing");
  EXPECT_FALSE(error.ok());
  EXPECT_EQ(error.code(), StatusCode::kNotFound);
  EXPECT_EQ(error.to_string(), "not found: tensor 'x' is missing");
  EXPECT_EQ(error.with_context("model.safetensors").message(),
            "model.safetensors: tensor 'x' is missing");
  EXPECT_TRUE(ok_status().with_context("ignored").ok());
}

TEST(StatusTest, ResultCarriesValueOrError) {
  EXPECT_EQ(doubled(21).value(), 42);
  const Result<int> failed = doubled(-1);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().message(), "value -1 is not positive");
  const Result<int> misuse{ok_status()};
  EXPECT_EQ(misuse.status().code(), StatusCode::kInternal);
}

}  // namespace
}  // namespace kbit

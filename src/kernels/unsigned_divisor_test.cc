#include "kernels/unsigned_divisor.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

namespace kbit::kernels {
namespace {

// Every divisor's quotients near its multiples and near 2^32 (where the multiply's rounding would
// show first), and random pairs, against the division operator.
TEST(UnsignedDivisor, MatchesDivision) {
  std::vector<std::uint32_t> divisors = {
      1,     2,     3,     5,     7,           8,           96,          512,        1792,
      16384, 65535, 65536, 65537, 0x7fffffffu, 0x80000000u, 0x80000001u, 0xffffffffu};
  std::mt19937_64 random(20261126);
  for (int i = 0; i < 200; ++i) divisors.push_back(static_cast<std::uint32_t>(random()) | 1u);
  for (const std::uint32_t d : divisors) {
    const UnsignedDivisor divisor(d);
    ASSERT_EQ(divisor.divisor(), d);
    std::vector<std::uint32_t> numerators = {0, 1, d - 1, d, 0xfffffffeu, 0xffffffffu};
    for (std::uint64_t k : {1ull, 2ull, 3ull, 1000ull, 0xffffffffull / d}) {
      const std::uint64_t multiple = k * d;
      for (const std::uint64_t n : {multiple - 1, multiple, multiple + 1}) {
        if (n <= 0xffffffffull) numerators.push_back(static_cast<std::uint32_t>(n));
      }
    }
    for (int j = 0; j < 1000; ++j) numerators.push_back(static_cast<std::uint32_t>(random()));
    for (const std::uint32_t n : numerators) {
      ASSERT_EQ(divisor.divide(n), n / d) << n << " / " << d;
    }
  }
}

}  // namespace
}  // namespace kbit::kernels

// The CPU emulation of sm_90's rcp.approx.ftz.f32 / div.approx.ftz.f32 against the defining
// properties of the measurement (gpu_approx_math.h): the embedded table is the measured one,
// spot values taken from the probe's rcp_delta.bin, exact exponent scaling, flushing and the
// special inputs. kernels/cuda/gpu_approx_math_test.cc compares it with the GPU itself.
#include "kernels/cpu/gpu_approx_math.h"

#include <gtest/gtest.h>

#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>

namespace kbit::kernels::cpu {
namespace {

std::uint32_t bits_of(float x) {
  return std::bit_cast<std::uint32_t>(x);
}
float float_of(std::uint32_t bits) {
  return std::bit_cast<float>(bits);
}
// The float with exponent bits `exponent` and mantissa `mantissa`, positive.
float make_float(std::uint32_t exponent, std::uint32_t mantissa) {
  return float_of(exponent << 23 | mantissa);
}

constexpr std::uint32_t kMantissas = 1u << 23;

TEST(GpuApproxMath, EmbeddedTableIsTheMeasuredOne) {
  const std::span<const std::uint8_t> table = rcp_approx_table();
  ASSERT_EQ(table.size(), std::size_t{1} << 21);
  std::uint64_t hash = 0xcbf29ce484222325u;  // FNV-1a 64 of the file
  int code_counts[4] = {0, 0, 0, 0};
  for (const std::uint8_t byte : table) {
    hash = (hash ^ byte) * 0x100000001b3u;
    for (int k = 0; k < 4; ++k) ++code_counts[(byte >> (2 * k)) & 3];
  }
  EXPECT_EQ(hash, 0x973f4aa825f433ffu);
  // The H200's histogram of deltas (docs/formats.md).
  EXPECT_EQ(code_counts[0], 7280086);  // 0
  EXPECT_EQ(code_counts[1], 733799);   // +1
  EXPECT_EQ(code_counts[2], 374723);   // -1
  EXPECT_EQ(code_counts[3], 0);
}

// Mantissa, delta and rcp.approx(1.mantissa) as read from rcp_delta.bin.
struct SpotValue {
  std::uint32_t mantissa;
  int delta;
  std::uint32_t approx_bits;
};
constexpr SpotValue kSpotValues[] = {
    {0x000000u, 0, 0x3f800000u},  {0x000001u, 0, 0x3f7ffffeu},  {0x0005a9u, -1, 0x3f7ff4aeu},
    {0x00e832u, +1, 0x3f7e32e1u}, {0x1dc6c1u, 0, 0x3f4fafb4u},  {0x372707u, -1, 0x3f32e93bu},
    {0x40b986u, -1, 0x3f2a0660u}, {0x4dfbf2u, +1, 0x3f1f1488u}, {0x6359c9u, +1, 0x3f102137u},
    {0x6b1aa1u, 0, 0x3f0b6069u},  {0x6f6c04u, +1, 0x3f08dcedu}, {0x7df0a6u, -1, 0x3f0109d0u},
    {0x7fcffeu, -1, 0x3f001805u}, {0x7ff410u, +1, 0x3f0005f9u}, {0x7fffffu, 0, 0x3f000001u},
};

TEST(GpuApproxMath, SpotValuesFromTheProbe) {
  for (const SpotValue& spot : kSpotValues) {
    SCOPED_TRACE(spot.mantissa);
    EXPECT_EQ(rcp_approx_delta(spot.mantissa), spot.delta);
    const float x = make_float(127, spot.mantissa);
    EXPECT_EQ(bits_of(rcp_approx_ftz(x)), spot.approx_bits);
    EXPECT_EQ(bits_of(rcp_approx_ftz(-x)), spot.approx_bits | 0x80000000u);
    // 0x0005a9 (first -1) and 0x00e832 (first +1) are the first of their kind.
    if (spot.mantissa == 0x0005a9u || spot.mantissa == 0x00e832u) {
      for (std::uint32_t m = 0; m < spot.mantissa; ++m) {
        if (rcp_approx_delta(m) == spot.delta) ADD_FAILURE() << "mantissa " << m;
      }
    }
  }
}

// In [1, 2) the result is IEEE 1/x moved by the table's delta, and so within 1 ulp of it.
TEST(GpuApproxMath, EveryMantissaIsIeeePlusTheTableDelta) {
  for (std::uint32_t m = 0; m < kMantissas; ++m) {
    const float x = make_float(127, m);
    const auto expected = bits_of(1.0f / x) + static_cast<std::uint32_t>(rcp_approx_delta(m));
    if (bits_of(rcp_approx_ftz(x)) != expected) {
      ADD_FAILURE() << "mantissa " << m;
      break;
    }
  }
}

// rcp(x * 2^e) = rcp(x) * 2^-e while that is normal; a result below FLT_MIN is a signed zero.
TEST(GpuApproxMath, ScalesExactlyWithTheExponent) {
  int failures = 0;
  for (std::uint32_t m = 0; m < kMantissas && failures < 5; m += 4099) {
    const float unit_result = rcp_approx_ftz(make_float(127, m));
    for (std::uint32_t exponent = 1; exponent <= 254; ++exponent) {
      for (const float sign : {1.0f, -1.0f}) {
        const float x = sign * make_float(exponent, m);
        const float scaled = sign * std::ldexp(unit_result, 127 - static_cast<int>(exponent));
        const float expected = std::fabs(scaled) < FLT_MIN ? sign * 0.0f : scaled;
        if (bits_of(rcp_approx_ftz(x)) != bits_of(expected) && ++failures <= 5) {
          ADD_FAILURE() << "x = " << std::hexfloat << x << ": got " << rcp_approx_ftz(x)
                        << ", expected " << expected;
        }
      }
    }
  }
}

TEST(GpuApproxMath, SpecialInputs) {
  const float inf = std::numeric_limits<float>::infinity();
  const float min_subnormal = std::numeric_limits<float>::denorm_min();
  const float max_subnormal = std::nextafter(FLT_MIN, 0.0f);
  // Zeros and subnormals read as zero: 1/0 = inf of the input's sign.
  EXPECT_EQ(bits_of(rcp_approx_ftz(0.0f)), bits_of(inf));
  EXPECT_EQ(bits_of(rcp_approx_ftz(-0.0f)), bits_of(-inf));
  EXPECT_EQ(bits_of(rcp_approx_ftz(min_subnormal)), bits_of(inf));
  EXPECT_EQ(bits_of(rcp_approx_ftz(-max_subnormal)), bits_of(-inf));
  EXPECT_EQ(bits_of(rcp_approx_ftz(inf)), bits_of(0.0f));
  EXPECT_EQ(bits_of(rcp_approx_ftz(-inf)), bits_of(-0.0f));
  // NaN in, the canonical NaN out (as measured).
  EXPECT_EQ(bits_of(rcp_approx_ftz(std::numeric_limits<float>::quiet_NaN())), 0x7fffffffu);
  EXPECT_EQ(bits_of(rcp_approx_ftz(-std::numeric_limits<float>::signaling_NaN())), 0x7fffffffu);
  // Powers of two are exact, up to the edge of the normal range.
  EXPECT_EQ(rcp_approx_ftz(1.0f), 1.0f);
  EXPECT_EQ(rcp_approx_ftz(-2.0f), -0.5f);
  EXPECT_EQ(rcp_approx_ftz(FLT_MIN), 0x1p126f);
  EXPECT_EQ(bits_of(rcp_approx_ftz(0x1p126f)), bits_of(FLT_MIN));
  // Beyond 2^126 the reciprocal is subnormal, which IEEE keeps and .ftz flushes.
  const float above = std::nextafter(0x1p126f, inf);
  ASSERT_GT(1.0f / above, 0.0f);
  EXPECT_EQ(bits_of(rcp_approx_ftz(above)), bits_of(0.0f));
  EXPECT_EQ(bits_of(rcp_approx_ftz(-0x1p127f)), bits_of(-0.0f));
  EXPECT_EQ(bits_of(rcp_approx_ftz(FLT_MAX)), bits_of(0.0f));
  // Just below 2^126 the result stays normal: mantissa 0x7fffff gives FLT_MIN + 1 ulp.
  EXPECT_EQ(bits_of(rcp_approx_ftz(make_float(252, 0x7fffffu))), 0x00800001u);
  EXPECT_EQ(rcp_approx_ftz(make_float(1, 0)), 0x1p126f);
}

TEST(GpuApproxMath, DivisionIsTheProductWithTheReciprocal) {
  const float inf = std::numeric_limits<float>::infinity();
  // Two roundings: even where the reciprocal is the IEEE one (delta 0, as for mantissa 0x20),
  // 127 * (1/x) is not always 127/x.
  const float absmax = make_float(130, 0x20u);
  ASSERT_EQ(rcp_approx_delta(0x20u), 0);
  EXPECT_EQ(bits_of(div_approx_ftz(127.0f, absmax)), bits_of(127.0f * (1.0f / absmax)));
  EXPECT_NE(bits_of(div_approx_ftz(127.0f, absmax)), bits_of(127.0f / absmax));
  EXPECT_EQ(div_approx_ftz(1.0f, absmax), rcp_approx_ftz(absmax));
  EXPECT_EQ(div_approx_ftz(127.0f, 0.0f), inf);
  EXPECT_EQ(div_approx_ftz(-127.0f, 0.0f), -inf);
  EXPECT_EQ(bits_of(div_approx_ftz(0.0f, 0.0f)), 0x7fffffffu);
  EXPECT_EQ(bits_of(div_approx_ftz(inf, inf)), 0x7fffffffu);
  EXPECT_EQ(bits_of(div_approx_ftz(inf, 0x1p127f)), 0x7fffffffu);  // inf * 0
  EXPECT_EQ(bits_of(div_approx_ftz(-std::numeric_limits<float>::quiet_NaN(), 1.0f)), 0x7fffffffu);
  EXPECT_EQ(bits_of(div_approx_ftz(-1.0f, 0x1p127f)), bits_of(-0.0f));
  EXPECT_EQ(bits_of(div_approx_ftz(127.0f, -inf)), bits_of(-0.0f));
  // A subnormal dividend reads as zero; a subnormal quotient becomes zero.
  EXPECT_EQ(bits_of(div_approx_ftz(-std::numeric_limits<float>::denorm_min(), 1.0f)),
            bits_of(-0.0f));
  EXPECT_EQ(bits_of(div_approx_ftz(FLT_MIN, 4.0f)), bits_of(0.0f));
  EXPECT_EQ(div_approx_ftz(FLT_MIN, 0.5f), 2.0f * FLT_MIN);
  EXPECT_EQ(div_approx_ftz(FLT_MAX, 0.5f), inf);
}

}  // namespace
}  // namespace kbit::kernels::cpu

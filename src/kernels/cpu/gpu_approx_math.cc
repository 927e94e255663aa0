#include "kernels/cpu/gpu_approx_math.h"

#include <bit>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

// The table file, assembled into read-only data (its format: scripts/dev/make_rcp_approx_table.py).
// CMake passes the file's absolute path and checks its SHA-256 when it configures; the end label
// gives the size actually included, which GpuApproxMath.EmbeddedTableIsTheMeasuredOne checks.
asm(".pushsection .rodata.kbit_rcp_approx_sm90, \"a\", @progbits\n"
    ".balign 64\n"
    ".globl kbit_rcp_approx_sm90_table\n"
    ".hidden kbit_rcp_approx_sm90_table\n"
    ".type kbit_rcp_approx_sm90_table, @object\n"
    "kbit_rcp_approx_sm90_table:\n"
    ".incbin \"" KBIT_RCP_APPROX_TABLE_PATH
    "\"\n"
    ".globl kbit_rcp_approx_sm90_table_end\n"
    ".hidden kbit_rcp_approx_sm90_table_end\n"
    "kbit_rcp_approx_sm90_table_end:\n"
    ".size kbit_rcp_approx_sm90_table, kbit_rcp_approx_sm90_table_end - "
    "kbit_rcp_approx_sm90_table\n"
    ".popsection\n");

extern "C" {
__attribute__((visibility("hidden"))) extern const std::uint8_t kbit_rcp_approx_sm90_table[];
__attribute__((visibility("hidden"))) extern const std::uint8_t kbit_rcp_approx_sm90_table_end[];
}

namespace kbit::kernels::cpu {
namespace {

constexpr std::uint32_t kSignBit = 0x80000000u;
constexpr std::uint32_t kInfinityBits = 0x7f800000u;
constexpr std::uint32_t kMantissaMask = 0x007fffffu;
constexpr std::uint32_t kCanonicalNan = 0x7fffffffu;  // every NaN the GPU's instructions return

// x, or a zero of x's sign where x is subnormal (sm_90's .ftz).
float flush_subnormal(float x) {
  const auto bits = std::bit_cast<std::uint32_t>(x);
  return (bits & kInfinityBits) == 0 ? std::bit_cast<float>(bits & kSignBit) : x;
}

int table_delta(std::uint32_t mantissa) {
  const int code = (kbit_rcp_approx_sm90_table[mantissa >> 2] >> (2 * (mantissa & 3))) & 3;
  return code == 2 ? -1 : code;  // codes 0 and 1 are the delta itself; 3 never occurs
}

// ---- Reading the table less often.
//
// A lookup in the 2 MiB table is a cache miss as a rule (each quantized block reads a place set
// by its absmax), and it costs the SIMD quantizers about as much as the rest of a small block.
// Most lookups can be skipped: rcp.approx(x) behaves as 1/x plus an error that changes slowly
// with x, rounded, so the delta depends mostly on where 1/x lies between two floats. With t the
// distance of 1/x from its IEEE rounding, in ulps (-0.5 < t < 0.5; x in [1, 2)), the table shows,
// over each segment of 4096 consecutive mantissas, ranges of t in which every delta is the same.
// They are derived from the table itself, once per process (about 20 ms), so they agree with it
// by construction; 94% of mantissas fall into one, and only the other 6% read the table.

constexpr int kSegmentBits = 12;

// The ranges of t within one segment where the delta is certain (bounds widened to floats
// on the safe side).
struct SegmentRanges {
  float minus_below;  // t < minus_below: -1
  float zero_above;   // zero_above < t < zero_below: 0
  float zero_below;
  float plus_above;  // t > plus_above: +1
};

// t for x in (1, 2) from r = 1.0f / x: (1/x - r) / 2^-24 = (1 - x·r) / x · 2^24, where 1 - x·r
// is exact in double (x·r has 48 significant bits and lies near 1) and r stands in for 1/x.
// Derivation and use compute it alike, so its own rounding does not matter.
double rounding_offset(float x, float reciprocal) {
  const double residual = 1.0 - static_cast<double>(x) * static_cast<double>(reciprocal);
  return residual * static_cast<double>(reciprocal) * 16777216.0;
}

float unit_of(std::uint32_t mantissa) {
  return std::bit_cast<float>(0x3f800000u | mantissa);
}

float float_at_most(double value) {
  const auto rounded = static_cast<float>(value);
  return static_cast<double>(rounded) <= value ? rounded : std::nextafter(rounded, -INFINITY);
}
float float_at_least(double value) {
  const auto rounded = static_cast<float>(value);
  return static_cast<double>(rounded) >= value ? rounded : std::nextafter(rounded, INFINITY);
}

std::vector<SegmentRanges> derive_segment_ranges() {
  constexpr std::uint32_t kSegmentSize = 1u << kSegmentBits;
  constexpr double kInf = std::numeric_limits<double>::infinity();
  std::vector<SegmentRanges> ranges(1u << (23 - kSegmentBits));
  for (std::uint32_t segment = 0; segment < ranges.size(); ++segment) {
    double lowest_plus = kInf;        // of the t with delta +1
    double highest_minus = -kInf;     // of the t with delta -1
    double highest_not_plus = -kInf;  // of the t with delta 0 or -1
    double lowest_not_minus = kInf;   // of the t with delta 0 or +1
    for (std::uint32_t m = segment * kSegmentSize; m < (segment + 1) * kSegmentSize; ++m) {
      const double t = rounding_offset(unit_of(m), 1.0f / unit_of(m));
      const int delta = table_delta(m);
      if (delta == 1) lowest_plus = std::min(lowest_plus, t);
      if (delta == -1) highest_minus = std::max(highest_minus, t);
      if (delta != 1) highest_not_plus = std::max(highest_not_plus, t);
      if (delta != -1) lowest_not_minus = std::min(lowest_not_minus, t);
    }
    ranges[segment] = {float_at_most(lowest_not_minus), float_at_least(highest_minus),
                       float_at_most(lowest_plus), float_at_least(highest_not_plus)};
  }
  return ranges;
}

const SegmentRanges* segment_ranges() {
  static const std::vector<SegmentRanges> ranges = derive_segment_ranges();
  return ranges.data();
}

// The table's delta for x = 1.mantissa, whose IEEE reciprocal is `reciprocal`; read from the
// table only where the ranges do not decide.
int delta_of(const SegmentRanges* segment_ranges, std::uint32_t mantissa, float x,
             float reciprocal) {
  const SegmentRanges& ranges = segment_ranges[mantissa >> kSegmentBits];
  const double t = rounding_offset(x, reciprocal);
  if (t > ranges.zero_above && t < ranges.zero_below) return 0;
  if (t > ranges.plus_above) return 1;
  if (t < ranges.minus_below) return -1;
  return table_delta(mantissa);
}

float rcp_approx(const SegmentRanges* segment_ranges, float x) {
  const auto bits = std::bit_cast<std::uint32_t>(x);
  const std::uint32_t sign = bits & kSignBit;
  const auto exponent = static_cast<int>((bits >> 23) & 0xffu);
  const std::uint32_t mantissa = bits & kMantissaMask;
  if (exponent == 0) return std::bit_cast<float>(sign | kInfinityBits);  // +-0, subnormal
  if (exponent == 0xff) {
    // inf -> zero of its sign; NaN -> the canonical NaN.
    return mantissa == 0 ? std::bit_cast<float>(sign) : std::bit_cast<float>(kCanonicalNan);
  }
  // 1/x for x = 1.mantissa in [1, 2), corrected by the table; it lies in (0.5, 1].
  const float unit = unit_of(mantissa);
  const float ieee = 1.0f / unit;
  const auto delta = static_cast<std::uint32_t>(delta_of(segment_ranges, mantissa, unit, ieee));
  const std::uint32_t unit_reciprocal = std::bit_cast<std::uint32_t>(ieee) + delta;
  // Scale by 2^-(exponent - 127) in the exponent field; below the normal range, .ftz gives zero.
  const int result_exponent = static_cast<int>(unit_reciprocal >> 23) - (exponent - 127);
  if (result_exponent <= 0) return std::bit_cast<float>(sign);
  return std::bit_cast<float>(sign | static_cast<std::uint32_t>(result_exponent) << 23 |
                              (unit_reciprocal & kMantissaMask));
}

}  // namespace

std::span<const std::uint8_t> rcp_approx_table() {
  const auto bytes = reinterpret_cast<std::uintptr_t>(kbit_rcp_approx_sm90_table_end) -
                     reinterpret_cast<std::uintptr_t>(kbit_rcp_approx_sm90_table);
  return {kbit_rcp_approx_sm90_table, bytes};
}

int rcp_approx_delta(std::uint32_t mantissa) {
  return table_delta(mantissa);
}

float rcp_approx_ftz(float x) {
  return rcp_approx(segment_ranges(), x);
}

void rcp_approx_ftz_each(std::span<const float> x, float* result) {
  const SegmentRanges* const ranges = segment_ranges();
  for (std::size_t i = 0; i < x.size(); ++i) result[i] = rcp_approx(ranges, x[i]);
}

float div_approx_ftz(float a, float b) {
  const float quotient = flush_subnormal(flush_subnormal(a) * rcp_approx_ftz(b));
  return std::isnan(quotient) ? std::bit_cast<float>(kCanonicalNan) : quotient;
}

}  // namespace kbit::kernels::cpu

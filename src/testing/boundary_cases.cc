#include "testing/boundary_cases.h"

#include <cmath>
#include <limits>

#include "kbit/quant/codebooks.h"
#include "kernels/code_rules.h"

namespace kbit::testing {
namespace {

// Calls code_of(scale) for every float32 scale within `ulps` of `exact` and reports whether
// both codes occur.
template <typename CodeOf, typename Code>
bool both_codes_reachable(float exact, int ulps, CodeOf code_of, Code code_a, Code code_b) {
  bool saw_a = false;
  bool saw_b = false;
  float scale = exact;
  for (int i = 0; i < ulps; ++i) scale = std::nextafter(scale, 0.0f);
  for (int i = 0; i <= 2 * ulps; ++i) {
    const Code code = code_of(scale);
    saw_a = saw_a || code == code_a;
    saw_b = saw_b || code == code_b;
    scale = std::nextafter(scale, std::numeric_limits<float>::infinity());
  }
  return saw_a && saw_b;
}

}  // namespace

bool is_4bit_boundary_case(float value, float absmax, quant::FourBitType type, std::uint8_t code_a,
                           std::uint8_t code_b) {
  const kernels::FourBitEncodeTables tables = kernels::four_bit_encode_tables();
  return both_codes_reachable(
      1.0f / absmax, 1, [&](float r) { return kernels::encode_4bit(value * r, type, tables); },
      code_a, code_b);
}

bool is_8bit_boundary_case(float value, float absmax, const float* map, std::uint8_t code_a,
                           std::uint8_t code_b) {
  return both_codes_reachable(
      1.0f / absmax, 1, [&](float r) { return kernels::search_dynamic_map(value * r, map); },
      code_a, code_b);
}

bool is_int8_boundary_case(float value, float absmax, std::int8_t code_a, std::int8_t code_b) {
  return both_codes_reachable(
      quant::kInt8CodeMax / absmax, 2,
      [&](float s) { return static_cast<std::int8_t>(std::nearbyint(value * s)); }, code_a, code_b);
}

}  // namespace kbit::testing

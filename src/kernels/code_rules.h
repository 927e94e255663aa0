// The decision rules of bitsandbytes' formats: which code a normalised value gets.
//
// One definition, compiled for the host (the CPU reference kernels) and for the device (the CUDA
// kernels): the CUDA kernels call these same functions, so the two cannot drift. The tables come
// in as arguments because device code cannot read host constexpr arrays; FourBitEncodeTables
// carries those of kbit/quant/codebooks.h (CUDA kernels receive it as a kernel parameter).
#pragma once

#include <cstdint>

#include "kbit/quant/blockwise_4bit.h"
#include "kbit/quant/codebooks.h"
#include "kernels/host_device.h"

namespace kbit::kernels {

// The decision tables of the 4-bit formats, as one plain struct that can travel by value.
struct FourBitEncodeTables {
  float nf4_thresholds[15];
  float fp4_magnitude_thresholds[7];
  std::uint8_t fp4_rank_to_bits[8];
};

// The tables of codebooks.h (host code).
constexpr FourBitEncodeTables four_bit_encode_tables() {
  FourBitEncodeTables tables{};
  for (int k = 0; k < 15; ++k) tables.nf4_thresholds[k] = quant::kNf4Thresholds[k];
  for (int k = 0; k < 7; ++k) {
    tables.fp4_magnitude_thresholds[k] = quant::kFp4MagnitudeThresholds[k];
  }
  for (int k = 0; k < 8; ++k) tables.fp4_rank_to_bits[k] = quant::kFp4RankToBits[k];
  return tables;
}

// NF4 code of x (spec 2.4): the number of thresholds strictly below x. Ties go to the lower
// code; NaN gives 0.
KBIT_HOST_DEVICE std::uint8_t encode_nf4(float x, const float (&thresholds)[15]) {
  int code = 0;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int k = 0; k < 15; ++k) code += x > thresholds[k] ? 1 : 0;
  return static_cast<std::uint8_t>(code);
}

// FP4 code of x (spec 2.4): the sign from x < 0 (so -0.0 is positive), the magnitude rank from
// strict comparisons of |x| with bitsandbytes' thresholds, then the rank's bit pattern.
KBIT_HOST_DEVICE std::uint8_t encode_fp4(float x, const float (&magnitude_thresholds)[7],
                                         const std::uint8_t (&rank_to_bits)[8]) {
  const int sign = x < 0.0f ? 1 : 0;
  const float magnitude = x < 0.0f ? -x : x;  // NaN stays NaN and compares false below
  int rank = 0;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int k = 0; k < 7; ++k) rank += magnitude > magnitude_thresholds[k] ? 1 : 0;
  return static_cast<std::uint8_t>(sign << 3 | rank_to_bits[rank]);
}

// The 4-bit code of x in either format.
KBIT_HOST_DEVICE std::uint8_t encode_4bit(float x, quant::FourBitType type,
                                          const FourBitEncodeTables& tables) {
  return type == quant::FourBitType::kNf4
             ? encode_nf4(x, tables.nf4_thresholds)
             : encode_fp4(x, tables.fp4_magnitude_thresholds, tables.fp4_rank_to_bits);
}

// 8-bit code of x in a 256-entry ascending map (spec 5.3): bitsandbytes' seven-step binary
// search, then the nearest of the final index and the bound on x's side. A value exactly on a
// midpoint keeps the final (even) index; NaN gives 0.
KBIT_HOST_DEVICE std::uint8_t search_dynamic_map(float x, const float* map) {
  int pivot = 127;
  int upper_index = 255;
  int lower_index = 0;
  float upper_value = 1.0f;
  float lower_value = -1.0f;
  float value = map[pivot];
  for (int step = 64; step > 0; step >>= 1) {
    if (x > value) {
      lower_index = pivot;
      lower_value = value;
      pivot += step;
    } else {
      upper_index = pivot;
      upper_value = value;
      pivot -= step;
    }
    value = map[pivot];
  }
  if (upper_index == 255) upper_value = map[255];
  if (lower_index == 0) lower_value = map[0];
  if (x > value) {
    const float midpoint = (upper_value + value) * 0.5f;
    return static_cast<std::uint8_t>(x > midpoint ? upper_index : pivot);
  }
  const float midpoint = (lower_value + value) * 0.5f;
  return static_cast<std::uint8_t>(x < midpoint ? lower_index : pivot);
}

}  // namespace kbit::kernels

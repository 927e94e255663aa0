// Helpers of the AVX-512 kernels: 16 float lanes read from and written to f32, f16 and bf16 with
// exactly the conversions of kbit/core/dtype.h. Include only in files compiled with the AVX-512
// flags (src/kernels/cpu/CMakeLists.txt); the namespace keeps these apart from the AVX2 helpers.
#pragma once

#include <immintrin.h>

#include <bit>
#include <cstdint>
#include <limits>

#include "kbit/core/dtype.h"

namespace kbit::kernels::cpu::avx512 {

constexpr std::int64_t kLanes = 16;

// The first `count` lanes; none for count <= 0, all for count >= 16.
inline __mmask16 first_lanes(std::int64_t count) {
  if (count <= 0) return 0;
  if (count >= kLanes) return 0xffff;
  return static_cast<__mmask16>((1u << count) - 1u);
}

// Loads the lanes of `mask` as f32 (exact widening) and 0.0 elsewhere. Masked-off lanes are
// never read, so `source` may end early.
inline __m512 load_f32(const float* source, __mmask16 mask) {
  return _mm512_maskz_loadu_ps(mask, source);
}
inline __m512 load_f32(const f16* source, __mmask16 mask) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, source));
}
inline __m512 load_f32(const bf16* source, __mmask16 mask) {
  const __m512i widened = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, source));
  return _mm512_castsi512_ps(_mm512_slli_epi32(widened, 16));
}

// f32(bf16(value)) per lane: rounded to nearest even as f32_to_bf16, NaN -> the bf16 NaN.
inline __m512 rounded_to_bf16(__m512 value) {
  const __m512i bits = _mm512_castps_si512(value);
  const __m512i lowest_kept_bit =
      _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i bias = _mm512_add_epi32(lowest_kept_bit, _mm512_set1_epi32(0x7fff));
  const __m512i rounded = _mm512_and_si512(_mm512_add_epi32(bits, bias), _mm512_set1_epi32(-65536));
  const __mmask16 is_nan = _mm512_cmp_ps_mask(value, value, _CMP_UNORD_Q);
  return _mm512_castsi512_ps(
      _mm512_mask_blend_epi32(is_nan, rounded, _mm512_set1_epi32(0x7fc00000)));
}

// f32 -> bf16 bits as f32_to_bf16: round to nearest even, NaN -> 0x7fc0. (The AVX512-BF16
// instruction would flush subnormals, so the rounding is done by hand.)
inline __m256i bf16_bits(__m512 value) {
  const __m512i rounded = _mm512_castps_si512(rounded_to_bf16(value));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
}

// f32 -> f16 bits as f32_to_f16. The hardware conversion rounds to nearest even exactly
// (subnormals and overflow included) but keeps NaN payload bits, where kbit gives every NaN the
// one quiet pattern sign | 0x7e00: NaNs are made sign | 0x7fc00000 first.
inline __m256i f16_bits(__m512 value) {
  const __mmask16 is_nan = _mm512_cmp_ps_mask(value, value, _CMP_UNORD_Q);
  const __m512 sign = _mm512_and_ps(value, _mm512_set1_ps(-0.0f));
  const __m512 quiet_nan = _mm512_or_ps(sign, _mm512_castsi512_ps(_mm512_set1_epi32(0x7fc00000)));
  return _mm512_cvtps_ph(_mm512_mask_blend_ps(is_nan, value, quiet_nan),
                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// f32(f16(value)) per lane, as f32_to_f16 then the exact widening.
inline __m512 rounded_to_f16(__m512 value) {
  return _mm512_cvtph_ps(f16_bits(value));
}

// value rounded to the precision of a float dtype (f32: unchanged).
inline __m512 rounded_to(DType dtype, __m512 value) {
  if (dtype == DType::kBF16) return rounded_to_bf16(value);
  if (dtype == DType::kF16) return rounded_to_f16(value);
  return value;
}

// Stores the lanes of `mask`, rounded to the destination type; other memory is untouched.
inline void store(float* destination, __m512 value, __mmask16 mask) {
  _mm512_mask_storeu_ps(destination, mask, value);
}
inline void store(f16* destination, __m512 value, __mmask16 mask) {
  _mm256_mask_storeu_epi16(destination, mask, f16_bits(value));
}
inline void store(bf16* destination, __m512 value, __mmask16 mask) {
  _mm256_mask_storeu_epi16(destination, mask, bf16_bits(value));
}

// Largest |x| of `count` values, or NaN if one is NaN or Inf. Non-negative floats order like
// their bit patterns as integers, and Inf and NaN sort above every finite value, so one integer
// maximum finds both the absmax and any non-finite value.
template <typename T>
float absmax_or_nan(const T* values, std::int64_t count) {
  __m512i largest = _mm512_setzero_si512();
  for (std::int64_t i = 0; i < count; i += kLanes) {
    const __m512 magnitude = _mm512_abs_ps(load_f32(values + i, first_lanes(count - i)));
    largest = _mm512_max_epi32(largest, _mm512_castps_si512(magnitude));
  }
  const std::int32_t bits = _mm512_reduce_max_epi32(largest);
  if (bits > std::bit_cast<std::int32_t>(std::numeric_limits<float>::max())) {
    return std::numeric_limits<float>::quiet_NaN();
  }
  return std::bit_cast<float>(bits);
}

}  // namespace kbit::kernels::cpu::avx512

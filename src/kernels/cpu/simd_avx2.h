// Helpers of the AVX2 kernels: 8 float lanes read from and written to f32, f16 and bf16 with
// exactly the conversions of kbit/core/dtype.h. Include only in files compiled with the AVX2
// flags (src/kernels/cpu/CMakeLists.txt); the namespace keeps these apart from the AVX-512 ones.
#pragma once

#include <immintrin.h>

#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kbit/core/dtype.h"

namespace kbit::kernels::cpu::avx2 {

constexpr std::int64_t kLanes = 8;

inline __m256 load_f32(const float* source) {
  return _mm256_loadu_ps(source);
}
inline __m256 load_f32(const f16* source) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(source)));
}
inline __m256 load_f32(const bf16* source) {
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(source));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}

// f32(bf16(value)) per lane: rounded to nearest even as f32_to_bf16, NaN -> the bf16 NaN.
inline __m256 rounded_to_bf16(__m256 value) {
  const __m256i bits = _mm256_castps_si256(value);
  const __m256i lowest_kept_bit =
      _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i bias = _mm256_add_epi32(lowest_kept_bit, _mm256_set1_epi32(0x7fff));
  const __m256i rounded = _mm256_and_si256(_mm256_add_epi32(bits, bias), _mm256_set1_epi32(-65536));
  const __m256 is_nan = _mm256_cmp_ps(value, value, _CMP_UNORD_Q);
  return _mm256_blendv_ps(_mm256_castsi256_ps(rounded),
                          _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)), is_nan);
}

// f32 -> bf16 bits as f32_to_bf16: round to nearest even, NaN -> 0x7fc0.
inline __m128i bf16_bits(__m256 value) {
  const __m256i result = _mm256_srli_epi32(_mm256_castps_si256(rounded_to_bf16(value)), 16);
  // Every lane is below 0x10000, so the unsigned saturation of the pack changes nothing.
  return _mm_packus_epi32(_mm256_castsi256_si128(result), _mm256_extracti128_si256(result, 1));
}

// f32 -> f16 bits as f32_to_f16. F16C rounds to nearest even exactly (subnormals and overflow
// included) but keeps NaN payload bits, where kbit gives every NaN the one quiet pattern
// sign | 0x7e00: NaNs are made sign | 0x7fc00000 first.
inline __m128i f16_bits(__m256 value) {
  const __m256 is_nan = _mm256_cmp_ps(value, value, _CMP_UNORD_Q);
  const __m256 sign = _mm256_and_ps(value, _mm256_set1_ps(-0.0f));
  const __m256 quiet_nan = _mm256_or_ps(sign, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)));
  return _mm256_cvtps_ph(_mm256_blendv_ps(value, quiet_nan, is_nan),
                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// f32(f16(value)) per lane, as f32_to_f16 then the exact widening.
inline __m256 rounded_to_f16(__m256 value) {
  return _mm256_cvtph_ps(f16_bits(value));
}

// value rounded to the precision of a float dtype (f32: unchanged).
inline __m256 rounded_to(DType dtype, __m256 value) {
  if (dtype == DType::kBF16) return rounded_to_bf16(value);
  if (dtype == DType::kF16) return rounded_to_f16(value);
  return value;
}

inline void store(float* destination, __m256 value) {
  _mm256_storeu_ps(destination, value);
}
inline void store(f16* destination, __m256 value) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(destination), f16_bits(value));
}
inline void store(bf16* destination, __m256 value) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(destination), bf16_bits(value));
}

// AVX2 has no masked 16-bit loads and stores: a partial vector goes through a small buffer.
// Loads `count` < 8 values, and 0.0 in the remaining lanes.
template <typename T>
__m256 load_f32_first(const T* source, std::int64_t count) {
  T buffer[kLanes] = {};
  std::memcpy(buffer, source, static_cast<std::size_t>(count) * sizeof(T));
  return load_f32(buffer);
}
// Stores the first `count` < 8 lanes.
template <typename T>
void store_first(T* destination, __m256 value, std::int64_t count) {
  T buffer[kLanes];
  store(buffer, value);
  std::memcpy(destination, buffer, static_cast<std::size_t>(count) * sizeof(T));
}

// Largest |x| of `count` values, or NaN if one is NaN or Inf. Non-negative floats order like
// their bit patterns as integers, and Inf and NaN sort above every finite value, so one integer
// maximum finds both the absmax and any non-finite value.
template <typename T>
float absmax_or_nan(const T* values, std::int64_t count) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256i largest = _mm256_setzero_si256();
  for (std::int64_t i = 0; i < count; i += kLanes) {
    const __m256 value =
        count - i >= kLanes ? load_f32(values + i) : load_f32_first(values + i, count - i);
    largest = _mm256_max_epi32(largest, _mm256_castps_si256(_mm256_andnot_ps(sign, value)));
  }
  alignas(32) std::int32_t lanes[kLanes];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), largest);
  std::int32_t bits = 0;
  for (const std::int32_t lane : lanes) bits = lane > bits ? lane : bits;
  if (bits > std::bit_cast<std::int32_t>(std::numeric_limits<float>::max())) {
    return std::numeric_limits<float>::quiet_NaN();
  }
  return std::bit_cast<float>(bits);
}

}  // namespace kbit::kernels::cpu::avx2

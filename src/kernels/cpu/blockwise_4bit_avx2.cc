// AVX2 kernels of NF4/FP4 blockwise quantization: the bytes of blockwise_4bit_reference.cc.
//
// Both directions work in chunks of 32 values, one 16-byte row of packed codes; block sizes are
// multiples of 32, so only a tensor's last block ends inside a chunk. That chunk goes through a
// zero-padded buffer on the way in and a scalar loop on the way out.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kbit/quant/codebooks.h"
#include "kernels/cpu/block_reciprocals.h"
#include "kernels/cpu/blockwise_4bit.h"
#include "kernels/cpu/element_access.h"
#include "kernels/cpu/simd_avx2.h"

namespace kbit::kernels::cpu {
namespace avx2 {
namespace {

constexpr std::int64_t kChunk = 32;

// The decision rules of code_rules.h as counts of the thresholds strictly below x: each true
// comparison is all ones (-1), so subtracting it counts one. NaN compares false and counts 0.
struct FourBitEncoder {
  bool is_nf4;
  __m256 nf4_thresholds[15];
  __m256 fp4_thresholds[7];
  __m256i fp4_rank_to_bits;

  explicit FourBitEncoder(quant::FourBitType type)
      : is_nf4(type == quant::FourBitType::kNf4),
        fp4_rank_to_bits(_mm256_cvtepu8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(quant::kFp4RankToBits.data())))) {
    for (int k = 0; k < 15; ++k) nf4_thresholds[k] = _mm256_set1_ps(quant::kNf4Thresholds[k]);
    for (int k = 0; k < 7; ++k) {
      fp4_thresholds[k] = _mm256_set1_ps(quant::kFp4MagnitudeThresholds[k]);
    }
  }

  template <int kCount>
  static __m256i count_below(__m256 x, const __m256 (&thresholds)[kCount]) {
    __m256i count = _mm256_setzero_si256();
    for (const __m256 threshold : thresholds) {
      const __m256 above = _mm256_cmp_ps(x, threshold, _CMP_GT_OQ);
      count = _mm256_sub_epi32(count, _mm256_castps_si256(above));
    }
    return count;
  }

  __m256i encode(__m256 x) const {
    if (is_nf4) return count_below(x, nf4_thresholds);
    // FP4: sign from x < 0 (so -0.0 is positive), rank of |x|, then the rank's bit pattern.
    const __m256 negative = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    const __m256 magnitude = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    const __m256i bits =
        _mm256_permutevar8x32_epi32(fp4_rank_to_bits, count_below(magnitude, fp4_thresholds));
    const __m256i sign = _mm256_and_si256(_mm256_castps_si256(negative), _mm256_set1_epi32(8));
    return _mm256_or_si256(bits, sign);
  }
};

// 32 codes (four vectors of 32-bit lanes) -> 16 bytes, code[2k] << 4 | code[2k + 1].
__m128i pack_nibbles(const __m256i (&codes)[4]) {
  // The packs work within 128-bit halves; the permute puts the 4-byte groups back in order.
  const __m256i words01 = _mm256_packus_epi32(codes[0], codes[1]);
  const __m256i words23 = _mm256_packus_epi32(codes[2], codes[3]);
  const __m256i scrambled = _mm256_packus_epi16(words01, words23);
  const __m256i bytes =
      _mm256_permutevar8x32_epi32(scrambled, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  // Multiply-add of byte pairs: code[2k] * 16 + code[2k + 1] in each 16-bit lane.
  const __m256i pairs = _mm256_maddubs_epi16(bytes, _mm256_set1_epi16(0x0110));
  return _mm_packus_epi16(_mm256_castsi256_si128(pairs), _mm256_extracti128_si256(pairs, 1));
}

template <typename T>
__m128i encode_chunk(const T* values, __m256 reciprocal, const FourBitEncoder& encoder) {
  __m256i codes[4];
  for (int part = 0; part < 4; ++part) {
    codes[part] = encoder.encode(_mm256_mul_ps(load_f32(values + part * kLanes), reciprocal));
  }
  return pack_nibbles(codes);
}

// The codes of one block, normalised by its approximate reciprocal (as the reference).
template <typename T>
void quantize_block(const T* values, std::int64_t count, float block_reciprocal,
                    const FourBitEncoder& encoder, std::uint8_t* packed) {
  const __m256 reciprocal = _mm256_set1_ps(block_reciprocal);
  const std::int64_t whole_chunks_end = count / kChunk * kChunk;
  for (std::int64_t i = 0; i < whole_chunks_end; i += kChunk) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(packed + i / 2),
                     encode_chunk(values + i, reciprocal, encoder));
  }
  if (whole_chunks_end == count) return;
  // The tensor's last, partial chunk. Zeros past the end are exactly the padding value of an odd
  // last block.
  T padded[kChunk] = {};
  std::memcpy(padded, values + whole_chunks_end,
              static_cast<std::size_t>(count - whole_chunks_end) * sizeof(T));
  std::uint8_t bytes[kChunk / 2];
  _mm_storeu_si128(reinterpret_cast<__m128i*>(bytes), encode_chunk(padded, reciprocal, encoder));
  std::memcpy(packed + whole_chunks_end / 2, bytes,
              static_cast<std::size_t>(count - whole_chunks_end + 1) / 2);
}

template <typename T>
void quantize_blocks(const Quantize4bitJob& job, std::int64_t first_block, std::int64_t end_block) {
  const T* input = static_cast<const T*>(job.input);
  const FourBitEncoder encoder(job.type);
  const auto values = [&](std::int64_t block) {
    return std::min(job.block_size, job.n - block * job.block_size);
  };
  for_each_block_reciprocal(
      first_block, end_block, job.block_size, job.absmax,
      [&](std::int64_t block) {
        return absmax_or_nan(input + block * job.block_size, values(block));
      },
      [&](std::int64_t block, float reciprocal) {
        const std::int64_t begin = block * job.block_size;
        quantize_block(input + begin, values(block), reciprocal, encoder, job.packed + begin / 2);
      });
}

// The codes of 32 values from 16 packed bytes, one per byte, in element order.
__m256i unpack_nibbles(const std::uint8_t* packed) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed));
  const __m128i nibble = _mm_set1_epi8(0x0f);
  const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble);
  const __m128i low = _mm_and_si128(bytes, nibble);
  return _mm256_set_m128i(_mm_unpackhi_epi8(high, low), _mm_unpacklo_epi8(high, low));
}

// Writes the 32 values of one chunk by looking each code up in the block's 16 output values.
// f32: two 8-entry permutes, and bit 3 of the code (moved to the sign bit) picks between them.
void write_chunk(__m256i codes, const float (&block_values)[16], float* output) {
  const __m256 first_half = _mm256_loadu_ps(block_values);
  const __m256 second_half = _mm256_loadu_ps(block_values + 8);
  const __m128i code_bytes[2] = {_mm256_castsi256_si128(codes), _mm256_extracti128_si256(codes, 1)};
  for (int part = 0; part < 4; ++part) {
    const __m128i bytes =
        part % 2 == 0 ? code_bytes[part / 2] : _mm_srli_si128(code_bytes[part / 2], 8);
    const __m256i code = _mm256_cvtepu8_epi32(bytes);
    const __m256 low = _mm256_permutevar8x32_ps(first_half, code);
    const __m256 high = _mm256_permutevar8x32_ps(second_half, code);
    const __m256 is_high = _mm256_castsi256_ps(_mm256_slli_epi32(code, 28));
    _mm256_storeu_ps(output + part * kLanes, _mm256_blendv_ps(low, high, is_high));
  }
}
// f16, bf16: byte shuffles look up the low and the high byte of each 16-bit output value.
template <typename T>
void write_chunk(__m256i codes, const T (&block_values)[16], T* output) {
  const __m128i byte_split = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __m128i first8 =
      _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block_values)), byte_split);
  const __m128i last8 = _mm_shuffle_epi8(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(block_values + 8)), byte_split);
  const __m256i low_bytes = _mm256_broadcastsi128_si256(_mm_unpacklo_epi64(first8, last8));
  const __m256i high_bytes = _mm256_broadcastsi128_si256(_mm_unpackhi_epi64(first8, last8));
  const __m256i low = _mm256_shuffle_epi8(low_bytes, codes);
  const __m256i high = _mm256_shuffle_epi8(high_bytes, codes);
  // Values 0-7 and 16-23, then 8-15 and 24-31: the unpacks also work within 128-bit halves.
  const __m256i values_a = _mm256_unpacklo_epi8(low, high);
  const __m256i values_b = _mm256_unpackhi_epi8(low, high);
  __m256i* destination = reinterpret_cast<__m256i*>(output);
  _mm256_storeu_si256(destination, _mm256_permute2x128_si256(values_a, values_b, 0x20));
  _mm256_storeu_si256(destination + 1, _mm256_permute2x128_si256(values_a, values_b, 0x31));
}

template <typename T>
void dequantize_block(const std::uint8_t* packed, float absmax, const __m256 (&code_values)[2],
                      std::int64_t count, T* output) {
  // Each value of the block is one of 16: fl32(value(code) * absmax), rounded to T. Computing
  // those once turns the block into table lookups.
  T block_values[16];
  const __m256 scale = _mm256_set1_ps(absmax);
  store(block_values, _mm256_mul_ps(code_values[0], scale));
  store(block_values + 8, _mm256_mul_ps(code_values[1], scale));
  const std::int64_t whole_chunks_end = count / kChunk * kChunk;
  for (std::int64_t i = 0; i < whole_chunks_end; i += kChunk) {
    write_chunk(unpack_nibbles(packed + i / 2), block_values, output + i);
  }
  for (std::int64_t i = whole_chunks_end; i < count; ++i) {  // the tensor's last, partial chunk
    const std::uint8_t byte = packed[i / 2];
    output[i] = block_values[i % 2 == 0 ? byte >> 4 : byte & 0x0f];
  }
}

template <typename T>
void dequantize_blocks(const Dequantize4bitJob& job, std::int64_t first_block,
                       std::int64_t end_block) {
  const auto& table = job.type == quant::FourBitType::kNf4 ? quant::kNf4Values : quant::kFp4Values;
  const __m256 code_values[2] = {_mm256_loadu_ps(table.data()), _mm256_loadu_ps(table.data() + 8)};
  T* output = static_cast<T*>(job.output);
  for (std::int64_t block = first_block; block < end_block; ++block) {
    const std::int64_t begin = block * job.block_size;
    const std::int64_t count = std::min(job.block_size, job.n - begin);
    dequantize_block(job.packed + begin / 2, job.absmax[block], code_values, count, output + begin);
  }
}

}  // namespace
}  // namespace avx2

void quantize_4bit_avx2(const Quantize4bitJob& job, std::int64_t first_block,
                        std::int64_t end_block) {
  visit_float_dtype(job.input_dtype, [&](auto type_tag) {
    avx2::quantize_blocks<decltype(type_tag)>(job, first_block, end_block);
  });
}

void dequantize_4bit_avx2(const Dequantize4bitJob& job, std::int64_t first_block,
                          std::int64_t end_block) {
  visit_float_dtype(job.output_dtype, [&](auto type_tag) {
    avx2::dequantize_blocks<decltype(type_tag)>(job, first_block, end_block);
  });
}

}  // namespace kbit::kernels::cpu

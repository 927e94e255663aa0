// AVX-512 kernels of NF4/FP4 blockwise quantization: the bytes of blockwise_4bit_reference.cc.
//
// Both directions work in chunks of 32 values, one 16-byte row of packed codes; block sizes are
// multiples of 32, so only a tensor's last block ends inside a chunk.
#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#include "kbit/quant/codebooks.h"
#include "kernels/cpu/block_reciprocals.h"
#include "kernels/cpu/blockwise_4bit.h"
#include "kernels/cpu/element_access.h"
#include "kernels/cpu/simd_avx512.h"

namespace kbit::kernels::cpu {
namespace avx512 {
namespace {

constexpr std::int64_t kChunk = 32;

// The decision tables of code_rules.h in registers, each padded with +inf so that a search over
// all 16 (or 8) entries never passes the last code.
struct FourBitEncoder {
  bool is_nf4;
  __m512 nf4_thresholds;  // 15 thresholds, +inf
  __m512 fp4_thresholds;  // 7 magnitude thresholds, +inf
  __m512i fp4_rank_to_bits;

  explicit FourBitEncoder(quant::FourBitType type)
      : is_nf4(type == quant::FourBitType::kNf4),
        nf4_thresholds(padded_with_infinity(quant::kNf4Thresholds.data(), 15)),
        fp4_thresholds(padded_with_infinity(quant::kFp4MagnitudeThresholds.data(), 7)),
        fp4_rank_to_bits(_mm512_cvtepu8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(quant::kFp4RankToBits.data())))) {}

  static __m512 padded_with_infinity(const float* thresholds, int count) {
    return _mm512_mask_loadu_ps(_mm512_set1_ps(std::numeric_limits<float>::infinity()),
                                first_lanes(count), thresholds);
  }

  // The number of thresholds strictly below x, by a branchless binary search over the sorted
  // table: `steps` halvings for 2^steps entries. NaN compares false throughout and counts 0.
  static __m512i count_below(__m512 x, __m512 thresholds, int steps) {
    __m512i count = _mm512_setzero_si512();
    for (int step = 1 << (steps - 1); step > 0; step >>= 1) {
      const __m512i probe = _mm512_add_epi32(count, _mm512_set1_epi32(step - 1));
      const __m512 threshold = _mm512_permutexvar_ps(probe, thresholds);
      const __mmask16 above = _mm512_cmp_ps_mask(x, threshold, _CMP_GT_OQ);
      count = _mm512_mask_add_epi32(count, above, count, _mm512_set1_epi32(step));
    }
    return count;
  }

  __m512i encode(__m512 x) const {
    if (is_nf4) return count_below(x, nf4_thresholds, 4);
    // FP4: sign from x < 0 (so -0.0 is positive), rank of |x|, then the rank's bit pattern.
    const __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    const __m512i rank = count_below(_mm512_abs_ps(x), fp4_thresholds, 3);
    const __m512i bits = _mm512_permutexvar_epi32(rank, fp4_rank_to_bits);
    return _mm512_mask_or_epi32(bits, negative, bits, _mm512_set1_epi32(8));
  }
};

// 32 codes (two vectors of 32-bit lanes) -> 16 bytes, code[2k] << 4 | code[2k + 1].
__m128i pack_nibbles(__m512i first_codes, __m512i second_codes) {
  const __m256i codes =
      _mm256_set_m128i(_mm512_cvtepi32_epi8(second_codes), _mm512_cvtepi32_epi8(first_codes));
  // Multiply-add of byte pairs: code[2k] * 16 + code[2k + 1] in each 16-bit lane.
  const __m256i pairs = _mm256_maddubs_epi16(codes, _mm256_set1_epi16(0x0110));
  return _mm256_cvtepi16_epi8(pairs);
}

// The codes of one block, normalised by its approximate reciprocal (as the reference).
template <typename T>
void quantize_block(const T* values, std::int64_t count, float block_reciprocal,
                    const FourBitEncoder& encoder, std::uint8_t* packed) {
  const __m512 reciprocal = _mm512_set1_ps(block_reciprocal);
  for (std::int64_t i = 0; i < count; i += kChunk) {
    // Lanes past the block's end load as 0.0: exactly the padding value of an odd last block.
    const std::int64_t second = std::min(i + kLanes, count);
    const __m512 x0 = _mm512_mul_ps(load_f32(values + i, first_lanes(count - i)), reciprocal);
    const __m512 x1 =
        _mm512_mul_ps(load_f32(values + second, first_lanes(count - second)), reciprocal);
    const __m128i bytes = pack_nibbles(encoder.encode(x0), encoder.encode(x1));
    _mm_mask_storeu_epi8(packed + i / 2, first_lanes((count - i + 1) / 2), bytes);
  }
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
void write_chunk(__m256i codes, const float (&block_values)[16], float* output) {
  const __m512 table = _mm512_loadu_ps(block_values);
  const __m512i first = _mm512_cvtepu8_epi32(_mm256_castsi256_si128(codes));
  const __m512i second = _mm512_cvtepu8_epi32(_mm256_extracti128_si256(codes, 1));
  _mm512_storeu_ps(output, _mm512_permutexvar_ps(first, table));
  _mm512_storeu_ps(output + kLanes, _mm512_permutexvar_ps(second, table));
}
template <typename T>  // f16, bf16: 16-bit lookups of the output bits
void write_chunk(__m256i codes, const T (&block_values)[16], T* output) {
  const __m512i table =
      _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(block_values)));
  _mm512_storeu_si512(output, _mm512_permutexvar_epi16(_mm512_cvtepu8_epi16(codes), table));
}

template <typename T>
void dequantize_block(const std::uint8_t* packed, float absmax, __m512 code_values,
                      std::int64_t count, T* output) {
  // Each value of the block is one of 16: fl32(value(code) * absmax), rounded to T. Computing
  // those once turns the block into table lookups.
  T block_values[16];
  store(block_values, _mm512_mul_ps(code_values, _mm512_set1_ps(absmax)), first_lanes(16));
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
  const __m512 code_values = _mm512_loadu_ps(table.data());
  T* output = static_cast<T*>(job.output);
  for (std::int64_t block = first_block; block < end_block; ++block) {
    const std::int64_t begin = block * job.block_size;
    const std::int64_t count = std::min(job.block_size, job.n - begin);
    dequantize_block(job.packed + begin / 2, job.absmax[block], code_values, count, output + begin);
  }
}

}  // namespace
}  // namespace avx512

void quantize_4bit_avx512(const Quantize4bitJob& job, std::int64_t first_block,
                          std::int64_t end_block) {
  visit_float_dtype(job.input_dtype, [&](auto type_tag) {
    avx512::quantize_blocks<decltype(type_tag)>(job, first_block, end_block);
  });
}

void dequantize_4bit_avx512(const Dequantize4bitJob& job, std::int64_t first_block,
                            std::int64_t end_block) {
  visit_float_dtype(job.output_dtype, [&](auto type_tag) {
    avx512::dequantize_blocks<decltype(type_tag)>(job, first_block, end_block);
  });
}

}  // namespace kbit::kernels::cpu

// AVX2 kernels of 8-bit dynamic blockwise quantization: the bytes of
// blockwise_8bit_reference.cc. Block sizes are multiples of 64, so only a tensor's last block
// ends inside a vector; it goes through the buffered loads and stores of simd_avx2.h.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/block_reciprocals.h"
#include "kernels/cpu/blockwise_8bit.h"
#include "kernels/cpu/dynamic_map_bounds.h"
#include "kernels/cpu/element_access.h"
#include "kernels/cpu/simd_avx2.h"

namespace kbit::kernels::cpu {
namespace avx2 {
namespace {

// bitsandbytes' search as an 8-step branchless binary search over the 256 ascending bounds of
// dynamic_map_bounds.h: the code is the number of bounds below x. Step `depth` compares with one
// of 2^depth bounds; the first four levels (1 + 2 + 4 + 8 bounds) sit in registers, the last
// four are gathered.
class MapSearch {
 public:
  explicit MapSearch(const float* map) : bounds_(dynamic_map_bounds(map)) {
    for (int depth = 0; depth < kLevelsInRegisters; ++depth) {
      alignas(32) float level[kLanes] = {};
      for (int j = 0; j < (1 << depth); ++j) level[j] = bounds_.above[probe_index(depth, j)];
      levels_[depth] = _mm256_load_ps(level);
    }
  }

  __m256i code(__m256 x) const {
    __m256i code = _mm256_setzero_si256();
    for (int depth = 0; depth < 8; ++depth) {
      const int step = 128 >> depth;
      // code is a multiple of 2 * step; the bound to compare with is above[code + step - 1].
      const __m256i probe = _mm256_add_epi32(code, _mm256_set1_epi32(step - 1));
      const __m256 bound =
          depth < kLevelsInRegisters
              ? _mm256_permutevar8x32_ps(levels_[depth],
                                         _mm256_srlv_epi32(code, _mm256_set1_epi32(8 - depth)))
              : _mm256_i32gather_ps(bounds_.above.data(), probe, sizeof(float));
      const __m256 above = _mm256_cmp_ps(x, bound, _CMP_GT_OQ);
      code = _mm256_add_epi32(
          code, _mm256_and_si256(_mm256_castps_si256(above), _mm256_set1_epi32(step)));
    }
    return code;
  }

 private:
  static constexpr int kLevelsInRegisters = 4;
  // The bound that the j-th node of level `depth` compares with.
  static int probe_index(int depth, int j) { return (2 * j + 1) * (128 >> depth) - 1; }

  DynamicMapBounds bounds_;
  __m256 levels_[kLevelsInRegisters];
};

// 8 codes in 32-bit lanes -> 8 bytes (the low 64 bits).
__m128i codes_to_bytes(__m256i codes) {
  const __m128i words =
      _mm_packus_epi32(_mm256_castsi256_si128(codes), _mm256_extracti128_si256(codes, 1));
  return _mm_packus_epi16(words, words);
}

template <typename T>
void quantize_blocks(const Quantize8bitJob& job, std::int64_t first_block, std::int64_t end_block) {
  const T* input = static_cast<const T*>(job.input);
  const MapSearch search(job.map);
  const auto values = [&](std::int64_t block) {
    return std::min(job.block_size, job.n - block * job.block_size);
  };
  for_each_block_reciprocal(
      first_block, end_block, job.block_size, job.absmax,
      [&](std::int64_t block) {
        return absmax_or_nan(input + block * job.block_size, values(block));
      },
      [&](std::int64_t block, float block_reciprocal) {
        const std::int64_t begin = block * job.block_size;
        const std::int64_t end = begin + values(block);
        const __m256 reciprocal = _mm256_set1_ps(block_reciprocal);  // as the reference
        for (std::int64_t i = begin; i < end; i += kLanes) {
          const bool whole = end - i >= kLanes;
          const __m256 value = whole ? load_f32(input + i) : load_f32_first(input + i, end - i);
          const __m128i bytes = codes_to_bytes(search.code(_mm256_mul_ps(value, reciprocal)));
          if (whole) {
            _mm_storel_epi64(reinterpret_cast<__m128i*>(job.codes + i), bytes);
          } else {
            std::uint8_t buffer[16];
            _mm_storeu_si128(reinterpret_cast<__m128i*>(buffer), bytes);
            std::memcpy(job.codes + i, buffer, static_cast<std::size_t>(end - i));
          }
        }
      });
}

template <typename T>
void dequantize_blocks(const Dequantize8bitJob& job, std::int64_t first_block,
                       std::int64_t end_block) {
  T* output = static_cast<T*>(job.output);
  for (std::int64_t block = first_block; block < end_block; ++block) {
    const std::int64_t begin = block * job.block_size;
    const std::int64_t end = begin + std::min(job.block_size, job.n - begin);
    const __m256 absmax = _mm256_set1_ps(job.absmax[block]);
    for (std::int64_t i = begin; i < end; i += kLanes) {
      const bool whole = end - i >= kLanes;
      std::uint64_t code_bytes = 0;
      std::memcpy(&code_bytes, job.codes + i, static_cast<std::size_t>(std::min(end - i, kLanes)));
      const __m256i code =
          _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(code_bytes)));
      const __m256 value = _mm256_mul_ps(_mm256_i32gather_ps(job.map, code, sizeof(float)), absmax);
      if (whole) {
        store(output + i, value);
      } else {
        store_first(output + i, value, end - i);
      }
    }
  }
}

}  // namespace
}  // namespace avx2

void quantize_8bit_avx2(const Quantize8bitJob& job, std::int64_t first_block,
                        std::int64_t end_block) {
  visit_float_dtype(job.input_dtype, [&](auto type_tag) {
    avx2::quantize_blocks<decltype(type_tag)>(job, first_block, end_block);
  });
}

void dequantize_8bit_avx2(const Dequantize8bitJob& job, std::int64_t first_block,
                          std::int64_t end_block) {
  visit_float_dtype(job.output_dtype, [&](auto type_tag) {
    avx2::dequantize_blocks<decltype(type_tag)>(job, first_block, end_block);
  });
}

}  // namespace kbit::kernels::cpu

// AVX-512 kernels of 8-bit dynamic blockwise quantization: the bytes of
// blockwise_8bit_reference.cc. Block sizes are multiples of 64, so only a tensor's last block
// ends inside a vector; masked loads and stores cover it.
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/block_reciprocals.h"
#include "kernels/cpu/blockwise_8bit.h"
#include "kernels/cpu/dynamic_map_bounds.h"
#include "kernels/cpu/element_access.h"
#include "kernels/cpu/simd_avx512.h"

namespace kbit::kernels::cpu {
namespace avx512 {
namespace {

// bitsandbytes' search as an 8-step branchless binary search over the 256 ascending bounds of
// dynamic_map_bounds.h: the code is the number of bounds below x. Step `depth` compares with one
// of 2^depth bounds; the first five levels (1 + 2 + 4 + 8 + 16 bounds) sit in registers, the
// last three are gathered.
class MapSearch {
 public:
  explicit MapSearch(const float* map) : bounds_(dynamic_map_bounds(map)) {
    for (int depth = 0; depth < kLevelsInRegisters; ++depth) {
      alignas(64) float level[kLanes] = {};
      for (int j = 0; j < (1 << depth); ++j) level[j] = bounds_.above[probe_index(depth, j)];
      levels_[depth] = _mm512_load_ps(level);
    }
  }

  __m512i code(__m512 x) const {
    __m512i code = _mm512_setzero_si512();
    for (int depth = 0; depth < 8; ++depth) {
      const int step = 128 >> depth;
      // code is a multiple of 2 * step; the bound to compare with is above[code + step - 1].
      const __m512i probe = _mm512_add_epi32(code, _mm512_set1_epi32(step - 1));
      const __m512 bound =
          depth < kLevelsInRegisters
              ? _mm512_permutexvar_ps(_mm512_srlv_epi32(code, _mm512_set1_epi32(8 - depth)),
                                      levels_[depth])
              : _mm512_i32gather_ps(probe, bounds_.above.data(), sizeof(float));
      const __mmask16 above = _mm512_cmp_ps_mask(x, bound, _CMP_GT_OQ);
      code = _mm512_mask_add_epi32(code, above, code, _mm512_set1_epi32(step));
    }
    return code;
  }

 private:
  static constexpr int kLevelsInRegisters = 5;
  // The bound that the j-th node of level `depth` compares with.
  static int probe_index(int depth, int j) { return (2 * j + 1) * (128 >> depth) - 1; }

  DynamicMapBounds bounds_;
  __m512 levels_[kLevelsInRegisters];
};

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
        const std::int64_t count = values(block);
        const __m512 reciprocal = _mm512_set1_ps(block_reciprocal);  // as the reference
        for (std::int64_t i = 0; i < count; i += kLanes) {
          const __mmask16 lanes = first_lanes(count - i);
          const __m512 x = _mm512_mul_ps(load_f32(input + begin + i, lanes), reciprocal);
          _mm_mask_storeu_epi8(job.codes + begin + i, lanes, _mm512_cvtepi32_epi8(search.code(x)));
        }
      });
}

template <typename T>
void dequantize_blocks(const Dequantize8bitJob& job, std::int64_t first_block,
                       std::int64_t end_block) {
  T* output = static_cast<T*>(job.output);
  for (std::int64_t block = first_block; block < end_block; ++block) {
    const std::int64_t begin = block * job.block_size;
    const std::int64_t count = std::min(job.block_size, job.n - begin);
    const __m512 absmax = _mm512_set1_ps(job.absmax[block]);
    for (std::int64_t i = begin; i < begin + count; i += kLanes) {
      const __mmask16 lanes = first_lanes(begin + count - i);
      const __m512i code = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(lanes, job.codes + i));
      const __m512 value = _mm512_i32gather_ps(code, job.map, sizeof(float));
      store(output + i, _mm512_mul_ps(value, absmax), lanes);
    }
  }
}

}  // namespace
}  // namespace avx512

void quantize_8bit_avx512(const Quantize8bitJob& job, std::int64_t first_block,
                          std::int64_t end_block) {
  visit_float_dtype(job.input_dtype, [&](auto type_tag) {
    avx512::quantize_blocks<decltype(type_tag)>(job, first_block, end_block);
  });
}

void dequantize_8bit_avx512(const Dequantize8bitJob& job, std::int64_t first_block,
                            std::int64_t end_block) {
  visit_float_dtype(job.output_dtype, [&](auto type_tag) {
    avx512::dequantize_blocks<decltype(type_tag)>(job, first_block, end_block);
  });
}

}  // namespace kbit::kernels::cpu

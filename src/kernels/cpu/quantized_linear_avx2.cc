// AVX2 kernels of linear_4bit (quantized_linear.h), as quantized_linear_avx512.cc with 8 lanes:
// a block's 16 weights fill two registers, and a weight is a nibble, two permutes and a blend.
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/llama_ops.h"
#include "kernels/cpu/quantized_linear.h"
#include "kernels/cpu/quantized_linear_parts.h"
#include "kernels/cpu/simd_avx2.h"

namespace kbit::kernels::cpu {
namespace avx2 {
namespace {

constexpr std::int64_t kChunk = kLinear4bitAvx2Chunk;  // 16 values: 8 packed bytes
static_assert(kChunk == 2 * kLanes);

// A block's 16 weights: codes 0-7 in `low`, 8-15 in `high`.
struct Table {
  __m256 low;
  __m256 high;
};

// Each block's lookup table: round_compute(round_weight_dtype(value(code) · absmax)) for code
// 0..15.
class BlockTables {
 public:
  explicit BlockTables(const FourBitPanel& panel)
      : low_values_(_mm256_loadu_ps(four_bit_code_values(panel.job->weight.type))),
        high_values_(_mm256_loadu_ps(four_bit_code_values(panel.job->weight.type) + kLanes)),
        first_rounding_(panel.job->weight.weight_dtype),
        // The compute dtype; f32 (none) when it is the weight dtype: rounding twice is once.
        second_rounding_(panel.job->compute_dtype == first_rounding_ ? DType::kF32
                                                                     : panel.job->compute_dtype),
        absmax_(panel.absmax),
        first_block_(panel.first_block) {}

  Table operator()(std::int64_t block) const {
    const __m256 absmax = _mm256_set1_ps(absmax_[block - first_block_]);
    return {round(_mm256_mul_ps(low_values_, absmax)), round(_mm256_mul_ps(high_values_, absmax))};
  }

 private:
  __m256 round(__m256 weights) const {
    return rounded_to(second_rounding_, rounded_to(first_rounding_, weights));
  }

  __m256 low_values_;
  __m256 high_values_;
  DType first_rounding_;
  DType second_rounding_;
  const float* absmax_;
  std::int64_t first_block_;
};

// The weights of codes whose bits 0-2 are in `index` (the permutes read only those) and whose
// bit 3 is the sign bit of `select`.
__m256 lookup(const Table& table, __m256i index, __m256i select) {
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(table.low, index),
                          _mm256_permutevar8x32_ps(table.high, index), _mm256_castsi256_ps(select));
}

// The weights of one chunk, the even-indexed values (high nibbles) in one vector and the odd
// (low nibbles) in the other: the order of the prepared activations. With one byte per 32-bit
// lane, a high code is lane >> 4 with its bit 3 at bit 7 (lane << 24 makes it the sign), a low
// code is the lane itself with bit 3 at bit 3 (lane << 28).
struct ChunkWeights {
  __m256 even;
  __m256 odd;
};

ChunkWeights decode_chunk(const std::uint8_t* packed, const Table& table) {
  const __m256i bytes =
      _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(packed)));
  return {lookup(table, _mm256_srli_epi32(bytes, 4), _mm256_slli_epi32(bytes, 24)),
          lookup(table, bytes, _mm256_slli_epi32(bytes, 28))};
}

// y[r][o] = Σ_k x[r][k] · w[o][k] for r < kRows, one feature: with 16 registers there is no
// room for two. A row's segment s lies in block (o · in) / block_size + s.
template <int kRows>
void dot_feature(const FourBitPanel& panel, const BlockTables& tables, std::int64_t o) {
  const Linear4bitJob& job = *panel.job;
  const std::int64_t in = job.in_features;
  const std::int64_t segment = std::min(job.weight.block_size, in);
  __m256 even_sums[kRows];
  __m256 odd_sums[kRows];
  for (int r = 0; r < kRows; ++r) even_sums[r] = odd_sums[r] = _mm256_setzero_ps();
  std::int64_t block = o * in / job.weight.block_size;
  const std::uint8_t* packed = job.weight.packed + o * in / 2;
  for (std::int64_t k0 = 0; k0 < in; k0 += segment) {
    const Table table = tables(block++);
    for (std::int64_t k = k0; k < k0 + segment; k += kChunk) {
      const ChunkWeights w = decode_chunk(packed + k / 2, table);
      for (int r = 0; r < kRows; ++r) {
        const float* x = panel.x + r * in + k;
        even_sums[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x), w.even, even_sums[r]);
        odd_sums[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + kLanes), w.odd, odd_sums[r]);
      }
    }
  }
  for (int r = 0; r < kRows; ++r) {
    alignas(32) float lanes[kLanes];
    _mm256_store_ps(lanes, _mm256_add_ps(even_sums[r], odd_sums[r]));
    float sum = 0.0f;
    for (const float lane : lanes) sum += lane;
    job.y[r * job.out_features + o] = sum;
  }
}

template <int kRows>
void gemv_rows(const FourBitPanel& panel) {
  const BlockTables tables(panel);
  for (std::int64_t o = panel.first_out; o < panel.end_out; ++o) {
    dot_feature<kRows>(panel, tables, o);
  }
}

static_assert(kLinearGemvMaxRows == 4);
void gemv(const FourBitPanel& panel) {
  switch (panel.job->rows) {
    case 1:
      return gemv_rows<1>(panel);
    case 2:
      return gemv_rows<2>(panel);
    case 3:
      return gemv_rows<3>(panel);
    default:
      return gemv_rows<4>(panel);
  }
}

// As dot_feature, the weights of rows [first_out, end_out) and values [k0, k1) to w.
void dequantize(const FourBitPanel& panel, std::int64_t k0, std::int64_t k1, float* w) {
  const Linear4bitJob& job = *panel.job;
  const std::int64_t in = job.in_features;
  const std::int64_t segment = std::min(job.weight.block_size, in);
  const BlockTables tables(panel);
  for (std::int64_t o = panel.first_out; o < panel.end_out; ++o) {
    std::int64_t block = (o * in + k0) / job.weight.block_size;
    const std::uint8_t* packed = job.weight.packed + o * in / 2;
    float* row = w + (o - panel.first_out) * (k1 - k0);
    for (std::int64_t s = k0; s < k1; s += segment) {
      const Table table = tables(block++);
      for (std::int64_t k = s; k < s + segment; k += kChunk) {
        const ChunkWeights weights = decode_chunk(packed + k / 2, table);
        _mm256_storeu_ps(row + (k - k0), weights.even);
        _mm256_storeu_ps(row + (k - k0) + kLanes, weights.odd);
      }
    }
  }
}

}  // namespace
}  // namespace avx2

void linear_4bit_avx2(const Linear4bitJob& job, const float* prepared, std::int64_t first_out,
                      std::int64_t end_out) {
  run_4bit_panels(job, prepared, first_out, end_out, {avx2::gemv, avx2::dequantize});
}

}  // namespace kbit::kernels::cpu

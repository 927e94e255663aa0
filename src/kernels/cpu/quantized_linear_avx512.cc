// AVX-512 kernels of linear_4bit (quantized_linear.h). Per block, the 16 weights its codes stand
// for, rounded as the matmul sees them, fill one register; each weight is then a nibble and a
// permute, and the GEMV one FMA more. The GEMM path writes the same weights to f32 panels.
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/llama_ops.h"
#include "kernels/cpu/quantized_linear.h"
#include "kernels/cpu/quantized_linear_parts.h"
#include "kernels/cpu/simd_avx512.h"

namespace kbit::kernels::cpu {
namespace avx512 {
namespace {

constexpr std::int64_t kChunk = kLinear4bitAvx512Chunk;  // 32 values: 16 packed bytes
static_assert(kChunk == 2 * kLanes);

// Each block's lookup table: round_compute(round_weight_dtype(value(code) · absmax)) in lane
// `code`.
class BlockTables {
 public:
  explicit BlockTables(const FourBitPanel& panel)
      : code_values_(_mm512_loadu_ps(four_bit_code_values(panel.job->weight.type))),
        first_rounding_(panel.job->weight.weight_dtype),
        // The compute dtype; f32 (none) when it is the weight dtype: rounding twice is once.
        second_rounding_(panel.job->compute_dtype == first_rounding_ ? DType::kF32
                                                                     : panel.job->compute_dtype),
        absmax_(panel.absmax),
        first_block_(panel.first_block) {}

  __m512 operator()(std::int64_t block) const {
    const __m512 absmax = _mm512_set1_ps(absmax_[block - first_block_]);
    const __m512 weights = rounded_to(first_rounding_, _mm512_mul_ps(code_values_, absmax));
    return rounded_to(second_rounding_, weights);
  }

 private:
  __m512 code_values_;
  DType first_rounding_;
  DType second_rounding_;
  const float* absmax_;
  std::int64_t first_block_;
};

// The weights of one chunk. Byte k holds values 2k (high nibble) and 2k + 1 (low nibble).
// Widened to one byte per 32-bit lane, lane >> 4 is the high code, and the lane itself indexes
// by its low code, since _mm512_permutexvar_ps reads only an index's low 4 bits. So the
// even-indexed weights come out in one vector and the odd-indexed in the other: the order of
// the prepared activations.
struct ChunkWeights {
  __m512 even;
  __m512 odd;
};

ChunkWeights decode_chunk(const std::uint8_t* packed, __m512 table) {
  const __m512i bytes =
      _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(packed)));
  return {_mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), table),
          _mm512_permutexvar_ps(bytes, table)};
}

// y[r][o] = Σ_k x[r][k] · w[o][k] for r < kRows and the kFeatures features from `first`. The
// sums of even and odd values are kept apart: more independent FMA chains. A row's segment s
// lies in block (o · in) / block_size + s (a row in one block has one segment).
template <int kRows, int kFeatures>
void dot_features(const FourBitPanel& panel, const BlockTables& tables, std::int64_t first) {
  const Linear4bitJob& job = *panel.job;
  const std::int64_t in = job.in_features;
  const std::int64_t segment = std::min(job.weight.block_size, in);
  __m512 even_sums[kRows][kFeatures];
  __m512 odd_sums[kRows][kFeatures];
  for (int r = 0; r < kRows; ++r) {
    for (int f = 0; f < kFeatures; ++f) even_sums[r][f] = odd_sums[r][f] = _mm512_setzero_ps();
  }
  std::int64_t block[kFeatures];
  const std::uint8_t* packed[kFeatures];
  for (int f = 0; f < kFeatures; ++f) {
    block[f] = (first + f) * in / job.weight.block_size;
    packed[f] = job.weight.packed + (first + f) * in / 2;
  }
  for (std::int64_t k0 = 0; k0 < in; k0 += segment) {
    __m512 table[kFeatures];
    for (int f = 0; f < kFeatures; ++f) table[f] = tables(block[f]++);
    for (std::int64_t k = k0; k < k0 + segment; k += kChunk) {
      ChunkWeights w[kFeatures];
      for (int f = 0; f < kFeatures; ++f) w[f] = decode_chunk(packed[f] + k / 2, table[f]);
      for (int r = 0; r < kRows; ++r) {
        const float* x = panel.x + r * in + k;
        const __m512 x_even = _mm512_loadu_ps(x);
        const __m512 x_odd = _mm512_loadu_ps(x + kLanes);
        for (int f = 0; f < kFeatures; ++f) {
          even_sums[r][f] = _mm512_fmadd_ps(x_even, w[f].even, even_sums[r][f]);
          odd_sums[r][f] = _mm512_fmadd_ps(x_odd, w[f].odd, odd_sums[r][f]);
        }
      }
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int f = 0; f < kFeatures; ++f) {
      job.y[r * job.out_features + first + f] =
          _mm512_reduce_add_ps(_mm512_add_ps(even_sums[r][f], odd_sums[r][f]));
    }
  }
}

// Two features at a time, so each activation load serves both.
template <int kRows>
void gemv_rows(const FourBitPanel& panel) {
  const BlockTables tables(panel);
  std::int64_t o = panel.first_out;
  for (; o + 2 <= panel.end_out; o += 2) dot_features<kRows, 2>(panel, tables, o);
  if (o < panel.end_out) dot_features<kRows, 1>(panel, tables, o);
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

// As dot_features, the weights of rows [first_out, end_out) and values [k0, k1) to w.
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
      const __m512 table = tables(block++);
      for (std::int64_t k = s; k < s + segment; k += kChunk) {
        const ChunkWeights weights = decode_chunk(packed + k / 2, table);
        _mm512_storeu_ps(row + (k - k0), weights.even);
        _mm512_storeu_ps(row + (k - k0) + kLanes, weights.odd);
      }
    }
  }
}

}  // namespace
}  // namespace avx512

void linear_4bit_avx512(const Linear4bitJob& job, const float* prepared, std::int64_t first_out,
                        std::int64_t end_out) {
  run_4bit_panels(job, prepared, first_out, end_out, {avx512::gemv, avx512::dequantize});
}

}  // namespace kbit::kernels::cpu

// AVX-512 VNNI kernel of linear_int8's int32 products (quantized_linear.h). vpdpbusd multiplies
// unsigned by signed bytes, four pairs into each int32 lane. The activation codes are made
// unsigned by a + 128 (the byte's top bit flipped) and the weight's row sums take the shift
// back out: C = Σ (a + 128) · w − 128 · Σ w. Integer arithmetic throughout, so C is exact and
// the outputs are the reference's bits.
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/quantized_linear.h"
#include "kernels/cpu/quantized_linear_parts.h"

namespace kbit::kernels::cpu {
namespace avx512 {
namespace {

constexpr std::int64_t kBytes = 64;  // codes per register
// Output features per panel (their weight rows, 64 · in_features bytes, stay in L2 while the
// row tiles pass) and activation rows per tile.
constexpr std::int64_t kPanelFeatures = 64;
constexpr int kTileRows = 4;

__mmask64 first_bytes(std::int64_t count) {
  return count >= kBytes ? ~__mmask64{0} : (__mmask64{1} << count) - 1;
}

// sums[r * stride + f] = Σ_k (a[r][k] + 128) · w[f][k] for r < kRows, f < kFeatures (modulo
// 2^32). a and w are rows of in_features codes; masked-off bytes load as 0 and add nothing.
template <int kRows, int kFeatures>
void dot_tile(const std::int8_t* a, const std::int8_t* w, std::int64_t in_features,
              std::int32_t* sums, std::int64_t stride) {
  const __m512i flip_sign = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i acc[kRows][kFeatures];
  for (int r = 0; r < kRows; ++r) {
    for (int f = 0; f < kFeatures; ++f) acc[r][f] = _mm512_setzero_si512();
  }
  for (std::int64_t k = 0; k < in_features; k += kBytes) {
    const __mmask64 lanes = first_bytes(in_features - k);
    __m512i weights[kFeatures];
    for (int f = 0; f < kFeatures; ++f) {
      weights[f] = _mm512_maskz_loadu_epi8(lanes, w + f * in_features + k);
    }
    for (int r = 0; r < kRows; ++r) {
      const __m512i shifted =
          _mm512_xor_si512(_mm512_maskz_loadu_epi8(lanes, a + r * in_features + k), flip_sign);
      for (int f = 0; f < kFeatures; ++f) {
        acc[r][f] = _mm512_dpbusd_epi32(acc[r][f], shifted, weights[f]);
      }
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int f = 0; f < kFeatures; ++f) sums[r * stride + f] = _mm512_reduce_add_epi32(acc[r][f]);
  }
}

// The shifted sums of kRows activation rows with the features [first, end), four at a time.
template <int kRows>
void dot_rows(const LinearInt8Job& job, const std::int8_t* a, std::int64_t first, std::int64_t end,
              std::int32_t* sums /* [kRows, kPanelFeatures] */) {
  const std::int64_t in = job.in_features;
  std::int64_t o = first;
  for (; o + 4 <= end; o += 4) {
    dot_tile<kRows, 4>(a, job.weight.codes + o * in, in, sums + (o - first), kPanelFeatures);
  }
  for (; o < end; ++o) {
    dot_tile<kRows, 1>(a, job.weight.codes + o * in, in, sums + (o - first), kPanelFeatures);
  }
}

void dot_row_tile(const LinearInt8Job& job, const std::int8_t* a, int rows, std::int64_t first,
                  std::int64_t end, std::int32_t* sums) {
  switch (rows) {
    case 1:
      return dot_rows<1>(job, a, first, end, sums);
    case 2:
      return dot_rows<2>(job, a, first, end, sums);
    case 3:
      return dot_rows<3>(job, a, first, end, sums);
    default:
      return dot_rows<kTileRows>(job, a, first, end, sums);
  }
}

}  // namespace
}  // namespace avx512

void linear_int8_outputs_avx512_vnni(const LinearInt8Job& job, const Int8Activations& activations,
                                     std::int64_t first_out, std::int64_t end_out) {
  std::int32_t products[avx512::kTileRows * avx512::kPanelFeatures];
  for (std::int64_t n0 = first_out; n0 < end_out; n0 += avx512::kPanelFeatures) {
    const std::int64_t n1 = std::min(n0 + avx512::kPanelFeatures, end_out);
    for (std::int64_t r0 = 0; r0 < job.rows; r0 += avx512::kTileRows) {
      const int rows = static_cast<int>(std::min<std::int64_t>(avx512::kTileRows, job.rows - r0));
      avx512::dot_row_tile(job, activations.codes + r0 * job.in_features, rows, n0, n1, products);
      for (int r = 0; r < rows; ++r) {
        std::int32_t* row = products + r * avx512::kPanelFeatures;
        // In unsigned arithmetic, which wraps: C itself fits in int32 (|C| <= 127² · in).
        for (std::int64_t o = n0; o < n1; ++o) {
          const std::uint32_t shift =
              128u * static_cast<std::uint32_t>(job.weight.code_row_sums[o]);
          row[o - n0] = static_cast<std::int32_t>(static_cast<std::uint32_t>(row[o - n0]) - shift);
        }
        finish_int8_outputs(job, activations, r0 + r, n0, n1, row);
      }
    }
  }
}

}  // namespace kbit::kernels::cpu

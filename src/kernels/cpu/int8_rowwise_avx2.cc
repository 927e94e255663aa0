// AVX2 kernel of LLM.int8 row-wise quantization: the bytes of int8_rowwise_reference.cc.
// Rows have any length; each row's last vector goes through the buffered loads of simd_avx2.h.
#include <immintrin.h>

#include <cstring>
#include <limits>

#include "kernels/cpu/element_access.h"
#include "kernels/cpu/gpu_approx_math.h"
#include "kernels/cpu/int8_rowwise.h"
#include "kernels/cpu/simd_avx2.h"

namespace kbit::kernels::cpu {
namespace avx2 {
namespace {

// Loads up to 8 values of a row, rounded to f16 first (exactly, to nearest even) as bitsandbytes
// does; lanes past the row's end are 0.0.
template <typename T>
__m256 load_rounded_to_f16(const T* values, std::int64_t count) {
  const __m256 value = count >= kLanes ? load_f32(values) : load_f32_first(values, count);
  return _mm256_cvtph_ps(_mm256_cvtps_ph(value, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

float horizontal_max(__m256 values) {
  const __m128 half = _mm_max_ps(_mm256_castps256_ps128(values), _mm256_extractf128_ps(values, 1));
  const __m128 quarter = _mm_max_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_max_ss(quarter, _mm_movehdup_ps(quarter)));
}

template <typename T>
void quantize_row(const T* values, std::int64_t cols, __m256 left_out_from, std::int8_t* codes,
                  float* row_absmax) {
  // The absmax over the kept elements, which also sets the scale. A row holding a value that is
  // not finite in f16 reports NaN, but, as in the reference, its codes use the scale of the
  // others: a NaN element is not counted (the max returns its second operand when the first is
  // NaN), an Inf one is (and makes the scale 0).
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i largest_finite =
      _mm256_castps_si256(_mm256_set1_ps(std::numeric_limits<float>::max()));
  __m256i not_finite = _mm256_setzero_si256();
  __m256 absmax = _mm256_setzero_ps();
  for (std::int64_t j = 0; j < cols; j += kLanes) {
    const __m256 magnitude = _mm256_andnot_ps(sign, load_rounded_to_f16(values + j, cols - j));
    not_finite = _mm256_or_si256(
        not_finite, _mm256_cmpgt_epi32(_mm256_castps_si256(magnitude), largest_finite));
    const __m256 kept = _mm256_cmp_ps(magnitude, left_out_from, _CMP_NGE_UQ);
    absmax = _mm256_max_ps(_mm256_and_ps(magnitude, kept), absmax);
  }
  const float row_max = horizontal_max(absmax);
  *row_absmax = _mm256_testz_si256(not_finite, not_finite) == 0
                    ? std::numeric_limits<float>::quiet_NaN()
                    : row_max;
  // An all-zero row gives scale inf and 0 * inf = NaN, whose code is 0, as on the GPU.
  const __m256 scale = _mm256_set1_ps(div_approx_ftz(127.0f, row_max));  // as the reference
  for (std::int64_t j = 0; j < cols; j += kLanes) {
    const __m256 value = load_rounded_to_f16(values + j, cols - j);
    const __m256 scaled = _mm256_mul_ps(value, scale);
    const __m256 left_out = _mm256_cmp_ps(_mm256_andnot_ps(sign, value), left_out_from, _CMP_GE_OQ);
    const __m256 is_nan = _mm256_cmp_ps(scaled, scaled, _CMP_UNORD_Q);
    const __m256i rounded =
        _mm256_cvtps_epi32(_mm256_round_ps(scaled, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256i code =
        _mm256_andnot_si256(_mm256_castps_si256(_mm256_or_ps(left_out, is_nan)), rounded);
    // Codes lie in -127..127, so the saturating packs change nothing.
    const __m128i words =
        _mm_packs_epi32(_mm256_castsi256_si128(code), _mm256_extracti128_si256(code, 1));
    std::int8_t bytes[16];
    _mm_storeu_si128(reinterpret_cast<__m128i*>(bytes), _mm_packs_epi16(words, words));
    std::memcpy(codes + j, bytes, static_cast<std::size_t>(cols - j < kLanes ? cols - j : kLanes));
  }
}

template <typename T>
void quantize_rows(const Int8RowwiseJob& job, std::int64_t first_row, std::int64_t end_row) {
  const T* input = static_cast<const T*>(job.input);
  // Elements with |x| >= threshold are left out. Without a threshold none is: every comparison
  // with NaN is false.
  const __m256 left_out_from = _mm256_set1_ps(
      job.threshold > 0.0f ? job.threshold : std::numeric_limits<float>::quiet_NaN());
  for (std::int64_t row = first_row; row < end_row; ++row) {
    quantize_row(input + row * job.cols, job.cols, left_out_from, job.codes + row * job.cols,
                 job.row_absmax + row);
  }
}

}  // namespace
}  // namespace avx2

void quantize_int8_rowwise_avx2(const Int8RowwiseJob& job, std::int64_t first_row,
                                std::int64_t end_row) {
  visit_float_dtype(job.input_dtype, [&](auto type_tag) {
    avx2::quantize_rows<decltype(type_tag)>(job, first_row, end_row);
  });
}

}  // namespace kbit::kernels::cpu

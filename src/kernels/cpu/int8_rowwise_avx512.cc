// AVX-512 kernel of LLM.int8 row-wise quantization: the bytes of int8_rowwise_reference.cc.
// Rows have any length; masked loads and stores cover each row's last vector.
#include <immintrin.h>

#include <bit>
#include <limits>

#include "kernels/cpu/element_access.h"
#include "kernels/cpu/gpu_approx_math.h"
#include "kernels/cpu/int8_rowwise.h"
#include "kernels/cpu/simd_avx512.h"

namespace kbit::kernels::cpu {
namespace avx512 {
namespace {

// bitsandbytes rounds every input to f16 first (exactly, to nearest even).
template <typename T>
__m512 load_rounded_to_f16(const T* values, __mmask16 lanes) {
  return _mm512_cvtph_ps(
      _mm512_cvtps_ph(load_f32(values, lanes), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

template <typename T>
void quantize_row(const T* values, std::int64_t cols, __m512 left_out_from, std::int8_t* codes,
                  float* row_absmax) {
  // The absmax over the kept elements, which also sets the scale. A row holding a value that is
  // not finite in f16 reports NaN, but, as in the reference, its codes use the scale of the
  // others: a NaN element is not counted (the max returns its second operand when the first is
  // NaN), an Inf one is (and makes the scale 0).
  const __m512i largest_finite =
      _mm512_castps_si512(_mm512_set1_ps(std::numeric_limits<float>::max()));
  __mmask16 not_finite = 0;
  __m512 absmax = _mm512_setzero_ps();
  for (std::int64_t j = 0; j < cols; j += kLanes) {
    const __m512 magnitude = _mm512_abs_ps(load_rounded_to_f16(values + j, first_lanes(cols - j)));
    not_finite |= _mm512_cmpgt_epi32_mask(_mm512_castps_si512(magnitude), largest_finite);
    const __mmask16 kept = _mm512_cmp_ps_mask(magnitude, left_out_from, _CMP_NGE_UQ);
    absmax = _mm512_mask_max_ps(absmax, kept, magnitude, absmax);
  }
  const float row_max = _mm512_reduce_max_ps(absmax);
  *row_absmax = not_finite != 0 ? std::numeric_limits<float>::quiet_NaN() : row_max;
  // An all-zero row gives scale inf and 0 * inf = NaN, whose code is 0, as on the GPU.
  const __m512 scale = _mm512_set1_ps(div_approx_ftz(127.0f, row_max));  // as the reference
  for (std::int64_t j = 0; j < cols; j += kLanes) {
    const __mmask16 lanes = first_lanes(cols - j);
    const __m512 value = load_rounded_to_f16(values + j, lanes);
    const __m512 scaled = _mm512_mul_ps(value, scale);
    const __mmask16 left_out = _mm512_cmp_ps_mask(_mm512_abs_ps(value), left_out_from, _CMP_GE_OQ);
    const __mmask16 is_nan = _mm512_cmp_ps_mask(scaled, scaled, _CMP_UNORD_Q);
    const __m512i rounded =
        _mm512_cvt_roundps_epi32(scaled, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512i code =
        _mm512_maskz_mov_epi32(static_cast<__mmask16>(~(left_out | is_nan)), rounded);
    _mm_mask_storeu_epi8(codes + j, lanes, _mm512_cvtepi32_epi8(code));
  }
}

template <typename T>
void quantize_rows(const Int8RowwiseJob& job, std::int64_t first_row, std::int64_t end_row) {
  const T* input = static_cast<const T*>(job.input);
  // Elements with |x| >= threshold are left out. Without a threshold none is: every comparison
  // with NaN is false.
  const __m512 left_out_from = _mm512_set1_ps(
      job.threshold > 0.0f ? job.threshold : std::numeric_limits<float>::quiet_NaN());
  for (std::int64_t row = first_row; row < end_row; ++row) {
    quantize_row(input + row * job.cols, job.cols, left_out_from, job.codes + row * job.cols,
                 job.row_absmax + row);
  }
}

}  // namespace
}  // namespace avx512

void quantize_int8_rowwise_avx512(const Int8RowwiseJob& job, std::int64_t first_row,
                                  std::int64_t end_row) {
  visit_float_dtype(job.input_dtype, [&](auto type_tag) {
    avx512::quantize_rows<decltype(type_tag)>(job, first_row, end_row);
  });
}

}  // namespace kbit::kernels::cpu

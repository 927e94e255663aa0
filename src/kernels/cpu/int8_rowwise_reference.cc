// The plain definition of LLM.int8 row-wise quantization on the CPU (spec 6.1, 6.3).
#include <algorithm>
#include <cmath>
#include <limits>

#include "kbit/quant/codebooks.h"
#include "kernels/cpu/element_access.h"
#include "kernels/cpu/gpu_approx_math.h"
#include "kernels/cpu/int8_rowwise.h"

namespace kbit::kernels::cpu {
namespace {

// bitsandbytes rounds every input to f16 before quantizing.
template <typename T>
float rounded_to_f16(T value) {
  return f16_to_f32(f32_to_f16(to_f32(value)));
}

template <typename T>
void quantize_rows(const Int8RowwiseJob& job, std::int64_t first_row, std::int64_t end_row) {
  const T* input = static_cast<const T*>(job.input);
  const bool has_threshold = job.threshold > 0.0f;
  for (std::int64_t row = first_row; row < end_row; ++row) {
    const T* values = input + row * job.cols;
    std::int8_t* codes = job.codes + row * job.cols;
    float absmax = 0.0f;
    bool all_finite = true;
    for (std::int64_t j = 0; j < job.cols; ++j) {
      const float magnitude = std::fabs(rounded_to_f16(values[j]));
      all_finite = all_finite && magnitude <= std::numeric_limits<float>::max();
      if (has_threshold && magnitude >= job.threshold) continue;
      absmax = std::max(absmax, magnitude);
    }
    job.row_absmax[row] = all_finite ? absmax : std::numeric_limits<float>::quiet_NaN();
    // bitsandbytes' __fdividef(127, absmax), the GPU's approximate division (gpu_approx_math.h).
    // An all-zero row gives scale inf and 0 * inf = NaN, whose code is 0, as on the GPU.
    const float scale = div_approx_ftz(quant::kInt8CodeMax, absmax);
    for (std::int64_t j = 0; j < job.cols; ++j) {
      const float value = rounded_to_f16(values[j]);
      const float scaled = value * scale;
      const bool left_out = has_threshold && std::fabs(value) >= job.threshold;
      codes[j] = (left_out || std::isnan(scaled))
                     ? std::int8_t{0}
                     : static_cast<std::int8_t>(std::nearbyint(scaled));  // ties to even
    }
  }
}

template <typename T>
void mark_columns(const Int8RowwiseJob& job, std::uint8_t* is_outlier) {
  const T* input = static_cast<const T*>(job.input);
  for (std::int64_t row = 0; row < job.rows; ++row) {
    for (std::int64_t j = 0; j < job.cols; ++j) {
      if (std::fabs(rounded_to_f16(input[row * job.cols + j])) >= job.threshold) is_outlier[j] = 1;
    }
  }
}

template <typename T>
void dequantize_rows(const Int8DequantizeJob& job, std::int64_t first_row, std::int64_t end_row) {
  T* output = static_cast<T*>(job.output);
  for (std::int64_t row = first_row; row < end_row; ++row) {
    for (std::int64_t j = 0; j < job.cols; ++j) {
      const std::int64_t i = row * job.cols + j;
      const float scaled = static_cast<float>(job.codes[i]) * job.row_absmax[row];
      output[i] = from_f32<T>(scaled * quant::kInt8DequantScale);
    }
  }
}

}  // namespace

void quantize_int8_rowwise_reference(const Int8RowwiseJob& job, std::int64_t first_row,
                                     std::int64_t end_row) {
  visit_float_dtype(job.input_dtype, [&](auto type_tag) {
    quantize_rows<decltype(type_tag)>(job, first_row, end_row);
  });
}

void mark_outlier_columns(const Int8RowwiseJob& job, std::uint8_t* is_outlier) {
  visit_float_dtype(job.input_dtype,
                    [&](auto type_tag) { mark_columns<decltype(type_tag)>(job, is_outlier); });
}

void dequantize_int8_rowwise_reference(const Int8DequantizeJob& job, std::int64_t first_row,
                                       std::int64_t end_row) {
  visit_float_dtype(job.output_dtype, [&](auto type_tag) {
    dequantize_rows<decltype(type_tag)>(job, first_row, end_row);
  });
}

}  // namespace kbit::kernels::cpu

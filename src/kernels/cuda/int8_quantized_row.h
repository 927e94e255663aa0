// One row of activations quantized as LLM.int8 quantizes it (spec 6.1; the arithmetic of
// int8_rowwise_parts.cuh), in the form the one-row int8 GEMV reads. add_rms_norm writes it beside
// the normed row (llama_launchers.h) and linear_int8_layers reads it (linear_launchers.h), so
// that the blocks of a decode step's q/k/v and gate/up launches do not each quantize the row again.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kbit::kernels::cuda {

// The longest row add_rms_norm quantizes: it holds the row in registers, 8 values per thread.
inline constexpr std::int64_t kMaxInt8QuantizedNormCols = 8192;

// Device pointers into one buffer (int8_quantized_row_in); `in` is a multiple of 16.
struct Int8QuantizedRow {
  std::int8_t* codes;           // [in]: round(x · 127 / absmax); 0 in outlier columns
  std::uint16_t* outlier_bits;  // [in / 16]: bit c of word v set where column 16 v + c is one
  float* absmax;                // [1]: SCA as stored, NaN where any value is not finite
  std::int32_t* has_outliers;   // [1]: 1 where any column is an outlier, else 0
};

// Where the absmax lies in the buffer of a row of `in` inputs: after the codes and the outlier
// bits, 4-byte aligned.
inline std::size_t int8_quantized_row_scalars_offset(std::int64_t in) {
  const auto codes = static_cast<std::size_t>(in);
  return (codes + codes / 8 + 3) / 4 * 4;
}

// Bytes of the buffer for a row of `in` inputs (a multiple of 16).
inline std::size_t int8_quantized_row_bytes(std::int64_t in) {
  return int8_quantized_row_scalars_offset(in) + 2 * sizeof(std::int32_t);
}

// The parts of a row of `in` inputs (a multiple of 16) in `buffer` (16-byte aligned,
// int8_quantized_row_bytes(in) bytes): the codes first, so that they are 16-byte aligned.
inline Int8QuantizedRow int8_quantized_row_in(void* buffer, std::int64_t in) {
  auto* bytes = static_cast<std::byte*>(buffer);
  const auto codes = static_cast<std::size_t>(in);
  std::byte* scalars = bytes + int8_quantized_row_scalars_offset(in);
  return {reinterpret_cast<std::int8_t*>(bytes), reinterpret_cast<std::uint16_t*>(bytes + codes),
          reinterpret_cast<float*>(scalars), reinterpret_cast<std::int32_t*>(scalars + 4)};
}

}  // namespace kbit::kernels::cuda

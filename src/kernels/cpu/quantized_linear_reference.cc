// The plain definitions of the quantized Linear kernels (quantized_linear.h), one scalar loop
// each, and the steps the fast kernels share with them (quantized_linear_parts.h).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kbit/quant/codebooks.h"
#include "kbit/quant/nested_absmax.h"
#include "kernels/cpu/element_access.h"
#include "kernels/cpu/quantized_linear.h"
#include "kernels/cpu/quantized_linear_parts.h"

namespace kbit::kernels::cpu {

float rounded_to(DType dtype, float value) {
  float rounded = value;
  visit_float_dtype(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    rounded = to_f32(from_f32<T>(value));
  });
  return rounded;
}

// ---- linear_4bit -------------------------------------------------------------------------------

bool is_supported_4bit_layout(std::int64_t in_features, std::int64_t block_size) {
  return quant::is_valid_4bit_block_size(block_size) && in_features > 0 && in_features % 2 == 0 &&
         (in_features % block_size == 0 || block_size % in_features == 0);
}

const float* four_bit_code_values(quant::FourBitType type) {
  return type == quant::FourBitType::kNf4 ? quant::kNf4Values.data() : quant::kFp4Values.data();
}

void decode_4bit_absmax(const FourBitWeight& weight, std::int64_t first_block,
                        std::int64_t end_block, float* absmax) {
  if (weight.absmax != nullptr) {
    std::copy(weight.absmax + first_block, weight.absmax + end_block, absmax);
    return;
  }
  for (std::int64_t b = first_block; b < end_block; ++b) {
    const float scaled = quant::kDynamicSignedMap[weight.absmax_codes[b]] *
                         weight.nested_absmax[b / quant::kNestedBlockSize];
    absmax[b - first_block] = scaled + weight.nested_offset;
  }
}

void finish_4bit_outputs(const Linear4bitJob& job, std::int64_t first_out, std::int64_t end_out) {
  for (std::int64_t r = 0; r < job.rows; ++r) {
    float* y = job.y + r * job.out_features;
    for (std::int64_t o = first_out; o < end_out; ++o) {
      const float bias = job.bias != nullptr ? rounded_to(job.compute_dtype, job.bias[o]) : 0.0f;
      y[o] = rounded_to(job.compute_dtype, y[o] + bias);
    }
  }
}

bool takes_4bit_product_decode(FourBitDecode decode, std::int64_t rows, DType compute_dtype) {
  return decode == FourBitDecode::kBitsandbytes && rows <= kFourBitProductDecodeMaxRows &&
         (compute_dtype == DType::kF16 || compute_dtype == DType::kBF16);
}

void linear_4bit_reference(const Linear4bitJob& job, std::int64_t first_out, std::int64_t end_out) {
  const FourBitWeight& weight = job.weight;
  const DType compute = job.compute_dtype;
  const bool product = takes_4bit_product_decode(job.decode, job.rows, compute);
  const std::int64_t in = job.in_features;
  const float* code_values = four_bit_code_values(weight.type);
  std::vector<float> x(static_cast<std::size_t>(job.rows * in));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = rounded_to(job.compute_dtype, job.x[i]);
  std::vector<float> w(static_cast<std::size_t>(in));
  for (std::int64_t o = first_out; o < end_out; ++o) {
    // Row o of the weight as the matmul sees it: dequantized, then cast to the compute dtype.
    for (std::int64_t i = 0; i < in; ++i) {
      const std::int64_t index = o * in + i;
      float absmax;
      decode_4bit_absmax(weight, index / weight.block_size, index / weight.block_size + 1, &absmax);
      // A product of two values of C is exact in f32: one rounding, as C's own multiply.
      const float value =
          product ? rounded_to(compute, code_values[four_bit_code(weight.packed, index)]) *
                        rounded_to(compute, absmax)
                  : dequantized_4bit_value(weight, code_values, index, absmax);
      w[static_cast<std::size_t>(i)] = rounded_to(compute, value);
    }
    for (std::int64_t r = 0; r < job.rows; ++r) {
      float sum = 0.0f;
      for (std::int64_t i = 0; i < in; ++i) {
        sum += x[static_cast<std::size_t>(r * in + i)] * w[static_cast<std::size_t>(i)];
      }
      job.y[r * job.out_features + o] = sum;
    }
  }
  finish_4bit_outputs(job, first_out, end_out);
}

// ---- linear_int8 -------------------------------------------------------------------------------

void int8_code_row_sums(const std::int8_t* codes, std::int64_t out_features,
                        std::int64_t in_features, std::int32_t* row_sums) {
  for (std::int64_t o = 0; o < out_features; ++o) {
    std::int32_t sum = 0;
    for (std::int64_t i = 0; i < in_features; ++i) sum += codes[o * in_features + i];
    row_sums[o] = sum;
  }
}

void finish_int8_outputs(const LinearInt8Job& job, const Int8Activations& activations,
                         std::int64_t row, std::int64_t first_out, std::int64_t end_out,
                         const std::int32_t* products) {
  const float row_absmax = activations.row_absmax[row];
  const float* x = job.x + row * job.in_features;
  const bool f16_bias = job.bias != nullptr && job.bias_dtype == DType::kF16;
  for (std::int64_t o = first_out; o < end_out; ++o) {
    const float weight_absmax = job.weight.row_absmax[o];
    // Step 6: bitsandbytes' kdequant_mm_int32_fp16; a bias of another dtype is added after it
    // by an in-place f16 add (computed in f32).
    const float scaled = static_cast<float>(products[o - first_out]) * row_absmax * weight_absmax;
    float y = rounded_to(DType::kF16, std::fmaf(scaled, quant::kInt8MatmulDequantScale,
                                                f16_bias ? job.bias[o] : 0.0f));
    if (job.bias != nullptr && !f16_bias) y = rounded_to(DType::kF16, y + job.bias[o]);
    y = rounded_to(job.activation_dtype, y);
    // Step 7: the outlier columns in X's dtype against the int8-dequantized weight.
    if (activations.outlier_count > 0) {
      const std::int8_t* codes = job.weight.codes + o * job.in_features;
      float sum = 0.0f;
      for (std::int64_t c = 0; c < activations.outlier_count; ++c) {
        const std::int64_t j = activations.outlier_columns[c];
        const float w = static_cast<float>(codes[j]) * weight_absmax * quant::kInt8DequantScale;
        sum += x[j] * rounded_to(job.activation_dtype, w);
      }
      y = rounded_to(job.activation_dtype, y + sum);
    }
    job.y[row * job.out_features + o] = y;
  }
}

void linear_int8_outputs_reference(const LinearInt8Job& job, const Int8Activations& activations,
                                   std::int64_t first_out, std::int64_t end_out) {
  std::vector<std::int32_t> products(static_cast<std::size_t>(end_out - first_out));
  for (std::int64_t r = 0; r < job.rows; ++r) {
    const std::int8_t* a = activations.codes + r * job.in_features;
    for (std::int64_t o = first_out; o < end_out; ++o) {
      const std::int8_t* w = job.weight.codes + o * job.in_features;
      std::int32_t sum = 0;  // exact: |sum| <= 127² · in_features
      for (std::int64_t i = 0; i < job.in_features; ++i) sum += a[i] * w[i];
      products[static_cast<std::size_t>(o - first_out)] = sum;
    }
    finish_int8_outputs(job, activations, r, first_out, end_out, products.data());
  }
}

void linear_int8_reference(const LinearInt8Job& job) {
  ExecutionOptions reference;
  reference.cpu_kernel = CpuKernel::kReference;
  Int8ActivationBuffers buffers;
  const Int8Activations activations = quantize_int8_activations(job, reference, buffers);
  linear_int8_outputs_reference(job, activations, 0, job.out_features);
}

}  // namespace kbit::kernels::cpu

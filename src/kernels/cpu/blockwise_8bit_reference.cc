// The plain definition of 8-bit dynamic blockwise quantization on the CPU (spec 5.3-5.4).
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/code_rules.h"
#include "kernels/cpu/blockwise_8bit.h"
#include "kernels/cpu/element_access.h"
#include "kernels/cpu/gpu_approx_math.h"

namespace kbit::kernels::cpu {
namespace {

template <typename T>
void quantize_blocks(const Quantize8bitJob& job, std::int64_t first_block, std::int64_t end_block) {
  const T* input = static_cast<const T*>(job.input);
  for (std::int64_t block = first_block; block < end_block; ++block) {
    const std::int64_t begin = block * job.block_size;
    const std::int64_t end = std::min(begin + job.block_size, job.n);
    float absmax = 0.0f;
    for (std::int64_t i = begin; i < end; ++i) {
      const float magnitude = std::fabs(to_f32(input[i]));
      if (!(magnitude <= std::numeric_limits<float>::max())) {
        absmax = std::numeric_limits<float>::quiet_NaN();
        break;
      }
      absmax = std::max(absmax, magnitude);
    }
    job.absmax[block] = absmax;
    // Multiply by the GPU's approximate reciprocal, as bitsandbytes does (gpu_approx_math.h).
    const float reciprocal = rcp_approx_ftz(absmax);
    for (std::int64_t i = begin; i < end; ++i) {
      job.codes[i] = search_dynamic_map(to_f32(input[i]) * reciprocal, job.map);
    }
  }
}

template <typename T>
void dequantize_blocks(const Dequantize8bitJob& job, std::int64_t first_block,
                       std::int64_t end_block) {
  T* output = static_cast<T*>(job.output);
  for (std::int64_t block = first_block; block < end_block; ++block) {
    const std::int64_t begin = block * job.block_size;
    const std::int64_t end = std::min(begin + job.block_size, job.n);
    for (std::int64_t i = begin; i < end; ++i) {
      output[i] = from_f32<T>(job.map[job.codes[i]] * job.absmax[block]);
    }
  }
}

}  // namespace

void quantize_8bit_reference(const Quantize8bitJob& job, std::int64_t first_block,
                             std::int64_t end_block) {
  visit_float_dtype(job.input_dtype, [&](auto type_tag) {
    quantize_blocks<decltype(type_tag)>(job, first_block, end_block);
  });
}

void dequantize_8bit_reference(const Dequantize8bitJob& job, std::int64_t first_block,
                               std::int64_t end_block) {
  visit_float_dtype(job.output_dtype, [&](auto type_tag) {
    dequantize_blocks<decltype(type_tag)>(job, first_block, end_block);
  });
}

}  // namespace kbit::kernels::cpu

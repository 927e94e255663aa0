// The plain definition of NF4/FP4 blockwise quantization on the CPU (spec 2.2-2.8).
#include <algorithm>
#include <cmath>
#include <limits>

#include "kbit/quant/codebooks.h"
#include "kernels/code_rules.h"
#include "kernels/cpu/blockwise_4bit.h"
#include "kernels/cpu/element_access.h"
#include "kernels/cpu/gpu_approx_math.h"

namespace kbit::kernels::cpu {
namespace {

// Largest |x| of the block; NaN if the block holds NaN or Inf, so the caller can report it.
template <typename T>
float block_absmax(const T* values, std::int64_t count) {
  float absmax = 0.0f;
  for (std::int64_t i = 0; i < count; ++i) {
    const float magnitude = std::fabs(to_f32(values[i]));
    if (!(magnitude <= std::numeric_limits<float>::max())) {
      return std::numeric_limits<float>::quiet_NaN();
    }
    absmax = std::max(absmax, magnitude);
  }
  return absmax;
}

template <typename T>
void quantize_blocks(const Quantize4bitJob& job, std::int64_t first_block, std::int64_t end_block) {
  const T* input = static_cast<const T*>(job.input);
  const FourBitEncodeTables tables = four_bit_encode_tables();
  for (std::int64_t block = first_block; block < end_block; ++block) {
    const std::int64_t begin = block * job.block_size;
    const std::int64_t end = std::min(begin + job.block_size, job.n);
    const float absmax = block_absmax(input + begin, end - begin);
    job.absmax[block] = absmax;
    // bitsandbytes multiplies by the GPU's approximate reciprocal (gpu_approx_math.h); an
    // all-zero block gives 0 * inf = NaN, which encodes as code 0, as on the GPU.
    const float reciprocal = rcp_approx_ftz(absmax);
    // Blocks hold an even number of values, except a last block of odd length, whose final
    // byte pairs the last value with a padding 0.0.
    for (std::int64_t i = begin; i < end; i += 2) {
      const float high = to_f32(input[i]) * reciprocal;
      const float low = (i + 1 < end ? to_f32(input[i + 1]) : 0.0f) * reciprocal;
      job.packed[i / 2] = static_cast<std::uint8_t>(encode_4bit(high, job.type, tables) << 4 |
                                                    encode_4bit(low, job.type, tables));
    }
  }
}

template <typename T>
void dequantize_blocks(const Dequantize4bitJob& job, std::int64_t first_block,
                       std::int64_t end_block) {
  const auto& table = job.type == quant::FourBitType::kNf4 ? quant::kNf4Values : quant::kFp4Values;
  T* output = static_cast<T*>(job.output);
  for (std::int64_t block = first_block; block < end_block; ++block) {
    const std::int64_t begin = block * job.block_size;
    const std::int64_t end = std::min(begin + job.block_size, job.n);
    const float absmax = job.absmax[block];
    for (std::int64_t i = begin; i < end; ++i) {
      const std::uint8_t byte = job.packed[i / 2];
      const int code = (i % 2 == 0) ? byte >> 4 : byte & 0x0f;
      output[i] = from_f32<T>(table[static_cast<std::size_t>(code)] * absmax);
    }
  }
}

}  // namespace

void quantize_4bit_reference(const Quantize4bitJob& job, std::int64_t first_block,
                             std::int64_t end_block) {
  visit_float_dtype(job.input_dtype, [&](auto type_tag) {
    quantize_blocks<decltype(type_tag)>(job, first_block, end_block);
  });
}

void dequantize_4bit_reference(const Dequantize4bitJob& job, std::int64_t first_block,
                               std::int64_t end_block) {
  visit_float_dtype(job.output_dtype, [&](auto type_tag) {
    dequantize_blocks<decltype(type_tag)>(job, first_block, end_block);
  });
}

}  // namespace kbit::kernels::cpu

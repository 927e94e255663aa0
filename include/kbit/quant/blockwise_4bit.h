// NF4 and FP4 blockwise quantization, byte-compatible with bitsandbytes (spec sections 1-2).
//
// The input is flattened row-major into n values and cut into blocks of `block_size`
// consecutive values (the last block may be partial; blocks may straddle rows). Per block:
//   absmax[b] = max |x| over the block                     (float32)
//   code[i]   = nearest 4-bit code of x[i] * (1 / absmax[b]), by bitsandbytes' decision rules
//   packed[k] = code[2k] << 4 | code[2k + 1]               (first value in the high nibble)
// With odd n, the low nibble of the last byte encodes a padding value 0.0.
// Dequantization: y[i] = value(code[i]) * absmax[b], rounded to the output dtype.
//
// Every function works on the device its tensors live on (all must share one). Results equal
// bitsandbytes' CUDA kernels bit for bit on either device: `1 / absmax` is the GPU's approximate
// reciprocal (rcp.approx.ftz.f32), which the CPU reproduces exactly, so values lying exactly on a
// code boundary get bitsandbytes' codes too. Not yet on the CPU: the GPU's flushing of subnormal
// values (docs/formats.md).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "kbit/core/execution.h"
#include "kbit/core/status.h"
#include "kbit/core/tensor.h"

namespace kbit::quant {

enum class FourBitType { kNf4, kFp4 };

// "nf4" / "fp4".
std::string_view four_bit_type_name(FourBitType type);
std::optional<FourBitType> parse_four_bit_type(std::string_view name);

// True for 32, 64, 128, ..., 4096.
bool is_valid_4bit_block_size(std::int64_t block_size);

// Number of blocks: ceil(n / block_size).
std::int64_t block_count(std::int64_t n, std::int64_t block_size);
// Bytes of packed codes: ceil(n / 2).
std::int64_t packed_4bit_bytes(std::int64_t n);

// Requires: input f32, f16 or bf16, contiguous, 1 <= n, all values finite;
//           packed u8 with ceil(n/2) elements; absmax f32 with ceil(n/block_size) elements;
//           both contiguous, any shape (bitsandbytes stores packed as [ceil(n/2), 1]).
// Writes packed and absmax. Fails with kInvalidArgument naming the first non-finite value (the
// outputs are then unspecified), or a wrong size, dtype, block size or device.
// CUDA: queued on options.stream; returns after the finiteness check, which waits for it.
Status quantize_4bit(const TensorView& input, FourBitType type, std::int64_t block_size,
                     TensorView packed, TensorView absmax, const ExecutionOptions& options = {});

// Requires: packed u8 with ceil(n/2) elements, absmax f32 with ceil(n/block_size) elements,
//           output f32, f16 or bf16 with n >= 1 elements; all contiguous on one device.
// Writes output. CUDA: queued on options.stream, not waited for.
Status dequantize_4bit(const TensorView& packed, const TensorView& absmax, FourBitType type,
                       std::int64_t block_size, TensorView output,
                       const ExecutionOptions& options = {});

}  // namespace kbit::quant

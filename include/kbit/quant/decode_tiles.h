// kbit's decode-tile layout of a 4-bit weight W [out, in] with blocks of 64 values: the packed
// bytes and absmax of bitsandbytes' layout (blockwise_4bit.h, nested_absmax.h), reordered so that
// each 16-byte load of the tensor-core GEMV's warps reads whole lines. In bitsandbytes' layout a
// warp's load touches 8 rows, 64 bytes of each, and the GEMV is bound by its L1 wavefronts
// (BENCHMARKS.md, "A tiled weight layout for the 4-bit decode GEMV").
//
// Tile T holds rows 16T … 16T + 15, step s inputs 256s … 256s + 255, S = in / 256 steps a row.
// Lane L = 4g + t of a warp takes rows 16T + g + 8h (h = 0, 1) at inputs 256s + 64t + 32c … + 32
// (c = 0, 1), as the m16n8k16 MMA's A fragment wants them:
//   the 16 code bytes of row r, inputs [32k, 32k + 32)  (k = 8s + 2t + c)
//       lie at byte ((T·S + s)·4 + 2c + h)·512 + 16L,
//   the absmax of row r, inputs [64q, 64q + 64)          (q = 4s + t)
//       lies at element ((T·S + s)·2 + h)·32 + L,
// where T = r / 16, g = r % 8, h = r % 16 / 8. The absmax is the float32 value, or for a nested
// absmax its 8-bit code (the nested absmax of 256 codes keeps bitsandbytes' order: group b / 256
// of the block's index b = r · in / 64 + q there). Sizes are those of bitsandbytes' layout.
#pragma once

#include <cstdint>

#include "kbit/core/execution.h"
#include "kbit/core/status.h"
#include "kbit/core/tensor.h"

namespace kbit::quant {

// Where a 4-bit weight's codes and absmax lie: bitsandbytes' order, or the decode tiles.
enum class FourBitLayout { kBitsandbytes, kDecodeTiles };

inline constexpr std::int64_t kDecodeTileRows = 16;
inline constexpr std::int64_t kDecodeTileStepInputs = 256;
inline constexpr std::int64_t kDecodeTileBlockSize = 64;

// True where a weight [out, in] quantized in blocks of block_size can take the layout.
constexpr bool decode_tiles_apply(std::int64_t out, std::int64_t in, std::int64_t block_size) {
  return block_size == kDecodeTileBlockSize && out > 0 && in > 0 && out % kDecodeTileRows == 0 &&
         in % kDecodeTileStepInputs == 0;
}

// The byte offset of row `row`'s 16 code bytes at inputs [32 · chunk, 32 · chunk + 32).
constexpr std::int64_t decode_tile_code_offset(std::int64_t in, std::int64_t row,
                                               std::int64_t chunk) {
  const std::int64_t steps = in / kDecodeTileStepInputs;
  const std::int64_t step = chunk / 8;
  const std::int64_t quad = chunk % 8 / 2;
  const std::int64_t half = chunk % 2;
  const std::int64_t lane = 4 * (row % 8) + quad;
  const std::int64_t load = 2 * half + row % 16 / 8;
  return ((row / kDecodeTileRows * steps + step) * 4 + load) * 512 + 16 * lane;
}

// The element index of row `row`'s absmax at inputs [64 · block, 64 · block + 64).
constexpr std::int64_t decode_tile_absmax_index(std::int64_t in, std::int64_t row,
                                                std::int64_t block) {
  const std::int64_t steps = in / kDecodeTileStepInputs;
  const std::int64_t lane = 4 * (row % 8) + block % 4;
  return ((row / kDecodeTileRows * steps + block / 4) * 2 + row % 16 / 8) * 32 + lane;
}

// Requires decode_tiles_apply(out, in, 64); packed and tiled_packed u8 with out · in / 2
// elements; absmax and tiled_absmax both f32 (plain) or both u8 (a nested absmax's codes) with
// out · in / 64 elements; all contiguous on one device; the outputs apart from the inputs.
// Writes tiled_packed and tiled_absmax. CUDA: queued on options.stream, not waited for.
Status tile_4bit_for_decode(const TensorView& packed, const TensorView& absmax, std::int64_t out,
                            std::int64_t in, TensorView tiled_packed, TensorView tiled_absmax,
                            const ExecutionOptions& options = {});

// The inverse: bitsandbytes' layout from the decode-tile one, with the same requirements.
Status untile_4bit_for_decode(const TensorView& tiled_packed, const TensorView& tiled_absmax,
                              std::int64_t out, std::int64_t in, TensorView packed,
                              TensorView absmax, const ExecutionOptions& options = {});

}  // namespace kbit::quant

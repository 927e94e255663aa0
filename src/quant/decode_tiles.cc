#include "kbit/quant/decode_tiles.h"

#include <cstring>
#include <string>

#include "core/cuda_runtime.h"
#include "quant/checks.h"
#if defined(KBIT_WITH_CUDA)
#include "kernels/cuda/quant_launchers.h"
#endif

namespace kbit::quant {
namespace {

enum class Direction { kTile, kUntile };

Status check_decode_tile_call(const TensorView& packed, const TensorView& absmax, std::int64_t out,
                              std::int64_t in, const TensorView& packed_out,
                              const TensorView& absmax_out) {
  if (!decode_tiles_apply(out, in, kDecodeTileBlockSize)) {
    return invalid_argument("a weight [" + std::to_string(out) + ", " + std::to_string(in) +
                            "] cannot take the decode-tile layout: it needs out a multiple of " +
                            std::to_string(kDecodeTileRows) + ", in a multiple of " +
                            std::to_string(kDecodeTileStepInputs) + " and blocks of " +
                            std::to_string(kDecodeTileBlockSize));
  }
  const std::int64_t bytes = out * in / 2;
  const std::int64_t blocks = out * in / kDecodeTileBlockSize;
  KBIT_RETURN_IF_ERROR(check_tensor(packed, "packed 4-bit codes", {DType::kU8}, bytes));
  KBIT_RETURN_IF_ERROR(check_tensor(packed_out, "output packed 4-bit codes", {DType::kU8}, bytes));
  KBIT_RETURN_IF_ERROR(check_tensor(absmax, "absmax", {DType::kF32, DType::kU8}, blocks));
  KBIT_RETURN_IF_ERROR(check_tensor(absmax_out, "output absmax", {absmax.dtype()}, blocks));
  KBIT_RETURN_IF_ERROR(check_same_device({&packed, &absmax, &packed_out, &absmax_out}));
  KBIT_RETURN_IF_ERROR(check_device_supported(packed));
  if (packed.data() == packed_out.data() || absmax.data() == absmax_out.data()) {
    return invalid_argument(
        "the decode-tile layout is written apart from its input: give "
        "output tensors of their own");
  }
  return ok_status();
}

// Both directions on the host: each 16-byte chunk of codes and each absmax element moves once.
void permute_on_host(const TensorView& packed, const TensorView& absmax, std::int64_t out,
                     std::int64_t in, TensorView packed_out, TensorView absmax_out,
                     Direction direction) {
  const auto* from_codes = packed.data_as<std::uint8_t>();
  auto* to_codes = packed_out.data_as<std::uint8_t>();
  const auto* from_absmax = static_cast<const std::uint8_t*>(absmax.data());
  auto* to_absmax = static_cast<std::uint8_t*>(absmax_out.data());
  const std::size_t element = dtype_size(absmax.dtype());
  const std::int64_t chunks = in / 32;
  const std::int64_t blocks = in / kDecodeTileBlockSize;
  const bool tile = direction == Direction::kTile;
  for (std::int64_t row = 0; row < out; ++row) {
    for (std::int64_t chunk = 0; chunk < chunks; ++chunk) {
      const std::int64_t plain = (row * in + 32 * chunk) / 2;
      const std::int64_t tiled = decode_tile_code_offset(in, row, chunk);
      std::memcpy(to_codes + (tile ? tiled : plain), from_codes + (tile ? plain : tiled), 16);
    }
    for (std::int64_t block = 0; block < blocks; ++block) {
      const std::int64_t plain = row * blocks + block;
      const std::int64_t tiled = decode_tile_absmax_index(in, row, block);
      std::memcpy(to_absmax + (tile ? tiled : plain) * element,
                  from_absmax + (tile ? plain : tiled) * element, element);
    }
  }
}

Status permute(const TensorView& packed, const TensorView& absmax, std::int64_t out,
               std::int64_t in, TensorView packed_out, TensorView absmax_out, Direction direction,
               const ExecutionOptions& options) {
  KBIT_RETURN_IF_ERROR(check_decode_tile_call(packed, absmax, out, in, packed_out, absmax_out));
  if (packed.device().is_cpu()) {
    permute_on_host(packed, absmax, out, in, packed_out, absmax_out, direction);
    return ok_status();
  }
#if defined(KBIT_WITH_CUDA)
  return detail::status_from_cuda_error(
      kernels::cuda::permute_4bit_decode_tiles(
          packed.data_as<std::uint8_t>(), absmax.data(), dtype_size(absmax.dtype()), out, in,
          packed_out.data_as<std::uint8_t>(), absmax_out.data(), direction == Direction::kTile,
          static_cast<cudaStream_t>(options.stream.handle)),
      direction == Direction::kTile ? "tile_4bit_for_decode" : "untile_4bit_for_decode");
#else
  (void)options;
  return internal_error("unreachable: CUDA tensor in a build without CUDA");
#endif
}

}  // namespace

Status tile_4bit_for_decode(const TensorView& packed, const TensorView& absmax, std::int64_t out,
                            std::int64_t in, TensorView tiled_packed, TensorView tiled_absmax,
                            const ExecutionOptions& options) {
  return permute(packed, absmax, out, in, tiled_packed, tiled_absmax, Direction::kTile, options);
}

Status untile_4bit_for_decode(const TensorView& tiled_packed, const TensorView& tiled_absmax,
                              std::int64_t out, std::int64_t in, TensorView packed,
                              TensorView absmax, const ExecutionOptions& options) {
  return permute(tiled_packed, tiled_absmax, out, in, packed, absmax, Direction::kUntile, options);
}

}  // namespace kbit::quant

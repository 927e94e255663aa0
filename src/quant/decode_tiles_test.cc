// The decode-tile layout on the host: every byte lands where the tensor-core GEMV's lanes read
// it (written here from the warp's side, independently of the index functions), and untiling
// gives the bitsandbytes layout back.
#include "kbit/quant/decode_tiles.h"

#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "kbit/core/random.h"

namespace kbit::quant {
namespace {

Tensor random_bytes(std::int64_t n, DType dtype, std::uint64_t seed) {
  Tensor tensor = Tensor::empty(Shape{n}, dtype).value();
  auto* bytes = static_cast<std::uint8_t*>(tensor.view().data());
  for (std::size_t i = 0; i < tensor.view().nbytes(); ++i) {
    bytes[i] = static_cast<std::uint8_t>(random_bits(seed, i));
  }
  return tensor;
}

Tensor poisoned_like(const Tensor& like) {
  Tensor tensor = Tensor::empty(like.view().shape(), like.view().dtype()).value();
  std::memset(tensor.view().data(), 0xab, tensor.view().nbytes());
  return tensor;
}

std::vector<std::uint8_t> bytes_of(const Tensor& tensor) {
  const auto* data = static_cast<const std::uint8_t*>(tensor.view().data());
  return {data, data + tensor.view().nbytes()};
}

// The layout as the warps read it: for each tile, step, lane (g, t) and load j (chunk c = j / 2
// of row g + 8 · (j % 2)), the next 16 bytes; then each step's absmax, lane by lane.
struct WarpOrder {
  std::vector<std::uint8_t> codes;
  std::vector<std::uint8_t> absmax;
};
WarpOrder warp_order(const Tensor& packed, const Tensor& absmax, std::int64_t out,
                     std::int64_t in) {
  const auto* codes = static_cast<const std::uint8_t*>(packed.view().data());
  const auto* scales = static_cast<const std::uint8_t*>(absmax.view().data());
  const std::size_t element = dtype_size(absmax.view().dtype());
  WarpOrder order;
  for (std::int64_t tile = 0; tile < out / 16; ++tile) {
    for (std::int64_t step = 0; step < in / 256; ++step) {
      for (int j = 0; j < 4; ++j) {
        for (int lane = 0; lane < 32; ++lane) {
          const std::int64_t row = 16 * tile + lane / 4 + 8 * (j % 2);
          const std::int64_t first = (row * in + 256 * step + 64 * (lane % 4) + 32 * (j / 2)) / 2;
          order.codes.insert(order.codes.end(), codes + first, codes + first + 16);
        }
      }
      for (int high = 0; high < 2; ++high) {
        for (int lane = 0; lane < 32; ++lane) {
          const std::int64_t row = 16 * tile + lane / 4 + 8 * high;
          const std::int64_t block = row * (in / 64) + 4 * step + lane % 4;
          const std::uint8_t* value = scales + block * static_cast<std::int64_t>(element);
          order.absmax.insert(order.absmax.end(), value, value + element);
        }
      }
    }
  }
  return order;
}

TEST(DecodeTiles, PutEachByteWhereTheWarpsReadIt) {
  struct WeightShape {
    std::int64_t out, in;
  };
  std::uint64_t seed = 7;
  for (const WeightShape shape :
       {WeightShape{16, 256}, WeightShape{48, 768}, WeightShape{32, 1280}}) {
    for (const DType absmax_dtype : {DType::kF32, DType::kU8}) {
      SCOPED_TRACE(std::to_string(shape.out) + " x " + std::to_string(shape.in) + ", absmax " +
                   std::string(dtype_name(absmax_dtype)));
      const Tensor packed = random_bytes(shape.out * shape.in / 2, DType::kU8, seed++);
      const Tensor absmax = random_bytes(shape.out * shape.in / 64, absmax_dtype, seed++);
      Tensor tiled_packed = poisoned_like(packed);
      Tensor tiled_absmax = poisoned_like(absmax);
      ASSERT_TRUE(tile_4bit_for_decode(packed.view(), absmax.view(), shape.out, shape.in,
                                       tiled_packed.view(), tiled_absmax.view())
                      .ok());
      const WarpOrder expected = warp_order(packed, absmax, shape.out, shape.in);
      EXPECT_EQ(bytes_of(tiled_packed), expected.codes);
      EXPECT_EQ(bytes_of(tiled_absmax), expected.absmax);

      Tensor back_packed = poisoned_like(packed);
      Tensor back_absmax = poisoned_like(absmax);
      ASSERT_TRUE(untile_4bit_for_decode(tiled_packed.view(), tiled_absmax.view(), shape.out,
                                         shape.in, back_packed.view(), back_absmax.view())
                      .ok());
      EXPECT_EQ(bytes_of(back_packed), bytes_of(packed));
      EXPECT_EQ(bytes_of(back_absmax), bytes_of(absmax));
    }
  }
}

TEST(DecodeTiles, ApplyToTheLlamaShapesOnly) {
  EXPECT_TRUE(decode_tiles_apply(4096, 4096, 64));
  EXPECT_TRUE(decode_tiles_apply(4096, 14336, 64));
  EXPECT_TRUE(decode_tiles_apply(1024, 8192, 64));
  EXPECT_FALSE(decode_tiles_apply(4096, 4096, 128));  // another block size
  EXPECT_FALSE(decode_tiles_apply(4100, 4096, 64));   // out not a multiple of 16
  EXPECT_FALSE(decode_tiles_apply(4096, 4160, 64));   // in not a multiple of 256
  EXPECT_FALSE(decode_tiles_apply(0, 4096, 64));
}

TEST(DecodeTiles, RejectBadCalls) {
  const Tensor packed = random_bytes(16 * 256 / 2, DType::kU8, 1);
  const Tensor absmax = random_bytes(16 * 256 / 64, DType::kF32, 2);
  Tensor tiled_packed = poisoned_like(packed);
  Tensor tiled_absmax = poisoned_like(absmax);
  const auto tile = [&](std::int64_t out, std::int64_t in, const TensorView& codes_out,
                        const TensorView& absmax_out) {
    return tile_4bit_for_decode(packed.view(), absmax.view(), out, in, codes_out, absmax_out)
        .code();
  };
  EXPECT_EQ(tile(16, 256, tiled_packed.view(), tiled_absmax.view()), StatusCode::kOk);
  EXPECT_EQ(tile(8, 512, tiled_packed.view(), tiled_absmax.view()),
            StatusCode::kInvalidArgument);  // same sizes, but out is not a multiple of 16
  EXPECT_EQ(tile(32, 256, tiled_packed.view(), tiled_absmax.view()),
            StatusCode::kInvalidArgument);  // sizes of another shape
  const Tensor codes = random_bytes(16 * 256 / 64, DType::kU8, 3);
  EXPECT_EQ(tile(16, 256, tiled_packed.view(), codes.view()),
            StatusCode::kInvalidArgument);  // absmax dtypes differ
  EXPECT_EQ(tile(16, 256, packed.view(), tiled_absmax.view()),
            StatusCode::kInvalidArgument);  // in place
}

}  // namespace
}  // namespace kbit::quant

#include "kbit/quant/blockwise_4bit.h"

#include <gtest/gtest.h>

namespace kbit::quant {
namespace {

TEST(Blockwise4bitTest, BlockSizes) {
  for (std::int64_t size : {32, 64, 128, 256, 512, 1024, 2048, 4096}) {
    EXPECT_TRUE(is_valid_4bit_block_size(size));
  }
  for (std::int64_t size : {0, 16, 48, 100, 8192}) EXPECT_FALSE(is_valid_4bit_block_size(size));
}

}  // namespace
}  // namespace kbit::quant

#include "kbit/core/parallel.h"

#include <atomic>
#include <vector>

#include <gtest/gtest.h>

namespace kbit {
namespace {

TEST(ParallelTest, CoversEveryItemExactlyOnce) {
  for (std::int64_t count : {1, 7, 1000, 100003}) {
    for (std::int64_t min_chunk : {1, 16, 5000}) {
      std::vector<std::atomic<int>> hits(static_cast<std::size_t>(count));
      parallel_for(count, min_chunk, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t i = begin; i < end; ++i) hits[static_cast<std::size_t>(i)]++;
      });
      for (std::int64_t i = 0; i < count; ++i) ASSERT_EQ(hits[static_cast<std::size_t>(i)], 1);
    }
  }
}

TEST(ParallelTest, NestedCallsRunSerially) {
  std::atomic<std::int64_t> total{0};
  parallel_for(8, 1, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      parallel_for(100, 1, [&](std::int64_t b, std::int64_t e) { total += e - b; });
    }
  });
  EXPECT_EQ(total.load(), 800);
}

TEST(ParallelTest, EmptyRangeDoesNothing) {
  bool called = false;
  parallel_for(0, 1, [&](std::int64_t, std::int64_t) { called = true; });
  EXPECT_FALSE(called);
}

}  // namespace
}  // namespace kbit

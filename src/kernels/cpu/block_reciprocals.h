// The block loop of the SIMD blockwise quantizers: each block's absmax, then its codes scaled by
// rcp_approx_ftz(absmax) (gpu_approx_math.h), arranged so that the reciprocal costs little.
//
// rcp_approx_ftz is a call into scalar code with a division, and now and then a cache miss in its
// 2 MiB table; once per block it would cost a block of 64 values a fifth of its time. Here blocks
// go in groups: the reciprocals of a whole group are taken in one call (independent work that
// overlaps), and the absmax of the next group's blocks are found between the current group's
// encodings, so that reading the input from memory still overlaps computing codes, as in a plain
// one-block-at-a-time loop.
#pragma once

#include <algorithm>
#include <cstdint>
#include <iterator>

#include "kernels/cpu/gpu_approx_math.h"

namespace kbit::kernels::cpu {

// Blocks of at most this many values in all make a group.
inline constexpr std::int64_t kReciprocalGroupValues = 2048;

// For blocks [first_block, end_block) of `block_size` values: absmax[b] = absmax_of(b), then
// encode(b, rcp_approx_ftz(absmax[b])); absmax_of(b) of a block runs before encode of it.
// block_size >= 32.
template <typename AbsmaxOf, typename Encode>
void for_each_block_reciprocal(std::int64_t first_block, std::int64_t end_block,
                               std::int64_t block_size, float* absmax, AbsmaxOf absmax_of,
                               Encode encode) {
  float reciprocals[kReciprocalGroupValues / 32];
  const std::int64_t group_blocks =
      std::clamp<std::int64_t>(kReciprocalGroupValues / block_size, 1, std::ssize(reciprocals));
  for (std::int64_t block = first_block; block < std::min(first_block + group_blocks, end_block);
       ++block) {
    absmax[block] = absmax_of(block);
  }
  for (std::int64_t group = first_block; group < end_block; group += group_blocks) {
    const std::int64_t group_end = std::min(group + group_blocks, end_block);
    rcp_approx_ftz_each({absmax + group, static_cast<std::size_t>(group_end - group)}, reciprocals);
    for (std::int64_t block = group; block < group_end; ++block) {
      encode(block, reciprocals[block - group]);
      const std::int64_t next_group_block = block + group_blocks;
      if (next_group_block < end_block) absmax[next_group_block] = absmax_of(next_group_block);
    }
  }
}

}  // namespace kbit::kernels::cpu

// kbit's counter hash (src/core/random.cc) for CUDA code: the same functions, so that a kernel
// draws exactly the bits the CPU draws for the same (seed, index). Random values depend only on
// (seed, index), never on the thread or launch shape that computes them.
//
// Both functions are __host__ __device__ so that a launcher can derive a stream's seed on the
// host from the same definition its kernel uses on the device.
#pragma once

#include <cstdint>

namespace kbit::kernels::cuda {

// SplitMix64's finaliser: a bijective hash with good avalanche (random.cc's mix).
__host__ __device__ __forceinline__ std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// 64 uniform random bits, number `index` of stream `seed`: kbit::random_bits
// (kbit/core/random.h), bit for bit.
__host__ __device__ __forceinline__ std::uint64_t random_bits(std::uint64_t seed,
                                                              std::uint64_t index) {
  return mix(mix(seed ^ 0xbb67ae8584caa73bull) ^ mix(index));
}

}  // namespace kbit::kernels::cuda

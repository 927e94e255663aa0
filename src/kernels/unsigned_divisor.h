// n / d for 32-bit unsigned n and a divisor d fixed before a kernel's launch: one high multiply,
// a subtraction, an add and two shifts, where a division by a value the compiler does not know
// takes a dozen-odd instructions (Granlund and Montgomery, "Division by invariant integers using
// multiplication", 1994, figure 4.1). Exact for every n and every d >= 1.
#pragma once

#include <cstdint>

#include "kernels/host_device.h"

namespace kbit::kernels {

class UnsignedDivisor {
 public:
  // Requires divisor >= 1. With l the least integer such that 2^l >= divisor, the multiplier is
  // floor(2^32 · (2^l − divisor) / divisor) + 1, which fits 32 bits.
  constexpr explicit UnsignedDivisor(std::uint32_t divisor) : divisor_(divisor) {
    int log2_ceil = 0;
    while ((std::uint64_t{1} << log2_ceil) < divisor) ++log2_ceil;
    multiplier_ = static_cast<std::uint32_t>(
        (std::uint64_t{1} << 32) * ((std::uint64_t{1} << log2_ceil) - divisor) / divisor + 1);
    first_shift_ = log2_ceil < 1 ? log2_ceil : 1;
    second_shift_ = log2_ceil > 1 ? log2_ceil - 1 : 0;
  }

  KBIT_HOST_DEVICE std::uint32_t divide(std::uint32_t n) const {
    const std::uint32_t high = multiply_high(n, multiplier_);
    return (high + ((n - high) >> first_shift_)) >> second_shift_;
  }

  KBIT_HOST_DEVICE std::uint32_t divisor() const { return divisor_; }

 private:
  // The high 32 bits of a · b.
  KBIT_HOST_DEVICE static std::uint32_t multiply_high(std::uint32_t a, std::uint32_t b) {
#if defined(__CUDA_ARCH__)
    return __umulhi(a, b);
#else
    return static_cast<std::uint32_t>((std::uint64_t{a} * b) >> 32);
#endif
  }

  std::uint32_t divisor_;
  std::uint32_t multiplier_ = 0;
  int first_shift_ = 0;
  int second_shift_ = 0;
};

}  // namespace kbit::kernels

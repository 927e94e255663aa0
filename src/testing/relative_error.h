// How far a computed array is from its reference, for the tests that compare kernels with
// float64 definitions: ‖got − want‖₂ / ‖want‖₂, summed in double.
#pragma once

#include <cmath>
#include <span>

namespace kbit::testing {

// Requires got.size() >= want.size() and want not all zero.
template <typename T>
double relative_error(std::span<const T> got, std::span<const double> want) {
  double difference = 0.0;
  double norm = 0.0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    difference += d * d;
    norm += want[i] * want[i];
  }
  return std::sqrt(difference / norm);
}

}  // namespace kbit::testing

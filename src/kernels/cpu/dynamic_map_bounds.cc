#include "kernels/cpu/dynamic_map_bounds.h"

#include <cmath>
#include <limits>

namespace kbit::kernels::cpu {

DynamicMapBounds dynamic_map_bounds(const float* map) {
  DynamicMapBounds bounds;
  for (int k = 0; k < 255; ++k) {
    const float midpoint = (map[k] + map[k + 1]) * 0.5f;
    const bool tie_goes_up = k % 2 == 1;
    bounds.above[k] =
        tie_goes_up ? std::nextafter(midpoint, -std::numeric_limits<float>::infinity()) : midpoint;
  }
  bounds.above[255] = std::numeric_limits<float>::infinity();
  return bounds;
}

}  // namespace kbit::kernels::cpu

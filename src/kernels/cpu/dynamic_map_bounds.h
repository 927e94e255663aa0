// bitsandbytes' 8-bit search (search_dynamic_map in code_rules.h) restated as a count, so that
// SIMD kernels can evaluate it with a branchless binary search.
//
// The search's seven halving steps end at an even index p with map[p-1] < x <= map[p+1]; its
// final comparisons then pick p-1, p or p+1 by the midpoints around map[p], and a value exactly
// on a midpoint keeps p. The code is therefore a non-decreasing step function of x:
//   code > k  iff  x >  mid(k, k+1)   for even k (the step up to an odd code is strict)
//   code > k  iff  x >= mid(k, k+1)   for odd k  (a tie keeps the even index k+1)
// with mid(a, b) = fl32(fl32(map[a] + map[b]) * 0.5f), the search's own rounding. Writing the
// second rule as x > nextafter(mid, -inf), the code is the number of entries of `above` that x
// exceeds; NaN exceeds none and gets 0, as in the search. cpu_kernels_test.cc checks this
// against search_dynamic_map at and around every boundary.
#pragma once

#include <array>

namespace kbit::kernels::cpu {

struct DynamicMapBounds {
  // Ascending. above[k] is the bound between codes k and k+1; above[255] = +inf, so that a
  // binary search over all 256 entries never passes code 255.
  alignas(64) std::array<float, 256> above;
};

// Requires map: 256 strictly ascending finite values (the dynamic maps of codebooks.h).
DynamicMapBounds dynamic_map_bounds(const float* map);

}  // namespace kbit::kernels::cpu

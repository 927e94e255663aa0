#include "kbit/core/random.h"

#include <cmath>
#include <numbers>

#include "kbit/core/parallel.h"

namespace kbit {
namespace {

// SplitMix64's finaliser: a bijective hash with good avalanche.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// A uniform double in (0, 1]: never 0, so log() below is finite.
double uniform(std::uint64_t bits) {
  return (static_cast<double>(bits >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

template <typename T, typename Store>
void fill(T* data, std::int64_t n, std::uint64_t seed, float mean, float stddev, Store store) {
  parallel_for(n, 1 << 16, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      const double sample = normal_sample(seed, static_cast<std::uint64_t>(i));
      data[i] = store(static_cast<float>(mean + stddev * sample));
    }
  });
}

}  // namespace

double normal_sample(std::uint64_t seed, std::uint64_t index) {
  const std::uint64_t stream = mix(seed ^ 0x6a09e667f3bcc909ull);
  const double u1 = uniform(mix(stream ^ mix(2 * index)));
  const double u2 = uniform(mix(stream ^ mix(2 * index + 1)));
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

std::uint64_t random_bits(std::uint64_t seed, std::uint64_t index) {
  return mix(mix(seed ^ 0xbb67ae8584caa73bull) ^ mix(index));
}

Status fill_normal(TensorView tensor, std::uint64_t seed, float mean, float stddev) {
  if (!tensor.device().is_cpu() || !tensor.is_contiguous()) {
    return invalid_argument("fill_normal needs a contiguous host tensor, got " + tensor.describe());
  }
  const std::int64_t n = tensor.numel();
  switch (tensor.dtype()) {
    case DType::kF32:
      fill(tensor.data_as<float>(), n, seed, mean, stddev, [](float v) { return v; });
      return ok_status();
    case DType::kF16:
      fill(tensor.data_as<f16>(), n, seed, mean, stddev, [](float v) { return f32_to_f16(v); });
      return ok_status();
    case DType::kBF16:
      fill(tensor.data_as<bf16>(), n, seed, mean, stddev, [](float v) { return f32_to_bf16(v); });
      return ok_status();
    default:
      return invalid_argument("fill_normal needs an f32, f16 or bf16 tensor, got " +
                              tensor.describe());
  }
}

}  // namespace kbit

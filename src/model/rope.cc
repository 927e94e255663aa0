#include "kbit/model/rope.h"

#include <cmath>
#include <numbers>

namespace kbit::model {
namespace {

// transformers: 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)), all in float32.
std::vector<float> default_inv_freq(double theta, std::int64_t head_dim) {
  std::vector<float> inv_freq(static_cast<std::size_t>(head_dim / 2));
  const float base = static_cast<float>(theta);
  for (std::size_t k = 0; k < inv_freq.size(); ++k) {
    const float exponent = static_cast<float>(2 * k) / static_cast<float>(head_dim);
    const auto power = static_cast<float>(std::pow(static_cast<double>(base), exponent));
    inv_freq[k] = 1.0f / power;
  }
  return inv_freq;
}

}  // namespace

std::vector<float> rope_inv_freq(const RopeParameters& rope, std::int64_t head_dim,
                                 std::int64_t max_position_embeddings, std::int64_t seq_len) {
  switch (rope.type) {
    case RopeType::kDefault:
      return default_inv_freq(rope.theta, head_dim);
    case RopeType::kLinear: {
      std::vector<float> inv_freq = default_inv_freq(rope.theta, head_dim);
      const auto factor = static_cast<float>(rope.factor);
      for (float& f : inv_freq) f /= factor;
      return inv_freq;
    }
    case RopeType::kDynamic: {
      // _compute_dynamic_ntk_parameters: the base grows in Python float (double) arithmetic.
      const std::int64_t length =
          seq_len > max_position_embeddings ? seq_len : max_position_embeddings;
      const double d = static_cast<double>(head_dim);
      const double base =
          rope.theta * std::pow(rope.factor * static_cast<double>(length) /
                                        static_cast<double>(max_position_embeddings) -
                                    (rope.factor - 1.0),
                                d / (d - 2.0));
      return default_inv_freq(base, head_dim);
    }
    case RopeType::kLlama3: {
      std::vector<float> inv_freq = default_inv_freq(rope.theta, head_dim);
      const auto factor = static_cast<float>(rope.factor);
      const auto low = static_cast<float>(rope.low_freq_factor);
      const auto high = static_cast<float>(rope.high_freq_factor);
      const auto old_context = static_cast<float>(rope.original_max_position_embeddings);
      // Python floats divided in double, then compared with float32 tensors.
      const double low_freq_wavelen =
          static_cast<double>(rope.original_max_position_embeddings) / rope.low_freq_factor;
      const double high_freq_wavelen =
          static_cast<double>(rope.original_max_position_embeddings) / rope.high_freq_factor;
      for (float& f : inv_freq) {
        const float wavelen = static_cast<float>(2.0 * std::numbers::pi) / f;
        float scaled = wavelen > low_freq_wavelen ? f / factor : f;
        const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
        if (medium) {
          const float smooth = (old_context / wavelen - low) / (high - low);
          scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
        }
        f = scaled;
      }
      return inv_freq;
    }
  }
  return default_inv_freq(rope.theta, head_dim);
}

}  // namespace kbit::model

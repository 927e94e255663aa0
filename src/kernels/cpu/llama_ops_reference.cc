// The plain definitions of the Llama forward's CPU kernels (spec 11.3), one scalar loop each.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/element_access.h"
#include "kernels/cpu/llama_ops.h"

namespace kbit::kernels::cpu {
namespace {

template <typename T>
void linear_rows(const LinearJob& job, std::int64_t first_out, std::int64_t end_out) {
  const T* weight = static_cast<const T*>(job.weight);
  for (std::int64_t m = 0; m < job.rows; ++m) {
    const float* x = job.x + m * job.in_features;
    for (std::int64_t n = first_out; n < end_out; ++n) {
      const T* w = weight + n * job.in_features;
      float sum = 0.0f;
      for (std::int64_t k = 0; k < job.in_features; ++k) sum += x[k] * to_f32(w[k]);
      if (job.bias != nullptr) sum += job.bias[n];
      job.y[m * job.out_features + n] = job.round_bf16 ? round_to_bf16(sum) : sum;
    }
  }
}

}  // namespace

void linear_reference(const LinearJob& job, std::int64_t first_out, std::int64_t end_out) {
  visit_float_dtype(job.weight_dtype,
                    [&](auto type) { linear_rows<decltype(type)>(job, first_out, end_out); });
}

void rms_norm_reference(const RmsNormJob& job, std::int64_t first_row, std::int64_t end_row) {
  for (std::int64_t r = first_row; r < end_row; ++r) {
    const float* x = job.x + r * job.cols;
    float* y = job.y + r * job.cols;
    float sum = 0.0f;
    for (std::int64_t i = 0; i < job.cols; ++i) sum += x[i] * x[i];
    const float mean = sum / static_cast<float>(job.cols);
    const float inv_rms = 1.0f / std::sqrt(mean + job.eps);
    if (job.round_bf16) {
      for (std::int64_t i = 0; i < job.cols; ++i) {
        y[i] = round_to_bf16(job.weight[i] * round_to_bf16(x[i] * inv_rms));
      }
    } else {
      for (std::int64_t i = 0; i < job.cols; ++i) y[i] = job.weight[i] * (x[i] * inv_rms);
    }
  }
}

void rope_reference(const RopeJob& job, std::int64_t first_token, std::int64_t end_token) {
  const std::int64_t half = job.head_dim / 2;
  for (std::int64_t t = first_token; t < end_token; ++t) {
    const float position = static_cast<float>(job.first_position + t);
    for (std::int64_t i = 0; i < half; ++i) {
      const float angle = position * job.inv_freq[i];
      const float c = std::cos(angle);
      const float s = std::sin(angle);
      if (job.round_bf16) {
        // (q · cos) + (rotate_half(q) · sin), each bf16 op rounding its result.
        const float cr = round_to_bf16(c);
        const float sr = round_to_bf16(s);
        for (std::int64_t h = 0; h < job.heads; ++h) {
          float* x = job.x + (t * job.heads + h) * job.head_dim;
          const float a = x[i];
          const float b = x[i + half];
          x[i] = round_to_bf16(round_to_bf16(a * cr) - round_to_bf16(b * sr));
          x[i + half] = round_to_bf16(round_to_bf16(b * cr) + round_to_bf16(a * sr));
        }
        continue;
      }
      for (std::int64_t h = 0; h < job.heads; ++h) {
        float* x = job.x + (t * job.heads + h) * job.head_dim;
        const float a = x[i];
        const float b = x[i + half];
        x[i] = a * c - b * s;
        x[i + half] = b * c + a * s;
      }
    }
  }
}

void attention_reference(const AttentionJob& job, std::int64_t first_item, std::int64_t end_item) {
  const std::int64_t group = job.heads / job.kv_heads;
  const std::int64_t d = job.head_dim;
  std::vector<float> scores;
  for (std::int64_t item = first_item; item < end_item; ++item) {
    const std::int64_t t = item / job.heads;
    const std::int64_t h = item % job.heads;
    const std::int64_t kv = h / group;
    const std::int64_t position = job.first_position + t;
    const std::int64_t first_key =
        job.window > 0 ? std::max<std::int64_t>(0, position - job.window + 1) : 0;
    const float* q = job.q + item * d;
    scores.assign(static_cast<std::size_t>(position + 1 - first_key), 0.0f);
    float max_score = -std::numeric_limits<float>::infinity();
    for (std::int64_t j = first_key; j <= position; ++j) {
      const float* k = job.k_cache + (j * job.kv_heads + kv) * d;
      float dot = 0.0f;
      for (std::int64_t i = 0; i < d; ++i) dot += q[i] * k[i];
      const float score = dot * job.scale;
      scores[static_cast<std::size_t>(j - first_key)] = score;
      max_score = std::max(max_score, score);
    }
    float total = 0.0f;
    for (float& score : scores) {
      score = std::exp(score - max_score);
      total += score;
    }
    float* out = job.out + item * d;
    std::fill(out, out + d, 0.0f);
    if (job.round_bf16) {
      // Flash attention in bf16: bf16 probabilities times V, normalised at the end.
      for (std::int64_t j = first_key; j <= position; ++j) {
        const float p = round_to_bf16(scores[static_cast<std::size_t>(j - first_key)]);
        const float* v = job.v_cache + (j * job.kv_heads + kv) * d;
        for (std::int64_t i = 0; i < d; ++i) out[i] += p * v[i];
      }
      const float inv_total = 1.0f / total;
      for (std::int64_t i = 0; i < d; ++i) out[i] = round_to_bf16(out[i] * inv_total);
      continue;
    }
    for (std::int64_t j = first_key; j <= position; ++j) {
      const float p = scores[static_cast<std::size_t>(j - first_key)] / total;
      const float* v = job.v_cache + (j * job.kv_heads + kv) * d;
      for (std::int64_t i = 0; i < d; ++i) out[i] += p * v[i];
    }
  }
}

void silu_mul_reference(float* gate, const float* up, std::int64_t first, std::int64_t end,
                        bool round_bf16) {
  if (round_bf16) {
    for (std::int64_t i = first; i < end; ++i) {
      const float g = gate[i];
      gate[i] = round_to_bf16(round_to_bf16(g / (1.0f + std::exp(-g))) * up[i]);
    }
    return;
  }
  for (std::int64_t i = first; i < end; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace kbit::kernels::cpu

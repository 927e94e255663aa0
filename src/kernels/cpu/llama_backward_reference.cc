// The backward reference kernels (llama_backward.h).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/llama_backward.h"

namespace kbit::kernels::cpu {

void linear_backward_reference(const LinearBackwardJob& job) {
  const std::int64_t in = job.in_features;
  const std::int64_t out = job.out_features;
  for (std::int64_t r = 0; r < job.rows; ++r) {
    const float* dy = job.dy + r * out;
    const float* x = job.x + r * in;
    if (job.dx != nullptr) {
      float* dx = job.dx + r * in;
      std::fill(dx, dx + in, 0.0f);
      for (std::int64_t o = 0; o < out; ++o) {
        const float* w = job.weight + o * in;
        for (std::int64_t i = 0; i < in; ++i) dx[i] += dy[o] * w[i];
      }
    }
    if (job.dweight != nullptr) {
      for (std::int64_t o = 0; o < out; ++o) {
        float* dw = job.dweight + o * in;
        for (std::int64_t i = 0; i < in; ++i) dw[i] += dy[o] * x[i];
      }
    }
  }
}

void lora_backward_reference(const LoraBackwardJob& job) {
  const std::int64_t in = job.in_features;
  const std::int64_t out = job.out_features;
  const std::int64_t rank = job.rank;
  std::vector<float> h(static_cast<std::size_t>(rank));
  std::vector<float> dh(static_cast<std::size_t>(rank));
  std::vector<float> dropped(static_cast<std::size_t>(in));  // x̃ of the row
  for (std::int64_t r = 0; r < job.rows; ++r) {
    const float* x = job.x + r * in;
    if (job.keep != nullptr) {
      for (std::int64_t i = 0; i < in; ++i) {
        dropped[static_cast<std::size_t>(i)] = job.keep[r * in + i] * x[i];
      }
      x = dropped.data();
    }
    const float* dy = job.dy + r * out;
    for (std::int64_t k = 0; k < rank; ++k) {
      float sum = 0.0f;
      for (std::int64_t i = 0; i < in; ++i) sum += x[i] * job.a[k * in + i];
      h[static_cast<std::size_t>(k)] = sum;
      float back = 0.0f;
      for (std::int64_t o = 0; o < out; ++o) back += dy[o] * job.b[o * rank + k];
      dh[static_cast<std::size_t>(k)] = job.scaling * back;
    }
    for (std::int64_t o = 0; o < out; ++o) {
      for (std::int64_t k = 0; k < rank; ++k) {
        job.db[o * rank + k] += job.scaling * dy[o] * h[static_cast<std::size_t>(k)];
      }
    }
    for (std::int64_t k = 0; k < rank; ++k) {
      const float g = dh[static_cast<std::size_t>(k)];
      for (std::int64_t i = 0; i < in; ++i) {
        job.da[k * in + i] += g * x[i];
        if (job.dx == nullptr) continue;
        const float keep = job.keep != nullptr ? job.keep[r * in + i] : 1.0f;
        job.dx[r * in + i] += keep * (g * job.a[k * in + i]);
      }
    }
  }
}

void rms_norm_backward_reference(const RmsNormBackwardJob& job) {
  const std::int64_t cols = job.cols;
  for (std::int64_t r = 0; r < job.rows; ++r) {
    const float* x = job.x + r * cols;
    const float* dy = job.dy + r * cols;
    float* dx = job.dx + r * cols;
    float sum_squares = 0.0f;
    for (std::int64_t c = 0; c < cols; ++c) sum_squares += x[c] * x[c];
    const float rms_inverse = 1.0f / std::sqrt(sum_squares / static_cast<float>(cols) + job.eps);
    // mean(g · x) with g = weight · dy, the projection the normalisation takes out.
    float g_dot_x = 0.0f;
    for (std::int64_t c = 0; c < cols; ++c) g_dot_x += job.weight[c] * dy[c] * x[c];
    const float correction =
        rms_inverse * rms_inverse * rms_inverse * g_dot_x / static_cast<float>(cols);
    for (std::int64_t c = 0; c < cols; ++c) {
      if (job.dweight != nullptr) job.dweight[c] += dy[c] * x[c] * rms_inverse;
      // dy may alias dx: read it before writing.
      const float g = job.weight[c] * dy[c];
      dx[c] = rms_inverse * g - x[c] * correction;
    }
  }
}

void rope_backward_reference(const RopeJob& job) {
  const std::int64_t half = job.head_dim / 2;
  for (std::int64_t t = 0; t < job.tokens; ++t) {
    const float position = static_cast<float>(job.first_position + t);
    for (std::int64_t i = 0; i < half; ++i) {
      const float angle = position * job.inv_freq[i];
      const float c = std::cos(angle);
      const float s = std::sin(angle);
      for (std::int64_t h = 0; h < job.heads; ++h) {
        float* d = job.x + (t * job.heads + h) * job.head_dim;
        const float da = d[i];
        const float db = d[i + half];
        d[i] = da * c + db * s;
        d[i + half] = db * c - da * s;
      }
    }
  }
}

void attention_backward_reference(const AttentionBackwardJob& job) {
  const std::int64_t d = job.head_dim;
  const std::int64_t group = job.heads / job.kv_heads;
  const auto q_at = [&](std::int64_t t, std::int64_t h) { return (t * job.heads + h) * d; };
  const auto kv_at = [&](std::int64_t t, std::int64_t h) { return (t * job.kv_heads + h) * d; };
  std::fill(job.dk, job.dk + job.tokens * job.kv_heads * d, 0.0f);
  std::fill(job.dv, job.dv + job.tokens * job.kv_heads * d, 0.0f);
  std::vector<float> p(static_cast<std::size_t>(job.tokens));
  std::vector<float> dp(static_cast<std::size_t>(job.tokens));
  for (std::int64_t t = 0; t < job.tokens; ++t) {
    for (std::int64_t h = 0; h < job.heads; ++h) {
      const std::int64_t kv = h / group;
      const float* q = job.q + q_at(t, h);
      const float* d_out = job.d_out + q_at(t, h);
      // The forward's probabilities over keys 0..t.
      float max_score = -std::numeric_limits<float>::infinity();
      for (std::int64_t s = 0; s <= t; ++s) {
        float score = 0.0f;
        for (std::int64_t i = 0; i < d; ++i) score += q[i] * job.k[kv_at(s, kv) + i];
        p[s] = score * job.scale;
        max_score = std::max(max_score, p[s]);
      }
      float sum = 0.0f;
      for (std::int64_t s = 0; s <= t; ++s) sum += p[s] = std::exp(p[s] - max_score);
      // dP = dOut · Vᵀ; dS = P ⊙ (dP − Σ P ⊙ dP); dV += Pᵀ · dOut.
      float p_dot_dp = 0.0f;
      for (std::int64_t s = 0; s <= t; ++s) {
        p[s] /= sum;
        float value = 0.0f;
        for (std::int64_t i = 0; i < d; ++i) value += d_out[i] * job.v[kv_at(s, kv) + i];
        dp[s] = value;
        p_dot_dp += p[s] * value;
        float* dv = job.dv + kv_at(s, kv);
        for (std::int64_t i = 0; i < d; ++i) dv[i] += p[s] * d_out[i];
      }
      float* dq = job.dq + q_at(t, h);
      std::fill(dq, dq + d, 0.0f);
      for (std::int64_t s = 0; s <= t; ++s) {
        const float ds = p[s] * (dp[s] - p_dot_dp) * job.scale;
        const float* k = job.k + kv_at(s, kv);
        float* dk = job.dk + kv_at(s, kv);
        for (std::int64_t i = 0; i < d; ++i) {
          dq[i] += ds * k[i];
          dk[i] += ds * q[i];
        }
      }
    }
  }
}

void silu_mul_backward_reference(const float* gate, const float* up, const float* d_out,
                                 std::int64_t count, float* d_gate, float* d_up) {
  for (std::int64_t i = 0; i < count; ++i) {
    const float sigmoid = 1.0f / (1.0f + std::exp(-gate[i]));
    const float silu = gate[i] * sigmoid;
    const float silu_derivative = sigmoid * (1.0f + gate[i] * (1.0f - sigmoid));
    d_gate[i] = d_out[i] * up[i] * silu_derivative;
    d_up[i] = d_out[i] * silu;
  }
}

double cross_entropy_reference(float* logits, const std::int32_t* labels, std::int64_t rows,
                               std::int64_t vocab, float gradient_scale) {
  double loss = 0.0;
  for (std::int64_t r = 0; r < rows; ++r) {
    float* z = logits + r * vocab;
    if (labels[r] == kIgnoreLabel) {
      std::fill(z, z + vocab, 0.0f);
      continue;
    }
    const float max_logit = *std::max_element(z, z + vocab);
    double sum = 0.0;
    for (std::int64_t c = 0; c < vocab; ++c) sum += std::exp(static_cast<double>(z[c] - max_logit));
    const double log_sum_exp = static_cast<double>(max_logit) + std::log(sum);
    loss += log_sum_exp - static_cast<double>(z[labels[r]]);
    for (std::int64_t c = 0; c < vocab; ++c) {
      const double probability = std::exp(static_cast<double>(z[c]) - log_sum_exp);
      z[c] = static_cast<float>(probability) * gradient_scale;
    }
    z[labels[r]] -= gradient_scale;
  }
  return loss;
}

}  // namespace kbit::kernels::cpu

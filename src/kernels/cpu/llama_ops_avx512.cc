// AVX-512 kernels of the Llama forward: the GEMV that reads f32/f16/bf16 weight rows directly
// (widen + FMA), RMSNorm, and attention with an online softmax. They sum in a different order
// from llama_ops_reference.cc, so they match it to rounding, not bit for bit.
#include <immintrin.h>

#include <cmath>
#include <limits>

#include "kernels/cpu/element_access.h"
#include "kernels/cpu/llama_ops.h"
#include "kernels/cpu/simd_avx512.h"

namespace kbit::kernels::cpu {
namespace avx512 {
namespace {

// Four output features at once, so each load of x serves four weight rows.
template <typename T>
void gemv_rows(const LinearJob& job, std::int64_t first_out, std::int64_t end_out) {
  const T* weight = static_cast<const T*>(job.weight);
  const std::int64_t k_total = job.in_features;
  for (std::int64_t m = 0; m < job.rows; ++m) {
    const float* x = job.x + m * k_total;
    float* y = job.y + m * job.out_features;
    std::int64_t n = first_out;
    for (; n + 4 <= end_out; n += 4) {
      const T* w0 = weight + n * k_total;
      const T* w1 = w0 + k_total;
      const T* w2 = w1 + k_total;
      const T* w3 = w2 + k_total;
      __m512 acc0 = _mm512_setzero_ps();
      __m512 acc1 = _mm512_setzero_ps();
      __m512 acc2 = _mm512_setzero_ps();
      __m512 acc3 = _mm512_setzero_ps();
      for (std::int64_t k = 0; k < k_total; k += kLanes) {
        const __mmask16 lanes = first_lanes(k_total - k);
        const __m512 xv = load_f32(x + k, lanes);
        acc0 = _mm512_fmadd_ps(xv, load_f32(w0 + k, lanes), acc0);
        acc1 = _mm512_fmadd_ps(xv, load_f32(w1 + k, lanes), acc1);
        acc2 = _mm512_fmadd_ps(xv, load_f32(w2 + k, lanes), acc2);
        acc3 = _mm512_fmadd_ps(xv, load_f32(w3 + k, lanes), acc3);
      }
      y[n] = _mm512_reduce_add_ps(acc0);
      y[n + 1] = _mm512_reduce_add_ps(acc1);
      y[n + 2] = _mm512_reduce_add_ps(acc2);
      y[n + 3] = _mm512_reduce_add_ps(acc3);
    }
    for (; n < end_out; ++n) {
      const T* w = weight + n * k_total;
      __m512 acc = _mm512_setzero_ps();
      for (std::int64_t k = 0; k < k_total; k += kLanes) {
        const __mmask16 lanes = first_lanes(k_total - k);
        acc = _mm512_fmadd_ps(load_f32(x + k, lanes), load_f32(w + k, lanes), acc);
      }
      y[n] = _mm512_reduce_add_ps(acc);
    }
    if (job.bias != nullptr) {
      for (std::int64_t j = first_out; j < end_out; ++j) y[j] += job.bias[j];
    }
    if (job.round_bf16) round_to_bf16(y + first_out, end_out - first_out);
  }
}

float dot(const float* a, const float* b, std::int64_t count) {
  __m512 acc = _mm512_setzero_ps();
  for (std::int64_t i = 0; i < count; i += kLanes) {
    const __mmask16 lanes = first_lanes(count - i);
    acc = _mm512_fmadd_ps(load_f32(a + i, lanes), load_f32(b + i, lanes), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// out[0, count) = out · scale + p · v
void scale_add(float* out, float scale, float p, const float* v, std::int64_t count) {
  const __m512 s = _mm512_set1_ps(scale);
  const __m512 pv = _mm512_set1_ps(p);
  for (std::int64_t i = 0; i < count; i += kLanes) {
    const __mmask16 lanes = first_lanes(count - i);
    const __m512 o = _mm512_mul_ps(load_f32(out + i, lanes), s);
    store(out + i, _mm512_fmadd_ps(pv, load_f32(v + i, lanes), o), lanes);
  }
}

constexpr std::int64_t kKeyBlock = 256;

// One query head over its keys, in blocks with a running max (online softmax).
void attend(const AttentionJob& job, std::int64_t item) {
  const std::int64_t group = job.heads / job.kv_heads;
  const std::int64_t d = job.head_dim;
  const std::int64_t t = item / job.heads;
  const std::int64_t kv = (item % job.heads) / group;
  const std::int64_t position = job.first_position + t;
  std::int64_t first_key = 0;
  if (job.window > 0 && position - job.window + 1 > 0) first_key = position - job.window + 1;
  const float* q = job.q + item * d;
  float* out = job.out + item * d;
  for (std::int64_t i = 0; i < d; ++i) out[i] = 0.0f;
  float running_max = -std::numeric_limits<float>::infinity();
  float total = 0.0f;
  float scores[kKeyBlock];
  for (std::int64_t block = first_key; block <= position; block += kKeyBlock) {
    const std::int64_t end = block + kKeyBlock < position + 1 ? block + kKeyBlock : position + 1;
    float block_max = running_max;
    for (std::int64_t j = block; j < end; ++j) {
      const float score = dot(q, job.k_cache + (j * job.kv_heads + kv) * d, d) * job.scale;
      scores[j - block] = score;
      block_max = score > block_max ? score : block_max;
    }
    const float rescale = std::exp(running_max - block_max);  // 0 on the first block
    total *= rescale;
    for (std::int64_t j = block; j < end; ++j) {
      const float p = std::exp(scores[j - block] - block_max);
      total += p;
      // bf16: the probability multiplies V as bf16, as a flash attention kernel in bf16 does.
      const float pv = job.round_bf16 ? round_to_bf16(p) : p;
      scale_add(out, j == block ? rescale : 1.0f, pv, job.v_cache + (j * job.kv_heads + kv) * d, d);
    }
    running_max = block_max;
  }
  const __m512 inv_total = _mm512_set1_ps(1.0f / total);
  for (std::int64_t i = 0; i < d; i += kLanes) {
    const __mmask16 lanes = first_lanes(d - i);
    store(out + i, _mm512_mul_ps(load_f32(out + i, lanes), inv_total), lanes);
  }
  if (job.round_bf16) round_to_bf16(out, d);
}

}  // namespace
}  // namespace avx512

void linear_gemv_avx512(const LinearJob& job, std::int64_t first_out, std::int64_t end_out) {
  visit_float_dtype(job.weight_dtype, [&](auto type_tag) {
    avx512::gemv_rows<decltype(type_tag)>(job, first_out, end_out);
  });
}

void rms_norm_avx512(const RmsNormJob& job, std::int64_t first_row, std::int64_t end_row) {
  using avx512::first_lanes;
  using avx512::kLanes;
  for (std::int64_t r = first_row; r < end_row; ++r) {
    const float* x = job.x + r * job.cols;
    float* y = job.y + r * job.cols;
    __m512 acc = _mm512_setzero_ps();
    for (std::int64_t i = 0; i < job.cols; i += kLanes) {
      const __m512 v = avx512::load_f32(x + i, first_lanes(job.cols - i));
      acc = _mm512_fmadd_ps(v, v, acc);
    }
    const float mean = _mm512_reduce_add_ps(acc) / static_cast<float>(job.cols);
    const __m512 inv_rms = _mm512_set1_ps(1.0f / std::sqrt(mean + job.eps));
    for (std::int64_t i = 0; i < job.cols; i += kLanes) {
      const __mmask16 lanes = first_lanes(job.cols - i);
      const __m512 normed = _mm512_mul_ps(avx512::load_f32(x + i, lanes), inv_rms);
      if (job.round_bf16) {
        const __m512 product =
            _mm512_mul_ps(avx512::load_f32(job.weight + i, lanes), avx512::rounded_to_bf16(normed));
        avx512::store(y + i, avx512::rounded_to_bf16(product), lanes);
        continue;
      }
      avx512::store(y + i, _mm512_mul_ps(avx512::load_f32(job.weight + i, lanes), normed), lanes);
    }
  }
}

void attention_avx512(const AttentionJob& job, std::int64_t first_item, std::int64_t end_item) {
  for (std::int64_t item = first_item; item < end_item; ++item) avx512::attend(job, item);
}

}  // namespace kbit::kernels::cpu

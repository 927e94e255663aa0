// CPU kernels of the Llama forward (spec 11.3), all computing in f32:
//   linear      y[M, N] = x[M, K] · W[N, K]ᵀ (+ bias), W in f32, f16 or bf16 (a mapped checkpoint)
//   rms_norm    y = weight · (x · rsqrt(mean(x²) + eps)), row by row
//   rope        rotate_half RoPE in place on [tokens, heads, head_dim]
//   attention   causal grouped-query attention of new queries over a KV cache
//   silu_mul    gate = silu(gate) · up
//
// Each has a plain reference kernel (the definition, one range of work items) and, where the time
// goes, a fast kernel for AVX-512. The *_op entry points choose by ExecutionOptions: the reference
// on one thread, or the fast kernel on the thread pool.
//
// bf16 activations (the `round_bf16` flags): the data stay f32 arrays, but each kernel rounds to
// bf16 (round to nearest even, kbit::f32_to_bf16) exactly where transformers run in torch.bfloat16
// produces a bf16 tensor, so the arrays hold bf16 values between ops. Each flag says where.
#pragma once

#include <cstdint>

#include "kbit/core/dtype.h"
#include "kbit/core/execution.h"

namespace kbit::kernels::cpu {

// ---- linear ------------------------------------------------------------------------------------
struct LinearJob {
  const float* x;      // [rows, in_features]
  const void* weight;  // [out_features, in_features] of weight_dtype (f32, f16 or bf16)
  DType weight_dtype;
  const float* bias;  // [out_features] or nullptr
  std::int64_t rows;
  std::int64_t in_features;
  std::int64_t out_features;
  float* y;  // [rows, out_features]
  // Round y to bf16 after the bias: a bf16 matmul accumulates in f32 and rounds its output.
  bool round_bf16 = false;
};

// Items are output features: computes y[:, first_out:end_out).
void linear_reference(const LinearJob& job, std::int64_t first_out, std::int64_t end_out);
// Row-by-row dot products reading the weight in its stored dtype (convert + FMA): the decode path.
void linear_gemv_avx512(const LinearJob& job, std::int64_t first_out, std::int64_t end_out);
// Converts weight panels [out block, in block] to f32 in a thread-local buffer and multiplies
// them with OpenBLAS sgemm (one OpenBLAS thread per caller): the prompt path.
void linear_blas(const LinearJob& job, std::int64_t first_out, std::int64_t end_out);
// Rows up to this count use the GEMV kernel, more use OpenBLAS.
constexpr std::int64_t kLinearGemvMaxRows = 4;
void linear_op(const LinearJob& job, const ExecutionOptions& options);

// ---- rms_norm ----------------------------------------------------------------------------------
struct RmsNormJob {
  const float* x;       // [rows, cols]
  const float* weight;  // [cols]
  std::int64_t rows;
  std::int64_t cols;
  float eps;
  float* y;  // [rows, cols]; may equal x
  // y = bf16(weight · bf16(x · rsqrt(mean(x²) + eps))): the cast to the input dtype comes
  // before the weight multiply, whose product is rounded again.
  bool round_bf16 = false;
};

void rms_norm_reference(const RmsNormJob& job, std::int64_t first_row, std::int64_t end_row);
void rms_norm_avx512(const RmsNormJob& job, std::int64_t first_row, std::int64_t end_row);
void rms_norm_op(const RmsNormJob& job, const ExecutionOptions& options);

// ---- rope --------------------------------------------------------------------------------------
struct RopeJob {
  float* x;  // [tokens, heads, head_dim], rotated in place
  std::int64_t tokens;
  std::int64_t heads;
  std::int64_t head_dim;        // even; element i pairs with i + head_dim / 2
  std::int64_t first_position;  // token t sits at position first_position + t
  const float* inv_freq;        // [head_dim / 2]
  // cos and sin rounded to bf16, and each product and sum of q·cos + rotate_half(q)·sin too.
  bool round_bf16 = false;
};

// Items are tokens. angle = f32(position) · inv_freq[i], cos/sin in f32, as transformers does.
void rope_reference(const RopeJob& job, std::int64_t first_token, std::int64_t end_token);
void rope_op(const RopeJob& job, const ExecutionOptions& options);

// ---- attention ---------------------------------------------------------------------------------
struct AttentionJob {
  const float* q;        // [tokens, heads, head_dim], already rotated
  const float* k_cache;  // [cached, kv_heads, head_dim]: every earlier position and these tokens
  const float* v_cache;  // [cached, kv_heads, head_dim]
  std::int64_t tokens;
  std::int64_t heads;
  std::int64_t kv_heads;  // divides heads; query head h reads kv head h / (heads / kv_heads)
  std::int64_t head_dim;
  std::int64_t
      first_position;   // query t sits at first_position + t; cached = first_position + tokens
  std::int64_t window;  // a query sees keys at positions > its own − window; 0: unlimited
  float scale;          // head_dim^-0.5
  float* out;           // [tokens, heads, head_dim]
  // As a flash attention kernel in bf16 (torch's CPU sdpa, FlashAttention on CUDA): scores,
  // softmax and its sum in f32, the unnormalised probabilities rounded to bf16 before they
  // multiply V (accumulated in f32), and the output rounded to bf16.
  bool round_bf16 = false;
};

// Items are (token, head) pairs, item = token · heads + head. Softmax in f32 with the max
// subtracted, as torch does.
void attention_reference(const AttentionJob& job, std::int64_t first_item, std::int64_t end_item);
void attention_avx512(const AttentionJob& job, std::int64_t first_item, std::int64_t end_item);
void attention_op(const AttentionJob& job, const ExecutionOptions& options);

// ---- silu_mul ----------------------------------------------------------------------------------
// gate[i] = gate[i] / (1 + exp(-gate[i])) · up[i] for i in [0, count); with round_bf16, silu's
// result and the product are each rounded to bf16.
void silu_mul_reference(float* gate, const float* up, std::int64_t first, std::int64_t end,
                        bool round_bf16 = false);
void silu_mul_op(float* gate, const float* up, std::int64_t count, const ExecutionOptions& options,
                 bool round_bf16 = false);

// ---- bf16 rounding -----------------------------------------------------------------------------
// x[i] = f32(bf16(x[i])) for i in [0, count), round to nearest even (kbit::f32_to_bf16).
void round_to_bf16(float* x, std::int64_t count);
inline float round_to_bf16(float x) {
  return bf16_to_f32(f32_to_bf16(x));
}

}  // namespace kbit::kernels::cpu

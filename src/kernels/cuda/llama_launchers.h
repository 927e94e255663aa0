// Host-side launchers of the CUDA kernels of the Llama forward. Their numerics are those of the
// CPU kernels in kernels/cpu/llama_ops.h (the reference the tests compare with), with one
// difference of storage: where the CPU keeps f32 arrays holding bf16 values, these kernels store
// the activations and the KV cache in the activation dtype itself (kF32 or kBF16, `dtype` below),
// so a store rounds to it. Arithmetic is f32 throughout.
//
// Every pointer is device memory. Each launcher queues its kernels on `stream` and returns the
// launch error (cudaSuccess when queued); none synchronises, allocates or reads device memory
// from the host, so a sequence of them can be captured in a CUDA graph. Positions are read from
// device memory (`first_position`, an int32 the host or an earlier kernel wrote), so that a
// captured decode step replays at every position. The norms, RoPE and decode attention are
// launched to overlap the kernel before them (overlapped_launch.cuh); that changes no result.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kbit/core/dtype.h"
#include "kernels/cuda/int8_quantized_row.h"

namespace kbit::kernels::cuda {

// out[t, :] = table[tokens[t], :] for t in [0, count), converted from table_dtype (f32, f16 or
// bf16) to dtype. Token ids are valid (the host checks them before they reach the device).
cudaError_t embedding_lookup(const std::int32_t* tokens /* [count] */, std::int64_t count,
                             const void* table /* [vocab, hidden] */, DType table_dtype,
                             std::int64_t hidden, void* out /* [count, hidden] */, DType dtype,
                             cudaStream_t stream);

// The residual add and the RMSNorm that follows it, per row of [rows, cols]:
//   if delta:  hidden = round(hidden + delta)            (written back: the new residual)
//   y = weight · (hidden · rsqrt(mean(hidden²) + eps))   as rms_norm_reference, with bf16 the
//       rounding before and after the weight multiply
// weight f32 [cols] (holding bf16 values in a bf16 model). y may not alias hidden.
// With quantized_y, the one row of y is also quantized as linear_int8 with threshold
// int8_threshold quantizes it, for linear_int8_layers to read (int8_quantized_row.h); that needs
// rows == 1, cols a multiple of 16 and at most kMaxInt8QuantizedNormCols, 16-byte aligned
// pointers and a finite threshold >= 0 (cudaErrorInvalidValue otherwise).
cudaError_t add_rms_norm(void* hidden /* [rows, cols] */, const void* delta /* or nullptr */,
                         const float* weight /* [cols] */, std::int64_t rows, std::int64_t cols,
                         float eps, void* y /* [rows, cols] */, DType dtype, cudaStream_t stream,
                         const Int8QuantizedRow* quantized_y = nullptr,
                         float int8_threshold = 0.0f);

// hidden += delta, rounded to dtype (the last residual add when no norm follows on these rows).
cudaError_t add_residual(void* hidden, const void* delta, std::int64_t count, DType dtype,
                         cudaStream_t stream);

// RoPE on q and k as rope_reference (position p = *first_position + t, angle = f32(p) ·
// inv_freq[i]; bf16: cos, sin, each product and the sum rounded), then the rotated k and v of
// the `tokens` new positions written into the cache rows *first_position + t. q is rotated in
// place; k and v are read only. The caller keeps *first_position + tokens <= the cache's
// capacity (a token past it is skipped, below). cudaErrorInvalidValue unless head_dim is even and
// at most 256, heads + kv_heads <= 262 140 and sequences divides tokens.
struct RopeAppendJob {
  void* q;        // [tokens, heads, head_dim]
  const void* k;  // [tokens, kv_heads, head_dim]
  const void* v;  // [tokens, kv_heads, head_dim]
  std::int64_t tokens;
  std::int64_t heads;
  std::int64_t kv_heads;
  std::int64_t head_dim;               // even, at most 256
  const std::int32_t* first_position;  // device int32
  const float* inv_freq;               // [head_dim / 2]
  void* k_cache;                       // [capacity, kv_heads, head_dim]
  void* v_cache;                       // [capacity, kv_heads, head_dim]
  DType dtype;                         // of q, k, v and the cache
  // Rows of the cache: a token whose position falls outside them is neither rotated nor
  // written (the host checks positions first; this keeps a bad one from writing out of bounds).
  std::int64_t capacity;
  // Several sequences at once: the tokens are `sequences` runs of tokens / sequences, run b at
  // positions *first_position + i and its cache rows beginning at row b · capacity of k_cache
  // and v_cache (which then hold [sequences, capacity, kv_heads, head_dim]).
  std::int64_t sequences = 1;
};
cudaError_t rope_append_kv(const RopeAppendJob& job, cudaStream_t stream);

// Causal grouped-query attention of `tokens` queries at positions *first_position + t over the
// cache rows [0, *first_position + tokens), as attention_reference: scores and softmax in f32;
// with bf16, the unnormalised probabilities rounded to bf16 before they multiply V and the
// output rounded to bf16. `capacity` (the cache's rows) bounds the positions and sizes the
// grid, so that the launch shape does not depend on the position. A batch of one token (decode)
// splits the keys over several blocks and combines their partial softmaxes (flash-decoding);
// more tokens run a tiled kernel, on tensor cores where attention_forward_mma_takes the job (bf16
// at head_dim 64 or 128 without a window: attention_forward_mma.h). Decode takes several
// sequences in one call (`sequences`): q and out then hold [sequences, heads, head_dim], the
// caches [sequences, capacity, kv_heads, head_dim], every sequence at *first_position. A decode
// reads *first_position before it waits for the kernel before it (overlapped_launch.cuh), so
// that no kernel of the stream may write it (a copy from the host may).
// cudaErrorInvalidValue unless 0 < head_dim <= 256 is a multiple of 8, kv_heads divides heads <=
// 65535, capacity > 0, for one token workspace is set, and 1 <= sequences <= 65535 with one token
// per sequence where sequences > 1.
struct AttentionJob {
  const void* q;        // [tokens, heads, head_dim], rotated
  const void* k_cache;  // [capacity, kv_heads, head_dim]
  const void* v_cache;  // [capacity, kv_heads, head_dim]
  std::int64_t tokens;
  std::int64_t heads;
  std::int64_t kv_heads;  // divides heads
  std::int64_t head_dim;  // at most 256, a multiple of 8
  const std::int32_t* first_position;
  std::int64_t capacity;
  std::int64_t window;  // a query sees keys at positions > its own − window; 0: unlimited
  float scale;
  void* out;  // [tokens, heads, head_dim]
  DType dtype;
  float* workspace;  // attention_workspace_floats(...) floats
  std::int64_t sequences = 1;
};
// The decode partials, sequences × heads × chunks × (head_dim + 2) floats (chunks of 32 keys,
// or more so that there are at most 256: ceil(capacity / 32) up to 8 192 rows); the tiled kernel
// needs none. `tokens` does not change it: a call with one token takes the decode
// path however many tokens the workspace was sized for.
std::size_t attention_workspace_floats(std::int64_t tokens, std::int64_t heads,
                                       std::int64_t head_dim, std::int64_t capacity,
                                       std::int64_t sequences = 1);
cudaError_t attention(const AttentionJob& job, cudaStream_t stream);

// A decode step's rope_append_kv(rope) and then attention(job), with the launch between them
// saved: each block of the decode rotates the queries it reads, and the block whose keys hold the
// position rotates the token's k and appends it and v to the cache. The caches end as
// rope_append_kv leaves them and out holds attention's result to the bit, but q is left
// unrotated. Requires one token per sequence (job.tokens 1, rope.tokens == rope.sequences ==
// job.sequences) and the same heads, kv_heads, head_dim, capacity, dtype, position, q and caches
// in both jobs; cudaErrorInvalidValue where either job alone would be invalid or they disagree.
cudaError_t rope_append_and_attend(const RopeAppendJob& rope, const AttentionJob& job,
                                   cudaStream_t stream);

// gate[i] = silu(gate[i]) · up[i], i in [0, count); bf16: silu's result and the product rounded.
cudaError_t silu_mul(void* gate, const void* up, std::int64_t count, DType dtype,
                     cudaStream_t stream);

// out[i] = convert(in[i]) for i in [0, count); f32, f16 and bf16 each way, rounding to nearest
// even.
cudaError_t convert_floats(const void* in, DType in_dtype, void* out, DType out_dtype,
                           std::int64_t count, cudaStream_t stream);

}  // namespace kbit::kernels::cuda

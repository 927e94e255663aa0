// Host-side launchers of the CUDA backward kernels of training. Each computes what its CPU
// reference in kernels/cpu/llama_backward.h defines (the tests compare them on fresh random data),
// with the storage of the forward's launchers (llama_launchers.h): activations and their
// gradients in the activation dtype `dtype` (kF32 or kBF16), so a store rounds to it; arithmetic
// in f32; the gradients of weights (`dweight`) in f32, accumulated into.
//
// Every pointer is device memory. Each launcher queues its kernels on `stream` and returns the
// launch error (cudaSuccess when queued); none synchronises, allocates or reads device memory
// from the host. Results do not depend on the launch: no atomics, every sum in a fixed order, so
// the same inputs give the same bits (a resumed training run repeats the interrupted one).
//
// Several sequences of one length run as one call where a kernel needs positions or causality:
// `tokens` rows are `sequences` runs of tokens / sequences rows, each run at positions 0, 1, ...
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kbit/core/dtype.h"

namespace kbit::kernels::cuda {

// ---- rms_norm ----------------------------------------------------------------------------------
// For y = weight · x · r, r = rsqrt(mean(x²) + eps) per row of [rows, cols]:
//   dx = r · g − x · r³ · mean(g · x), g = weight · dy          written to dx
//   dweight[c] += Σ_rows dy · x · r                             when dweight is not nullptr
// dx may equal dy only without dweight (cudaErrorInvalidValue otherwise). `workspace` holds
// rms_norm_backward_workspace_floats(rows, cols) floats: each row's r, then partial sums of
// dweight over ranges of rows.
struct RmsNormBackwardJob {
  const void* x;        // [rows, cols], the forward's input
  const float* weight;  // [cols]
  const void* dy;       // [rows, cols]
  std::int64_t rows;
  std::int64_t cols;
  float eps;
  void* dx;        // [rows, cols]
  float* dweight;  // [cols], accumulated into; nullptr: frozen
  DType dtype;     // of x, dy and dx
  float* workspace;
};
std::size_t rms_norm_backward_workspace_floats(std::int64_t rows, std::int64_t cols);
cudaError_t rms_norm_backward(const RmsNormBackwardJob& job, cudaStream_t stream);

// ---- rope --------------------------------------------------------------------------------------
// d [tokens, heads, head_dim], the gradient with respect to values after RoPE, becomes the one
// with respect to the values before it: rotated by minus each position's angle (angle =
// f32(position) · inv_freq[i], element i paired with i + head_dim / 2, as rope_reference).
// cudaErrorInvalidValue unless head_dim is even and at most 256 and sequences divides tokens.
cudaError_t rope_backward(void* d, std::int64_t tokens, std::int64_t heads, std::int64_t head_dim,
                          const float* inv_freq /* [head_dim / 2] */, std::int64_t sequences,
                          DType dtype, cudaStream_t stream);

// ---- silu_mul ----------------------------------------------------------------------------------
// For out = silu(gate) · up over `count` elements: d_gate = d_out · up · silu'(gate) and
// d_up = d_out · silu(gate). d_gate may equal gate and d_up may equal up (each element is read
// before it is written).
cudaError_t silu_mul_backward(const void* gate, const void* up, const void* d_out,
                              std::int64_t count, void* d_gate, void* d_up, DType dtype,
                              cudaStream_t stream);

// ---- cross_entropy -----------------------------------------------------------------------------
// For rows of logits [rows, vocab] (of `dtype`) with labels [rows] (each in [0, vocab) or −100,
// the ignore index): row_loss[r] = logsumexp(z) − z_label in f32 (0 for an ignored row), and the
// row of logits overwritten by gradient_scale · (softmax(z) − onehot(label)) (0 for an ignored
// row), as cross_entropy_reference. Labels are valid (the host checks them first).
cudaError_t cross_entropy_backward(void* logits, const std::int32_t* labels, std::int64_t rows,
                                   std::int64_t vocab, float gradient_scale,
                                   float* row_loss /* [rows] */, DType dtype, cudaStream_t stream);

// ---- attention ---------------------------------------------------------------------------------
// The backward of causal grouped-query self-attention over each of `sequences` sequences of
// tokens / sequences rows (query t of a sequence sees its keys 0..t; no cache offset, no
// window), as attention_backward_reference: every probability recomputed from q and k (no
// stored probabilities), in f32. bf16 at head_dim 64 and 128 with 16-byte aligned arrays runs on
// tensor cores, which multiply P and dS rounded to bf16 as FlashAttention-2 does (at head_dim
// 128 only where a block may take 103 KiB of shared memory: sm_80 and sm_90, not sm_86 or
// sm_89). dq, dk and dv are overwritten, the same bits for the same inputs (no atomics).
// cudaErrorInvalidValue (and nothing launched) unless every pointer is set, tokens > 0,
// 0 < heads <= 65535, kv_heads divides heads, 0 < head_dim <= 256 is a multiple of 8, sequences
// divides tokens and dtype is kF32 or kBF16.
struct AttentionBackwardJob {
  const void* q;      // [tokens, heads, head_dim], rotated
  const void* k;      // [tokens, kv_heads, head_dim], rotated
  const void* v;      // [tokens, kv_heads, head_dim]
  const void* out;    // [tokens, heads, head_dim], the forward's output
  const void* d_out;  // [tokens, heads, head_dim]
  std::int64_t tokens;
  std::int64_t heads;
  std::int64_t kv_heads;  // divides heads; query head h reads kv head h / (heads / kv_heads)
  std::int64_t head_dim;
  float scale;
  void* dq;     // [tokens, heads, head_dim]
  void* dk;     // [tokens, kv_heads, head_dim]
  void* dv;     // [tokens, kv_heads, head_dim]
  DType dtype;  // of every tensor above
  // attention_backward_workspace_floats(...) floats, written by the launch before it reads them:
  // each query's log-sum-exp of its scaled scores, [heads, tokens], then rowsum(d_out ∘ out),
  // [heads, tokens]
  float* workspace;
  std::int64_t sequences = 1;
};
// 2 · tokens · heads; 0 unless tokens and heads are positive.
std::size_t attention_backward_workspace_floats(std::int64_t tokens, std::int64_t heads,
                                                std::int64_t head_dim);
cudaError_t attention_backward(const AttentionBackwardJob& job, cudaStream_t stream);

}  // namespace kbit::kernels::cuda

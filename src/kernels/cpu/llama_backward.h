// Backward kernels of the Llama forward (llama_ops.h), in f32: for each op, the gradient of a loss
// with respect to the op's inputs given the gradient with respect to its output (the d* arrays).
// These are the reference kernels, the definitions, written to be read; the CUDA kernels of
// training (kernels/cuda/llama_backward_launchers.h, lora_launchers.h and linear_4bit's input
// gradient) are checked against them as the forward's are.
//
//   linear      y = x · Wᵀ                       dx = dy · W,  dW += dyᵀ · x
//   lora        y += s · (x̃ · Aᵀ) · Bᵀ,           h = x̃ · Aᵀ, dh = s · dy · B: dB += s · dyᵀ · h,
//               x̃ = keep ⊙ x (dropout; keep = 1     dA += dhᵀ · x̃, dx += keep ⊙ (dh · A)
//               without it)
//   rms_norm    y = w · x · r, r = (mean(x²) + eps)^-½, per row
//               dx = r · g − x · r³ · mean(g · x), g = w · dy;  dw += Σ_rows dy · x · r
//   rope        rotation by the position's angle  dx = rotation by minus that angle of dy
//   attention   causal grouped-query self-attention over one sequence (no cache offset)
//   silu_mul    out = silu(gate) · up            d_gate = d_out · up · silu'(gate),
//                                               d_up = d_out · silu(gate)
//   cross_entropy   mean over labelled rows of logsumexp(z) − z_label
#pragma once

#include <cstdint>

#include "kbit/core/execution.h"
#include "kernels/cpu/llama_ops.h"

namespace kbit::kernels::cpu {

// PyTorch's ignore_index: a row with this label counts neither in the loss nor in the mean.
inline constexpr std::int32_t kIgnoreLabel = -100;

// ---- linear ------------------------------------------------------------------------------------
struct LinearBackwardJob {
  const float* x;       // [rows, in_features], the forward's input
  const float* weight;  // [out_features, in_features]
  const float* dy;      // [rows, out_features]
  std::int64_t rows;
  std::int64_t in_features;
  std::int64_t out_features;
  float* dx;       // [rows, in_features], overwritten; nullptr: not wanted
  float* dweight;  // [out_features, in_features], accumulated into; nullptr: frozen
};
void linear_backward_reference(const LinearBackwardJob& job);

// linear_backward_reference's dweight as the fast kernels compute it: dweight [out_features,
// in_features] += dyᵀ · x over `rows` rows (x [rows, in_features], dy [rows, out_features]), as
// OpenBLAS products (kernels/cpu/blas.h) of fixed panels of dweight split over options.threads;
// the same bits for any thread count. With CpuKernel::kReference, the reference kernel.
void linear_weight_gradient_op(const float* x, const float* dy, std::int64_t rows,
                               std::int64_t in_features, std::int64_t out_features, float* dweight,
                               const ExecutionOptions& options);

// ---- lora --------------------------------------------------------------------------------------
// The LoRA term of a Linear (PEFT's forward, spec 9.5): y += scaling · (dropout(x) · Aᵀ) · Bᵀ,
// dropout(x) = keep ⊙ x with keep the dropout's factors (0 for a dropped element, 1 / (1 − p)
// for a kept one), or x itself without dropout.
struct LoraBackwardJob {
  const float* x;   // [rows, in_features], the Linear's input
  const float* a;   // lora_A [rank, in_features]
  const float* b;   // lora_B [out_features, rank]
  const float* dy;  // [rows, out_features]
  std::int64_t rows;
  std::int64_t in_features;
  std::int64_t out_features;
  std::int64_t rank;
  float scaling;  // lora_alpha / rank, or / sqrt(rank) with rsLoRA
  float* da;      // [rank, in_features], accumulated into
  float* db;      // [out_features, rank], accumulated into
  float* dx;      // [rows, in_features], accumulated into (the base Linear's dx is added to it);
                  // nullptr: not wanted
  const float* keep = nullptr;  // [rows, in_features], the forward's dropout factors; nullptr: none
};
void lora_backward_reference(const LoraBackwardJob& job);

// ---- rms_norm ----------------------------------------------------------------------------------
struct RmsNormBackwardJob {
  const float* x;       // [rows, cols], the forward's input
  const float* weight;  // [cols]
  const float* dy;      // [rows, cols]
  std::int64_t rows;
  std::int64_t cols;
  float eps;
  float* dx;       // [rows, cols], overwritten; may equal dy
  float* dweight;  // [cols], accumulated into; nullptr: frozen
};
void rms_norm_backward_reference(const RmsNormBackwardJob& job);

// ---- rope --------------------------------------------------------------------------------------
// job.x holds the gradient with respect to the rotated values and becomes the gradient with
// respect to the values before rotation (the rotation's transpose is its inverse). Requires
// job.round_bf16 false.
void rope_backward_reference(const RopeJob& job);

// ---- attention ---------------------------------------------------------------------------------
struct AttentionBackwardJob {
  const float* q;      // [tokens, heads, head_dim], rotated
  const float* k;      // [tokens, kv_heads, head_dim], rotated
  const float* v;      // [tokens, kv_heads, head_dim]
  const float* d_out;  // [tokens, heads, head_dim]
  std::int64_t tokens;
  std::int64_t heads;
  std::int64_t kv_heads;  // divides heads; query head h reads kv head h / (heads / kv_heads)
  std::int64_t head_dim;
  float scale;  // as the forward's
  float* dq;    // [tokens, heads, head_dim], overwritten
  float* dk;    // [tokens, kv_heads, head_dim], overwritten
  float* dv;    // [tokens, kv_heads, head_dim], overwritten
};
// Recomputes each query's softmax (no stored probabilities), as a flash-attention backward does.
void attention_backward_reference(const AttentionBackwardJob& job);

// ---- silu_mul ----------------------------------------------------------------------------------
// For i in [0, count): d_gate[i] and d_up[i] from the forward's inputs gate and up and d_out.
void silu_mul_backward_reference(const float* gate, const float* up, const float* d_out,
                                 std::int64_t count, float* d_gate, float* d_up);

// ---- cross_entropy -----------------------------------------------------------------------------
// For rows of logits [rows, vocab] with labels [rows] (each in [0, vocab) or kIgnoreLabel):
// returns Σ over labelled rows of logsumexp(z) − z_label, in double, and overwrites each labelled
// row of logits with gradient_scale · (softmax(z) − onehot(label)) and each ignored row with 0.
// The caller passes gradient_scale = 1 / (labelled rows of the whole batch), so that chunks of
// rows processed apart give the mean's gradient: full-vocabulary logits never exist for the whole
// batch at once.
double cross_entropy_reference(float* logits, const std::int32_t* labels, std::int64_t rows,
                               std::int64_t vocab, float gradient_scale);

}  // namespace kbit::kernels::cpu

// Host-side launchers of PEFT's LoRA term on a Linear (spec 9.5), forward and backward, for
// training on a CUDA device. The CPU reference of the backward is lora_backward_reference
// (kernels/cpu/llama_backward.h). As PEFT computes the term with its adapters upcast to f32
// (autocast_adapter_dtype) and the input cast to their dtype, everything here is f32 but the
// Linear's own activations, of the activation dtype `dtype` (kF32 or kBF16):
//
//   x̃ = keep ⊙ f32(x)                 [rows, in]    keep: the dropout's factors, or none
//   h = x̃ · Aᵀ                         [rows, rank]
//   y = round(y + scaling · h · Bᵀ)                  y: the base Linear's output, [rows, out]
//     (y = round(y + round(scaling · h · Bᵀ)) on a bitsandbytes base: term_rounded_first)
// and, given dy [rows, out]:
//   dB += scaling · dyᵀ · h    dh = scaling · dy · B    dA += dhᵀ · x̃
//   dx = round(dx + keep ⊙ (dh · A))                 dx: the base Linear's input gradient
//
// The products run as cuBLAS f32 GEMMs (never TF32) on the context's stream, the rest as
// elementwise kernels on it. Every pointer is device memory; nothing synchronises or allocates.
// The f32 scratch the calls take is the caller's: x̃ and h are the forward's results the backward
// reads again (kept, or recomputed by a second forward).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kbit/core/dtype.h"
#include "kbit/core/status.h"
#include "kernels/cuda/linear_launchers.h"

namespace kbit::kernels::cuda {

// One Linear's adapter in device memory.
struct LoraAdapterDevice {
  const float* a;  // lora_A [rank, in]
  const float* b;  // lora_B [out, rank]
  std::int64_t rank;
  float scaling;  // lora_alpha / rank, or / sqrt(rank) with rsLoRA
  // The base is a bitsandbytes layer (4-bit or int8): PEFT's LoRA for those casts the term to
  // the activation dtype before adding it (peft/tuners/lora/bnb.py), a second rounding in bf16;
  // a float base adds the f32 term and rounds once. As model/lora.h's add_lora_terms.
  bool term_rounded_first = false;
};

// The shape of one call: x [rows, in], y [rows, out].
struct LoraShape {
  std::int64_t rows;
  std::int64_t in;
  std::int64_t out;
};

// The forward: x̃ and h written, y updated in place. keep [rows, in] or nullptr; x_dropped f32
// [rows, in]; h f32 [rows, rank]; term f32 [rows, out], scratch.
Status lora_forward(LinearContext& context, const LoraAdapterDevice& adapter,
                    const LoraShape& shape, const void* x, const float* keep, DType dtype,
                    float* x_dropped, float* h, float* term, void* y);

// What the backward reads, writes and uses as scratch (all f32 unless said).
struct LoraBackwardBuffers {
  const float* x_dropped;  // [rows, in], the forward's x̃
  const float* h;          // [rows, rank], the forward's h
  const void* dy;          // [rows, out] of dtype
  const float* keep;       // [rows, in] or nullptr: the forward's
  float* da;               // [rank, in], accumulated into
  float* db;               // [out, rank], accumulated into
  void* dx;                // [rows, in] of dtype, accumulated into; nullptr: not wanted
  float* dy_f32;           // [rows, out] scratch
  float* dh;               // [rows, rank] scratch
  float* dx_term;          // [rows, in] scratch; unused without dx
};
Status lora_backward(LinearContext& context, const LoraAdapterDevice& adapter,
                     const LoraShape& shape, const LoraBackwardBuffers& buffers, DType dtype);

// The dropout's factors `keep` of one Linear's input, as LayerAdapters::draw_dropout
// (train/layer_pass.cc) draws them on the CPU for nn.Dropout(p): element i is dropped where
//   u_i = (random_bits(stream_seed, i) >> 11) · 2^-53 < p     (kbit::random_bits, in double)
// and keep[i] = 0 there, f32(1 / (1 − p)) elsewhere (0 everywhere for p = 1). stream_seed is the
// Linear's stream, random_bits(seed, j), which the caller derives on the host; the factors are
// then the CPU's bit for bit. keep f32 [count], device memory, written whole.
// Queues one kernel on `stream` and returns the launch error; cudaErrorInvalidValue, queueing
// nothing, for p outside [0, 1] (NaN included), count < 0, or keep null with count > 0.
cudaError_t lora_dropout_keep(float* keep, std::int64_t count, std::uint64_t stream_seed, double p,
                              cudaStream_t stream);

}  // namespace kbit::kernels::cuda

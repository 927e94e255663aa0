// Host-side launchers of PEFT's LoRA term on a Linear (spec 9.5), forward and backward, for
// training on a CUDA device. The CPU reference of the backward is lora_backward_reference
// (kernels/cpu/llama_backward.h). Two precisions (LoraPrecision):
//
// kF32, PEFT's computation without autocast: the adapters upcast to f32 (autocast_adapter_dtype)
// and the input cast to their dtype, so everything is f32 but the Linear's own activations, of
// the activation dtype `dtype` (kF32 or kBF16):
//   x̃ = keep ⊙ f32(x)                 [rows, in]    keep: the dropout's factors, or none
//   h = x̃ · Aᵀ                         [rows, rank]
//   y = round(y + scaling · h · Bᵀ)                  y: the base Linear's output, [rows, out]
//     (y = round(y + round(scaling · h · Bᵀ)) on a bitsandbytes base: term_rounded_first)
// and, given dy [rows, out]:
//   dB += scaling · dyᵀ · h    dh = scaling · dy · B    dA += dhᵀ · x̃
//   dx = round(dx + keep ⊙ (dh · A))                 dx: the base Linear's input gradient
// The products run as cuBLAS f32 GEMMs (never TF32).
//
// kBf16, as under torch.autocast(bfloat16), which transformers' Trainer with bf16=True runs
// (bf16 activations only): the products take A and B rounded to bf16 (the caller's copies a_bf16,
// b_bf16), x̃ = bf16(keep ⊙ x) (x itself without dropout), h and dh in bf16, on tensor cores with
// f32 accumulation. The GEMM adds the term to y itself, y = round(y + scaling · h · Bᵀ), one
// rounding where PyTorch rounds the term, its scaling and the sum (term_rounded_first does not
// apply); dh = bf16(scaling · dy · B) likewise; dA and dB accumulate in f32, as autocast's casts
// hand PyTorch's f32 parameters their gradients. No f32 copy of an activation is made.
//
// The calls queue on the context's stream; every pointer is device memory; nothing
// synchronises or allocates. The scratch the calls take is the caller's: x̃ and h are the
// forward's results the backward reads again (kept, or recomputed by a second forward).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kbit/core/dtype.h"
#include "kbit/core/status.h"
#include "kernels/cuda/linear_launchers.h"

namespace kbit::kernels::cuda {

enum class LoraPrecision { kF32, kBf16 };

// One Linear's adapter in device memory.
struct LoraAdapterDevice {
  const float* a;  // lora_A [rank, in]
  const float* b;  // lora_B [out, rank]
  std::int64_t rank;
  float scaling;  // lora_alpha / rank, or / sqrt(rank) with rsLoRA
  // kF32: the base is a bitsandbytes layer (4-bit or int8): PEFT's LoRA for those casts the term
  // to the activation dtype before adding it (peft/tuners/lora/bnb.py), a second rounding in
  // bf16; a float base adds the f32 term and rounds once. As model/lora.h's add_lora_terms.
  bool term_rounded_first = false;
  LoraPrecision precision = LoraPrecision::kF32;
  // kBf16: a and b rounded to bf16 (convert_floats), [rank, in] and [out, rank]; else unused.
  const void* a_bf16 = nullptr;
  const void* b_bf16 = nullptr;
};

// The shape of one call: x [rows, in], y [rows, out].
struct LoraShape {
  std::int64_t rows;
  std::int64_t in;
  std::int64_t out;
};

// What the forward writes and uses as scratch. kF32: all f32. kBf16: x_dropped and h bf16, and
// x_dropped written only with dropout (without, x̃ is x); term unused.
struct LoraForwardBuffers {
  void* x_dropped;  // [rows, in]: x̃
  void* h;          // [rows, rank]
  float* term;      // [rows, out] scratch
};

// The forward: x̃ and h written, y updated in place. keep [rows, in] or nullptr.
Status lora_forward(LinearContext& context, const LoraAdapterDevice& adapter,
                    const LoraShape& shape, const void* x, const float* keep, DType dtype,
                    const LoraForwardBuffers& buffers, void* y);

// What the backward reads, writes and uses as scratch: f32 unless said; with kBf16, x_dropped,
// h and dh are bf16, dy_f32 is unused and dx_term is used only with dropout.
struct LoraBackwardBuffers {
  const void* x_dropped;  // [rows, in], the forward's x̃ (x itself for kBf16 without dropout)
  const void* h;          // [rows, rank], the forward's h
  const void* dy;         // [rows, out] of dtype
  const float* keep;      // [rows, in] or nullptr: the forward's
  float* da;              // [rank, in], accumulated into
  float* db;              // [out, rank], accumulated into
  void* dx;               // [rows, in] of dtype, accumulated into; nullptr: not wanted
  float* dy_f32;          // [rows, out] scratch
  void* dh;               // [rows, rank] scratch
  float* dx_term;         // [rows, in] scratch; unused without dx
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

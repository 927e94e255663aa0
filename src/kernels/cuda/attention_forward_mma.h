// The prefill forward of attention() (llama_launchers.h) on tensor cores, for the shapes of
// training and of the inference prefill: bf16 activations, head_dim 64 or 128, no window, one
// sequence of several tokens. attention() calls it for every job it takes; the other jobs keep
// llama_ops.cu's CUDA-core kernels.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/cuda/llama_launchers.h"

namespace kbit::kernels::cuda {

// Whether attention_forward_mma runs `job`, one that attention() accepts: dtype bf16, head_dim 64
// or 128, window 0, tokens > 1, sequences 1, q, k_cache, v_cache and out 16-byte aligned, and the
// kernel's shared memory within the device's (46 KiB at head_dim 64, 85 KiB at 128).
bool attention_forward_mma_takes(const AttentionJob& job);

// Queues the tensor-core kernel for a job attention_forward_mma_takes; the contract and the
// numerics are attention()'s, the probabilities' exponential computed as exp2f of scores scaled
// by scale · log2(e) (within f32 rounding of expf of the scaled scores).
cudaError_t attention_forward_mma(const AttentionJob& job, cudaStream_t stream);

}  // namespace kbit::kernels::cuda

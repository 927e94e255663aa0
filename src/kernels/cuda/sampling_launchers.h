// Host-side launchers of token sampling on the GPU, with the semantics of the CPU Sampler
// (kbit/generate/sampler.h: transformers' processors in transformers' order, ties included):
// repetition penalty, then greedy argmax, or temperature, top-k, top-p, min-p and a draw.
//
// The draw is inverse-transform sampling with a uniform number the caller supplies (the CPU
// Sampler's generator, so that a seed gives the same tokens on either device): the token is the
// first kept id, in id order, at which the cumulative exp(score − max) exceeds uniform · total.
//
// Every pointer is device memory; launchers queue work on `stream`, never synchronise or
// allocate, and return the launch error.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace kbit::kernels::cuda {

struct DeviceSamplingParams {
  float temperature = 1.0f;  // 0: greedy
  std::int64_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
};

// Bytes of scratch sample_token needs for a vocabulary of `vocab` on the current device (any
// alignment will do). 0 for a vocab outside [1, 2^31 - 1] or where the device cannot be queried.
std::size_t sampling_workspace_bytes(std::int64_t vocab);

// Chooses the next token from logits f32 [vocab] (modified in place, as Sampler::sample does)
// and writes it to *token. seen u8 [vocab]: nonzero for every id in the history (read only when
// repetition_penalty != 1; may be null otherwise). uniform in [0, 1) (unused when greedy).
// workspace: sampling_workspace_bytes(vocab) bytes, nothing in them expected. Returns
// cudaErrorInvalidValue, launching nothing, for parameters the CPU Sampler would refuse
// (SamplingParams::validate), a uniform outside [0, 1) or a missing pointer.
cudaError_t sample_token(float* logits, std::int64_t vocab, const std::uint8_t* seen,
                         const DeviceSamplingParams& params, double uniform, void* workspace,
                         std::int32_t* token, cudaStream_t stream);

// seen[tokens[i]] = 1 for i in [0, count). Token ids are valid ids of seen's vocabulary (the
// CPU Sampler skips others; here the host checks them before they reach the device).
cudaError_t mark_seen(std::uint8_t* seen, const std::int32_t* tokens, std::int64_t count,
                      cudaStream_t stream);

}  // namespace kbit::kernels::cuda

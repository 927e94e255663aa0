// The GPU side of LlamaModel (contract: kbit/model/llama.h): the weights in device memory and the
// forward pass as a sequence of kbit's CUDA kernels (kernels/cuda/), queued on the stream of the
// sequence's KvCache with no host synchronisation; a one-token step is captured in a CUDA graph
// at its first call and replayed after.
//
// Activations and the KV cache are stored in the activation dtype (f32 or bf16). Prompts run in
// chunks of at most kPrefillChunkTokens tokens per sequence, so the scratch a cache holds is
// bounded whatever the prompt length.
//
// LoRA adapters run unmerged, as on the CPU (model/lora.h): each term in f32 after its Linear's
// base product. With bf16 activations on a float base the GPU adds the term to the base output
// already rounded to bf16 where the CPU adds it to the f32 product: one more rounding, within
// the bf16 tolerances; on a bitsandbytes base both follow PEFT's rule and round the same way.
//
// This header is free of CUDA types, so that llama.cc compiles in builds without CUDA; there
// (llama_cuda_none.cc) create() fails with kUnimplemented.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kbit/core/status.h"
#include "kbit/core/tensor.h"
#include "kbit/model/llama.h"
#include "kbit/model/llama_config.h"
#include "model/linear_weight.h"

namespace kbit::model::cuda {

inline constexpr std::int64_t kPrefillChunkTokens = 512;
// Logit rows computed at once when every position's logits are asked for.
inline constexpr std::int64_t kLogitChunkRows = 64;

// One adapter's LoRA term on a Linear (model/lora.h), widened to f32 on the device.
struct DeviceLoraTerm {
  Tensor a;  // f32 [rank, in]
  Tensor b;  // f32 [out, rank]
  float scaling = 1.0f;
};

struct DeviceLinear {
  LinearWeight weight;  // on the device (a float weight in the activation dtype)
  Tensor bias;          // [out] in the activation dtype; empty: none
  // The adapters' terms, added in order after the base product; empty: none.
  std::vector<DeviceLoraTerm> lora;
};

struct DeviceLayer {
  Tensor input_norm;           // f32 [hidden] (bf16 values in a bf16 model)
  Tensor post_attention_norm;  // f32 [hidden]
  DeviceLinear q, k, v, o, gate, up, down;
  // The seven in kLinearsPerLayer order.
  std::array<const DeviceLinear*, kLinearsPerLayer> linears() const {
    return {&q, &k, &v, &o, &gate, &up, &down};
  }
  std::array<DeviceLinear*, kLinearsPerLayer> linears() {
    return {&q, &k, &v, &o, &gate, &up, &down};
  }
};

struct DeviceWeights {
  Tensor embed;  // [vocab, hidden] in the activation dtype
  // When tied and not quantized, lm_head's float weight views `embed`.
  DeviceLinear lm_head;
  Tensor final_norm;  // f32 [hidden]
  std::vector<DeviceLayer> layers;
};

class CudaLlama {
 public:
  // Takes the weights, all on `device`. numerics: the activation dtype (f32 or bf16), the
  // compute dtype of 4-bit layers and the int8 threshold. rounded_absmax: as
  // LlamaLoadOptions::rounded_absmax.
  static Result<std::unique_ptr<CudaLlama>> create(const LlamaConfig& config, Device device,
                                                   const LinearNumerics& numerics,
                                                   DeviceWeights weights, bool rounded_absmax);
  ~CudaLlama();
  CudaLlama(const CudaLlama&) = delete;
  CudaLlama& operator=(const CudaLlama&) = delete;

  // Bytes of the weights in device memory.
  std::size_t weight_bytes() const;

  // What create() was given (training reads the weights to run its own passes).
  const LlamaConfig& config() const;
  Device device() const;
  const LinearNumerics& numerics() const;
  const DeviceWeights& weights() const;

  // A cache for `batch` sequences of up to max_tokens positions each, with its stream and
  // scratch. On out-of-memory the error says what was needed and free, and what to try.
  Result<std::shared_ptr<KvCache::DeviceState>> new_cache_state(std::int64_t max_tokens,
                                                                std::int64_t batch) const;

  // Runs tokens [batch, per_sequence] (sequence-major) at positions start onward (the caller,
  // LlamaModel::forward, has checked ids, sizes and the logits' shape): logits f32
  // [batch · per_sequence or batch, vocab] on the host (waited for) or on this device (queued).
  Status forward(std::span<const std::int32_t> tokens, std::int64_t batch,
                 KvCache::DeviceState& state, std::int64_t start, TensorView logits,
                 bool all_positions) const;

  static Device device(const KvCache::DeviceState& state);
  static Stream stream(const KvCache::DeviceState& state);
  static std::size_t device_bytes(const KvCache::DeviceState& state);

 private:
  struct Impl;
  explicit CudaLlama(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kbit::model::cuda

namespace kbit::model {

// The GPU side of a loaded model; nullptr for a model on the CPU.
const cuda::CudaLlama* cuda_llama(const LlamaModel& model);

}  // namespace kbit::model

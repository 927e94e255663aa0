// A Llama-family causal LM (LlamaForCausalLM, MistralForCausalLM) run on the CPU or on a CUDA
// GPU, with the numerics of transformers' modeling_llama.py (spec 11.3): in f32, or with bf16
// activations as transformers computes with the model in torch.bfloat16
// (LlamaLoadOptions::activation_dtype).
//
// On the CPU the weights stay in the memory-mapped checkpoint in their stored dtype (bf16, f16 or
// f32) and are widened to f32 a panel or a row at a time inside the matmuls, so the resident
// memory is about the size of the files plus the KV cache and a few activations.
//
// On a GPU (LlamaLoadOptions::device) every weight is read from the mapping once and uploaded
// through pinned staging buffers: float weights in the activation dtype, quantized ones quantized
// on the GPU as they arrive (or uploaded as stored, for a bitsandbytes checkpoint), so the
// full-precision model never sits whole in host or device memory. The KV cache, the activations
// and the per-sequence scratch live on the device, with the cache (see KvCache); a one-token
// forward() replays a CUDA graph captured at its first call.
//
// Usage:
//   KBIT_ASSIGN_OR_RETURN(LlamaModel model, LlamaModel::load(dir, {}));
//   KBIT_ASSIGN_OR_RETURN(KvCache cache, model.new_cache(4096));
//   Tensor logits = ...;  // f32 [tokens, vocab]
//   KBIT_RETURN_IF_ERROR(model.forward(prompt_ids, cache, logits, /*all_positions=*/true));
//   ... then one token at a time, logits [1, vocab], the cache continuing the sequence.
//
// Threads: forward() splits its work over kbit's thread pool (ExecutionOptions::threads). The
// first prompt-sized matmul sets OpenBLAS to one thread, process-wide, since kbit threads the
// calls itself and OpenBLAS's own threads would oversubscribe the cores.
//
// Thread safety: a loaded LlamaModel is immutable; forward() may run concurrently from several
// threads as long as each call has its own KvCache. A KvCache is not safe to share between
// concurrent calls.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "kbit/core/execution.h"
#include "kbit/core/status.h"
#include "kbit/core/tensor.h"
#include "kbit/model/llama_config.h"
#include "kbit/model/quantize_options.h"

namespace kbit::model {

struct CpuLlama;  // the CPU model's weights and forward steps, internal (src/model/cpu_llama.h)
namespace cuda {
class CudaLlama;  // the GPU model's, internal (src/model/cuda/llama_cuda.h)
}

struct LlamaLoadOptions {
  // Where the model runs: the CPU, or a CUDA device (the weights and caches then live there).
  Device device = Device::cpu();
  // Which CPU kernels forward() uses and how many threads; kReference runs the plain scalar
  // kernels on one thread (slow; for checking the fast ones).
  ExecutionOptions execution;
  // kF32: every activation in f32. kBF16: what transformers does with dtype=torch.bfloat16 —
  // weights rounded to bf16 (unchanged when stored in bf16), and each op's output rounded to bf16
  // where transformers produces a bf16 tensor: the embedding, every Linear (f32 accumulation),
  // RMSNorm (rounded before and after its weight multiply), RoPE (cos/sin and each product and
  // sum), attention (bf16 probabilities times V, as flash attention), SwiGLU (silu and the
  // product), each residual add and the logits. The arithmetic stays f32 and the KV cache holds
  // the bf16 values as f32; the logits come back as f32 holding bf16 values. Anything else is
  // refused by load() with kInvalidArgument.
  DType activation_dtype = DType::kF32;
  // Quantize the Linear layers while loading, as transformers' BitsAndBytesConfig does: each
  // weight is read once from the mapped file and quantized (its pages then released), so memory
  // stays near the quantized size. nullopt: load the checkpoint as it is stored (float, or
  // already quantized by bitsandbytes, which is recognised by config.json's
  // quantization_config). Asking to quantize an already quantized checkpoint is an error.
  std::optional<QuantizeOptions> quantize;
  // The compute dtype of 4-bit Linear layers (bnb_4bit_compute_dtype: f32, f16 or bf16);
  // nullopt: the one of the quantization config (the options', or the checkpoint's).
  std::optional<DType> compute_dtype;
  // PEFT LoRA adapter folders (kbit/io/peft_adapter.h) applied to the Linear layers their configs
  // target, as PeftModel runs them unmerged (spec 9.5); several are summed, as PEFT sums its
  // active adapters. Each must fit the model (every targeted Linear has LoRA weights of its
  // shape), or load() fails naming the adapter, the tensor and both shapes. On a GPU their
  // weights are copied to the device in f32. Random weights (random()) take none.
  std::vector<std::filesystem::path> adapters;
  // On a GPU, 4-bit weights with a nested absmax (double quantization) also keep each block's
  // absmax rounded to the compute dtype (f16 or bf16), which the decode steps (up to 8 rows) read
  // in place of the nested form: the same results, decoding about 12% faster, for 2 bytes more a
  // block of 64 values (0.03 bytes a weight: an 8B model's 0.22 GB). false keeps only the nested
  // form (the smallest weights); training, which decodes no tokens, turns it off.
  bool rounded_absmax = true;
};

// The keys and values of every layer for the positions seen so far: per layer
// [capacity, num_key_value_heads, head_dim], in f32 on the CPU; on a GPU in the activation dtype,
// in device memory, together with everything one sequence needs there (a stream, activations,
// the Linear layers' scratch, the captured decode graph). Made by LlamaModel::new_cache; belongs
// to the model that made it. Move-only.
class KvCache {
 public:
  KvCache(KvCache&&) noexcept = default;
  KvCache& operator=(KvCache&&) noexcept = default;
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;
  ~KvCache();

  // Positions held (by each sequence): the next token forward() sees gets position size().
  std::int64_t size() const { return size_; }
  std::int64_t capacity() const { return capacity_; }
  // Sequences advancing together (on a GPU; 1 on the CPU).
  std::int64_t batch() const { return batch_; }
  // Forgets positions >= new_size (e.g. to start over, or to drop a rejected draft).
  // kInvalidArgument if new_size is negative or above size().
  Status truncate(std::int64_t new_size);

  // The device of the cache (its model's) and, on a GPU, the stream on which forward() queues
  // this sequence's work: work that reads forward()'s device outputs goes on the same stream.
  Device device() const;
  Stream stream() const;
  // Bytes of device memory the cache holds (keys, values and per-sequence scratch); 0 on the
  // CPU.
  std::size_t device_bytes() const;

  // The GPU side of a cache; defined by the CUDA model (model/cuda/).
  struct DeviceState;

 private:
  friend class LlamaModel;
  KvCache() = default;
  std::int64_t layers_ = 0;
  std::int64_t kv_heads_ = 0;
  std::int64_t head_dim_ = 0;
  std::int64_t capacity_ = 0;
  std::int64_t size_ = 0;
  std::int64_t batch_ = 1;
  std::vector<std::vector<float>> keys_;       // [layers][capacity * kv_heads * head_dim]
  std::vector<std::vector<float>> values_;     // likewise
  std::shared_ptr<DeviceState> device_state_;  // set on a GPU, where keys_ and values_ are empty
};

class LlamaModel {
 public:
  // Reads model_dir/config.json (see llama_config.h) and maps the safetensors weights (see
  // kbit/io/checkpoint.h). Every expected tensor must be present with its exact shape and a
  // float dtype, or for a checkpoint quantized by bitsandbytes, with the state-dict entries of
  // its format (spec 4.1, 6.2); errors name the folder, the tensor, what was expected and found.
  static Result<LlamaModel> load(const std::filesystem::path& model_dir,
                                 const LlamaLoadOptions& options);
  // A model of the shape config_path (a config.json) describes, with random weights made on the
  // GPU options.device (normal, std 0.02; norm weights around 1; from `seed`), then converted or
  // quantized as options say: for measuring shapes whose weights one does not have.
  // kUnimplemented for the CPU.
  static Result<LlamaModel> random(const std::filesystem::path& config_path,
                                   const LlamaLoadOptions& options, std::uint64_t seed);

  LlamaModel(LlamaModel&&) noexcept;
  LlamaModel& operator=(LlamaModel&&) noexcept;
  ~LlamaModel();

  const LlamaConfig& config() const;
  // How the Linear layers are quantized (from the options or the checkpoint); nullopt: float.
  const std::optional<io::BnbQuantizationConfig>& quantization() const;
  // Bytes of the weights as this model holds them (quantized data and statistics included).
  std::size_t weight_bytes() const;

  // Where the model runs, and the dtype of its activations (f32 or bf16).
  Device device() const;
  DType activation_dtype() const;

  // An empty cache for `batch` sequences (more than one on a GPU only) of up to max_tokens
  // positions each (prompt and generated tokens together).
  // kInvalidArgument if max_tokens < 1; kOutOfMemory if it cannot be allocated
  // (2 · layers · max_tokens · kv_heads · head_dim values, and on a GPU the scratch of one
  // prompt chunk); on a GPU the message says how much was needed and free, and what to try.
  Result<KvCache> new_cache(std::int64_t max_tokens, std::int64_t batch = 1) const;

  // Runs `tokens` (non-empty, each in [0, vocab_size)) at positions cache.size() onward, appends
  // their keys and values to `cache`, and writes f32 logits into `logits`: contiguous f32
  // [tokens.size(), vocab_size] when all_positions, else [1, vocab_size] for the last token only.
  // With a cache of batch B, tokens are [B, T] (sequence-major, the same count T for each
  // sequence) and the logits [B · T or B, vocab_size].
  // The logits may be host memory or, for a model on a GPU, memory of its device: then the call
  // returns with the work queued on cache.stream(), not waited for (host logits are waited for).
  // Fails with kInvalidArgument, leaving the cache unchanged, for a bad token id, a cache that is
  // full or from a model of another shape, or logits of the wrong dtype, shape or device.
  Status forward(std::span<const std::int32_t> tokens, KvCache& cache, TensorView logits,
                 bool all_positions) const;

 private:
  friend const CpuLlama* cpu_llama(const LlamaModel& model);
  friend const cuda::CudaLlama* cuda_llama(const LlamaModel& model);
  struct Impl;
  explicit LlamaModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kbit::model

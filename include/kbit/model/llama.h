// A Llama-family causal LM (LlamaForCausalLM, MistralForCausalLM) run on the CPU, with the
// numerics of transformers' modeling_llama.py (spec 11.3): in f32, or with bf16 activations as
// transformers computes with the model in torch.bfloat16 (LlamaLoadOptions::activation_dtype).
//
// The weights stay in the memory-mapped checkpoint in their stored dtype (bf16, f16 or f32) and
// are widened to f32 a panel or a row at a time inside the matmuls, so the resident memory is
// about the size of the files plus the KV cache and a few activations.
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

struct LlamaLoadOptions {
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
};

// The keys and values of every layer for the positions seen so far, in f32:
// per layer [capacity, num_key_value_heads, head_dim]. Made by LlamaModel::new_cache; belongs to
// the model that made it (or one of the same shape). Move-only.
class KvCache {
 public:
  KvCache(KvCache&&) noexcept = default;
  KvCache& operator=(KvCache&&) noexcept = default;
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  // Positions held: the next token forward() sees gets position size().
  std::int64_t size() const { return size_; }
  std::int64_t capacity() const { return capacity_; }
  // Forgets positions >= new_size (e.g. to start over, or to drop a rejected draft).
  // kInvalidArgument if new_size is negative or above size().
  Status truncate(std::int64_t new_size);

 private:
  friend class LlamaModel;
  KvCache() = default;
  std::int64_t layers_ = 0;
  std::int64_t kv_heads_ = 0;
  std::int64_t head_dim_ = 0;
  std::int64_t capacity_ = 0;
  std::int64_t size_ = 0;
  std::vector<std::vector<float>> keys_;    // [layers][capacity * kv_heads * head_dim]
  std::vector<std::vector<float>> values_;  // likewise
};

class LlamaModel {
 public:
  // Reads model_dir/config.json (see llama_config.h) and maps the safetensors weights (see
  // kbit/io/checkpoint.h). Every expected tensor must be present with its exact shape and a
  // float dtype, or for a checkpoint quantized by bitsandbytes, with the state-dict entries of
  // its format (spec 4.1, 6.2); errors name the folder, the tensor, what was expected and found.
  static Result<LlamaModel> load(const std::filesystem::path& model_dir,
                                 const LlamaLoadOptions& options);

  LlamaModel(LlamaModel&&) noexcept;
  LlamaModel& operator=(LlamaModel&&) noexcept;
  ~LlamaModel();

  const LlamaConfig& config() const;
  // How the Linear layers are quantized (from the options or the checkpoint); nullopt: float.
  const std::optional<io::BnbQuantizationConfig>& quantization() const;
  // Bytes of the weights as this model holds them (quantized data and statistics included).
  std::size_t weight_bytes() const;

  // An empty cache for up to max_tokens positions (prompt and generated tokens together).
  // kInvalidArgument if max_tokens < 1; kOutOfMemory if it cannot be allocated
  // (2 · layers · max_tokens · kv_heads · head_dim floats).
  Result<KvCache> new_cache(std::int64_t max_tokens) const;

  // Runs `tokens` (non-empty, each in [0, vocab_size)) at positions cache.size() onward, appends
  // their keys and values to `cache`, and writes f32 logits into `logits`: contiguous host f32
  // [tokens.size(), vocab_size] when all_positions, else [1, vocab_size] for the last token only.
  // Fails with kInvalidArgument, leaving the cache unchanged, for a bad token id, a cache that is
  // full or from a model of another shape, or logits of the wrong dtype or shape.
  Status forward(std::span<const std::int32_t> tokens, KvCache& cache, TensorView logits,
                 bool all_positions) const;

 private:
  struct Impl;
  explicit LlamaModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kbit::model

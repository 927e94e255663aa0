#include "train/causal_lm_backward.h"

#include <algorithm>
#include <string>

#include "kbit/core/random.h"
#include "kernels/cpu/llama_backward.h"

namespace kbit::train {
namespace {

namespace k = kbit::kernels::cpu;

// Full-vocabulary logits held at once (16 MiB of f32): positions per chunk of the loss.
constexpr std::int64_t kLogitsPerChunk = std::int64_t{1} << 22;

// The loss summed over one sequence's labelled targets from the last layer's output
// final_hidden [T, hidden], and its gradient times gradient_scale with respect to final_hidden
// (d_final [T, hidden], overwritten) and the weights `weights` wants of the final norm and
// lm_head: the final norm, lm_head and the cross-entropy, a chunk of labelled positions at a
// time. Requires at least one labelled target.
double head_loss_and_gradient(const model::CpuLlama& m, const ModelWeightGradients& weights,
                              const float* final_hidden, std::span<const std::int32_t> targets,
                              float gradient_scale, float* d_final) {
  const std::int64_t e = m.config.hidden_size;
  const std::int64_t vocab = m.config.vocab_size;
  const auto tokens = static_cast<std::int64_t>(targets.size());
  std::vector<float> normed(static_cast<std::size_t>(tokens * e));
  m.rms_norm(final_hidden, m.final_norm, tokens, normed.data());
  std::vector<std::int64_t> positions;
  for (std::int64_t t = 0; t < tokens; ++t) {
    if (targets[static_cast<std::size_t>(t)] != k::kIgnoreLabel) positions.push_back(t);
  }
  const auto count = static_cast<std::int64_t>(positions.size());
  const std::int64_t chunk = std::clamp<std::int64_t>(kLogitsPerChunk / vocab, 1, count);
  std::vector<float> x(static_cast<std::size_t>(chunk * e));
  std::vector<float> dx(x.size());
  std::vector<float> logits(static_cast<std::size_t>(chunk * vocab));
  std::vector<std::int32_t> labels(static_cast<std::size_t>(chunk));
  std::vector<float> d_normed(normed.size(), 0.0f);
  double loss = 0.0;
  for (std::int64_t first = 0; first < count; first += chunk) {
    const std::int64_t rows = std::min(chunk, count - first);
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t t = positions[static_cast<std::size_t>(first + r)];
      std::copy_n(normed.begin() + t * e, e, x.begin() + r * e);
      labels[static_cast<std::size_t>(r)] = targets[static_cast<std::size_t>(t)];
    }
    m.linear(m.lm_head, {}, x.data(), rows, logits.data());
    // The logits become their gradient.
    loss += k::cross_entropy_reference(logits.data(), labels.data(), rows, vocab, gradient_scale);
    m.lm_head.weight.backward_input(logits.data(), rows, m.numerics, dx.data(), m.execution);
    if (weights.lm_head != nullptr) {
      k::linear_weight_gradient_op(x.data(), logits.data(), rows, e, vocab, weights.lm_head,
                                   m.execution);
    }
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t t = positions[static_cast<std::size_t>(first + r)];
      std::copy_n(dx.begin() + r * e, e, d_normed.begin() + t * e);
    }
  }
  k::rms_norm_backward_reference({final_hidden, m.final_norm.data(), d_normed.data(), tokens, e,
                                  static_cast<float>(m.config.rms_norm_eps), d_final,
                                  weights.final_norm});
  return loss;
}

// The loss summed over one sequence's labelled targets (at least one); adds the gradients of
// that sum times gradient_scale.
double sequence_loss_and_gradients(const model::CpuLlama& m, const TrainedParts& parts,
                                   std::span<const std::int32_t> tokens,
                                   std::span<const std::int32_t> targets, float gradient_scale,
                                   std::uint64_t dropout_seed) {
  const auto count = static_cast<std::int64_t>(tokens.size());
  const std::int64_t e = m.config.hidden_size;
  const auto layer_size = static_cast<std::size_t>(count * e);
  const std::size_t layers = m.layers.size();
  std::vector<LayerAdapters> adapters;
  adapters.reserve(layers);
  for (std::size_t l = 0; l < layers; ++l) {
    adapters.emplace_back(
        parts.lora.empty() ? std::array<LoraModule*, model::kLinearsPerLayer>{} : parts.lora[l],
        parts.lora_scaling);
    adapters.back().draw_dropout(parts.lora_dropout, random_bits(dropout_seed, l + 1), count);
  }
  const LayerWeightGradients frozen;
  const auto layer_weights = [&](std::size_t l) -> const LayerWeightGradients& {
    return parts.weights.layers.empty() ? frozen : parts.weights.layers[l];
  };
  std::vector<float> frequency_storage;
  const float* frequencies = m.rope_frequencies(count, frequency_storage);
  LayerPass pass(m, count, frequencies);

  // The checkpoints: layer l's input at l, the last layer's output at `layers`.
  std::vector<float> hidden((layers + 1) * layer_size);
  m.embed_tokens(tokens, hidden.data());
  for (std::size_t l = 0; l < layers; ++l) {
    pass.forward(m.layers[l], adapters[l], hidden.data() + l * layer_size,
                 hidden.data() + (l + 1) * layer_size);
  }
  std::vector<float> d_hidden(layer_size);
  const double loss = head_loss_and_gradient(m, parts.weights, hidden.data() + layers * layer_size,
                                             targets, gradient_scale, d_hidden.data());
  for (std::size_t l = layers; l-- > 0;) {
    pass.forward(m.layers[l], adapters[l], hidden.data() + l * layer_size, nullptr);
    pass.backward(m.layers[l], adapters[l], layer_weights(l), d_hidden.data());
  }
  if (parts.weights.embed != nullptr) {  // the embedding's rows scatter-add their positions'
    for (std::int64_t t = 0; t < count; ++t) {
      float* row = parts.weights.embed + tokens[static_cast<std::size_t>(t)] * e;
      const float* d_row = d_hidden.data() + t * e;
      for (std::int64_t i = 0; i < e; ++i) row[i] += d_row[i];
    }
  }
  return loss;
}

}  // namespace

Status check_trainable_model(const model::CpuLlama* cpu) {
  if (cpu == nullptr) {
    return unimplemented(
        "training runs on the CPU only for now; load the base model with --device cpu");
  }
  if (cpu->numerics.activation_dtype != DType::kF32) {
    return unimplemented(
        "training computes with f32 activations only for now; load the base model with "
        "activation dtype f32");
  }
  bool adapted = !cpu->lm_head.lora.empty();
  for (const model::Layer& layer : cpu->layers) {
    for (const model::Linear* linear : layer.linears()) adapted |= !linear->lora.empty();
  }
  if (adapted) {
    return unimplemented(
        "the base model was loaded with LoRA adapters; training on top of them is not "
        "implemented: load the base model alone");
  }
  return ok_status();
}

Status check_training_batch(const model::LlamaConfig& c, std::span<const std::int32_t> input_ids,
                            std::span<const std::int32_t> labels, std::int64_t batch) {
  const auto size = static_cast<std::int64_t>(input_ids.size());
  if (batch < 1 || size == 0 || size % batch != 0 || labels.size() != input_ids.size()) {
    return invalid_argument("loss_and_gradients: input_ids (" + std::to_string(size) +
                            " ids) and labels (" + std::to_string(labels.size()) +
                            ") must both be [batch, T] with batch " + std::to_string(batch) +
                            " and T >= 1");
  }
  for (std::size_t i = 0; i < input_ids.size(); ++i) {
    if (input_ids[i] < 0 || input_ids[i] >= c.vocab_size) {
      return invalid_argument("loss_and_gradients: token id " + std::to_string(input_ids[i]) +
                              " at index " + std::to_string(i) + " is outside the vocabulary [0, " +
                              std::to_string(c.vocab_size) + ")");
    }
    if (labels[i] != k::kIgnoreLabel && (labels[i] < 0 || labels[i] >= c.vocab_size)) {
      return invalid_argument("loss_and_gradients: label " + std::to_string(labels[i]) +
                              " at index " + std::to_string(i) + " is neither -100 nor in [0, " +
                              std::to_string(c.vocab_size) + ")");
    }
  }
  const std::int64_t tokens = size / batch;
  bool labelled = false;
  for (std::int64_t b = 0; b < batch; ++b) {
    for (std::int64_t t = 1; t < tokens; ++t) {
      labelled |= labels[static_cast<std::size_t>(b * tokens + t)] != k::kIgnoreLabel;
    }
  }
  if (!labelled) {
    return invalid_argument(
        "loss_and_gradients: no labelled targets: every label after the first position of each "
        "sequence is -100 (labels are shifted: labels[b][t + 1] is the target of position t)");
  }
  if (c.sliding_window && tokens > *c.sliding_window) {
    return unimplemented("loss_and_gradients: sequences of " + std::to_string(tokens) +
                         " tokens exceed the model's sliding window of " +
                         std::to_string(*c.sliding_window) +
                         ", which training does not implement yet; use shorter sequences");
  }
  return ok_status();
}

ShiftedTargets shift_labels(std::span<const std::int32_t> labels, std::int64_t batch) {
  const auto tokens = static_cast<std::int64_t>(labels.size()) / batch;
  ShiftedTargets shifted{std::vector<std::int32_t>(labels.size(), k::kIgnoreLabel), 0};
  for (std::int64_t b = 0; b < batch; ++b) {
    for (std::int64_t t = 0; t + 1 < tokens; ++t) {
      const std::int32_t label = labels[static_cast<std::size_t>(b * tokens + t + 1)];
      shifted.targets[static_cast<std::size_t>(b * tokens + t)] = label;
      shifted.labelled += label != k::kIgnoreLabel;
    }
  }
  return shifted;
}

double causal_lm_loss_and_gradients(const model::CpuLlama& m, const TrainedParts& parts,
                                    std::span<const std::int32_t> input_ids,
                                    std::span<const std::int32_t> labels, std::int64_t batch,
                                    std::uint64_t dropout_seed) {
  const auto tokens = static_cast<std::int64_t>(input_ids.size()) / batch;
  const auto [targets, labelled] = shift_labels(labels, batch);
  const float gradient_scale = 1.0f / static_cast<float>(labelled);
  double loss = 0.0;
  for (std::int64_t b = 0; b < batch; ++b) {
    const auto first = static_cast<std::size_t>(b * tokens);
    const std::span<const std::int32_t> sequence_targets(targets.data() + first,
                                                         static_cast<std::size_t>(tokens));
    if (std::all_of(sequence_targets.begin(), sequence_targets.end(),
                    [](std::int32_t target) { return target == k::kIgnoreLabel; })) {
      continue;  // no loss, no gradient
    }
    loss += sequence_loss_and_gradients(
        m, parts, input_ids.subspan(first, static_cast<std::size_t>(tokens)), sequence_targets,
        gradient_scale, random_bits(dropout_seed, static_cast<std::uint64_t>(b)));
  }
  return loss / static_cast<double>(labelled);
}

}  // namespace kbit::train

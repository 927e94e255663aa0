#include "kbit/train/lora_training_model.h"

#include <algorithm>
#include <string>

#include "kbit/core/random.h"
#include "kernels/cpu/llama_backward.h"
#include "model/cpu_llama.h"
#include "train/layer_pass.h"

namespace kbit::train {
namespace {

namespace k = kbit::kernels::cpu;

// Full-vocabulary logits held at once (16 MiB of f32): positions per chunk of the loss.
constexpr std::int64_t kLogitsPerChunk = std::int64_t{1} << 22;

Status check_model(const model::CpuLlama* cpu) {
  if (cpu == nullptr) {
    return unimplemented(
        "LoRA training runs on the CPU only for now; load the base model with --device cpu");
  }
  if (cpu->numerics.activation_dtype != DType::kF32) {
    return unimplemented(
        "LoRA training computes with f32 activations only for now; load the base model with "
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

Status check_module_fits(const LoraModule& module, const model::LinearModule& linear) {
  const auto a_size = static_cast<std::size_t>(module.rank * module.in_features);
  const auto b_size = static_cast<std::size_t>(module.out_features * module.rank);
  if (module.rank < 1 || module.in_features != linear.in_features ||
      module.out_features != linear.out_features || module.a.size() != a_size ||
      module.grad_a.size() != a_size || module.b.size() != b_size ||
      module.grad_b.size() != b_size) {
    return invalid_argument("LoRA module '" + module.name + "' has A " +
                            Shape{module.rank, module.in_features}.to_string() + " and B " +
                            Shape{module.out_features, module.rank}.to_string() + " (" +
                            std::to_string(module.a.size()) + " and " +
                            std::to_string(module.b.size()) +
                            " values), but the model's Linear is " +
                            Shape{linear.out_features, linear.in_features}.to_string() +
                            ": the state was made for another model");
  }
  return ok_status();
}

// The loss summed over one sequence's labelled targets from the last layer's output
// final_hidden [T, hidden], and its gradient times gradient_scale with respect to final_hidden
// (d_final [T, hidden], overwritten): the final norm, lm_head and the cross-entropy, a chunk of
// labelled positions at a time. Requires at least one labelled target.
double head_loss_and_gradient(const model::CpuLlama& m, const float* final_hidden,
                              std::span<const std::int32_t> targets, float gradient_scale,
                              float* d_final) {
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
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t t = positions[static_cast<std::size_t>(first + r)];
      std::copy_n(dx.begin() + r * e, e, d_normed.begin() + t * e);
    }
  }
  k::rms_norm_backward_reference({final_hidden, m.final_norm.data(), d_normed.data(), tokens, e,
                                  static_cast<float>(m.config.rms_norm_eps), d_final, nullptr});
  return loss;
}

}  // namespace

LoraTrainingModel::LoraTrainingModel(const model::LlamaModel& base, LoraState state)
    : base_(&base), state_(std::move(state)) {}
LoraTrainingModel::LoraTrainingModel(LoraTrainingModel&&) noexcept = default;
LoraTrainingModel& LoraTrainingModel::operator=(LoraTrainingModel&&) noexcept = default;
LoraTrainingModel::~LoraTrainingModel() = default;

Result<LoraTrainingModel> LoraTrainingModel::create(const model::LlamaModel& base,
                                                    LoraState state) {
  KBIT_RETURN_IF_ERROR(check_model(model::cpu_llama(base)));
  const model::LlamaConfig& config = base.config();
  const std::vector<model::LinearModule> linears = model::linear_modules(config);
  std::vector<std::vector<int>> module_of_linear(static_cast<std::size_t>(config.num_hidden_layers),
                                                 std::vector<int>(model::kLinearsPerLayer, -1));
  const std::span<const LoraModule> modules = state.modules();
  for (std::size_t i = 0; i < modules.size(); ++i) {
    // Every Linear but the last (lm_head) belongs to a decoder layer.
    const auto found = std::find_if(
        linears.begin(), linears.end() - 1,
        [&](const model::LinearModule& linear) { return linear.name == modules[i].name; });
    if (found == linears.end() - 1) {
      return invalid_argument("LoRA module '" + modules[i].name +
                              "' is not a Linear of the model's decoder layers; the state was "
                              "made for another model");
    }
    KBIT_RETURN_IF_ERROR(check_module_fits(modules[i], *found));
    const auto index = found - linears.begin();
    module_of_linear[static_cast<std::size_t>(index / model::kLinearsPerLayer)]
                    [static_cast<std::size_t>(index % model::kLinearsPerLayer)] =
                        static_cast<int>(i);
  }
  LoraTrainingModel model(base, std::move(state));
  model.module_of_linear_ = std::move(module_of_linear);
  return model;
}

Status LoraTrainingModel::check_batch(std::span<const std::int32_t> input_ids,
                                      std::span<const std::int32_t> labels,
                                      std::int64_t batch) const {
  const model::LlamaConfig& c = base_->config();
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
  if (c.sliding_window && tokens > *c.sliding_window) {
    return unimplemented("loss_and_gradients: sequences of " + std::to_string(tokens) +
                         " tokens exceed the model's sliding window of " +
                         std::to_string(*c.sliding_window) +
                         ", which training does not implement yet; use shorter sequences");
  }
  return ok_status();
}

Result<double> LoraTrainingModel::loss_and_gradients(std::span<const std::int32_t> input_ids,
                                                     std::span<const std::int32_t> labels,
                                                     std::int64_t batch) {
  KBIT_RETURN_IF_ERROR(check_batch(input_ids, labels, batch));
  const auto tokens = static_cast<std::int64_t>(input_ids.size()) / batch;
  // Sequence b's targets: position t predicts labels[b][t + 1]; the last position nothing.
  std::vector<std::int32_t> targets(input_ids.size(), k::kIgnoreLabel);
  std::int64_t labelled = 0;
  for (std::int64_t b = 0; b < batch; ++b) {
    for (std::int64_t t = 0; t + 1 < tokens; ++t) {
      const std::int32_t label = labels[static_cast<std::size_t>(b * tokens + t + 1)];
      targets[static_cast<std::size_t>(b * tokens + t)] = label;
      labelled += label != k::kIgnoreLabel;
    }
  }
  if (labelled == 0) {
    return invalid_argument(
        "loss_and_gradients: no labelled targets: every label after the first position of each "
        "sequence is -100 (labels are shifted: labels[b][t + 1] is the target of position t)");
  }
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
    loss += sequence_loss_and_gradients(input_ids.subspan(first, static_cast<std::size_t>(tokens)),
                                        sequence_targets, gradient_scale,
                                        random_bits(dropout_seed_, static_cast<std::uint64_t>(b)));
  }
  return loss / static_cast<double>(labelled);
}

double LoraTrainingModel::sequence_loss_and_gradients(std::span<const std::int32_t> tokens,
                                                      std::span<const std::int32_t> targets,
                                                      float gradient_scale,
                                                      std::uint64_t dropout_seed) {
  const model::CpuLlama& m = *model::cpu_llama(*base_);
  const auto count = static_cast<std::int64_t>(tokens.size());
  const auto layer_size = static_cast<std::size_t>(count * m.config.hidden_size);
  const std::size_t layers = m.layers.size();
  std::vector<LayerAdapters> adapters;
  adapters.reserve(module_of_linear_.size());
  for (const std::vector<int>& indices : module_of_linear_) {
    std::array<LoraModule*, model::kLinearsPerLayer> modules{};
    for (int j = 0; j < model::kLinearsPerLayer; ++j) {
      const int index = indices[static_cast<std::size_t>(j)];
      if (index >= 0) modules[j] = &state_.modules()[static_cast<std::size_t>(index)];
    }
    adapters.emplace_back(modules, state_.scaling());
    adapters.back().draw_dropout(state_.config().lora_dropout,
                                 random_bits(dropout_seed, adapters.size()), count);
  }
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
  const double loss = head_loss_and_gradient(m, hidden.data() + layers * layer_size, targets,
                                             gradient_scale, d_hidden.data());
  for (std::size_t l = layers; l-- > 0;) {
    pass.forward(m.layers[l], adapters[l], hidden.data() + l * layer_size, nullptr);
    pass.backward(m.layers[l], adapters[l], d_hidden.data());
  }
  return loss;
}

}  // namespace kbit::train

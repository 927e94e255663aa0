// kbit bench: prompt and generation throughput and peak device memory, in the manner of
// llama-bench: for each batch size, `-p` prompt tokens per sequence, then `-n` generated tokens
// per sequence (greedy, chosen on the device as `kbit generate` does), repeated and reported as
// medians. The model is a checkpoint (-m) or random weights of a config's shape
// (--random-weights), so that shapes can be measured without their weights.
#include <algorithm>
#include <chrono>
#include <random>
#include <vector>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_flags.h"
#include "kbit/core/allocator.h"
#include "kbit/core/memory_stats.h"
#include "kbit/generate/device_sampler.h"

namespace kbit::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchFlags {
  BenchModelFlags source;
  std::int64_t prompt_tokens = 512;
  std::int64_t generated_tokens = 128;
  std::vector<std::int64_t> batches = {1};
  int repetitions = 3;
  std::uint64_t seed = 0;
  bool json = false;
};

struct Measurement {
  std::int64_t batch = 0;
  std::vector<double> prompt_seconds;
  std::vector<double> decode_seconds;
  std::size_t kv_cache_bytes = 0;  // the cache with its per-sequence scratch
  std::size_t peak_device_bytes = 0;
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// One repetition: the prompt of every sequence, then the generated tokens, each step's tokens
// chosen from the last step's logits.
Status run_once(const model::LlamaModel& model, model::KvCache& cache,
                generate::DeviceSampler* sampler, const std::vector<std::int32_t>& prompt,
                const BenchFlags& flags, Measurement& m) {
  const std::int64_t vocab = model.config().vocab_size;
  KBIT_RETURN_IF_ERROR(cache.truncate(0));
  KBIT_ASSIGN_OR_RETURN(Tensor logits,
                        Tensor::empty({m.batch, vocab}, DType::kF32, model.device()));
  auto start = Clock::now();
  KBIT_RETURN_IF_ERROR(model.forward(prompt, cache, logits.view(), false));
  KBIT_RETURN_IF_ERROR(synchronize(model.device()));
  m.prompt_seconds.push_back(seconds_since(start));
  start = Clock::now();
  std::vector<std::int32_t> next(static_cast<std::size_t>(m.batch));
  for (std::int64_t step = 0; step < flags.generated_tokens; ++step) {
    if (sampler != nullptr) {
      KBIT_ASSIGN_OR_RETURN(next, sampler->sample_rows(logits.view()));
    } else {
      const float* row = logits.data_as<const float>();
      next[0] = static_cast<std::int32_t>(std::max_element(row, row + vocab) - row);
    }
    if (step + 1 == flags.generated_tokens) break;  // the last token needs no forward
    KBIT_RETURN_IF_ERROR(model.forward(next, cache, logits.view(), false));
  }
  m.decode_seconds.push_back(seconds_since(start));
  return ok_status();
}

Result<Measurement> measure(const model::LlamaModel& model, std::int64_t batch,
                            const BenchFlags& flags) {
  Measurement m;
  m.batch = batch;
  const std::int64_t vocab = model.config().vocab_size;
  std::mt19937_64 random(flags.seed);
  std::vector<std::int32_t> prompt(static_cast<std::size_t>(batch * flags.prompt_tokens));
  for (std::int32_t& id : prompt) id = static_cast<std::int32_t>(random() % vocab);
  const Device device = model.device();
  if (device.is_cuda()) cuda_allocator_reset_peak(device.index);
  KBIT_ASSIGN_OR_RETURN(model::KvCache cache,
                        model.new_cache(flags.prompt_tokens + flags.generated_tokens, batch));
  m.kv_cache_bytes = cache.device_bytes();
  std::unique_ptr<generate::DeviceSampler> sampler;
  if (device.is_cuda()) {
    generate::SamplingParams greedy;
    greedy.temperature = 0.0f;
    KBIT_ASSIGN_OR_RETURN(sampler,
                          generate::DeviceSampler::create(greedy, vocab, device, cache.stream()));
  }
  // The first run captures the decode graph and warms the caches; it is not counted.
  Measurement warmup{batch, {}, {}, 0, 0};
  KBIT_RETURN_IF_ERROR(run_once(model, cache, sampler.get(), prompt, flags, warmup));
  for (int r = 0; r < flags.repetitions; ++r) {
    KBIT_RETURN_IF_ERROR(run_once(model, cache, sampler.get(), prompt, flags, m));
  }
  if (device.is_cuda()) m.peak_device_bytes = cuda_allocator_stats(device.index).peak_in_use;
  return m;
}

// "nf4", "nf4_dq", "fp4", "int8", as ../shared/golden names the modes.
std::string quantized_mode_name(const io::BnbQuantizationConfig& q) {
  if (q.mode == io::BnbQuantMode::kInt8) return "int8";
  return std::string(quant::four_bit_type_name(q.four_bit_type)) + (q.double_quant ? "_dq" : "");
}

Status run(BenchFlags flags) {
  if (flags.prompt_tokens < 1 || flags.generated_tokens < 1 || flags.repetitions < 1) {
    return invalid_argument("-p, -n and --repetitions must each be at least 1");
  }
  for (std::int64_t batch : flags.batches) {
    if (batch < 1) return invalid_argument("-b: batch sizes must be at least 1");
  }
  KBIT_ASSIGN_OR_RETURN(const model::LlamaLoadOptions options,
                        model_load_options(flags.source.model));
  if (!options.device.is_cuda() &&
      std::any_of(flags.batches.begin(), flags.batches.end(), [](auto b) { return b > 1; })) {
    return invalid_argument("-b: batches of more than one sequence run on a GPU only");
  }
  const auto load_start = Clock::now();
  KBIT_ASSIGN_OR_RETURN(const model::LlamaModel model,
                        load_bench_model(flags.source, options, flags.seed));
  const double load_seconds = seconds_since(load_start);
  const std::string source = bench_model_source(flags.source);
  const std::string dtype = options.activation_dtype == DType::kBF16 ? "bf16" : "f32";
  const std::string mode =
      model.quantization() ? quantized_mode_name(*model.quantization()) : dtype;
  nlohmann::json out = {{"model", source},
                        {"device", model.device().to_string()},
                        {"mode", mode},
                        {"activation_dtype", dtype},
                        {"load_seconds", load_seconds},
                        {"weight_bytes", model.weight_bytes()},
                        {"prompt_tokens", flags.prompt_tokens},
                        {"generated_tokens", flags.generated_tokens},
                        {"repetitions", flags.repetitions},
                        {"results", nlohmann::json::array()}};
  if (model.device().is_cuda()) {
    KBIT_ASSIGN_OR_RETURN(const DeviceMemory memory, device_memory(model.device()));
    out["device_memory_total_bytes"] = memory.total;
  }
  if (!flags.json) {
    fmt::print("{} on {}: {}, weights {:.2f} GiB, loaded in {:.1f} s\n", source,
               model.device().to_string(), mode,
               static_cast<double>(model.weight_bytes()) / (1 << 30), load_seconds);
    fmt::print("{:>6} {:>14} {:>14} {:>16}\n", "batch", "prompt tok/s", "decode tok/s",
               "peak device GiB");
  }
  for (std::int64_t batch : flags.batches) {
    KBIT_ASSIGN_OR_RETURN(const Measurement m, measure(model, batch, flags));
    const double prompt_rate =
        static_cast<double>(batch * flags.prompt_tokens) / median(m.prompt_seconds);
    // Generating n tokens takes n - 1 forward steps after the prompt's.
    const double decode_rate =
        flags.generated_tokens > 1
            ? static_cast<double>(batch * (flags.generated_tokens - 1)) / median(m.decode_seconds)
            : 0.0;
    out["results"].push_back({{"batch", batch},
                              {"prompt_tokens_per_second", prompt_rate},
                              {"decode_tokens_per_second", decode_rate},
                              {"prompt_seconds", m.prompt_seconds},
                              {"decode_seconds", m.decode_seconds},
                              {"kv_cache_and_scratch_bytes", m.kv_cache_bytes},
                              {"peak_device_bytes", m.peak_device_bytes}});
    if (!flags.json) {
      fmt::print("{:>6} {:>14.1f} {:>14.1f} {:>16.2f}\n", batch, prompt_rate, decode_rate,
                 static_cast<double>(m.peak_device_bytes) / (1 << 30));
    }
  }
  if (flags.json) fmt::print("{}\n", out.dump());
  return ok_status();
}

}  // namespace

Action add_bench_command(CLI::App& app) {
  auto flags = std::make_shared<BenchFlags>();
  CLI::App* command = app.add_subcommand(
      "bench", "Prompt and generation speed and peak device memory (as llama-bench)");
  add_bench_model_flags(*command, flags->source);
  command->add_option("--threads", flags->source.model.threads, "CPU threads (0: all)");
  command->add_option("-p,--prompt-tokens", flags->prompt_tokens, "prompt tokens per sequence")
      ->capture_default_str();
  command->add_option("-n,--gen-tokens", flags->generated_tokens, "generated tokens per sequence")
      ->capture_default_str();
  command->add_option("-b,--batch", flags->batches, "batch sizes, comma-separated")
      ->delimiter(',')
      ->capture_default_str();
  command->add_option("-r,--repetitions", flags->repetitions, "timed runs (after one warm-up)")
      ->capture_default_str();
  command->add_option("--seed", flags->seed, "seed of the random prompt and weights")
      ->capture_default_str();
  command->add_flag("--json", flags->json, "print one JSON object");
  return [flags] { return run(*flags); };
}

}  // namespace kbit::cli

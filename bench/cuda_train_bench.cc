// GPU time of training's kernels at the shape of a Llama-3.1-8B layer (hidden 4 096, 32 query
// and 8 key-value heads of 128, MLP 14 336, vocabulary 128 256), bf16 activations, for the two
// batches of the fine-tuning benchmark: one sequence of 2 048 tokens and four of 512.
//
// Each case times one launcher call (llama_launchers.h, llama_backward_launchers.h,
// lora_launchers.h, linear_launchers.h), or the attention forward's one call per sequence,
// between two CUDA events, on normal random data made on the device (never zeros). Counters:
// TFLOP/s for the products, counting 2 flops per multiply-add of the math (for attention 4 per
// head dimension and causal (query, key) pair forward and 10 backward: the FLOP counts
// FlashAttention-2 reports, though the backward kernels recompute more); GB/s for the row
// kernels, the bytes they must read and write. Correctness is the tests' (each
// launcher's *_test.cc compares it with its CPU reference); this program only times.
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cuda_bench_timing.h"
#include "kbit/core/device.h"
#include "kbit/core/dtype.h"
#include "kbit/core/status.h"
#include "kbit/quant/blockwise_4bit.h"
#include "kernels/cuda/linear_launchers.h"
#include "kernels/cuda/llama_backward_launchers.h"
#include "kernels/cuda/llama_launchers.h"
#include "kernels/cuda/lora_launchers.h"
#include "kernels/cuda/quant_launchers.h"
#include "kernels/cuda/random_fill.h"

namespace {

namespace cuda = kbit::kernels::cuda;
using kbit::DType;

constexpr std::int64_t kHidden = 4096;
constexpr std::int64_t kHeads = 32;
constexpr std::int64_t kKvHeads = 8;
constexpr std::int64_t kHeadDim = 128;
constexpr std::int64_t kIntermediate = 14336;
constexpr std::int64_t kVocab = 128256;
constexpr std::int64_t kTokens = 2048;  // per step: 1 × 2048 or 4 × 512
constexpr std::int64_t kLoraRank = 16;
constexpr std::int64_t kCrossEntropyRows = 512;  // the logits of a chunk of positions

// Device memory, freed on destruction; filled with normal random values where asked.
class DeviceBuffer {
 public:
  DeviceBuffer(std::int64_t count, DType dtype, std::uint64_t seed = 0, float stddev = 1.0f)
      : bytes_(static_cast<std::size_t>(count) * kbit::dtype_size(dtype)) {
    ok_ = cudaMalloc(&data_, bytes_) == cudaSuccess;
    if (ok_ && seed != 0) {
      ok_ = cuda::fill_normal(data_, dtype, count, seed, 0.0f, stddev, nullptr) == cudaSuccess;
    }
  }
  ~DeviceBuffer() { cudaFree(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  bool ok() const { return ok_; }
  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  std::size_t bytes_;
  bool ok_ = false;
};

bool usable(benchmark::State& state) {
  if (kbit::cuda_available()) return true;
  state.SkipWithError("no CUDA device: these benchmarks run on a GPU");
  return false;
}

// Times launch() (run_timed: GB/s for `bytes` per call) and reports TFLOP/s for `flops` per call.
template <typename Launch>
void run_timed_flops(benchmark::State& state, double flops, double bytes, Launch launch) {
  const double gb_per_s = kbit::bench::run_timed(state, bytes, 1, [&](int) { return launch(); });
  if (gb_per_s > 0.0) state.counters["TFLOP/s"] = flops / (bytes / (gb_per_s * 1e9)) / 1e12;
}

// The launch error run_timed expects from a launcher that returns a Status.
cudaError_t launch_error(const kbit::Status& status) {
  return status.ok() ? cudaSuccess : cudaErrorUnknown;
}

// ---- Attention forward: argument 0 = sequences (1 × 2048 or 4 × 512), argument 1 = 1 to run
// the CUDA-core kernel instead of the tensor-core one, for comparison.

// As training runs it (CudaLoraTrainingModel): one attention() call per sequence, over the
// sequence's own cache of `length` rows, from position 0. A window as long as the sequence
// changes no result but keeps the job off the tensor-core path.
void BM_AttentionForward(benchmark::State& state) {
  if (!usable(state)) return;
  const std::int64_t sequences = state.range(0);
  const bool cuda_cores = state.range(1) != 0;
  const std::int64_t length = kTokens / sequences;
  const std::int64_t q_count = kTokens * kHeads * kHeadDim;
  const std::int64_t kv_count = kTokens * kKvHeads * kHeadDim;
  const DeviceBuffer q(q_count, DType::kBF16, 1), k(kv_count, DType::kBF16, 2),
      v(kv_count, DType::kBF16, 3), out(q_count, DType::kBF16), position(1, DType::kI32),
      workspace(static_cast<std::int64_t>(
                    cuda::attention_workspace_floats(length, kHeads, kHeadDim, length)),
                DType::kF32);
  if (cudaMemset(position.data(), 0, sizeof(std::int32_t)) != cudaSuccess) {
    state.SkipWithError("could not prepare the call");
    return;
  }
  // Row `row` of a bf16 buffer of rows of `heads` heads.
  const auto at_row = [](const DeviceBuffer& buffer, std::int64_t row, std::int64_t heads) {
    return buffer.as<kbit::bf16>() + row * heads * kHeadDim;
  };
  std::vector<cuda::AttentionJob> jobs;
  for (std::int64_t b = 0; b < sequences; ++b) {
    jobs.push_back({at_row(q, b * length, kHeads), at_row(k, b * length, kKvHeads),
                    at_row(v, b * length, kKvHeads), length, kHeads, kKvHeads, kHeadDim,
                    position.as<const std::int32_t>(), length, cuda_cores ? length : 0,
                    0.08838834764831845f, at_row(out, b * length, kHeads), DType::kBF16,
                    workspace.as<float>()});
  }
  const double pairs = static_cast<double>(sequences * kHeads) * static_cast<double>(length) *
                       static_cast<double>(length + 1) / 2.0;
  const double flops = 4.0 * static_cast<double>(kHeadDim) * pairs;
  // q, k, v read once, out written once.
  const double bytes = 2.0 * static_cast<double>(2 * q_count + 2 * kv_count);
  run_timed_flops(state, flops, bytes, [&] {
    for (const cuda::AttentionJob& job : jobs) {
      const cudaError_t error = cuda::attention(job, nullptr);
      if (error != cudaSuccess) return error;
    }
    return cudaSuccess;
  });
}

// ---- Attention backward: argument 0 = sequences (1 × 2048 or 4 × 512).

void BM_AttentionBackward(benchmark::State& state) {
  if (!usable(state)) return;
  const std::int64_t sequences = state.range(0);
  const std::int64_t q_count = kTokens * kHeads * kHeadDim;
  const std::int64_t kv_count = kTokens * kKvHeads * kHeadDim;
  const DeviceBuffer q(q_count, DType::kBF16, 1), k(kv_count, DType::kBF16, 2),
      v(kv_count, DType::kBF16, 3), out(q_count, DType::kBF16, 4), d_out(q_count, DType::kBF16, 5),
      dq(q_count, DType::kBF16), dk(kv_count, DType::kBF16), dv(kv_count, DType::kBF16),
      workspace(static_cast<std::int64_t>(
                    cuda::attention_backward_workspace_floats(kTokens, kHeads, kHeadDim)),
                DType::kF32);
  cuda::AttentionBackwardJob job{
      q.data(),  k.data(),  v.data(),  out.data(),   d_out.data(),
      kTokens,   kHeads,    kKvHeads,  kHeadDim,     0.08838834764831845f,
      dq.data(), dk.data(), dv.data(), DType::kBF16, workspace.as<float>(),
      sequences};
  const std::int64_t length = kTokens / sequences;
  const double pairs = static_cast<double>(sequences * kHeads) * static_cast<double>(length) *
                       static_cast<double>(length + 1) / 2.0;
  const double flops = 10.0 * static_cast<double>(kHeadDim) * pairs;
  // The bytes are only the clock for the TFLOP/s counter: q, k, v, out, d_out read once, the
  // gradients written once.
  const double bytes = 2.0 * static_cast<double>(4 * q_count + 2 * kv_count + q_count);
  run_timed_flops(state, flops, bytes, [&] { return cuda::attention_backward(job, nullptr); });
}

// ---- Row kernels.

void BM_RmsNormBackward(benchmark::State& state) {
  if (!usable(state)) return;
  const std::int64_t n = kTokens * kHidden;
  const DeviceBuffer x(n, DType::kBF16, 10), dy(n, DType::kBF16, 11), dx(n, DType::kBF16),
      weight(kHidden, DType::kF32, 12), dweight(kHidden, DType::kF32, 13),
      workspace(
          static_cast<std::int64_t>(cuda::rms_norm_backward_workspace_floats(kTokens, kHidden)),
          DType::kF32);
  const cuda::RmsNormBackwardJob job{x.data(),     weight.as<const float>(),
                                     dy.data(),    kTokens,
                                     kHidden,      1e-5f,
                                     dx.data(),    dweight.as<float>(),
                                     DType::kBF16, workspace.as<float>()};
  // x and dy read twice (the row pass and the weight's), dx written.
  const double bytes = 2.0 * static_cast<double>(5 * n);
  kbit::bench::report_fraction(state, kbit::bench::run_timed(state, bytes, 1, [&](int) {
                                 return cuda::rms_norm_backward(job, nullptr);
                               }));
}

void BM_CrossEntropyBackward(benchmark::State& state) {
  if (!usable(state)) return;
  const std::int64_t n = kCrossEntropyRows * kVocab;
  const DeviceBuffer logits(n, DType::kBF16, 20), row_loss(kCrossEntropyRows, DType::kF32);
  std::vector<std::int32_t> host_labels(static_cast<std::size_t>(kCrossEntropyRows));
  for (std::size_t r = 0; r < host_labels.size(); ++r) {
    host_labels[r] = static_cast<std::int32_t>((r * 7919) % kVocab);
  }
  DeviceBuffer labels(kCrossEntropyRows, DType::kI32);
  cudaMemcpy(labels.data(), host_labels.data(), host_labels.size() * sizeof(std::int32_t),
             cudaMemcpyHostToDevice);
  // The logits read and written in place; a call on its own output is as costly as on fresh
  // logits (the kernel's work does not depend on the values).
  const double bytes = 2.0 * 2.0 * static_cast<double>(n);
  kbit::bench::report_fraction(state, kbit::bench::run_timed(state, bytes, 1, [&](int) {
                                 return cuda::cross_entropy_backward(
                                     logits.data(), labels.as<const std::int32_t>(),
                                     kCrossEntropyRows, kVocab, 1.0f / kTokens,
                                     row_loss.as<float>(), DType::kBF16, nullptr);
                               }));
}

// ---- Linear products of a layer: argument 0 = in, argument 1 = out (W [out, in]).

// An NF4 weight of block 64 quantized on the device from random bf16 values (stddev 0.02).
struct Nf4Weight {
  std::unique_ptr<DeviceBuffer> packed, absmax;
  cuda::FourBitWeightDevice view{};
  bool ok = false;
};

Nf4Weight make_nf4_weight(std::int64_t in, std::int64_t out) {
  Nf4Weight weight;
  const DeviceBuffer values(in * out, DType::kBF16, 30, 0.02f);
  weight.packed = std::make_unique<DeviceBuffer>(in * out / 2, DType::kU8);
  weight.absmax = std::make_unique<DeviceBuffer>(in * out / 64, DType::kF32);
  weight.ok =
      values.ok() && weight.packed->ok() && weight.absmax->ok() &&
      cuda::quantize_4bit(values.data(), DType::kBF16, in * out, kbit::quant::FourBitType::kNf4, 64,
                          weight.packed->as<std::uint8_t>(), weight.absmax->as<float>(),
                          nullptr) == cudaSuccess &&
      cudaDeviceSynchronize() == cudaSuccess;
  weight.view = {weight.packed->as<const std::uint8_t>(),
                 kbit::quant::FourBitType::kNf4,
                 64,
                 weight.absmax->as<const float>(),
                 nullptr,
                 nullptr,
                 0.0f,
                 DType::kBF16};
  return weight;
}

// The forward product y = x · Wᵀ of the 4-bit Linear (the many-row path), for comparison.
void BM_Linear4bitForward(benchmark::State& state) {
  if (!usable(state)) return;
  const std::int64_t in = state.range(0), out = state.range(1);
  const Nf4Weight weight = make_nf4_weight(in, out);
  const DeviceBuffer x(kTokens * in, DType::kBF16, 31), y(kTokens * out, DType::kBF16);
  auto context = cuda::LinearContext::create(nullptr, kTokens, in, out);
  if (!weight.ok || !context.ok()) {
    state.SkipWithError("could not prepare the call");
    return;
  }
  const double flops = 2.0 * static_cast<double>(kTokens * in) * static_cast<double>(out);
  const double bytes = static_cast<double>(in * out) / 2.0;
  run_timed_flops(state, flops, bytes, [&] {
    return launch_error(cuda::linear_4bit(**context, x.data(), weight.view, nullptr, kTokens, in,
                                          out, DType::kBF16, y.data(), DType::kBF16));
  });
}

// The same product with a bf16 weight (cuBLAS alone): what the 4-bit path adds to.
void BM_LinearBf16Forward(benchmark::State& state) {
  if (!usable(state)) return;
  const std::int64_t in = state.range(0), out = state.range(1);
  const DeviceBuffer x(kTokens * in, DType::kBF16, 33), weight(in * out, DType::kBF16, 34, 0.02f),
      y(kTokens * out, DType::kBF16);
  auto context = cuda::LinearContext::create(nullptr, kTokens, in, out);
  if (!context.ok()) {
    state.SkipWithError(context.status().to_string().c_str());
    return;
  }
  const double flops = 2.0 * static_cast<double>(kTokens * in) * static_cast<double>(out);
  const double bytes = 2.0 * static_cast<double>(in * out);
  run_timed_flops(state, flops, bytes, [&] {
    return launch_error(cuda::linear_float(**context, x.data(), weight.data(), nullptr, kTokens, in,
                                           out, y.data(), DType::kBF16));
  });
}

// Its input gradient dx = dy · W (linear_4bit_backward_input).
void BM_Linear4bitInputGradient(benchmark::State& state) {
  if (!usable(state)) return;
  const std::int64_t in = state.range(0), out = state.range(1);
  const Nf4Weight weight = make_nf4_weight(in, out);
  const DeviceBuffer dy(kTokens * out, DType::kBF16, 32), dx(kTokens * in, DType::kBF16);
  const cuda::LinearContext::CallShape shape{kTokens, in, out, /*input_gradient=*/true};
  auto context = cuda::LinearContext::create(nullptr, std::span(&shape, 1));
  if (!weight.ok || !context.ok()) {
    state.SkipWithError("could not prepare the call");
    return;
  }
  const double flops = 2.0 * static_cast<double>(kTokens * in) * static_cast<double>(out);
  const double bytes = static_cast<double>(in * out) / 2.0;
  run_timed_flops(state, flops, bytes, [&] {
    return launch_error(cuda::linear_4bit_backward_input(**context, dy.data(), weight.view, kTokens,
                                                         in, out, DType::kBF16, dx.data(),
                                                         DType::kBF16));
  });
}

// The LoRA term of rank 16, forward then backward with dx, in f32 (third argument 0) or bf16 (1).
void BM_LoraForwardBackward(benchmark::State& state) {
  if (!usable(state)) return;
  const std::int64_t in = state.range(0), out = state.range(1);
  const bool bf16_lora = state.range(2) == 1;
  const DeviceBuffer x(kTokens * in, DType::kBF16, 40), y(kTokens * out, DType::kBF16, 41),
      dy(kTokens * out, DType::kBF16, 42), dx(kTokens * in, DType::kBF16, 43),
      a(kLoraRank * in, DType::kF32, 44, 0.02f), b(out * kLoraRank, DType::kF32, 45, 0.02f),
      da(kLoraRank * in, DType::kF32, 46), db(out * kLoraRank, DType::kF32, 47),
      x_dropped(kTokens * in, DType::kF32), h(kTokens * kLoraRank, DType::kF32),
      term(kTokens * out, DType::kF32), dy_f32(kTokens * out, DType::kF32),
      dh(kTokens * kLoraRank, DType::kF32), dx_term(kTokens * in, DType::kF32),
      a_bf16(kLoraRank * in, DType::kBF16, 48, 0.02f),
      b_bf16(out * kLoraRank, DType::kBF16, 49, 0.02f);
  auto context = cuda::LinearContext::create(nullptr, kTokens, in, out);
  if (!context.ok()) {
    state.SkipWithError(context.status().to_string().c_str());
    return;
  }
  cuda::LoraAdapterDevice adapter{a.as<const float>(), b.as<const float>(), kLoraRank, 2.0f};
  if (bf16_lora) {
    adapter.precision = cuda::LoraPrecision::kBf16;
    adapter.a_bf16 = a_bf16.data();
    adapter.b_bf16 = b_bf16.data();
  }
  const cuda::LoraShape shape{kTokens, in, out};
  // bf16 LoRA without dropout multiplies x itself.
  const cuda::LoraBackwardBuffers buffers{bf16_lora ? x.data() : x_dropped.data(),
                                          h.data(),
                                          dy.data(),
                                          nullptr,
                                          da.as<float>(),
                                          db.as<float>(),
                                          dx.data(),
                                          dy_f32.as<float>(),
                                          dh.data(),
                                          dx_term.as<float>()};
  // Six products of tokens × rank × (in or out) multiply-adds.
  const double flops =
      2.0 * 3.0 * static_cast<double>(kTokens * kLoraRank) * static_cast<double>(in + out);
  const double bytes = 2.0 * static_cast<double>(kTokens * (in + out));
  run_timed_flops(state, flops, bytes, [&] {
    const kbit::Status forward =
        cuda::lora_forward(**context, adapter, shape, x.data(), nullptr, DType::kBF16,
                           {x_dropped.data(), h.data(), term.as<float>()}, y.data());
    return launch_error(forward.ok()
                            ? cuda::lora_backward(**context, adapter, shape, buffers, DType::kBF16)
                            : forward);
  });
}

KBIT_GPU_BENCHMARK(BM_AttentionForward)->Args({1, 0})->Args({4, 0})->Args({1, 1})->Args({4, 1});
KBIT_GPU_BENCHMARK(BM_AttentionBackward)->Arg(1)->Arg(4);
KBIT_GPU_BENCHMARK(BM_RmsNormBackward);
KBIT_GPU_BENCHMARK(BM_CrossEntropyBackward);
// q/o (4096 → 4096), k/v (4096 → 1024), gate/up (4096 → 14336), down (14336 → 4096).
KBIT_GPU_BENCHMARK(BM_Linear4bitForward)
    ->Args({kHidden, kHidden})
    ->Args({kHidden, 1024})
    ->Args({kHidden, kIntermediate})
    ->Args({kIntermediate, kHidden});
KBIT_GPU_BENCHMARK(BM_LinearBf16Forward)->Args({kHidden, kIntermediate});
KBIT_GPU_BENCHMARK(BM_Linear4bitInputGradient)
    ->Args({kHidden, kHidden})
    ->Args({kHidden, 1024})
    ->Args({kHidden, kIntermediate})
    ->Args({kIntermediate, kHidden});
KBIT_GPU_BENCHMARK(BM_LoraForwardBackward)
    ->Args({kHidden, kHidden, 0})
    ->Args({kHidden, kIntermediate, 0})
    ->Args({kHidden, kHidden, 1})
    ->Args({kHidden, kIntermediate, 1});

}  // namespace

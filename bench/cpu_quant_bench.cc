// Throughput of the CPU quantization kernels through the public API, on 16M values:
// the reference kernel, and the fast kernel (the active instruction set, in the label) on one
// thread and on all threads. Bytes per second count the INPUT of each call (the float values
// for quantize, the codes and absmax for dequantize); "values/s" counts elements.
//
//   kbit_cpu_quant_bench --benchmark_min_time=0.2
//   KBIT_CPU_ISA=avx2 kbit_cpu_quant_bench   # the AVX2 kernels on an AVX-512 machine
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "kbit/core/cpu_features.h"
#include "kbit/core/dtype.h"
#include "kbit/core/execution.h"
#include "kbit/core/parallel.h"
#include "kbit/core/random.h"
#include "kbit/core/tensor.h"
#include "kbit/quant/blockwise_4bit.h"
#include "kbit/quant/blockwise_8bit.h"

namespace kbit {
namespace {

constexpr std::int64_t kValues = std::int64_t{1} << 24;

enum class Kernel { kReference, kFastOneThread, kFastAllThreads };

ExecutionOptions options_for(Kernel kernel) {
  ExecutionOptions options;
  options.cpu_kernel = kernel == Kernel::kReference ? CpuKernel::kReference : CpuKernel::kFast;
  options.threads = kernel == Kernel::kFastOneThread ? 1 : 0;
  return options;
}

std::string label_for(Kernel kernel) {
  if (kernel == Kernel::kReference) return "reference x 1 thread";
  const int threads = kernel == Kernel::kFastOneThread ? 1 : max_threads();
  return std::string(cpu_isa_name(active_cpu_isa())) + " x " + std::to_string(threads) +
         (threads == 1 ? " thread" : " threads");
}

Tensor empty_tensor(std::int64_t count, DType dtype) {
  Result<Tensor> tensor = Tensor::empty(Shape{count}, dtype);
  if (!tensor.ok()) std::abort();
  return std::move(tensor).value();
}

Tensor random_tensor(std::int64_t count, DType dtype) {
  Tensor tensor = empty_tensor(count, dtype);
  if (!fill_normal(tensor.view(), 1).ok()) std::abort();
  return tensor;
}

// Reports the work of one call per iteration and checks that the calls succeeded.
void finish(benchmark::State& state, Kernel kernel, std::size_t input_bytes, const Status& last) {
  if (!last.ok()) state.SkipWithError(last.to_string().c_str());
  state.SetLabel(label_for(kernel));
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(input_bytes));
  state.counters["values/s"] = benchmark::Counter(static_cast<double>(kValues),
                                                  benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Nf4Quantize(benchmark::State& state, DType dtype, Kernel kernel) {
  const Tensor input = random_tensor(kValues, dtype);
  const Tensor packed = empty_tensor(quant::packed_4bit_bytes(kValues), DType::kU8);
  const Tensor absmax = empty_tensor(quant::block_count(kValues, 64), DType::kF32);
  Status status;
  for (auto _ : state) {
    status = quant::quantize_4bit(input, quant::FourBitType::kNf4, 64, packed.view(), absmax.view(),
                                  options_for(kernel));
  }
  finish(state, kernel, input.nbytes(), status);
}

void BM_Nf4Dequantize(benchmark::State& state, DType dtype, Kernel kernel) {
  const Tensor input = random_tensor(kValues, dtype);
  const Tensor packed = empty_tensor(quant::packed_4bit_bytes(kValues), DType::kU8);
  const Tensor absmax = empty_tensor(quant::block_count(kValues, 64), DType::kF32);
  const Tensor output = empty_tensor(kValues, dtype);
  if (!quant::quantize_4bit(input, quant::FourBitType::kNf4, 64, packed.view(), absmax.view())
           .ok()) {
    std::abort();
  }
  Status status;
  for (auto _ : state) {
    status = quant::dequantize_4bit(packed, absmax, quant::FourBitType::kNf4, 64, output.view(),
                                    options_for(kernel));
  }
  finish(state, kernel, packed.nbytes() + absmax.nbytes(), status);
}

void BM_Dynamic8bitQuantize(benchmark::State& state, Kernel kernel) {
  const Tensor input = random_tensor(kValues, DType::kF32);
  const Tensor codes = empty_tensor(kValues, DType::kU8);
  const Tensor absmax = empty_tensor(quant::block_count(kValues, 256), DType::kF32);
  Status status;
  for (auto _ : state) {
    status = quant::quantize_8bit_blockwise(input, quant::DynamicMap::kSigned, 256, codes.view(),
                                            absmax.view(), options_for(kernel));
  }
  finish(state, kernel, input.nbytes(), status);
}

void BM_Dynamic8bitDequantize(benchmark::State& state, Kernel kernel) {
  const Tensor input = random_tensor(kValues, DType::kF32);
  const Tensor codes = empty_tensor(kValues, DType::kU8);
  const Tensor absmax = empty_tensor(quant::block_count(kValues, 256), DType::kF32);
  const Tensor output = empty_tensor(kValues, DType::kF32);
  if (!quant::quantize_8bit_blockwise(input, quant::DynamicMap::kSigned, 256, codes.view(),
                                      absmax.view())
           .ok()) {
    std::abort();
  }
  Status status;
  for (auto _ : state) {
    status = quant::dequantize_8bit_blockwise(codes, absmax, quant::DynamicMap::kSigned, 256,
                                              output.view(), options_for(kernel));
  }
  finish(state, kernel, codes.nbytes() + absmax.nbytes(), status);
}

std::string_view kernel_name(Kernel kernel) {
  switch (kernel) {
    case Kernel::kReference:
      return "reference";
    case Kernel::kFastOneThread:
      return "fast_1_thread";
    case Kernel::kFastAllThreads:
      return "fast_all_threads";
  }
  return "";
}

// One benchmark per format, dtype and kernel variant, timed by the wall clock (the threads run
// in parallel). A new benchmark is one more line here.
void register_benchmarks() {
  for (const Kernel kernel :
       {Kernel::kReference, Kernel::kFastOneThread, Kernel::kFastAllThreads}) {
    const std::string suffix(kernel_name(kernel));
    benchmark::internal::Benchmark* const added[] = {
        benchmark::RegisterBenchmark(("nf4_quantize/b64/f32/" + suffix).c_str(), BM_Nf4Quantize,
                                     DType::kF32, kernel),
        benchmark::RegisterBenchmark(("nf4_quantize/b64/bf16/" + suffix).c_str(), BM_Nf4Quantize,
                                     DType::kBF16, kernel),
        benchmark::RegisterBenchmark(("nf4_dequantize/b64/f32/" + suffix).c_str(), BM_Nf4Dequantize,
                                     DType::kF32, kernel),
        benchmark::RegisterBenchmark(("nf4_dequantize/b64/bf16/" + suffix).c_str(),
                                     BM_Nf4Dequantize, DType::kBF16, kernel),
        benchmark::RegisterBenchmark(("dynamic8bit_quantize/b256/f32/" + suffix).c_str(),
                                     BM_Dynamic8bitQuantize, kernel),
        benchmark::RegisterBenchmark(("dynamic8bit_dequantize/b256/f32/" + suffix).c_str(),
                                     BM_Dynamic8bitDequantize, kernel),
    };
    for (benchmark::internal::Benchmark* registered : added) {
      registered->Unit(benchmark::kMillisecond)->UseRealTime();
    }
  }
}

}  // namespace
}  // namespace kbit

int main(int argc, char** argv) {
  kbit::register_benchmarks();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

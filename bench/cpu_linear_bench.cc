// Throughput of the quantized Linear kernels (src/kernels/cpu/quantized_linear.h) at Llama-7B
// shapes, through their *_op entry points (dispatch and thread pool included), beside the bf16
// GEMV of the unquantized forward (llama_ops.h) on the same shape. Bytes per second count the
// WEIGHT bytes each call reads (packed codes and absmax or their nested form; int8 codes and
// row absmax; bf16 values): a GEMV at memory bandwidth shows the DRAM rate. "FLOP/s" counts
// 2 · rows · out · in. The weights come from DRAM (see kStreamedBytes).
//
//   kbit_cpu_linear_bench --benchmark_min_time=0.5
//   KBIT_NUM_THREADS=1 kbit_cpu_linear_bench   # one core
//   kbit_cpu_linear_bench --benchmark_repetitions=10 --benchmark_report_aggregates_only
//       # adds the fastest repetition ("_min"), the steadier figure on a shared machine
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "kbit/core/cpu_features.h"
#include "kbit/core/dtype.h"
#include "kbit/core/execution.h"
#include "kbit/core/parallel.h"
#include "kbit/core/random.h"
#include "kbit/core/tensor.h"
#include "kbit/quant/blockwise_4bit.h"
#include "kbit/quant/int8_rowwise.h"
#include "kbit/quant/nested_absmax.h"
#include "kernels/cpu/llama_ops.h"
#include "kernels/cpu/quantized_linear.h"

namespace kbit {
namespace {

struct Shape2d {
  std::int64_t out;
  std::int64_t in;
};

// Each benchmark cycles through copies of its weight totalling at least this much, more than
// any L3 cache (this machine's: 260 MiB), so that every call reads its weight from DRAM as a
// model's forward does.
constexpr double kStreamedBytes = 640.0 * (1 << 20);

void check(const Status& status) {
  if (!status.ok()) std::abort();
}

// Random normal values of dtype, n of them, as raw bytes.
std::vector<std::uint8_t> random_bytes(std::int64_t n, DType dtype, std::uint64_t seed,
                                       float stddev) {
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(n) * dtype_size(dtype));
  check(fill_normal(TensorView(bytes.data(), dtype, Shape{n}), seed, 0.0f, stddev));
  return bytes;
}

std::vector<float> random_activations(std::int64_t n) {
  std::vector<float> x(static_cast<std::size_t>(n));
  check(fill_normal(TensorView(x.data(), DType::kF32, Shape{n}), 2));
  for (float& v : x) v = bf16_to_f32(f32_to_bf16(v));
  return x;
}

// Calls run(copy) for copy 0, 1, ... of `copies` in turn, timed; sets the counters of a call
// that reads weight_bytes and does 2 · rows · out · in FLOP.
template <typename Run>
void time_calls(benchmark::State& state, double weight_bytes, std::size_t copies, Shape2d shape,
                std::int64_t rows, Run run) {
  std::size_t copy = 0;
  for (auto _ : state) {
    run(copy);
    copy = copy + 1 == copies ? 0 : copy + 1;
  }
  state.SetBytesProcessed(
      static_cast<std::int64_t>(static_cast<double>(state.iterations()) * weight_bytes));
  state.counters["FLOP/s"] =
      benchmark::Counter(2.0 * static_cast<double>(rows * shape.out * shape.in),
                         benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(std::string(cpu_isa_name(active_cpu_isa())) + " x " +
                 std::to_string(max_threads()) + " threads, " + std::to_string(copies) +
                 " weight copies");
}

std::size_t copies_for(double weight_bytes) {
  return static_cast<std::size_t>(kStreamedBytes / weight_bytes) + 1;
}

// A 4-bit weight as bitsandbytes stores it, block size 64.
struct FourBitStorage {
  std::vector<std::uint8_t> packed;
  std::vector<float> absmax;
  std::vector<std::uint8_t> absmax_codes;  // nested
  std::vector<float> nested_absmax;
  float offset = 0.0f;

  double bytes() const {
    return static_cast<double>(packed.size() + absmax.size() * 4 + absmax_codes.size() +
                               nested_absmax.size() * 4);
  }
  kernels::cpu::FourBitWeight weight(quant::FourBitType type) const {
    const bool nested = !absmax_codes.empty();
    return {packed.data(),
            type,
            64,
            nested ? nullptr : absmax.data(),
            nested ? absmax_codes.data() : nullptr,
            nested ? nested_absmax.data() : nullptr,
            offset,
            DType::kBF16};
  }
};

FourBitStorage quantized_4bit(quant::FourBitType type, bool nested, Shape2d shape) {
  const std::int64_t n = shape.out * shape.in;
  const std::int64_t blocks = quant::block_count(n, 64);
  std::vector<std::uint8_t> w = random_bytes(n, DType::kBF16, 1, 0.02f);
  FourBitStorage storage;
  storage.packed.resize(static_cast<std::size_t>(quant::packed_4bit_bytes(n)));
  storage.absmax.resize(static_cast<std::size_t>(blocks));
  check(quant::quantize_4bit(TensorView(w.data(), DType::kBF16, Shape{n}), type, 64,
                             TensorView(storage.packed.data(), DType::kU8, Shape{n / 2}),
                             TensorView(storage.absmax.data(), DType::kF32, Shape{blocks})));
  if (nested) {
    const std::int64_t nested_blocks = quant::block_count(blocks, quant::kNestedBlockSize);
    storage.absmax_codes.resize(static_cast<std::size_t>(blocks));
    storage.nested_absmax.resize(static_cast<std::size_t>(nested_blocks));
    check(quant::quantize_absmax_nested(
        TensorView(storage.absmax.data(), DType::kF32, Shape{blocks}),
        TensorView(storage.absmax_codes.data(), DType::kU8, Shape{blocks}),
        TensorView(storage.nested_absmax.data(), DType::kF32, Shape{nested_blocks}),
        &storage.offset));
    storage.absmax.clear();
  }
  return storage;
}

void BM_Linear4bit(benchmark::State& state, quant::FourBitType type, bool nested, Shape2d shape,
                   std::int64_t rows) {
  const FourBitStorage first = quantized_4bit(type, nested, shape);
  const std::vector<FourBitStorage> copies(copies_for(first.bytes()), first);
  const std::vector<float> x = random_activations(rows * shape.in);
  std::vector<float> y(static_cast<std::size_t>(rows * shape.out));
  time_calls(state, first.bytes(), copies.size(), shape, rows, [&](std::size_t copy) {
    const kernels::cpu::Linear4bitJob job{
        x.data(), copies[copy].weight(type), nullptr, rows, shape.in, shape.out, DType::kBF16,
        y.data()};
    kernels::cpu::linear_4bit_op(job, ExecutionOptions{});
  });
}

struct Int8Storage {
  std::vector<std::int8_t> codes;
  std::vector<float> row_absmax;
  std::vector<std::int32_t> row_sums;
};

void BM_LinearInt8(benchmark::State& state, Shape2d shape, std::int64_t rows, float threshold) {
  const std::int64_t n = shape.out * shape.in;
  std::vector<std::uint8_t> w = random_bytes(n, DType::kF16, 1, 0.02f);
  Int8Storage first{std::vector<std::int8_t>(static_cast<std::size_t>(n)),
                    std::vector<float>(static_cast<std::size_t>(shape.out)),
                    std::vector<std::int32_t>(static_cast<std::size_t>(shape.out))};
  check(quant::quantize_int8_rowwise(
      TensorView(w.data(), DType::kF16, Shape{shape.out, shape.in}), 0.0f,
      TensorView(first.codes.data(), DType::kI8, Shape{shape.out, shape.in}),
      TensorView(first.row_absmax.data(), DType::kF32, Shape{shape.out}), nullptr));
  kernels::cpu::int8_code_row_sums(first.codes.data(), shape.out, shape.in, first.row_sums.data());
  const double bytes = static_cast<double>(n + 4 * shape.out);
  const std::vector<Int8Storage> copies(copies_for(bytes), first);
  std::vector<float> x = random_activations(rows * shape.in);
  x[7] = 20.0f;  // one outlier column
  std::vector<float> y(static_cast<std::size_t>(rows * shape.out));
  time_calls(state, bytes, copies.size(), shape, rows, [&](std::size_t copy) {
    const Int8Storage& weight = copies[copy];
    const kernels::cpu::LinearInt8Job job{
        x.data(),     {weight.codes.data(), weight.row_absmax.data(), weight.row_sums.data()},
        nullptr,      DType::kF16,
        rows,         shape.in,
        shape.out,    threshold,
        DType::kBF16, y.data()};
    kernels::cpu::linear_int8_op(job, ExecutionOptions{});
  });
}

// The unquantized forward's linear on a bf16 weight (linear_gemv_avx512 / linear_blas).
void BM_LinearBf16(benchmark::State& state, Shape2d shape, std::int64_t rows) {
  const std::int64_t n = shape.out * shape.in;
  const std::vector<std::uint8_t> first = random_bytes(n, DType::kBF16, 1, 0.02f);
  const double bytes = static_cast<double>(first.size());
  const std::vector<std::vector<std::uint8_t>> copies(copies_for(bytes), first);
  const std::vector<float> x = random_activations(rows * shape.in);
  std::vector<float> y(static_cast<std::size_t>(rows * shape.out));
  time_calls(state, bytes, copies.size(), shape, rows, [&](std::size_t copy) {
    const kernels::cpu::LinearJob job{x.data(), copies[copy].data(), DType::kBF16, nullptr, rows,
                                      shape.in, shape.out,           y.data(),     true};
    kernels::cpu::linear_op(job, ExecutionOptions{});
  });
}

// "kind/OUTxIN/rowsR"
std::string benchmark_name(const char* kind, Shape2d shape, std::int64_t rows) {
  std::string name(kind);
  name.append("/").append(std::to_string(shape.out)).append("x").append(std::to_string(shape.in));
  return name.append("/rows").append(std::to_string(rows));
}

void register_benchmarks() {
  const Shape2d shapes[] = {{4096, 4096}, {11008, 4096}};
  for (const Shape2d shape : shapes) {
    for (const std::int64_t rows : {std::int64_t{1}, std::int64_t{64}}) {
      benchmark::internal::Benchmark* const added[] = {
          benchmark::RegisterBenchmark(benchmark_name("linear_bf16", shape, rows).c_str(),
                                       BM_LinearBf16, shape, rows),
          benchmark::RegisterBenchmark(benchmark_name("linear_4bit/nf4", shape, rows).c_str(),
                                       BM_Linear4bit, quant::FourBitType::kNf4, false, shape, rows),
          benchmark::RegisterBenchmark(benchmark_name("linear_4bit/nf4_dq", shape, rows).c_str(),
                                       BM_Linear4bit, quant::FourBitType::kNf4, true, shape, rows),
          benchmark::RegisterBenchmark(benchmark_name("linear_4bit/fp4", shape, rows).c_str(),
                                       BM_Linear4bit, quant::FourBitType::kFp4, false, shape, rows),
          benchmark::RegisterBenchmark(
              benchmark_name("linear_int8/threshold6", shape, rows).c_str(), BM_LinearInt8, shape,
              rows, 6.0f),
      };
      for (benchmark::internal::Benchmark* registered : added) {
        registered->Unit(benchmark::kMillisecond)
            ->UseRealTime()
            ->ComputeStatistics("min", [](const std::vector<double>& v) {
              return *std::min_element(v.begin(), v.end());
            });
      }
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

// The quantized Linear kernels' entry points (which variant, how many threads) and the pieces of
// their fast paths that are not specific to an instruction set: the activation preparation, the
// panel loop of the 4-bit kernels, the int8 activation quantization.
#include <algorithm>
#include <vector>

#include "kbit/core/cpu_features.h"
#include "kbit/core/parallel.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/element_access.h"
#include "kernels/cpu/int8_rowwise.h"
#include "kernels/cpu/llama_ops.h"
#include "kernels/cpu/quantized_linear.h"
#include "kernels/cpu/quantized_linear_parts.h"

namespace kbit::kernels::cpu {
namespace {

// Output features per parallel work item of the GEMV (the GEMM's are kSgemmPanelOut).
constexpr std::int64_t kGemvMinFeatures = 64;
// Activation values per parallel work item of the row-wise quantization.
constexpr std::int64_t kRowwiseValuesPerChunk = 1 << 14;

template <typename T>
void deinterleave_rounded(const float* x, std::int64_t count, std::int64_t chunk, float* out) {
  const std::int64_t half = chunk / 2;
  for (std::int64_t c = 0; c < count; c += chunk) {
    for (std::int64_t j = 0; j < half; ++j) {
      out[c + j] = to_f32(from_f32<T>(x[c + 2 * j]));
      out[c + half + j] = to_f32(from_f32<T>(x[c + 2 * j + 1]));
    }
  }
}

void run_4bit_reference_in_parallel(const Linear4bitJob& job, const ExecutionOptions& options) {
  parallel_for(
      job.out_features, kGemvMinFeatures,
      [&](std::int64_t begin, std::int64_t end) { linear_4bit_reference(job, begin, end); },
      options.threads);
}

// K-blocks of the GEMM path: about kSgemmPanelIn values, made of whole segments.
std::int64_t gemm_k_block(const Linear4bitJob& job) {
  const std::int64_t segment = std::min(job.weight.block_size, job.in_features);
  return std::max(segment, kSgemmPanelIn / segment * segment);
}

}  // namespace

// ---- linear_4bit -------------------------------------------------------------------------------

void prepare_4bit_activations(const Linear4bitJob& job, std::int64_t chunk, float* prepared) {
  visit_float_dtype(job.compute_dtype, [&](auto type_tag) {
    deinterleave_rounded<decltype(type_tag)>(job.x, job.rows * job.in_features, chunk, prepared);
  });
}

void run_4bit_panels(const Linear4bitJob& job, const float* prepared, std::int64_t first_out,
                     std::int64_t end_out, const FourBitIsaKernels& kernels) {
  const std::int64_t in = job.in_features;
  const std::int64_t block_size = job.weight.block_size;
  thread_local std::vector<float> absmax;
  thread_local std::vector<float> weights;
  for (std::int64_t n0 = first_out; n0 < end_out; n0 += kSgemmPanelOut) {
    const std::int64_t n1 = std::min(n0 + kSgemmPanelOut, end_out);
    const std::int64_t first_block = n0 * in / block_size;
    const std::int64_t end_block = (n1 * in + block_size - 1) / block_size;
    absmax.resize(static_cast<std::size_t>(end_block - first_block));
    decode_4bit_absmax(job.weight, first_block, end_block, absmax.data());
    const FourBitPanel panel{&job, prepared, n0, n1, absmax.data(), first_block};
    if (job.rows <= kLinearGemvMaxRows) {
      kernels.gemv(panel);
    } else {
      const std::int64_t k_block = gemm_k_block(job);
      weights.resize(static_cast<std::size_t>((n1 - n0) * k_block));
      for (std::int64_t k0 = 0; k0 < in; k0 += k_block) {
        const std::int64_t k1 = std::min(k0 + k_block, in);
        kernels.dequantize(panel, k0, k1, weights.data());
        sgemm_panel(prepared + k0, in, job.rows, weights.data(), n1 - n0, k1 - k0, k0 > 0,
                    job.y + n0, job.out_features);
      }
    }
    finish_4bit_outputs(job, n0, n1);
  }
}

void linear_4bit_op(const Linear4bitJob& job, const ExecutionOptions& options) {
  if (options.cpu_kernel == CpuKernel::kReference) {
    linear_4bit_reference(job, 0, job.out_features);
    return;
  }
  if (job.rows == 0) return;
  const CpuIsa isa = active_cpu_isa();
  if (isa == CpuIsa::kScalar || job.in_features % kLinear4bitAvx512Chunk != 0 ||
      takes_4bit_product_decode(job.decode, job.rows, job.compute_dtype)) {
    run_4bit_reference_in_parallel(job, options);
    return;
  }
  const bool avx512 = isa == CpuIsa::kAvx512;
  const auto kernel = avx512 ? linear_4bit_avx512 : linear_4bit_avx2;
  // Prepared once per call, read by every thread (through a pointer: in the workers, the
  // name `buffer` would mean their own thread_local).
  thread_local std::vector<float> buffer;
  buffer.resize(static_cast<std::size_t>(job.rows * job.in_features));
  const float* prepared = buffer.data();
  prepare_4bit_activations(job, avx512 ? kLinear4bitAvx512Chunk : kLinear4bitAvx2Chunk,
                           buffer.data());
  const std::int64_t min_chunk = job.rows <= kLinearGemvMaxRows ? kGemvMinFeatures : kSgemmPanelOut;
  parallel_for(
      job.out_features, min_chunk,
      [&](std::int64_t begin, std::int64_t end) { kernel(job, prepared, begin, end); },
      options.threads);
}

// ---- linear_int8 -------------------------------------------------------------------------------

Int8Activations quantize_int8_activations(const LinearInt8Job& job, const ExecutionOptions& options,
                                          Int8ActivationBuffers& buffers) {
  static const KernelVariants<Int8RowwiseJob> kRowwise = {
      quantize_int8_rowwise_reference, quantize_int8_rowwise_avx2, quantize_int8_rowwise_avx512};
  const std::int64_t rows = job.rows;
  const std::int64_t in = job.in_features;
  buffers.codes.resize(static_cast<std::size_t>(rows * in));
  buffers.row_absmax.resize(static_cast<std::size_t>(rows));
  buffers.outlier_columns.clear();
  // x holds values of the activation dtype; as f32 they round to the same f16 values.
  const Int8RowwiseJob rowwise{
      job.x, DType::kF32, rows, in, job.threshold, buffers.codes.data(), buffers.row_absmax.data()};
  run_kernel(kRowwise, rowwise, rows, std::max<std::int64_t>(1, kRowwiseValuesPerChunk / in),
             options);
  if (job.threshold > 0.0f) {
    std::vector<std::uint8_t> is_outlier(static_cast<std::size_t>(in), 0);
    mark_outlier_columns(rowwise, is_outlier.data());
    for (std::int64_t j = 0; j < in; ++j) {
      if (is_outlier[static_cast<std::size_t>(j)] != 0) buffers.outlier_columns.push_back(j);
    }
    // With more than one row, whole outlier columns go to the floating-point part.
    if (rows > 1) {
      for (std::int64_t r = 0; r < rows; ++r) {
        for (const std::int64_t j : buffers.outlier_columns) {
          buffers.codes[static_cast<std::size_t>(r * in + j)] = 0;
        }
      }
    }
  }
  return Int8Activations{buffers.codes.data(), buffers.row_absmax.data(),
                         buffers.outlier_columns.data(),
                         static_cast<std::int64_t>(buffers.outlier_columns.size())};
}

void linear_int8_op(const LinearInt8Job& job, const ExecutionOptions& options) {
  if (options.cpu_kernel == CpuKernel::kReference) {
    linear_int8_reference(job);
    return;
  }
  Int8ActivationBuffers buffers;
  const Int8Activations activations = quantize_int8_activations(job, options, buffers);
  const bool vnni = active_cpu_has_avx512_vnni();
  const auto kernel = vnni ? linear_int8_outputs_avx512_vnni : linear_int8_outputs_reference;
  LinearInt8Job with_sums = job;
  std::vector<std::int32_t> row_sums;
  if (vnni && job.weight.code_row_sums == nullptr) {
    row_sums.resize(static_cast<std::size_t>(job.out_features));
    int8_code_row_sums(job.weight.codes, job.out_features, job.in_features, row_sums.data());
    with_sums.weight.code_row_sums = row_sums.data();
  }
  const std::int64_t min_chunk = job.rows <= kLinearGemvMaxRows ? kGemvMinFeatures : 16;
  parallel_for(
      job.out_features, min_chunk,
      [&](std::int64_t begin, std::int64_t end) { kernel(with_sums, activations, begin, end); },
      options.threads);
}

}  // namespace kbit::kernels::cpu

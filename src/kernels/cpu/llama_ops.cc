// The Llama CPU kernels' entry points (which variant, how many threads) and the OpenBLAS path of
// linear: weight panels converted to f32 on the fly, so a bf16 checkpoint is never widened whole.
#include <vector>

#include "kbit/core/cpu_features.h"
#include "kbit/core/parallel.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/element_access.h"
#include "kernels/cpu/llama_ops.h"

namespace kbit::kernels::cpu {
namespace {

bool fast(const ExecutionOptions& options) {
  return options.cpu_kernel == CpuKernel::kFast;
}

bool has_avx512(const ExecutionOptions& options) {
  return fast(options) && active_cpu_isa() == CpuIsa::kAvx512;
}

template <typename T>
void convert_panel(const T* weight, std::int64_t in_features, std::int64_t n0, std::int64_t n1,
                   std::int64_t k0, std::int64_t k1, float* panel) {
  const std::int64_t width = k1 - k0;
  for (std::int64_t n = n0; n < n1; ++n) {
    const T* row = weight + n * in_features + k0;
    float* out = panel + (n - n0) * width;
    for (std::int64_t k = 0; k < width; ++k) out[k] = to_f32(row[k]);
  }
}

}  // namespace

void linear_blas(const LinearJob& job, std::int64_t first_out, std::int64_t end_out) {
  const std::int64_t k_total = job.in_features;
  if (job.weight_dtype == DType::kF32) {
    const float* weight = static_cast<const float*>(job.weight) + first_out * k_total;
    sgemm_panel(job.x, k_total, job.rows, weight, end_out - first_out, k_total, false,
                job.y + first_out, job.out_features);
  } else {
    thread_local std::vector<float> panel;
    panel.resize(static_cast<std::size_t>(kSgemmPanelOut * kSgemmPanelIn));
    for (std::int64_t n0 = first_out; n0 < end_out; n0 += kSgemmPanelOut) {
      const std::int64_t n1 = n0 + kSgemmPanelOut < end_out ? n0 + kSgemmPanelOut : end_out;
      for (std::int64_t k0 = 0; k0 < k_total; k0 += kSgemmPanelIn) {
        const std::int64_t k1 = k0 + kSgemmPanelIn < k_total ? k0 + kSgemmPanelIn : k_total;
        visit_float_dtype(job.weight_dtype, [&](auto type_tag) {
          using T = decltype(type_tag);
          convert_panel(static_cast<const T*>(job.weight), k_total, n0, n1, k0, k1, panel.data());
        });
        sgemm_panel(job.x + k0, k_total, job.rows, panel.data(), n1 - n0, k1 - k0, k0 > 0,
                    job.y + n0, job.out_features);
      }
    }
  }
  if (job.bias != nullptr) {
    for (std::int64_t r = 0; r < job.rows; ++r) {
      float* y = job.y + r * job.out_features;
      for (std::int64_t n = first_out; n < end_out; ++n) y[n] += job.bias[n];
    }
  }
  if (job.round_bf16) {
    for (std::int64_t r = 0; r < job.rows; ++r) {
      round_to_bf16(job.y + r * job.out_features + first_out, end_out - first_out);
    }
  }
}

void linear_op(const LinearJob& job, const ExecutionOptions& options) {
  if (!fast(options)) {
    linear_reference(job, 0, job.out_features);
    return;
  }
  void (*kernel)(const LinearJob&, std::int64_t, std::int64_t) = linear_blas;
  std::int64_t min_chunk = kSgemmPanelOut;
  if (job.rows <= kLinearGemvMaxRows && has_avx512(options)) {
    kernel = linear_gemv_avx512;
    min_chunk = 64;
  }
  parallel_for(
      job.out_features, min_chunk,
      [&](std::int64_t begin, std::int64_t end) { kernel(job, begin, end); }, options.threads);
}

void rms_norm_op(const RmsNormJob& job, const ExecutionOptions& options) {
  if (!fast(options)) {
    rms_norm_reference(job, 0, job.rows);
    return;
  }
  const auto kernel = has_avx512(options) ? rms_norm_avx512 : rms_norm_reference;
  parallel_for(
      job.rows, 16, [&](std::int64_t begin, std::int64_t end) { kernel(job, begin, end); },
      options.threads);
}

void rope_op(const RopeJob& job, const ExecutionOptions& options) {
  if (!fast(options)) {
    rope_reference(job, 0, job.tokens);
    return;
  }
  parallel_for(
      job.tokens, 16,
      [&](std::int64_t begin, std::int64_t end) { rope_reference(job, begin, end); },
      options.threads);
}

void attention_op(const AttentionJob& job, const ExecutionOptions& options) {
  const std::int64_t items = job.tokens * job.heads;
  if (!fast(options)) {
    attention_reference(job, 0, items);
    return;
  }
  const auto kernel = has_avx512(options) ? attention_avx512 : attention_reference;
  parallel_for(
      items, 1, [&](std::int64_t begin, std::int64_t end) { kernel(job, begin, end); },
      options.threads);
}

void silu_mul_op(float* gate, const float* up, std::int64_t count, const ExecutionOptions& options,
                 bool round_bf16) {
  if (!fast(options)) {
    silu_mul_reference(gate, up, 0, count, round_bf16);
    return;
  }
  parallel_for(
      count, 4096,
      [&](std::int64_t begin, std::int64_t end) {
        silu_mul_reference(gate, up, begin, end, round_bf16);
      },
      options.threads);
}

void round_to_bf16(float* x, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) x[i] = round_to_bf16(x[i]);
}

}  // namespace kbit::kernels::cpu

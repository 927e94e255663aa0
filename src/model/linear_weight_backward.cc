// LinearWeight::backward_input: dx = dy · W for a frozen weight of any format. The weight is
// decoded one panel [in features, out features] at a time, transposed, into a thread-local
// buffer that OpenBLAS multiplies (kernels/cpu/blas.h), as the forward's GEMM path does; each
// thread owns a range of input features, so every dx element is summed by one thread in the same
// order whatever the thread count.
#include <algorithm>
#include <vector>

#include "kbit/core/parallel.h"
#include "kbit/quant/codebooks.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/element_access.h"
#include "kernels/cpu/quantized_linear_parts.h"
#include "model/linear_weight.h"

namespace kbit::model {
namespace {

namespace k = kbit::kernels::cpu;

// The rectangle W[n0:n1, k0:k1] of a weight, decoded into panel[(k − k0) · width + (n − n0)]
// (width = n1 − n0) and rounded to `rounding`.
struct PanelRange {
  std::int64_t n0, n1, k0, k1;
  std::int64_t width() const { return n1 - n0; }
};

void decode_float(const LinearWeight& weight, DType rounding, const PanelRange& range,
                  float* panel) {
  const TensorView& stored = weight.float_weight();
  const std::int64_t in = weight.in_features();
  k::visit_float_dtype(stored.dtype(), [&](auto type_tag) {
    using T = decltype(type_tag);
    const T* values = stored.data_as<const T>();
    for (std::int64_t n = range.n0; n < range.n1; ++n) {
      for (std::int64_t i = range.k0; i < range.k1; ++i) {
        panel[(i - range.k0) * range.width() + (n - range.n0)] =
            k::rounded_to(rounding, k::to_f32(values[n * in + i]));
      }
    }
  });
}

// dequantize_4bit's values, decoded as forward()'s reference kernel does (kExact).
void decode_4bit(const LinearWeight& weight, DType rounding, const PanelRange& range,
                 float* panel) {
  const k::FourBitWeight four_bit = weight.four_bit_weight();
  const std::int64_t in = weight.in_features();
  const std::int64_t block_size = four_bit.block_size;
  const float* code_values = k::four_bit_code_values(four_bit.type);
  std::vector<float> absmax;
  for (std::int64_t n = range.n0; n < range.n1; ++n) {
    const std::int64_t first_block = (n * in + range.k0) / block_size;
    const std::int64_t end_block = (n * in + range.k1 - 1) / block_size + 1;
    absmax.resize(static_cast<std::size_t>(end_block - first_block));
    k::decode_4bit_absmax(four_bit, first_block, end_block, absmax.data());
    for (std::int64_t i = range.k0; i < range.k1; ++i) {
      const std::int64_t index = n * in + i;
      const float scale = absmax[static_cast<std::size_t>(index / block_size - first_block)];
      const float value = k::dequantized_4bit_value(four_bit, code_values, index, scale);
      panel[(i - range.k0) * range.width() + (n - range.n0)] = k::rounded_to(rounding, value);
    }
  }
}

// MatMul8bitLt's backward: CB.to(A's dtype).mul_(SCB.unsqueeze(1).mul(1.0 / 127.0)).
void decode_int8(const LinearWeight& weight, DType rounding, const PanelRange& range,
                 float* panel) {
  const std::int8_t* codes = weight.codes().data_as<const std::int8_t>();
  const float* row_absmax = weight.row_absmax().data_as<const float>();
  const std::int64_t in = weight.in_features();
  for (std::int64_t n = range.n0; n < range.n1; ++n) {
    const float scale = row_absmax[n] * quant::kInt8DequantScale;
    for (std::int64_t i = range.k0; i < range.k1; ++i) {
      panel[(i - range.k0) * range.width() + (n - range.n0)] =
          k::rounded_to(rounding, static_cast<float>(codes[n * in + i]) * scale);
    }
  }
}

void decode_transposed(const LinearWeight& weight, DType rounding, const PanelRange& range,
                       float* panel) {
  switch (weight.format()) {
    case LinearFormat::kFloat:
      decode_float(weight, rounding, range, panel);
      return;
    case LinearFormat::kFourBit:
      decode_4bit(weight, rounding, range, panel);
      return;
    case LinearFormat::kInt8:
      decode_int8(weight, rounding, range, panel);
      return;
  }
}

void round_all(DType rounding, float* values, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) values[i] = k::rounded_to(rounding, values[i]);
}

}  // namespace

void LinearWeight::backward_input(const float* dy, std::int64_t rows,
                                  const LinearNumerics& numerics, float* dx,
                                  const ExecutionOptions& execution) const {
  if (rows == 0) return;
  const DType rounding =
      format_ == LinearFormat::kFourBit ? numerics.compute_dtype : numerics.activation_dtype;
  const std::int64_t in = in_features_;
  const std::int64_t out = out_features_;
  std::vector<float> rounded_dy;
  if (rounding != DType::kF32) {
    rounded_dy.assign(dy, dy + rows * out);
    round_all(rounding, rounded_dy.data(), rows * out);
    dy = rounded_dy.data();
  }
  // The GEMM's output features are W's input features, its width W's output features. The
  // panels are fixed, and a thread takes whole ones, so the sums do not depend on the threads.
  const std::int64_t panels = (in + k::kSgemmPanelOut - 1) / k::kSgemmPanelOut;
  const auto input_panels = [&](std::int64_t first_panel, std::int64_t end_panel) {
    thread_local std::vector<float> panel;
    for (std::int64_t p = first_panel; p < end_panel; ++p) {
      const std::int64_t k0 = p * k::kSgemmPanelOut;
      const std::int64_t k1 = std::min(k0 + k::kSgemmPanelOut, in);
      for (std::int64_t n0 = 0; n0 < out; n0 += k::kSgemmPanelIn) {
        const PanelRange range{n0, std::min(n0 + k::kSgemmPanelIn, out), k0, k1};
        panel.resize(static_cast<std::size_t>((k1 - k0) * range.width()));
        decode_transposed(*this, rounding, range, panel.data());
        k::sgemm_panel(dy + n0, out, rows, panel.data(), k1 - k0, range.width(), n0 > 0, dx + k0,
                       in);
      }
      if (rounding == DType::kF32) continue;
      for (std::int64_t r = 0; r < rows; ++r) round_all(rounding, dx + r * in + k0, k1 - k0);
    }
  };
  const int threads = execution.cpu_kernel == CpuKernel::kReference ? 1 : execution.threads;
  parallel_for(panels, 1, input_panels, threads);
}

}  // namespace kbit::model

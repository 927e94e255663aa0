// linear_4bit (linear_launchers.h): bitsandbytes' Linear4bit on the GPU, with the numerics of
// linear_4bit_reference (kernels/cpu/quantized_linear.h). Every weight value is decoded as
//   w = round_C(round_W(code_value · absmax))      (absmax decoded from its nested form if need be)
// for the weight's dtype W and the compute dtype C, multiplied by x rounded to C, summed in f32;
// then y = round_A(round_C(sum + round_C(bias))) for the activation dtype A.
//
// A few rows (decode): a fused GEMV. Each warp owns kGemvOutputsPerWarp output features; each lane
// takes 16-byte loads of packed codes (32 values, always inside one quantization block since
// blocks are multiples of 32 values) strided by the warp, decodes them once and multiplies them
// with every row of x, which stays in L1/L2. A butterfly of shuffles sums the lanes' partials.
//
// More rows (prompt): chunks of whole output features are dequantized into the workspace in C
// (linear_workspace.h) and multiplied by cublasGemmEx with f32 accumulation into a C-typed
// output pre-filled with the rounded bias (beta = 1), which is y itself when C is A.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "core/cuda_runtime.h"
#include "kbit/quant/codebooks.h"
#include "kbit/quant/nested_absmax.h"
#include "kernels/cpu/quantized_linear.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/linear_launchers.h"
#include "kernels/cuda/linear_workspace.h"

namespace kbit::kernels::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kGemvThreads = 256;
constexpr int kGemvOutputsPerWarp = 2;
constexpr int kValuesPerLoad = 32;  // 16 packed bytes
constexpr int kValuesPerWord = 8;   // 4 packed bytes
constexpr int kDequantizeThreads = 256;
constexpr int kElementwiseThreads = 256;
constexpr int kMaxRows = static_cast<int>(kLinear4bitGemvMaxRows);

// The tables the kernels decode with; each block copies them to shared memory, where lanes
// index them freely.
struct FourBitTables {
  float code_values[16];  // kNf4Values or kFp4Values
  float absmax_map[256];  // kDynamicSignedMap, for nested absmax
};

// The device side of FourBitWeightDevice.
struct FourBitSource {
  const std::uint8_t* packed;
  const float* absmax;  // nullptr when nested
  const std::uint8_t* absmax_codes;
  const float* nested_absmax;
  float nested_offset;
  int log2_block_size;
  bool packed_aligned;  // 16-byte aligned: vector loads
};

FourBitTables make_tables(quant::FourBitType type) {
  const auto& values = type == quant::FourBitType::kNf4 ? quant::kNf4Values : quant::kFp4Values;
  FourBitTables tables{};
  std::copy(values.begin(), values.end(), tables.code_values);
  std::copy(quant::kDynamicSignedMap.begin(), quant::kDynamicSignedMap.end(), tables.absmax_map);
  return tables;
}

// Every thread of the block must call it (it synchronises).
__device__ __forceinline__ void load_tables(const FourBitTables& tables, float* code_values,
                                            float* absmax_map) {
  for (int i = static_cast<int>(threadIdx.x); i < 256; i += static_cast<int>(blockDim.x)) {
    absmax_map[i] = tables.absmax_map[i];
  }
  if (threadIdx.x < 16) code_values[threadIdx.x] = tables.code_values[threadIdx.x];
  __syncthreads();
}

// The absmax of quantization block `block`. The nested form is decoded with the reference's two
// IEEE roundings, which the explicit intrinsics keep from being fused into one FMA.
__device__ __forceinline__ float block_absmax(const FourBitSource& weight, std::int64_t block,
                                              const float* absmax_map) {
  if (weight.absmax != nullptr) return __ldg(weight.absmax + block);
  const float scaled = __fmul_rn(absmax_map[__ldg(weight.absmax_codes + block)],
                                 __ldg(weight.nested_absmax + block / quant::kNestedBlockSize));
  return __fadd_rn(scaled, weight.nested_offset);
}

__device__ __forceinline__ std::uint32_t load_word_bytes(const std::uint8_t* bytes) {
  return static_cast<std::uint32_t>(bytes[0]) | static_cast<std::uint32_t>(bytes[1]) << 8 |
         static_cast<std::uint32_t>(bytes[2]) << 16 | static_cast<std::uint32_t>(bytes[3]) << 24;
}

// 16 packed bytes (32 codes); `aligned` promises a 16-byte aligned address. Read once: streamed.
__device__ __forceinline__ uint4 load_16_codes(const std::uint8_t* bytes, bool aligned) {
  if (aligned) return __ldcs(reinterpret_cast<const uint4*>(bytes));
  return make_uint4(load_word_bytes(bytes), load_word_bytes(bytes + 4), load_word_bytes(bytes + 8),
                    load_word_bytes(bytes + 12));
}

__device__ __forceinline__ std::uint32_t word_of(const uint4& codes, int word) {
  return word == 0 ? codes.x : word == 1 ? codes.y : word == 2 ? codes.z : codes.w;
}

// The weight value as the matmul sees it: code value · absmax in f32, rounded to the weight's
// dtype W (dequantize_4bit's output), then to the compute dtype C.
template <typename C, typename W>
__device__ __forceinline__ float weight_value(float code_value, float absmax) {
  const float dequantized = to_float(from_float<W>(__fmul_rn(code_value, absmax)));
  return to_float(from_float<C>(dequantized));
}

// The 8 values of one word of packed bytes; value 2j is the high nibble of byte j.
template <typename C, typename W>
__device__ __forceinline__ void decode_word(std::uint32_t word, float absmax,
                                            const float* code_values, float (&values)[8]) {
#pragma unroll
  for (int k = 0; k < kValuesPerWord; ++k) {
    const std::uint32_t code = (word >> (8 * (k / 2) + (k % 2 == 0 ? 4 : 0))) & 0xfu;
    values[k] = weight_value<C, W>(code_values[code], absmax);
  }
}

// x[0..8) rounded to the compute dtype C; `aligned` promises a 16-byte aligned address.
template <typename C, typename A>
__device__ __forceinline__ void load_8_activations(const A* x, bool aligned, float (&values)[8]) {
  A elements[kValuesPerWord];
  if (aligned) {
    constexpr int kPerVector = kValuesPerVector<A>;
#pragma unroll
    for (int v = 0; v < kValuesPerWord / kPerVector; ++v) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(x) + v);
      std::memcpy(elements + v * kPerVector, &raw, sizeof(raw));
    }
  } else {
#pragma unroll
    for (int k = 0; k < kValuesPerWord; ++k) elements[k] = x[k];
  }
#pragma unroll
  for (int k = 0; k < kValuesPerWord; ++k)
    values[k] = to_float(from_float<C>(to_float(elements[k])));
}

__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

// y[rows, out] = x[rows, in] · Wᵀ (+ bias[out]) for rows <= kMaxRows and in a multiple of 32.
// Warp w computes outputs [w · kGemvOutputsPerWarp, (w + 1) · kGemvOutputsPerWarp) ∩ [0, out).
template <typename A, typename C, typename W>
__global__ void __launch_bounds__(kGemvThreads)
    linear_4bit_gemv_kernel(const A* __restrict__ x, bool x_aligned,
                            const __grid_constant__ FourBitSource weight,
                            const __grid_constant__ FourBitTables tables,
                            const A* __restrict__ bias, int rows, std::int64_t in, std::int64_t out,
                            A* __restrict__ y) {
  __shared__ float code_values[16];
  __shared__ float absmax_map[256];
  load_tables(tables, code_values, absmax_map);

  const std::int64_t warp =
      (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const std::int64_t first_out = warp * kGemvOutputsPerWarp;
  // Whole warps leave together, so the shuffles below always see full warps.
  if (first_out >= out) return;

  float sums[kGemvOutputsPerWarp][kMaxRows] = {};
  const std::int64_t loads_per_row = in / kValuesPerLoad;
  for (std::int64_t load = lane; load < loads_per_row; load += kWarpSize) {
    uint4 codes[kGemvOutputsPerWarp];
    float absmax[kGemvOutputsPerWarp];
#pragma unroll
    for (int f = 0; f < kGemvOutputsPerWarp; ++f) {
      // Past the last output feature the warp re-reads the last one (staying in bounds); those
      // sums are never stored.
      const std::int64_t o = std::min(first_out + f, out - 1);
      const std::int64_t first_value = o * in + load * kValuesPerLoad;
      codes[f] = load_16_codes(weight.packed + first_value / 2, weight.packed_aligned);
      absmax[f] = block_absmax(weight, first_value >> weight.log2_block_size, absmax_map);
    }
#pragma unroll
    for (int word = 0; word < kValuesPerLoad / kValuesPerWord; ++word) {
      float w[kGemvOutputsPerWarp][kValuesPerWord];
#pragma unroll
      for (int f = 0; f < kGemvOutputsPerWarp; ++f) {
        decode_word<C, W>(word_of(codes[f], word), absmax[f], code_values, w[f]);
      }
      const std::int64_t first_in = load * kValuesPerLoad + word * kValuesPerWord;
#pragma unroll
      for (int r = 0; r < kMaxRows; ++r) {
        if (r >= rows) break;
        float activations[kValuesPerWord];
        load_8_activations<C>(x + r * in + first_in, x_aligned, activations);
#pragma unroll
        for (int f = 0; f < kGemvOutputsPerWarp; ++f) {
#pragma unroll
          for (int k = 0; k < kValuesPerWord; ++k) {
            sums[f][r] = fmaf(activations[k], w[f][k], sums[f][r]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int f = 0; f < kGemvOutputsPerWarp; ++f) {
#pragma unroll
    for (int r = 0; r < kMaxRows; ++r) {
      if (r < rows) sums[f][r] = warp_sum(sums[f][r]);
    }
  }
  if (lane != 0) return;
#pragma unroll
  for (int f = 0; f < kGemvOutputsPerWarp; ++f) {
    const std::int64_t o = first_out + f;
    if (o >= out) break;
    const float rounded_bias = bias != nullptr ? to_float(from_float<C>(to_float(bias[o]))) : 0.0f;
#pragma unroll
    for (int r = 0; r < kMaxRows; ++r) {
      if (r >= rows) break;
      y[r * out + o] = from_float<A>(to_float(from_float<C>(sums[f][r] + rounded_bias)));
    }
  }
}

// output [words · 8] = the weight values [first_value, first_value + words · 8) as the matmul
// sees them, in the compute dtype C. first_value is a multiple of 32; output 16-byte aligned.
template <typename C, typename W>
__global__ void __launch_bounds__(kDequantizeThreads)
    dequantize_4bit_rows_kernel(const __grid_constant__ FourBitSource weight,
                                const __grid_constant__ FourBitTables tables,
                                std::int64_t first_value, std::int64_t words,
                                C* __restrict__ output) {
  __shared__ float code_values[16];
  __shared__ float absmax_map[256];
  load_tables(tables, code_values, absmax_map);

  const std::int64_t word = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (word >= words) return;
  const std::int64_t value = first_value + word * kValuesPerWord;
  const std::uint8_t* bytes = weight.packed + value / 2;
  const std::uint32_t codes = weight.packed_aligned
                                  ? __ldcs(reinterpret_cast<const std::uint32_t*>(bytes))
                                  : load_word_bytes(bytes);
  float values[kValuesPerWord];
  decode_word<C, W>(codes, block_absmax(weight, value >> weight.log2_block_size, absmax_map),
                    code_values, values);
  store_8_values(output + word * kValuesPerWord, values);
}

// output[i] = input[i] rounded to O, for i < n.
template <typename I, typename O>
__global__ void convert_kernel(const I* __restrict__ input, std::int64_t n,
                               O* __restrict__ output) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) output[i] = from_float<O>(to_float(input[i]));
}

// y[i] = Y(C(sum[i] + C(bias[i % out]))) for i < n (y [n / out, out]); without a bias
// Y(C(sum[i])).
template <typename B, typename C, typename Y>
__global__ void finish_rows_kernel(const float* __restrict__ sum, const B* __restrict__ bias,
                                   std::int64_t out, std::int64_t n, Y* __restrict__ y) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float value = sum[i];
  if (bias != nullptr) value = __fadd_rn(value, to_float(from_float<C>(to_float(bias[i % out]))));
  y[i] = from_float<Y>(to_float(from_float<C>(value)));
}

// Blocks for one thread per item, or 0 where that exceeds the grid.
unsigned elementwise_blocks(std::int64_t items, int threads) {
  const std::int64_t blocks = (items + threads - 1) / threads;
  return blocks <= INT_MAX ? static_cast<unsigned>(blocks) : 0;
}

cudaError_t convert(const void* input, DType input_dtype, std::int64_t n, void* output,
                    DType output_dtype, cudaStream_t stream) {
  const unsigned blocks = elementwise_blocks(n, kElementwiseThreads);
  if (blocks == 0) return cudaErrorInvalidValue;
  return visit_float_dtype(input_dtype, [&](auto input_tag) {
    using I = typename decltype(input_tag)::type;
    return visit_float_dtype(output_dtype, [&](auto output_tag) {
      using O = typename decltype(output_tag)::type;
      convert_kernel<<<blocks, kElementwiseThreads, 0, stream>>>(static_cast<const I*>(input), n,
                                                                 static_cast<O*>(output));
      return cudaGetLastError();
    });
  });
}

cudaDataType_t cuda_data_type(DType dtype) {
  return dtype == DType::kF32 ? CUDA_R_32F : dtype == DType::kF16 ? CUDA_R_16F : CUDA_R_16BF;
}

// One Linear4bit call, validated.
struct FourBitCall {
  const void* x;  // [rows, in] of dtype
  FourBitSource weight;
  FourBitTables tables;
  DType weight_dtype;
  const void* bias;  // [out] of dtype, or nullptr
  std::int64_t rows;
  std::int64_t in;
  std::int64_t out;
  DType compute_dtype;
  void* y;  // [rows, out] of dtype
  DType dtype;
  cudaStream_t stream;
};

// Calls body(A{}, C{}, W{}) with the CUDA types of the activation, compute and weight dtypes.
template <typename Body>
cudaError_t visit_4bit_types(const FourBitCall& call, Body&& body) {
  return visit_float_dtype(call.compute_dtype, [&](auto compute_tag) {
    return visit_float_dtype(call.weight_dtype, [&](auto weight_tag) {
      using C = typename decltype(compute_tag)::type;
      using W = typename decltype(weight_tag)::type;
      return call.dtype == DType::kF32 ? body(float{}, C{}, W{}) : body(__nv_bfloat16{}, C{}, W{});
    });
  });
}

cudaError_t launch_gemv(const FourBitCall& call) {
  const std::int64_t warps = (call.out + kGemvOutputsPerWarp - 1) / kGemvOutputsPerWarp;
  const unsigned blocks = elementwise_blocks(warps * kWarpSize, kGemvThreads);
  if (blocks == 0) return cudaErrorInvalidValue;
  return visit_4bit_types(call, [&](auto a, auto c, auto w) {
    using A = decltype(a);
    linear_4bit_gemv_kernel<A, decltype(c), decltype(w)><<<blocks, kGemvThreads, 0, call.stream>>>(
        static_cast<const A*>(call.x), is_aligned_16(call.x), call.weight, call.tables,
        static_cast<const A*>(call.bias), static_cast<int>(call.rows), call.in, call.out,
        static_cast<A*>(call.y));
    return cudaGetLastError();
  });
}

// Output features [first_out, first_out + count) of W into weight_chunk [count, in] of C.
cudaError_t dequantize_rows(const FourBitCall& call, std::int64_t first_out, std::int64_t count,
                            void* weight_chunk) {
  const std::int64_t words = count * call.in / kValuesPerWord;
  const unsigned blocks = elementwise_blocks(words, kDequantizeThreads);
  if (blocks == 0) return cudaErrorInvalidValue;
  return visit_4bit_types(call, [&](auto, auto c, auto w) {
    using C = decltype(c);
    dequantize_4bit_rows_kernel<C, decltype(w)><<<blocks, kDequantizeThreads, 0, call.stream>>>(
        call.weight, call.tables, first_out * call.in, words, static_cast<C*>(weight_chunk));
    return cudaGetLastError();
  });
}

Status cuda_status(cudaError_t error, const char* what) {
  return detail::status_from_cuda_error(static_cast<int>(error), what);
}

// product [rows, out] (of product_dtype: the compute dtype, or f32) = x · Wᵀ, one chunk of output
// features at a time: each dequantized into the workspace, then one cublasGemmEx.
Status multiply_in_chunks(LinearContext& context, const FourBitCall& call,
                          const LinearWorkspaceLayout& layout, const void* x, DType product_dtype,
                          char* product) {
  const float alpha = 1.0f;
  const float beta = 0.0f;
  const cudaDataType_t type = cuda_data_type(call.compute_dtype);
  const cudaDataType_t product_type = cuda_data_type(product_dtype);
  // As linear_float: PEDANTIC keeps f32 data off TF32 and emulations.
  const cublasComputeType_t compute =
      call.compute_dtype == DType::kF32 ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F;
  const std::size_t element_bytes = dtype_size(product_dtype);
  const int in = static_cast<int>(call.in);
  void* weight_chunk = static_cast<char*>(context.workspace()) + layout.four_bit_weight_chunk;
  for (std::int64_t first_out = 0; first_out < call.out; first_out += layout.four_bit_chunk_out) {
    const std::int64_t count = std::min(layout.four_bit_chunk_out, call.out - first_out);
    KBIT_RETURN_IF_ERROR(cuda_status(dequantize_rows(call, first_out, count, weight_chunk),
                                     "linear_4bit: weight dequantization"));
    // Column-major C[count, rows] = W_chunk[count, in] · x[in, rows], written into columns
    // [first_out, first_out + count) of the row-major [rows, out] product.
    KBIT_RETURN_IF_ERROR(linear_cublas_status(
        cublasGemmEx(context.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(count),
                     static_cast<int>(call.rows), in, &alpha, weight_chunk, type, in, x, type, in,
                     &beta, product + static_cast<std::size_t>(first_out) * element_bytes,
                     product_type, static_cast<int>(call.out), compute, CUBLAS_GEMM_DEFAULT),
        "linear_4bit: cublasGemmEx"));
  }
  return ok_status();
}

Status linear_4bit_many_rows(LinearContext& context, const FourBitCall& call) {
  const LinearWorkspaceLayout layout = linear_workspace_layout(call.rows, call.in, call.out);
  if (layout.total_bytes > context.workspace_bytes()) {
    return invalid_argument("linear_4bit: " + std::to_string(call.rows) + " rows × " +
                            std::to_string(call.in) + " inputs × " + std::to_string(call.out) +
                            " outputs exceed the sizes its LinearContext was created for");
  }
  char* workspace = static_cast<char*>(context.workspace());
  const bool direct = call.compute_dtype == call.dtype;
  const void* x = call.x;
  if (!direct) {
    x = workspace + layout.four_bit_x;
    KBIT_RETURN_IF_ERROR(
        cuda_status(convert(call.x, call.dtype, call.rows * call.in, workspace + layout.four_bit_x,
                            call.compute_dtype, call.stream),
                    "linear_4bit: activations to the compute dtype"));
  }
  // Without a bias and with y of the compute dtype, the GEMM writes y and rounds once. Otherwise
  // it writes f32 sums that finish_linear_rows completes: cuBLAS would round a 16-bit product
  // before adding a bias given as C, where the reference rounds once after the bias.
  if (direct && call.bias == nullptr) {
    return multiply_in_chunks(context, call, layout, x, call.compute_dtype,
                              static_cast<char*>(call.y));
  }
  char* sums = workspace + layout.gemm_output;
  KBIT_RETURN_IF_ERROR(multiply_in_chunks(context, call, layout, x, DType::kF32, sums));
  return cuda_status(
      finish_linear_rows(reinterpret_cast<const float*>(sums), call.rows, call.out, call.bias,
                         call.dtype, call.compute_dtype, call.y, call.dtype, call.stream),
      "linear_4bit: bias and output rounding");
}

bool is_float_dtype(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
}

Status check_4bit_call(const void* x, const FourBitWeightDevice& weight, std::int64_t rows,
                       std::int64_t in, std::int64_t out, DType compute_dtype, const void* y,
                       DType dtype) {
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return invalid_argument(std::string("linear_4bit: activations must be f32 or bf16, not ") +
                            std::string(dtype_name(dtype)));
  }
  if (!is_float_dtype(compute_dtype) || !is_float_dtype(weight.weight_dtype)) {
    return invalid_argument(
        "linear_4bit: the compute dtype and the weight's dtype must be f32, f16 or bf16 (got " +
        std::string(dtype_name(compute_dtype)) + " and " +
        std::string(dtype_name(weight.weight_dtype)) + ")");
  }
  if (rows < 0 || out < 1 || in < kValuesPerLoad || in % kValuesPerLoad != 0 || rows > INT_MAX ||
      in > INT_MAX || out > INT_MAX) {
    return invalid_argument("linear_4bit: sizes out of range (rows " + std::to_string(rows) +
                            ", in " + std::to_string(in) + ", out " + std::to_string(out) +
                            "; in must be a positive multiple of 32, each at most 2^31 - 1)");
  }
  if (!cpu::is_supported_4bit_layout(in, weight.block_size)) {
    return invalid_argument("linear_4bit: block size " + std::to_string(weight.block_size) +
                            " with " + std::to_string(in) +
                            " inputs: the block size must be a power of two from 32 to 4096 "
                            "that divides the inputs or is a multiple of them");
  }
  const bool plain = weight.absmax != nullptr;
  const bool nested = weight.absmax_codes != nullptr && weight.nested_absmax != nullptr;
  if (plain == nested || (plain && weight.absmax_codes != nullptr)) {
    return invalid_argument(
        "linear_4bit: the weight needs exactly one absmax form: absmax, or absmax_codes with "
        "nested_absmax");
  }
  if (rows > 0 && (x == nullptr || weight.packed == nullptr || y == nullptr)) {
    return invalid_argument("linear_4bit: x, the packed weight and y must not be null");
  }
  return ok_status();
}

}  // namespace

cudaError_t finish_linear_rows(const float* sums, std::int64_t rows, std::int64_t out,
                               const void* bias, DType bias_dtype, DType compute_dtype, void* y,
                               DType y_dtype, cudaStream_t stream) {
  const std::int64_t n = rows * out;
  const unsigned blocks = elementwise_blocks(n, kElementwiseThreads);
  if (out < 1 || blocks == 0) return cudaErrorInvalidValue;
  return visit_float_dtype(bias_dtype, [&](auto bias_tag) {
    using B = typename decltype(bias_tag)::type;
    return visit_float_dtype(compute_dtype, [&](auto compute_tag) {
      using C = typename decltype(compute_tag)::type;
      return visit_float_dtype(y_dtype, [&](auto y_tag) {
        using Y = typename decltype(y_tag)::type;
        finish_rows_kernel<B, C><<<blocks, kElementwiseThreads, 0, stream>>>(
            sums, static_cast<const B*>(bias), out, n, static_cast<Y*>(y));
        return cudaGetLastError();
      });
    });
  });
}

Status linear_4bit(LinearContext& context, const void* x, const FourBitWeightDevice& weight,
                   const void* bias, std::int64_t rows, std::int64_t in, std::int64_t out,
                   DType compute_dtype, void* y, DType dtype) {
  KBIT_RETURN_IF_ERROR(check_4bit_call(x, weight, rows, in, out, compute_dtype, y, dtype));
  if (rows == 0) return ok_status();
  const FourBitSource source{weight.packed,
                             weight.absmax,
                             weight.absmax_codes,
                             weight.nested_absmax,
                             weight.nested_offset,
                             log2_of(weight.block_size),
                             is_aligned_16(weight.packed)};
  const FourBitCall call{
      x, source, make_tables(weight.type), weight.weight_dtype, bias, rows, in, out, compute_dtype,
      y, dtype,  context.stream()};
  if (rows <= kLinear4bitGemvMaxRows) {
    return cuda_status(launch_gemv(call), "linear_4bit: GEMV kernel");
  }
  return linear_4bit_many_rows(context, call);
}

}  // namespace kbit::kernels::cuda

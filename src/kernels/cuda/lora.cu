// PEFT's LoRA term on the GPU, forward and backward (contract: lora_launchers.h).
//
// Row-major matrices are handed to cuBLAS as the column-major transposes they are: a row-major
// [r, c] array is a column-major [c, r] one with leading dimension c. Each product below is
// written as the column-major GEMM it becomes, C[m, n] = op(A)[m, k] · op(B)[k, n].
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "core/cuda_runtime.h"
#include "kernels/cuda/activation_parts.cuh"
#include "kernels/cuda/counter_hash.cuh"
#include "kernels/cuda/linear_workspace.h"
#include "kernels/cuda/llama_launchers.h"
#include "kernels/cuda/lora_launchers.h"

namespace kbit::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr std::int64_t kMaxBlocks = 4096;  // grid-stride beyond this

unsigned blocks_for(std::int64_t count) {
  const std::int64_t needed = (count + kThreads - 1) / kThreads;
  return static_cast<unsigned>(needed < 1 ? 1 : (needed < kMaxBlocks ? needed : kMaxBlocks));
}

// out[i] = Out(keep[i] · f32(x[i])) (keep nullptr: Out(f32(x[i]))), i in [0, count).
template <typename In, typename Out>
__global__ void __launch_bounds__(kThreads)
    dropout_kernel(const In* __restrict__ x, const float* __restrict__ keep, std::int64_t count,
                   Out* __restrict__ out) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const float value = to_float(x[i]);
    out[i] = from_float<Out>(keep == nullptr ? value : keep[i] * value);
  }
}

// target[i] = T(f32(target[i]) + keep[i] · term[i]) (keep nullptr: + term[i]); with
// round_addend, the addend is rounded to T first.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    add_f32_kernel(T* __restrict__ target, const float* __restrict__ term,
                   const float* __restrict__ keep, std::int64_t count, bool round_addend) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const float addend = keep == nullptr ? term[i] : keep[i] * term[i];
    const float rounded = round_addend ? round_as<T>(addend) : addend;
    target[i] = from_float<T>(__fadd_rn(to_float(target[i]), rounded));
  }
}

// keep[i] = 0 where element i of stream `stream_seed` is dropped (its uniform draw below p),
// `kept` elsewhere, i in [0, count).
__global__ void __launch_bounds__(kThreads)
    dropout_keep_kernel(float* __restrict__ keep, std::int64_t count, std::uint64_t stream_seed,
                        double p, float kept) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    // 53 bits convert to double exactly and the scaling by 2^-53 is exact: the CPU's uniform.
    const double uniform =
        static_cast<double>(random_bits(stream_seed, static_cast<std::uint64_t>(i)) >> 11) *
        0x1p-53;
    keep[i] = uniform < p ? 0.0f : kept;
  }
}

Status cuda_status(cudaError_t error, const char* what) {
  return detail::status_from_cuda_error(static_cast<int>(error), what);
}

// C = alpha · op(A) · op(B) + beta · C, column-major, accumulated in f32: f32 operands without
// TF32 (kF32's exactness), bf16 ones on tensor cores.
struct Operand {
  const void* data;
  cudaDataType_t type;
  std::int64_t ld;
};

Status gemm(LinearContext& context, cublasOperation_t op_a, cublasOperation_t op_b, std::int64_t m,
            std::int64_t n, std::int64_t k, float alpha, Operand a, Operand b, float beta, void* c,
            cudaDataType_t c_type, std::int64_t ldc, const char* what) {
  const cublasComputeType_t compute =
      a.type == CUDA_R_32F ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F;
  return linear_cublas_status(
      cublasGemmEx(context.cublas(), op_a, op_b, static_cast<int>(m), static_cast<int>(n),
                   static_cast<int>(k), &alpha, a.data, a.type, static_cast<int>(a.ld), b.data,
                   b.type, static_cast<int>(b.ld), &beta, c, c_type, static_cast<int>(ldc), compute,
                   CUBLAS_GEMM_DEFAULT),
      what);
}

Operand f32(const void* data, std::int64_t ld) {
  return {data, CUDA_R_32F, ld};
}

Operand bf16(const void* data, std::int64_t ld) {
  return {data, CUDA_R_16BF, ld};
}

Status check_lora_call(const LoraAdapterDevice& adapter, const LoraShape& shape, DType dtype,
                       const char* what) {
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return invalid_argument(std::string(what) + ": activations must be f32 or bf16, not " +
                            std::string(dtype_name(dtype)));
  }
  if (shape.rows < 0 || shape.in < 1 || shape.out < 1 || adapter.rank < 1 ||
      shape.rows * shape.in > INT32_MAX || shape.rows * shape.out > INT32_MAX ||
      adapter.rank * shape.in > INT32_MAX || adapter.rank * shape.out > INT32_MAX) {
    return invalid_argument(
        std::string(what) + ": sizes out of range (rows " + std::to_string(shape.rows) + ", in " +
        std::to_string(shape.in) + ", out " + std::to_string(shape.out) + ", rank " +
        std::to_string(adapter.rank) + "; each matrix at most 2^31 - 1 values)");
  }
  if (adapter.a == nullptr || adapter.b == nullptr) {
    return invalid_argument(std::string(what) + ": lora_A and lora_B must not be null");
  }
  if (adapter.precision == LoraPrecision::kBf16 &&
      (dtype != DType::kBF16 || adapter.a_bf16 == nullptr || adapter.b_bf16 == nullptr)) {
    return invalid_argument(std::string(what) +
                            ": bf16 LoRA takes bf16 activations and bf16 copies of lora_A and "
                            "lora_B; compute it in f32 otherwise");
  }
  return ok_status();
}

// target (dtype) += keep ⊙ term, elementwise over count values (the addend rounded to dtype
// first with round_addend).
Status add_f32(void* target, const float* term, const float* keep, std::int64_t count, DType dtype,
               bool round_addend, cudaStream_t stream, const char* what) {
  return cuda_status(
      visit_activation_dtype(dtype,
                             [&](auto type) {
                               using T = typename decltype(type)::type;
                               add_f32_kernel<T><<<blocks_for(count), kThreads, 0, stream>>>(
                                   static_cast<T*>(target), term, keep, count, round_addend);
                               return cudaGetLastError();
                             }),
      what);
}

// x̃ = Out(keep ⊙ x) over count values.
template <typename Out>
Status dropout(const void* x, const float* keep, std::int64_t count, DType dtype, Out* out,
               cudaStream_t stream, const char* what) {
  return cuda_status(visit_activation_dtype(dtype,
                                            [&](auto type) {
                                              using T = typename decltype(type)::type;
                                              dropout_kernel<T, Out>
                                                  <<<blocks_for(count), kThreads, 0, stream>>>(
                                                      static_cast<const T*>(x), keep, count, out);
                                              return cudaGetLastError();
                                            }),
                     what);
}

Status forward_f32(LinearContext& context, const LoraAdapterDevice& adapter, const LoraShape& shape,
                   const void* x, const float* keep, DType dtype, const LoraForwardBuffers& buffers,
                   void* y) {
  const std::int64_t rows = shape.rows;
  auto* x_dropped = static_cast<float*>(buffers.x_dropped);
  KBIT_RETURN_IF_ERROR(dropout(x, keep, rows * shape.in, dtype, x_dropped, context.stream(),
                               "lora_forward: dropout"));
  // hᵀ [rank, rows] = A [rank, in] · x̃ᵀ [in, rows]
  KBIT_RETURN_IF_ERROR(gemm(context, CUBLAS_OP_T, CUBLAS_OP_N, adapter.rank, rows, shape.in, 1.0f,
                            f32(adapter.a, shape.in), f32(x_dropped, shape.in), 0.0f, buffers.h,
                            CUDA_R_32F, adapter.rank, "lora_forward: h = x̃ · Aᵀ"));
  // termᵀ [out, rows] = scaling · B [out, rank] · hᵀ [rank, rows]
  KBIT_RETURN_IF_ERROR(gemm(context, CUBLAS_OP_T, CUBLAS_OP_N, shape.out, rows, adapter.rank,
                            adapter.scaling, f32(adapter.b, adapter.rank),
                            f32(buffers.h, adapter.rank), 0.0f, buffers.term, CUDA_R_32F, shape.out,
                            "lora_forward: scaling · h · Bᵀ"));
  return add_f32(y, buffers.term, nullptr, rows * shape.out, dtype, adapter.term_rounded_first,
                 context.stream(), "lora_forward: y += term");
}

Status forward_bf16(LinearContext& context, const LoraAdapterDevice& adapter,
                    const LoraShape& shape, const void* x, const float* keep,
                    const LoraForwardBuffers& buffers, void* y) {
  const std::int64_t rows = shape.rows;
  const void* x_dropped = x;
  if (keep != nullptr) {
    KBIT_RETURN_IF_ERROR(dropout(x, keep, rows * shape.in, DType::kBF16,
                                 static_cast<__nv_bfloat16*>(buffers.x_dropped), context.stream(),
                                 "lora_forward: dropout"));
    x_dropped = buffers.x_dropped;
  }
  // hᵀ [rank, rows] = A [rank, in] · x̃ᵀ [in, rows]
  KBIT_RETURN_IF_ERROR(gemm(context, CUBLAS_OP_T, CUBLAS_OP_N, adapter.rank, rows, shape.in, 1.0f,
                            bf16(adapter.a_bf16, shape.in), bf16(x_dropped, shape.in), 0.0f,
                            buffers.h, CUDA_R_16BF, adapter.rank, "lora_forward: h = x̃ · Aᵀ"));
  // yᵀ [out, rows] += scaling · B [out, rank] · hᵀ [rank, rows]
  return gemm(context, CUBLAS_OP_T, CUBLAS_OP_N, shape.out, rows, adapter.rank, adapter.scaling,
              bf16(adapter.b_bf16, adapter.rank), bf16(buffers.h, adapter.rank), 1.0f, y,
              CUDA_R_16BF, shape.out, "lora_forward: y += scaling · h · Bᵀ");
}

Status backward_f32(LinearContext& context, const LoraAdapterDevice& adapter,
                    const LoraShape& shape, const LoraBackwardBuffers& buffers, DType dtype) {
  const std::int64_t rows = shape.rows;
  const std::int64_t rank = adapter.rank;
  KBIT_RETURN_IF_ERROR(cuda_status(convert_floats(buffers.dy, dtype, buffers.dy_f32, DType::kF32,
                                                  rows * shape.out, context.stream()),
                                   "lora_backward: dy to f32"));
  // dBᵀ [rank, out] += scaling · hᵀ [rank, rows] · dy [rows, out]
  KBIT_RETURN_IF_ERROR(gemm(context, CUBLAS_OP_N, CUBLAS_OP_T, rank, shape.out, rows,
                            adapter.scaling, f32(buffers.h, rank), f32(buffers.dy_f32, shape.out),
                            1.0f, buffers.db, CUDA_R_32F, rank,
                            "lora_backward: dB += scaling · dyᵀ · h"));
  // dhᵀ [rank, rows] = scaling · Bᵀ [rank, out] · dyᵀ [out, rows]
  KBIT_RETURN_IF_ERROR(gemm(context, CUBLAS_OP_N, CUBLAS_OP_N, rank, rows, shape.out,
                            adapter.scaling, f32(adapter.b, rank), f32(buffers.dy_f32, shape.out),
                            0.0f, buffers.dh, CUDA_R_32F, rank,
                            "lora_backward: dh = scaling · dy · B"));
  // dAᵀ [in, rank] += x̃ᵀ [in, rows] · dh [rows, rank]
  KBIT_RETURN_IF_ERROR(gemm(context, CUBLAS_OP_N, CUBLAS_OP_T, shape.in, rank, rows, 1.0f,
                            f32(buffers.x_dropped, shape.in), f32(buffers.dh, rank), 1.0f,
                            buffers.da, CUDA_R_32F, shape.in, "lora_backward: dA += dhᵀ · x̃"));
  if (buffers.dx == nullptr) return ok_status();
  // dx_termᵀ [in, rows] = Aᵀ [in, rank] · dhᵀ [rank, rows]
  KBIT_RETURN_IF_ERROR(gemm(context, CUBLAS_OP_N, CUBLAS_OP_N, shape.in, rows, rank, 1.0f,
                            f32(adapter.a, shape.in), f32(buffers.dh, rank), 0.0f, buffers.dx_term,
                            CUDA_R_32F, shape.in, "lora_backward: dh · A"));
  return add_f32(buffers.dx, buffers.dx_term, buffers.keep, rows * shape.in, dtype, false,
                 context.stream(), "lora_backward: dx += keep ⊙ dh · A");
}

Status backward_bf16(LinearContext& context, const LoraAdapterDevice& adapter,
                     const LoraShape& shape, const LoraBackwardBuffers& buffers) {
  const std::int64_t rows = shape.rows;
  const std::int64_t rank = adapter.rank;
  // dBᵀ [rank, out] += scaling · hᵀ [rank, rows] · dy [rows, out]
  KBIT_RETURN_IF_ERROR(gemm(context, CUBLAS_OP_N, CUBLAS_OP_T, rank, shape.out, rows,
                            adapter.scaling, bf16(buffers.h, rank), bf16(buffers.dy, shape.out),
                            1.0f, buffers.db, CUDA_R_32F, rank,
                            "lora_backward: dB += scaling · dyᵀ · h"));
  // dhᵀ [rank, rows] = scaling · Bᵀ [rank, out] · dyᵀ [out, rows]
  KBIT_RETURN_IF_ERROR(gemm(context, CUBLAS_OP_N, CUBLAS_OP_N, rank, rows, shape.out,
                            adapter.scaling, bf16(adapter.b_bf16, rank),
                            bf16(buffers.dy, shape.out), 0.0f, buffers.dh, CUDA_R_16BF, rank,
                            "lora_backward: dh = scaling · dy · B"));
  // dAᵀ [in, rank] += x̃ᵀ [in, rows] · dh [rows, rank]
  KBIT_RETURN_IF_ERROR(gemm(context, CUBLAS_OP_N, CUBLAS_OP_T, shape.in, rank, rows, 1.0f,
                            bf16(buffers.x_dropped, shape.in), bf16(buffers.dh, rank), 1.0f,
                            buffers.da, CUDA_R_32F, shape.in, "lora_backward: dA += dhᵀ · x̃"));
  if (buffers.dx == nullptr) return ok_status();
  // dxᵀ [in, rows] (+)= Aᵀ [in, rank] · dhᵀ [rank, rows]: into dx itself without dropout.
  const bool direct = buffers.keep == nullptr;
  KBIT_RETURN_IF_ERROR(gemm(context, CUBLAS_OP_N, CUBLAS_OP_N, shape.in, rows, rank, 1.0f,
                            bf16(adapter.a_bf16, shape.in), bf16(buffers.dh, rank),
                            direct ? 1.0f : 0.0f, direct ? buffers.dx : buffers.dx_term,
                            direct ? CUDA_R_16BF : CUDA_R_32F, shape.in, "lora_backward: dh · A"));
  if (direct) return ok_status();
  return add_f32(buffers.dx, buffers.dx_term, buffers.keep, rows * shape.in, DType::kBF16, false,
                 context.stream(), "lora_backward: dx += keep ⊙ dh · A");
}

}  // namespace

Status lora_forward(LinearContext& context, const LoraAdapterDevice& adapter,
                    const LoraShape& shape, const void* x, const float* keep, DType dtype,
                    const LoraForwardBuffers& buffers, void* y) {
  KBIT_RETURN_IF_ERROR(check_lora_call(adapter, shape, dtype, "lora_forward"));
  if (shape.rows == 0) return ok_status();
  const bool f32_path = adapter.precision == LoraPrecision::kF32;
  if (x == nullptr || y == nullptr || buffers.h == nullptr ||
      (f32_path && (buffers.x_dropped == nullptr || buffers.term == nullptr)) ||
      (!f32_path && keep != nullptr && buffers.x_dropped == nullptr)) {
    return invalid_argument(
        "lora_forward: x, y and the buffers the precision uses must not be null");
  }
  if (f32_path) return forward_f32(context, adapter, shape, x, keep, dtype, buffers, y);
  return forward_bf16(context, adapter, shape, x, keep, buffers, y);
}

Status lora_backward(LinearContext& context, const LoraAdapterDevice& adapter,
                     const LoraShape& shape, const LoraBackwardBuffers& buffers, DType dtype) {
  KBIT_RETURN_IF_ERROR(check_lora_call(adapter, shape, dtype, "lora_backward"));
  if (shape.rows == 0) return ok_status();
  const bool f32_path = adapter.precision == LoraPrecision::kF32;
  const bool dx_term = buffers.dx != nullptr && (f32_path || buffers.keep != nullptr);
  if (buffers.x_dropped == nullptr || buffers.h == nullptr || buffers.dy == nullptr ||
      buffers.da == nullptr || buffers.db == nullptr || buffers.dh == nullptr ||
      (f32_path && buffers.dy_f32 == nullptr) || (dx_term && buffers.dx_term == nullptr)) {
    return invalid_argument("lora_backward: a buffer it needs is null");
  }
  if (f32_path) return backward_f32(context, adapter, shape, buffers, dtype);
  return backward_bf16(context, adapter, shape, buffers);
}

cudaError_t lora_dropout_keep(float* keep, std::int64_t count, std::uint64_t stream_seed, double p,
                              cudaStream_t stream) {
  if (!(p >= 0.0 && p <= 1.0) || count < 0 || (count > 0 && keep == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (count == 0) return cudaSuccess;
  // Computed on the host, in double and then rounded, as draw_dropout does.
  const float kept = p < 1.0 ? static_cast<float>(1.0 / (1.0 - p)) : 0.0f;
  dropout_keep_kernel<<<blocks_for(count), kThreads, 0, stream>>>(keep, count, stream_seed, p,
                                                                  kept);
  return cudaGetLastError();
}

}  // namespace kbit::kernels::cuda

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

// out[i] = keep[i] · f32(x[i]) (keep nullptr: f32(x[i])), i in [0, count).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    dropout_to_f32_kernel(const T* __restrict__ x, const float* __restrict__ keep,
                          std::int64_t count, float* __restrict__ out) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const float value = to_float(x[i]);
    out[i] = keep == nullptr ? value : keep[i] * value;
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

// C = alpha · op(A) · op(B) + beta · C, column-major f32, f32 accumulation without TF32.
Status gemm_f32(LinearContext& context, cublasOperation_t op_a, cublasOperation_t op_b,
                std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
                std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
                std::int64_t ldc, const char* what) {
  return linear_cublas_status(
      cublasGemmEx(context.cublas(), op_a, op_b, static_cast<int>(m), static_cast<int>(n),
                   static_cast<int>(k), &alpha, a, CUDA_R_32F, static_cast<int>(lda), b, CUDA_R_32F,
                   static_cast<int>(ldb), &beta, c, CUDA_R_32F, static_cast<int>(ldc),
                   CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT),
      what);
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

}  // namespace

Status lora_forward(LinearContext& context, const LoraAdapterDevice& adapter,
                    const LoraShape& shape, const void* x, const float* keep, DType dtype,
                    float* x_dropped, float* h, float* term, void* y) {
  KBIT_RETURN_IF_ERROR(check_lora_call(adapter, shape, dtype, "lora_forward"));
  if (shape.rows == 0) return ok_status();
  if (x == nullptr || x_dropped == nullptr || h == nullptr || term == nullptr || y == nullptr) {
    return invalid_argument("lora_forward: x, y and the f32 buffers must not be null");
  }
  const std::int64_t rows = shape.rows;
  const cudaStream_t stream = context.stream();
  KBIT_RETURN_IF_ERROR(cuda_status(
      visit_activation_dtype(dtype,
                             [&](auto type) {
                               using T = typename decltype(type)::type;
                               dropout_to_f32_kernel<T>
                                   <<<blocks_for(rows * shape.in), kThreads, 0, stream>>>(
                                       static_cast<const T*>(x), keep, rows * shape.in, x_dropped);
                               return cudaGetLastError();
                             }),
      "lora_forward: dropout"));
  // hᵀ [rank, rows] = A [rank, in] · x̃ᵀ [in, rows]
  KBIT_RETURN_IF_ERROR(gemm_f32(context, CUBLAS_OP_T, CUBLAS_OP_N, adapter.rank, rows, shape.in,
                                1.0f, adapter.a, shape.in, x_dropped, shape.in, 0.0f, h,
                                adapter.rank, "lora_forward: h = x̃ · Aᵀ"));
  // termᵀ [out, rows] = scaling · B [out, rank] · hᵀ [rank, rows]
  KBIT_RETURN_IF_ERROR(gemm_f32(context, CUBLAS_OP_T, CUBLAS_OP_N, shape.out, rows, adapter.rank,
                                adapter.scaling, adapter.b, adapter.rank, h, adapter.rank, 0.0f,
                                term, shape.out, "lora_forward: scaling · h · Bᵀ"));
  return add_f32(y, term, nullptr, rows * shape.out, dtype, adapter.term_rounded_first, stream,
                 "lora_forward: y += term");
}

Status lora_backward(LinearContext& context, const LoraAdapterDevice& adapter,
                     const LoraShape& shape, const LoraBackwardBuffers& buffers, DType dtype) {
  KBIT_RETURN_IF_ERROR(check_lora_call(adapter, shape, dtype, "lora_backward"));
  if (shape.rows == 0) return ok_status();
  if (buffers.x_dropped == nullptr || buffers.h == nullptr || buffers.dy == nullptr ||
      buffers.da == nullptr || buffers.db == nullptr || buffers.dy_f32 == nullptr ||
      buffers.dh == nullptr || (buffers.dx != nullptr && buffers.dx_term == nullptr)) {
    return invalid_argument("lora_backward: a buffer it needs is null");
  }
  const std::int64_t rows = shape.rows;
  const std::int64_t rank = adapter.rank;
  const cudaStream_t stream = context.stream();
  KBIT_RETURN_IF_ERROR(cuda_status(
      convert_floats(buffers.dy, dtype, buffers.dy_f32, DType::kF32, rows * shape.out, stream),
      "lora_backward: dy to f32"));
  // dBᵀ [rank, out] += scaling · hᵀ [rank, rows] · dy [rows, out]
  KBIT_RETURN_IF_ERROR(gemm_f32(context, CUBLAS_OP_N, CUBLAS_OP_T, rank, shape.out, rows,
                                adapter.scaling, buffers.h, rank, buffers.dy_f32, shape.out, 1.0f,
                                buffers.db, rank, "lora_backward: dB += scaling · dyᵀ · h"));
  // dhᵀ [rank, rows] = scaling · Bᵀ [rank, out] · dyᵀ [out, rows]
  KBIT_RETURN_IF_ERROR(gemm_f32(context, CUBLAS_OP_N, CUBLAS_OP_N, rank, rows, shape.out,
                                adapter.scaling, adapter.b, rank, buffers.dy_f32, shape.out, 0.0f,
                                buffers.dh, rank, "lora_backward: dh = scaling · dy · B"));
  // dAᵀ [in, rank] += x̃ᵀ [in, rows] · dh [rows, rank]
  KBIT_RETURN_IF_ERROR(gemm_f32(context, CUBLAS_OP_N, CUBLAS_OP_T, shape.in, rank, rows, 1.0f,
                                buffers.x_dropped, shape.in, buffers.dh, rank, 1.0f, buffers.da,
                                shape.in, "lora_backward: dA += dhᵀ · x̃"));
  if (buffers.dx == nullptr) return ok_status();
  // dx_termᵀ [in, rows] = Aᵀ [in, rank] · dhᵀ [rank, rows]
  KBIT_RETURN_IF_ERROR(gemm_f32(context, CUBLAS_OP_N, CUBLAS_OP_N, shape.in, rows, rank, 1.0f,
                                adapter.a, shape.in, buffers.dh, rank, 0.0f, buffers.dx_term,
                                shape.in, "lora_backward: dh · A"));
  return add_f32(buffers.dx, buffers.dx_term, buffers.keep, rows * shape.in, dtype, false, stream,
                 "lora_backward: dx += keep ⊙ dh · A");
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

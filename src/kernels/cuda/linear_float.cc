// linear_float (linear_launchers.h): one cublasGemmEx with f32 accumulation.
//
// Row-major y[rows, out] = x[rows, in] · W[out, in]ᵀ is, read column-major, C[out, rows] =
// Wᵀ[out, in] · x[in, rows]: A = W (lda = in, transposed), B = x (ldb = in), C = y (ldc = out).
// With a bias the GEMM writes f32 sums into the workspace and finish_linear_rows adds the bias
// before the one rounding to the output dtype, as linear_reference does (cuBLAS, given the bias
// as C with beta = 1 and a bf16 C, rounds the product before adding it).
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <climits>
#include <cstdint>
#include <string>

#include "core/cuda_runtime.h"
#include "kernels/cuda/linear_launchers.h"
#include "kernels/cuda/linear_workspace.h"

namespace kbit::kernels::cuda {
namespace {

Status check_float_call(const void* x, const void* weight, std::int64_t rows, std::int64_t in,
                        std::int64_t out, const void* y, DType dtype) {
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return invalid_argument(std::string("linear_float: activations must be f32 or bf16, not ") +
                            std::string(dtype_name(dtype)));
  }
  if (rows < 0 || in < 1 || out < 1 || rows > INT_MAX || in > INT_MAX || out > INT_MAX) {
    return invalid_argument("linear_float: sizes out of range (rows " + std::to_string(rows) +
                            ", in " + std::to_string(in) + ", out " + std::to_string(out) +
                            "; each at most 2^31 - 1, in and out at least 1)");
  }
  if (rows > 0 && (x == nullptr || weight == nullptr || y == nullptr)) {
    return invalid_argument("linear_float: x, weight and y must be device pointers, not null");
  }
  return ok_status();
}

}  // namespace

Status linear_float(LinearContext& context, const void* x, const void* weight, const void* bias,
                    std::int64_t rows, std::int64_t in, std::int64_t out, void* y, DType dtype) {
  KBIT_RETURN_IF_ERROR(check_float_call(x, weight, rows, in, out, y, dtype));
  if (rows == 0) return ok_status();
  const LinearWorkspaceLayout layout = linear_workspace_layout(rows, in, out);
  if (bias != nullptr && layout.total_bytes > context.workspace_bytes()) {
    return invalid_argument("linear_float: " + std::to_string(rows) + " rows × " +
                            std::to_string(in) + " inputs × " + std::to_string(out) +
                            " outputs exceed the sizes its LinearContext was created for");
  }
  void* sums = static_cast<char*>(context.workspace()) + layout.gemm_output;
  const float alpha = 1.0f;
  const float beta = 0.0f;
  const cudaDataType_t type = dtype == DType::kF32 ? CUDA_R_32F : CUDA_R_16BF;
  // PEDANTIC keeps f32 data off TF32 and the BF16x9 emulation whatever the environment says;
  // bf16 products are exact in f32, so the tensor cores' f32 accumulation is all there is.
  const cublasComputeType_t compute =
      dtype == DType::kF32 ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F;
  const int m = static_cast<int>(out);
  const int n = static_cast<int>(rows);
  const int k = static_cast<int>(in);
  void* product = bias != nullptr ? sums : y;
  const cudaDataType_t product_type = bias != nullptr ? CUDA_R_32F : type;
  KBIT_RETURN_IF_ERROR(linear_cublas_status(
      cublasGemmEx(context.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, weight, type, k, x,
                   type, k, &beta, product, product_type, m, compute, CUBLAS_GEMM_DEFAULT),
      "linear_float: cublasGemmEx"));
  if (bias == nullptr) return ok_status();
  return detail::status_from_cuda_error(
      finish_linear_rows(static_cast<const float*>(sums), rows, out, bias, dtype, dtype, y, dtype,
                         context.stream()),
      "linear_float: bias and output rounding");
}

}  // namespace kbit::kernels::cuda

// linear_float, linear_float_layers and linear_float_backward_input (linear_launchers.h): for one
// row the GEMV of linear_float_gemv.h, else one cublasGemmEx each with f32 accumulation, set up by
// float_gemm.
//
// Row-major arrays are handed to cuBLAS as the column-major transposes they are: a row-major
// [r, c] array is a column-major [c, r] one with leading dimension c.
//   forward:  y[rows, out] = x[rows, in] · W[out, in]ᵀ
//             is C[out, rows] = Wᵀ[out, in] · x[in, rows],
//             A = W (lda = in, transposed), B = x (ldb = in), C = y (ldc = out).
//   backward: dx[rows, in] = dy[rows, out] · W[out, in]
//             is C[in, rows] = W[in, out] · dy[out, rows],
//             A = W (lda = in), B = dy (ldb = out), C = dx (ldc = in).
// With a bias the forward GEMM writes f32 sums into the workspace and finish_linear_rows adds the
// bias before the one rounding to the output dtype, as linear_reference does (cuBLAS, given the
// bias as C with beta = 1 and a bf16 C, rounds the product before adding it).
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <climits>
#include <cstdint>
#include <span>
#include <string>

#include "core/cuda_runtime.h"
#include "kernels/cuda/fused_layers.h"
#include "kernels/cuda/linear_float_gemv.h"
#include "kernels/cuda/linear_launchers.h"
#include "kernels/cuda/linear_workspace.h"

namespace kbit::kernels::cuda {
namespace {

// The checks both launchers make: `activations` [rows, in or out], weight [out, in] and `output`
// of `dtype`; `what` names the launcher.
Status check_float_call(const char* what, const void* activations, const void* weight,
                        std::int64_t rows, std::int64_t in, std::int64_t out, const void* output,
                        DType dtype) {
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return invalid_argument(std::string(what) + ": activations must be f32 or bf16, not " +
                            std::string(dtype_name(dtype)));
  }
  if (rows < 0 || in < 1 || out < 1 || rows > INT_MAX || in > INT_MAX || out > INT_MAX) {
    return invalid_argument(std::string(what) + ": sizes out of range (rows " +
                            std::to_string(rows) + ", in " + std::to_string(in) + ", out " +
                            std::to_string(out) +
                            "; each at most 2^31 - 1, in and out at least 1)");
  }
  if (rows > 0 && (activations == nullptr || weight == nullptr || output == nullptr)) {
    return invalid_argument(std::string(what) + ": its activations, weight and output must be " +
                            "device pointers, not null");
  }
  return ok_status();
}

cudaDataType_t cuda_type(DType dtype) {
  return dtype == DType::kF32 ? CUDA_R_32F : CUDA_R_16BF;
}

// Column-major C[m, n] (of c_type, ldc = m) = op(W)[m, k] · B[k, n] (ldb = k), W and B of
// `dtype` (f32 or bf16), the products summed in f32 and rounded once to c_type.
Status float_gemm(LinearContext& context, cublasOperation_t op_weight, std::int64_t m,
                  std::int64_t n, std::int64_t k, const void* weight, std::int64_t ld_weight,
                  const void* b, void* c, cudaDataType_t c_type, DType dtype, const char* what) {
  const float alpha = 1.0f;
  const float beta = 0.0f;
  const cudaDataType_t type = cuda_type(dtype);
  // PEDANTIC keeps f32 data off TF32 and the BF16x9 emulation whatever the environment says;
  // bf16 products are exact in f32, so the tensor cores' f32 accumulation is all there is.
  const cublasComputeType_t compute =
      dtype == DType::kF32 ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F;
  return linear_cublas_status(
      cublasGemmEx(context.cublas(), op_weight, CUBLAS_OP_N, static_cast<int>(m),
                   static_cast<int>(n), static_cast<int>(k), &alpha, weight, type,
                   static_cast<int>(ld_weight), b, type, static_cast<int>(k), &beta, c, c_type,
                   static_cast<int>(m), compute, CUBLAS_GEMM_DEFAULT),
      what);
}

}  // namespace

Status linear_float(LinearContext& context, const void* x, const void* weight, const void* bias,
                    std::int64_t rows, std::int64_t in, std::int64_t out, void* y, DType dtype) {
  KBIT_RETURN_IF_ERROR(check_float_call("linear_float", x, weight, rows, in, out, y, dtype));
  if (rows == 0) return ok_status();
  const FloatLayer layer{weight, bias, out, y};
  if (float_gemv_applies(x, {&layer, 1}, rows, in, dtype)) {
    return detail::status_from_cuda_error(
        launch_float_gemv(x, {&layer, 1}, in, dtype, LinearEpilogue::kStore, context.stream()),
        "linear_float: GEMV kernel");
  }
  const LinearWorkspaceLayout layout = linear_workspace_layout(rows, in, out);
  if (bias != nullptr && layout.total_bytes > context.workspace_bytes()) {
    return invalid_argument("linear_float: " + std::to_string(rows) + " rows × " +
                            std::to_string(in) + " inputs × " + std::to_string(out) +
                            " outputs exceed the sizes its LinearContext was created for");
  }
  void* sums = static_cast<char*>(context.workspace()) + layout.gemm_output;
  void* product = bias != nullptr ? sums : y;
  const cudaDataType_t product_type = bias != nullptr ? CUDA_R_32F : cuda_type(dtype);
  KBIT_RETURN_IF_ERROR(float_gemm(context, CUBLAS_OP_T, out, rows, in, weight, in, x, product,
                                  product_type, dtype, "linear_float: cublasGemmEx"));
  if (bias == nullptr) return ok_status();
  return detail::status_from_cuda_error(
      finish_linear_rows(static_cast<const float*>(sums), rows, out, bias, dtype, dtype, y, dtype,
                         context.stream()),
      "linear_float: bias and output rounding");
}

Status linear_float_layers(LinearContext& context, const void* x,
                           std::span<const FloatLayer> layers, std::int64_t rows, std::int64_t in,
                           DType dtype, LinearEpilogue epilogue) {
  KBIT_RETURN_IF_ERROR(check_fused_layer_group("linear_float_layers", layers, epilogue));
  for (const FloatLayer& layer : layers) {
    KBIT_RETURN_IF_ERROR(check_float_call("linear_float_layers", x, layer.weight, rows, in,
                                          layer.out, layer.y, dtype));
  }
  if (rows == 0) return ok_status();
  if (float_gemv_applies(x, layers, rows, in, dtype)) {
    return detail::status_from_cuda_error(
        launch_float_gemv(x, layers, in, dtype, epilogue, context.stream()),
        "linear_float_layers: GEMV kernel");
  }
  return linear_layers_one_by_one(layers, rows, dtype, epilogue, context.stream(),
                                  "linear_float_layers", [&](const FloatLayer& layer) {
                                    return linear_float(context, x, layer.weight, layer.bias, rows,
                                                        in, layer.out, layer.y, dtype);
                                  });
}

Status linear_float_backward_input(LinearContext& context, const void* dy, const void* weight,
                                   std::int64_t rows, std::int64_t in, std::int64_t out, void* dx,
                                   DType dtype) {
  KBIT_RETURN_IF_ERROR(
      check_float_call("linear_float_backward_input", dy, weight, rows, in, out, dx, dtype));
  if (rows == 0) return ok_status();
  return float_gemm(context, CUBLAS_OP_N, in, rows, out, weight, in, dy, dx, cuda_type(dtype),
                    dtype, "linear_float_backward_input: cublasGemmEx");
}

}  // namespace kbit::kernels::cuda

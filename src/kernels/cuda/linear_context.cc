// LinearContext (linear_launchers.h): the cuBLAS handles and the one device allocation the Linear
// launchers share, laid out by linear_workspace.h.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/cuda_runtime.h"
#include "kbit/core/allocator.h"
#include "kernels/cuda/linear_launchers.h"
#include "kernels/cuda/linear_workspace.h"

namespace kbit::kernels::cuda {
namespace {

std::string mib_text(std::size_t bytes) {
  return std::to_string((bytes + (std::size_t{1} << 20) - 1) >> 20) + " MiB";
}

Status cuda_status(cudaError_t error, const char* call) {
  return detail::status_from_cuda_error(static_cast<int>(error), call);
}

// A failed allocation as a message that says what to change.
Status workspace_allocation_error(const Status& error, std::size_t bytes) {
  // An allocation failure is not sticky, but it stays the "last error" that the launchers'
  // cudaGetLastError would report after their next kernel launch.
  static_cast<void>(cudaGetLastError());
  if (error.code() != StatusCode::kOutOfMemory) return error;
  std::size_t free_bytes = 0;
  std::size_t total_bytes = 0;
  const std::string free_text = cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess
                                    ? mib_text(free_bytes) + " are free"
                                    : "the free memory is unknown";
  return out_of_memory(
      "the Linear layers' workspace needs " + mib_text(bytes) + " of GPU memory and " + free_text +
      "; a shorter prompt chunk (fewer rows per forward) needs less (" + error.message() + ")");
}

}  // namespace

Status linear_cublas_status(cublasStatus_t status, const char* call) {
  if (status == CUBLAS_STATUS_SUCCESS) return ok_status();
  std::string message = std::string(call) + ": " + cublasGetStatusName(status) + " (" +
                        cublasGetStatusString(status) + ")";
  if (status == CUBLAS_STATUS_ALLOC_FAILED) return out_of_memory(std::move(message));
  return internal_error(std::move(message));
}

Result<std::unique_ptr<LinearContext>> LinearContext::create(cudaStream_t stream,
                                                             std::int64_t max_rows,
                                                             std::int64_t max_in,
                                                             std::int64_t max_out) {
  const CallShape shape{max_rows, max_in, max_out};
  return create(stream, std::span<const CallShape>(&shape, 1));
}

Result<std::unique_ptr<LinearContext>> LinearContext::create(cudaStream_t stream,
                                                             std::span<const CallShape> calls) {
  std::size_t bytes = 0;
  for (const CallShape& call : calls) {
    if (call.rows < 1 || call.in < 1 || call.out < 1) {
      return invalid_argument("a Linear context needs at least one row, input and output (got " +
                              std::to_string(call.rows) + " rows, " + std::to_string(call.in) +
                              " inputs, " + std::to_string(call.out) + " outputs)");
    }
    bytes = std::max(
        bytes,
        call.input_gradient
            ? linear_input_gradient_workspace_layout(call.rows, call.in, call.out).total_bytes
            : workspace_bytes_for(call.rows, call.in, call.out));
  }
  if (bytes == 0) return invalid_argument("a Linear context needs at least one call shape");
  // The destructor releases whatever was made before a failure.
  std::unique_ptr<LinearContext> context(new LinearContext());
  context->stream_ = stream;
  KBIT_RETURN_IF_ERROR(linear_cublas_status(cublasCreate(&context->cublas_), "cublasCreate"));
  KBIT_RETURN_IF_ERROR(
      linear_cublas_status(cublasSetStream(context->cublas_, stream), "cublasSetStream"));
  // No TF32 for f32 data, and split-K partial sums reduced in f32, never in a 16-bit output type.
  const auto math = static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                              CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);
  KBIT_RETURN_IF_ERROR(
      linear_cublas_status(cublasSetMathMode(context->cublas_, math), "cublasSetMathMode"));
  KBIT_RETURN_IF_ERROR(
      linear_cublas_status(cublasLtCreate(&context->cublas_lt_), "cublasLtCreate"));

  KBIT_RETURN_IF_ERROR(cuda_status(cudaGetDevice(&context->device_), "cudaGetDevice"));
  KBIT_ASSIGN_OR_RETURN(Allocator * allocator, cuda_allocator(context->device_));
  Result<void*> allocated = allocator->allocate(bytes);
  if (!allocated.ok()) return workspace_allocation_error(allocated.status(), bytes);
  context->workspace_ = *allocated;
  context->workspace_bytes_ = bytes;
  // With its own workspace cuBLAS never allocates inside a call, so calls can be graph-captured.
  // It must come after cublasSetStream, which resets the workspace to cuBLAS's default pool. The
  // layout puts it first, whatever the sizes.
  const LinearWorkspaceLayout layout = linear_workspace_layout(1, 1, 1);
  KBIT_RETURN_IF_ERROR(linear_cublas_status(
      cublasSetWorkspace(context->cublas_,
                         static_cast<char*>(context->workspace_) + layout.cublas_workspace,
                         kLinearCublasWorkspaceBytes),
      "cublasSetWorkspace"));
  return context;
}

LinearContext::~LinearContext() {
  // Errors here cannot be reported; the handles and memory are gone either way.
  if (cublas_lt_ != nullptr) cublasLtDestroy(cublas_lt_);
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (workspace_ != nullptr) {
    // The caching allocator may hand the block out at once: work queued on it must be done.
    cudaStreamSynchronize(stream_);
    Result<Allocator*> allocator = cuda_allocator(device_);
    if (allocator.ok()) (*allocator)->deallocate(workspace_);
  }
}

std::size_t LinearContext::workspace_bytes_for(std::int64_t max_rows, std::int64_t max_in,
                                               std::int64_t max_out) {
  return linear_workspace_layout(std::max<std::int64_t>(max_rows, 1),
                                 std::max<std::int64_t>(max_in, 1),
                                 std::max<std::int64_t>(max_out, 1))
      .total_bytes;
}

}  // namespace kbit::kernels::cuda

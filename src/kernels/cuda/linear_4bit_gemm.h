// The tensor-core 4-bit GEMM of linear_4bit (linear_launchers.h, Linear4bitKernel::
// kTensorCoreGemm): y = x · Wᵀ for many rows with the weight decoded in registers inside the
// matmul, never written to memory. Hopper's warpgroup MMA (wgmma, sm_90a) multiplies the decoded
// weight, held in registers, with tiles of x in shared memory.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/cuda/four_bit_parts.cuh"

namespace kbit::kernels::cuda {

// Whether the GEMM applies to `call`: a GPU of compute capability 9.0 (the sm_90a code), a
// compute dtype of bf16 or f16, the exact decode, inputs a multiple of 64, quantization blocks of
// at least 64 values and a 16-byte aligned packed weight. x is then taken in the compute dtype
// (launch_tensor_core_gemm's x_compute), so its own dtype and alignment do not matter.
bool tensor_core_gemm_applies(const FourBitCall& call);

// Whether kAuto takes the GEMM for `call`, one it applies to with more rows than the GEMVs take:
// where it measured faster than dequantizing into cuBLAS (BENCHMARKS.md, "The tensor-core 4-bit
// GEMM"), one block of 128 tokens or fewer with enough blocks of features (at least 96, 12 288
// features) to fill the GPU. With more tokens its decode, repeated for every block of tokens,
// costs more than cuBLAS saves; with fewer features, too few blocks run.
bool tensor_core_gemm_preferred(const FourBitCall& call);

// Queues the GEMM for `call` (one it applies to) on call.stream: y = the rounding of
// four_bit_parts.cuh applied to x_compute [rows, in] (call.x converted to the compute dtype,
// 16-byte aligned) · Wᵀ, the products summed in f32 in an order of the tensor cores' choosing.
cudaError_t launch_tensor_core_gemm(const FourBitCall& call, const void* x_compute);

}  // namespace kbit::kernels::cuda

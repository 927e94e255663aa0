// sm_90's approximate reciprocal and division applied elementwise on the device, through the
// helpers kbit's kernels use (bnb_fast_math.cuh): the GPU side of gpu_approx_math_test.cc, which
// checks the CPU emulation (kernels/cpu/gpu_approx_math.h) against it. Test code only.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace kbit::kernels::cuda {

// x [n] -> result [n]: rcp.approx.ftz.f32(x[i]). Device pointers; runs on the current stream.
cudaError_t rcp_approx_on_device(const float* x, std::int64_t n, float* result);

// a [n], b [n] -> result [n]: div.approx.ftz.f32(a[i], b[i]). Device pointers.
cudaError_t div_approx_on_device(const float* a, const float* b, std::int64_t n, float* result);

}  // namespace kbit::kernels::cuda

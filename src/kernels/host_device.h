// KBIT_HOST_DEVICE: a small function that the CPU code and the CUDA kernels share, compiled for
// both where nvcc compiles it and for the host alone elsewhere.
#pragma once

#if defined(__CUDACC__)
#define KBIT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define KBIT_HOST_DEVICE inline
#endif

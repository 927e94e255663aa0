// Programmatic dependent launch (Hopper and later): a kernel launched with launch_overlapped may
// start while the kernel before it in the stream is still running, so that its launch, its
// blocks' start-up and whatever it does before it needs its inputs overlap the previous kernel's
// tail instead of following it. A decode step is a chain of short kernels, each a few
// microseconds, where the gap between two kernels is a large share of the step.
//
// The contract of a kernel launched this way:
//   - it calls allow_next_kernel_start() where the next kernel's blocks may begin to take free
//     SMs (they then wait in their own wait_for_previous_kernels()): at the start for a kernel of
//     one short wave; later for one whose blocks are many and long, which the early arrivals
//     would otherwise crowd onto some SMs (implicitly at its end if it never calls it), and
//   - it calls wait_for_previous_kernels() before it reads anything an earlier kernel wrote or
//     writes anything an earlier kernel reads. What comes before may touch only memory no kernel
//     of the stream writes: weights, tables, the kernel's parameters, shared memory.
// The wait returns once every earlier kernel of the stream has finished and its writes are
// visible (each earlier kernel waited for its own predecessors before finishing), so nothing else
// changes for the code after it. On GPUs before Hopper the attribute has no effect and both calls
// compile to nothing. Stream capture keeps the relation as a programmatic edge of the graph.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

namespace kbit::kernels::cuda {

__device__ __forceinline__ void allow_next_kernel_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void wait_for_previous_kernels() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// kernel<<<grid, block, shared_bytes, stream>>>(args...), allowed to overlap the previous kernel
// of the stream as above; returns the launch's error.
template <typename... Parameters, typename... Arguments>
cudaError_t launch_overlapped(void (*kernel)(Parameters...), dim3 grid, dim3 block,
                              std::size_t shared_bytes, cudaStream_t stream,
                              Arguments&&... arguments) {
  cudaLaunchAttribute overlap{};
  overlap.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  overlap.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = &overlap;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Arguments>(arguments)...);
}

}  // namespace kbit::kernels::cuda

// Where the 4-bit tensor-core GEMV's time goes: the parts of one 14336 × 4096 NF4 GEMV step
// (kernels/cuda/linear_4bit.cu, linear_4bit_mma_gemv_kernel with ProductDecode) timed alone and
// together, over the same packed weight and grid (16 features per block of 8 warps, lane (g, t)
// reading 16 bytes of features g and g + 8 per step of 128 inputs, the next step's loads issued
// before this step's work). The parts write nothing useful: this measures cost, not results, so
// the weights are a fixed byte pattern (the library's own kernel, checked, is timed by
// kbit_kernel_workbench).
//
//   stream         the loads of packed codes and absmax alone
//   decode         + the 256-entry pair table, each byte looked up and scaled (HMUL2)
//   mma            the loads and eight mma.sync m16n8k16 per step on the raw codes, no decode
//   decode + mma   both: the library kernel's step
//   decode + ffma  the decode feeding f32 FMAs on the CUDA cores instead of the tensor cores
//
// Usage: kbit_gemv_cost_probe   (prints one line per part: median of 50 launches, each on
// another of four copies of the weight, so that L2 holds none of it).
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

namespace {

constexpr int kOut = 14336;
constexpr int kIn = 4096;
constexpr int kBlockSize = 64;
constexpr int kWarps = 8;
constexpr int kSteps = kIn / 128;
constexpr int kCopies = 4;

enum class Part { kStream, kDecode, kMma, kDecodeMma, kDecodeFfma };

constexpr bool uses_table(Part part) {
  return part != Part::kStream && part != Part::kMma;
}

__device__ __forceinline__ std::uint32_t bits_of(__nv_bfloat162 pair) {
  std::uint32_t bits;
  std::memcpy(&bits, &pair, sizeof(bits));
  return bits;
}

__device__ __forceinline__ __nv_bfloat162 pair_of(std::uint32_t bits) {
  __nv_bfloat162 pair;
  std::memcpy(&pair, &bits, sizeof(bits));
  return pair;
}

__device__ __forceinline__ void mma_16x8x16(float (&d)[4], const std::uint32_t (&a)[4],
                                            std::uint32_t b0, std::uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The pair of byte `byte` of `word`, looked up in the lane's column of the table and scaled.
__device__ __forceinline__ std::uint32_t decoded_pair(std::uint32_t lane_column, std::uint32_t word,
                                                      int byte, __nv_bfloat162 scale) {
  const std::uint32_t index = __byte_perm(word, 0u, 0x4440u | static_cast<std::uint32_t>(byte));
  std::uint32_t codes;
  asm volatile("ld.shared.u32 %0, [%1];" : "=r"(codes) : "r"(lane_column + index * 128u));
  return bits_of(__hmul2(pair_of(codes), scale));
}

// One of a step's eight k-slices (values 4j .. 4j + 4 of the lane's 32, bytes `byte` and
// byte + 1 of words `low` and `high`) for a part that decodes or multiplies.
template <Part kPart>
__device__ __forceinline__ void multiply_slice(std::uint32_t lane_column, const float* x,
                                               std::uint32_t low, std::uint32_t high, int byte,
                                               __nv_bfloat162 scale_low, __nv_bfloat162 scale_high,
                                               std::uint32_t x_pair, float (&sums)[4],
                                               std::uint32_t& bits) {
  if constexpr (kPart == Part::kMma) {
    const std::uint32_t a[4] = {low & 0x3f3f3f3fu, high & 0x3f3f3f3fu, low & 0x3e3e3e3eu,
                                high & 0x3e3e3e3eu};
    mma_16x8x16(sums, a, x_pair, x_pair);
    return;
  }
  const std::uint32_t a[4] = {decoded_pair(lane_column, low, byte, scale_low),
                              decoded_pair(lane_column, high, byte, scale_high),
                              decoded_pair(lane_column, low, byte + 1, scale_low),
                              decoded_pair(lane_column, high, byte + 1, scale_high)};
  if constexpr (kPart == Part::kDecode) {
    bits ^= a[0] ^ a[1] ^ a[2] ^ a[3];
  } else if constexpr (kPart == Part::kDecodeMma) {
    mma_16x8x16(sums, a, x_pair, x_pair);
  } else {  // kDecodeFfma: the slice's 4 values of features g and g + 8, times x in f32
    for (int q = 0; q < 4; ++q) {
      const float x_even = x[2 * (q / 2)];
      const float x_odd = x[2 * (q / 2) + 1];
      sums[q % 2] = fmaf(__uint_as_float(a[q] << 16), x_even, sums[q % 2]);
      sums[q % 2] = fmaf(__uint_as_float(a[q] & 0xffff0000u), x_odd, sums[q % 2]);
    }
  }
}

template <Part kPart>
__global__ void __launch_bounds__(kWarps * 32)
    probe_kernel(const std::uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                 float* __restrict__ sink) {
  __shared__ alignas(16) std::uint32_t pairs[uses_table(kPart) ? 256 * 32 : 1];
  __shared__ alignas(16) float x[kPart == Part::kDecodeFfma ? kIn : 4];
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int group = lane / 4;
  const int quad = lane % 4;
  if constexpr (uses_table(kPart)) {
    for (int i = static_cast<int>(threadIdx.x); i < 256 * 8; i += kWarps * 32) {
      const int byte = i / 8;
      const std::uint32_t pair =
          bits_of(__floats2bfloat162_rn(0.1f * (byte >> 4) - 0.7f, 0.1f * (byte & 15) - 0.7f));
      reinterpret_cast<uint4*>(pairs)[i] = make_uint4(pair, pair, pair, pair);
    }
  }
  if constexpr (kPart == Part::kDecodeFfma) {
    for (int i = static_cast<int>(threadIdx.x); i < kIn; i += kWarps * 32) x[i] = 0.001f * i;
  }
  __syncthreads();

  const std::size_t low = static_cast<std::size_t>(blockIdx.x) * 16 + group;
  const std::size_t high = low + 8;
  const uint4* codes_low = reinterpret_cast<const uint4*>(packed + low * kIn / 2) + quad;
  const uint4* codes_high = reinterpret_cast<const uint4*>(packed + high * kIn / 2) + quad;
  const auto lane_column = static_cast<std::uint32_t>(__cvta_generic_to_shared(pairs + lane));
  const std::uint32_t x_pair = bits_of(__floats2bfloat162_rn(1.0f, 1.0f));
  float sums[4] = {};
  std::uint32_t bits = 0;
  uint4 next_low = __ldcs(codes_low + warp * 4);
  uint4 next_high = __ldcs(codes_high + warp * 4);
  for (int step = warp; step < kSteps; step += kWarps) {
    const uint4 now_low = next_low;
    const uint4 now_high = next_high;
    const int first_in = step * 128 + quad * 32;
    const float absmax_low = __ldg(absmax + (low * kIn + first_in) / kBlockSize);
    const float absmax_high = __ldg(absmax + (high * kIn + first_in) / kBlockSize);
    const int next = min(step + kWarps, kSteps - 1);
    next_low = __ldcs(codes_low + next * 4);
    next_high = __ldcs(codes_high + next * 4);
    const std::uint32_t words_low[4] = {now_low.x, now_low.y, now_low.z, now_low.w};
    const std::uint32_t words_high[4] = {now_high.x, now_high.y, now_high.z, now_high.w};
    const __nv_bfloat162 scale_low = __floats2bfloat162_rn(absmax_low, absmax_low);
    const __nv_bfloat162 scale_high = __floats2bfloat162_rn(absmax_high, absmax_high);
    if constexpr (kPart == Part::kStream) {
      for (int w = 0; w < 4; ++w) bits ^= words_low[w] ^ words_high[w];
      bits ^= __float_as_uint(absmax_low + absmax_high);
    } else {
      for (int j = 0; j < 8; ++j) {
        multiply_slice<kPart>(lane_column, x + first_in + 4 * j, words_low[j / 2],
                              words_high[j / 2], 2 * (j % 2), scale_low, scale_high, x_pair, sums,
                              bits);
      }
    }
  }
  const float total = sums[0] + sums[1] + sums[2] + sums[3] + static_cast<float>(bits & 1u);
  if (total == 12345.0f) sink[blockIdx.x] = total;  // never true: keeps the work alive
}

bool check(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return true;
  std::fprintf(stderr, "kbit_gemv_cost_probe: %s: %s\n", what, cudaGetErrorString(error));
  return false;
}

template <Part kPart>
bool time_part(const char* name, const std::uint8_t* packed, const float* absmax, float* sink) {
  constexpr std::size_t kPackedBytes = static_cast<std::size_t>(kOut) * kIn / 2;
  constexpr std::size_t kAbsmaxCount = static_cast<std::size_t>(kOut) * kIn / kBlockSize;
  cudaEvent_t start;
  cudaEvent_t stop;
  if (!check(cudaEventCreate(&start), "cudaEventCreate") ||
      !check(cudaEventCreate(&stop), "cudaEventCreate")) {
    return false;
  }
  std::vector<float> times;
  for (int run = 0; run < 60; ++run) {
    const int copy = run % kCopies;
    cudaEventRecord(start);
    probe_kernel<kPart><<<kOut / 16, kWarps * 32>>>(packed + copy * kPackedBytes,
                                                    absmax + copy * kAbsmaxCount, sink);
    cudaEventRecord(stop);
    if (!check(cudaEventSynchronize(stop), name)) return false;
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    if (run >= 10) times.push_back(ms * 1000.0f);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  const double us = times[times.size() / 2];
  const double bytes = kPackedBytes + 4.0 * kAbsmaxCount;
  std::printf("%-16s %7.2f us  %6.0f GB/s\n", name, us, bytes / us / 1e3);
  return true;
}

}  // namespace

int main() {
  const std::size_t packed_bytes = static_cast<std::size_t>(kOut) * kIn / 2 * kCopies;
  const std::size_t absmax_bytes = static_cast<std::size_t>(kOut) * kIn / kBlockSize * 4 * kCopies;
  std::uint8_t* packed = nullptr;
  float* absmax = nullptr;
  float* sink = nullptr;
  if (!check(cudaMalloc(&packed, packed_bytes), "cudaMalloc") ||
      !check(cudaMalloc(&absmax, absmax_bytes), "cudaMalloc") ||
      !check(cudaMalloc(&sink, kOut / 16 * sizeof(float)), "cudaMalloc") ||
      !check(cudaMemset(packed, 0x5a, packed_bytes), "cudaMemset") ||
      !check(cudaMemset(absmax, 0x3c, absmax_bytes), "cudaMemset")) {
    return 1;
  }
  std::printf("NF4 %d x %d, 1 token, %d warps per 16 features\n", kOut, kIn, kWarps);
  const bool ok = time_part<Part::kStream>("stream", packed, absmax, sink) &&
                  time_part<Part::kDecode>("decode", packed, absmax, sink) &&
                  time_part<Part::kMma>("mma", packed, absmax, sink) &&
                  time_part<Part::kDecodeMma>("decode + mma", packed, absmax, sink) &&
                  time_part<Part::kDecodeFfma>("decode + ffma", packed, absmax, sink);
  cudaFree(packed);
  cudaFree(absmax);
  cudaFree(sink);
  return ok ? 0 : 1;
}

// Where the 4-bit tensor-core GEMV's time goes: the parts of one NF4 GEMV step at 1 token
// (kernels/cuda/linear_4bit.cu, linear_4bit_mma_gemv_kernel with ProductDecode) timed alone and
// together, over the same packed weight and grid (16 features per block of 8 warps, lane (g, t)
// reading 16 bytes of features g and g + 8 and 32 values of x per step of 128 inputs, the next
// step's loads issued before this step's work), beside two variants of the step. Every part ends
// in the same epilogue (the lanes' sums meet across the quad and the warps and are stored), so
// the compiler can drop none of its work as unused.
//
//   launch         an empty kernel of the same grid: what the timing method alone costs
//   read           the same bytes read with coalesced 16-byte loads: the floor of the method
//   stream         the loads of packed codes, absmax and x alone
//   decode         + the 256-entry pair table, each byte looked up and scaled (HMUL2)
//   mma            the loads and eight mma.sync m16n8k16 per step on the raw codes, no decode
//   decode + mma   both: the library kernel's step, checked
//   decode + ffma  the decode feeding f32 FMAs on the CUDA cores instead of the tensor cores,
//                  checked
//   whole lines, whole lines, scale after
//                  the variants ("Two variants" below says why), checked
//
// The checked parts compute y = W x on random data (random codes, absmax and bf16 x) and are
// compared with a float64 reference of the same decode (round_bf16(round_bf16(code) ·
// round_bf16(absmax)), or the scaled-after variant's), so only the order of the f32 sums differs;
// the others measure cost.
//
// Usage: kbit_gemv_cost_probe   (prints, for 14336 × 4096 and 4096 × 14336, one line per part:
// median of 50 launches, each on another of four copies of the weight, so that L2 holds none of
// it, and the checked parts' relative error). Under Nsight Compute, `--kernel-name-base mangled
// --kernel-id "::regex:(probe|line|read)_kernel:12"` takes each kernel part's 11th timed launch
// at 14336 × 4096 (73: at 4096 × 14336).
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "kbit/quant/codebooks.h"
#include "kernels/cuda/mma_sync.cuh"

namespace {

using kbit::kernels::cuda::mma_16x8x16;
using kbit::kernels::cuda::word_of;

constexpr int kBlockSize = 64;    // values per absmax
constexpr int kWarps = 8;         // per block, splitting the inputs
constexpr int kFeatures = 16;     // per block: the M of mma.m16n8k16
constexpr int kStepValues = 128;  // inputs of one warp step, 32 per lane of a quad
constexpr int kCopies = 4;
constexpr int kRuns = 60;
constexpr int kWarmRuns = 10;
constexpr double kTolerance = 1e-5;  // relative L2 error of the checked parts (f32 sums)

// The 16 NF4 code values (kbit/quant/codebooks.h), a kernel parameter.
struct CodeValues {
  float values[16];
};

CodeValues nf4_code_values() {
  CodeValues code_values;
  std::copy(kbit::quant::kNf4Values.begin(), kbit::quant::kNf4Values.end(), code_values.values);
  return code_values;
}

struct Shape {
  int out;
  int in;
};
constexpr Shape kShapes[] = {{14336, 4096}, {4096, 14336}};

constexpr int largest_in() {
  int in = 0;
  for (const Shape shape : kShapes) in = std::max(in, shape.in);
  return in;
}

enum class Part { kLaunch, kStream, kDecode, kMma, kDecodeMma, kDecodeFfma };

__host__ __device__ constexpr bool uses_table(Part part) {
  return part == Part::kDecode || part == Part::kDecodeMma || part == Part::kDecodeFfma;
}

// Whether a part computes y = W x (and is checked) rather than only spending the work.
constexpr bool computes_y(Part part) {
  return part == Part::kDecodeMma || part == Part::kDecodeFfma;
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

// The code values of byte `byte` of `word` as a bf16 pair (value 2j, the high nibble, in the low
// half), looked up in the lane's column of the table.
__device__ __forceinline__ std::uint32_t code_pair(std::uint32_t lane_column, std::uint32_t word,
                                                   int byte) {
  const std::uint32_t index = __byte_perm(word, 0u, 0x4440u | static_cast<std::uint32_t>(byte));
  std::uint32_t codes;
  asm volatile("ld.shared.u32 %0, [%1];" : "=r"(codes) : "r"(lane_column + index * 128u));
  return codes;
}

// The same pair scaled by the absmax: round_bf16(round_bf16(code) · round_bf16(absmax)).
__device__ __forceinline__ std::uint32_t decoded_pair(std::uint32_t lane_column, std::uint32_t word,
                                                      int byte, __nv_bfloat162 scale) {
  return bits_of(__hmul2_rn(pair_of(code_pair(lane_column, word, byte)), scale));
}

// What lane (g, t) reads for one step: inputs [128 · step + 32t, +32) of features g and g + 8.
struct StepInputs {
  uint4 codes_low;   // feature g, two values per byte
  uint4 codes_high;  // feature g + 8
  float absmax_low;
  float absmax_high;
  uint4 x[4];  // x at those inputs as bf16 pairs, or zeros in an MMA column past the token
};

// Where lane (g, t) of a block reads.
struct LaneSource {
  const uint4* codes_low;   // [steps][4] uint4, the lane's at [step][t]
  const uint4* codes_high;  // the same for feature g + 8
  const float* absmax_low;  // [in / 64], the lane's at [2 · step + t / 2]
  const float* absmax_high;
  const uint4* x;  // [steps][4 quads][4] uint4 of bf16 pairs
  bool x_present;
};

__device__ __forceinline__ StepInputs load_step(const LaneSource& source, int step) {
  StepInputs inputs;
  inputs.codes_low = __ldcs(source.codes_low + 4 * step);
  inputs.codes_high = __ldcs(source.codes_high + 4 * step);
  inputs.absmax_low = __ldg(source.absmax_low + 2 * step);
  inputs.absmax_high = __ldg(source.absmax_high + 2 * step);
#pragma unroll
  for (int v = 0; v < 4; ++v) {
    inputs.x[v] = source.x_present ? __ldg(source.x + 16 * step + v) : make_uint4(0, 0, 0, 0);
  }
  return inputs;
}

// One of a step's eight k-slices: values 4j .. 4j + 4 of the lane's 32 (bytes `byte` and
// byte + 1 of the words `low` and `high`), against x's pairs `x_first` and `x_second`.
template <Part kPart>
__device__ __forceinline__ void multiply_slice(std::uint32_t low, std::uint32_t high, int byte,
                                               __nv_bfloat162 scale_low, __nv_bfloat162 scale_high,
                                               std::uint32_t x_first, std::uint32_t x_second,
                                               std::uint32_t lane_column, float (&sums)[4],
                                               std::uint32_t& bits) {
  if constexpr (kPart == Part::kMma) {
    // The raw codes as bf16, masked to stay finite.
    const std::uint32_t a[4] = {low & 0x3f3f3f3fu, high & 0x3f3f3f3fu, low & 0x3e3e3e3eu,
                                high & 0x3e3e3e3eu};
    mma_16x8x16<__nv_bfloat16>(sums, a, x_first, x_second);
  } else {
    // Fragment order: (g, k 2t..2t+1), (g + 8, k 2t..), (g, k 2t+8..), (g + 8, k 2t+8..); the
    // MMA's k order is a permutation of the inputs, the same for A and B.
    const std::uint32_t a[4] = {decoded_pair(lane_column, low, byte, scale_low),
                                decoded_pair(lane_column, high, byte, scale_high),
                                decoded_pair(lane_column, low, byte + 1, scale_low),
                                decoded_pair(lane_column, high, byte + 1, scale_high)};
    if constexpr (kPart == Part::kDecode) {
      bits ^= a[0] ^ a[1] ^ a[2] ^ a[3] ^ x_first ^ x_second;
    } else if constexpr (kPart == Part::kDecodeMma) {
      mma_16x8x16<__nv_bfloat16>(sums, a, x_first, x_second);
    } else {  // kDecodeFfma: a bf16 pair widens to two f32 exactly, by a shift and a mask
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const std::uint32_t x_pair = q < 2 ? x_first : x_second;
        const int first_sum = q % 2 == 0 ? 0 : 2;  // a[0], a[2]: feature g; a[1], a[3]: g + 8
        sums[first_sum] =
            fmaf(__uint_as_float(a[q] << 16), __uint_as_float(x_pair << 16), sums[first_sum]);
        sums[first_sum + 1] = fmaf(__uint_as_float(a[q] & 0xffff0000u),
                                   __uint_as_float(x_pair & 0xffff0000u), sums[first_sum + 1]);
      }
    }
  }
}

// One step's work for part kPart: into the MMA fragment `sums` (D: (g, 2t), (g, 2t + 1),
// (g + 8, 2t), (g + 8, 2t + 1)), or for the FFMA part sums[0..1] for feature g and sums[2..3]
// for g + 8; the cost parts fold what they would drop into `bits`.
template <Part kPart>
__device__ __forceinline__ void work_step(const StepInputs& inputs, std::uint32_t lane_column,
                                          float (&sums)[4], std::uint32_t& bits) {
  const __nv_bfloat162 scale_low = __floats2bfloat162_rn(inputs.absmax_low, inputs.absmax_low);
  const __nv_bfloat162 scale_high = __floats2bfloat162_rn(inputs.absmax_high, inputs.absmax_high);
  if constexpr (kPart == Part::kStream || kPart == Part::kMma) {
    bits ^= bits_of(scale_low) ^ bits_of(scale_high);  // the absmax, which they don't use
  }
  if constexpr (kPart == Part::kStream) {
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      bits ^= word_of(inputs.codes_low, w) ^ word_of(inputs.codes_high, w);
#pragma unroll
      for (int v = 0; v < 4; ++v) bits ^= word_of(inputs.x[v], w);
    }
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      // Values [4j, 4j + 4) of the lane's 32: bytes 2j and 2j + 1 of the 16, in word j / 2.
      const std::uint32_t low = word_of(inputs.codes_low, j / 2);
      const std::uint32_t high = word_of(inputs.codes_high, j / 2);
      const int byte = 2 * (j % 2);
      const std::uint32_t x_first = word_of(inputs.x[j / 2], 2 * (j % 2));  // values 4j, 4j + 1
      const std::uint32_t x_second = word_of(inputs.x[j / 2], 2 * (j % 2) + 1);
      multiply_slice<kPart>(low, high, byte, scale_low, scale_high, x_first, x_second, lane_column,
                            sums, bits);
    }
  }
}

// The pair table: entry (byte, lane) at word 32 · byte + lane, so that a warp's lookups hit 32
// banks.
__device__ __forceinline__ void fill_pair_table(const CodeValues& code_values,
                                                std::uint32_t (&pairs)[256 * 32]) {
  for (int i = static_cast<int>(threadIdx.x); i < 256 * 8; i += static_cast<int>(blockDim.x)) {
    const int byte = i / 8;
    const std::uint32_t pair = bits_of(
        __floats2bfloat162_rn(code_values.values[byte >> 4], code_values.values[byte & 15]));
    reinterpret_cast<uint4*>(pairs)[i] = make_uint4(pair, pair, pair, pair);
  }
}

__device__ __forceinline__ float quad_sum(float value) {
  for (int offset = 1; offset < 4; offset *= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

// y[16b, 16b + 16) for block b: each warp's sums of features g and g + 8, held by lane (g, 0),
// meet across the warps in a fixed order.
template <int kBlockWarps>
__device__ __forceinline__ void store_block_sums(float sum_low, float sum_high,
                                                 float (&partial_sums)[kBlockWarps][kFeatures],
                                                 float* y) {
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  if (lane % 4 == 0) {
    partial_sums[warp][lane / 4] = sum_low;
    partial_sums[warp][lane / 4 + 8] = sum_high;
  }
  __syncthreads();
  if (threadIdx.x < kFeatures) {
    float sum = 0.0f;
    for (int w = 0; w < kBlockWarps; ++w) sum += partial_sums[w][threadIdx.x];
    y[blockIdx.x * kFeatures + threadIdx.x] = sum;
  }
}

// Where lane (g, t) of block b reads when each lane takes kChunks 16-byte chunks of a feature per
// step (see LaneSource; x as for one chunk).
template <int kChunks>
__device__ __forceinline__ LaneSource lane_source(const std::uint8_t* packed, const float* absmax,
                                                  const __nv_bfloat16* x, bool x_present, int in) {
  static_assert(kChunks == 1 || kChunks == 2, "a lane's values must lie in one absmax block");
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int quad = lane % 4;
  const std::size_t low = static_cast<std::size_t>(blockIdx.x) * kFeatures + lane / 4;
  const std::size_t high = low + 8;
  return {reinterpret_cast<const uint4*>(packed + low * in / 2) + kChunks * quad,
          reinterpret_cast<const uint4*>(packed + high * in / 2) + kChunks * quad,
          absmax + low * in / kBlockSize + kChunks * quad / 2,
          absmax + high * in / kBlockSize + kChunks * quad / 2,
          reinterpret_cast<const uint4*>(x) + 4 * quad,
          x_present};
}

// y[16b + f] for block b: see the file comment. packed [out][in / 2], absmax [out][in / 64],
// x [in] bf16, y [out] f32.
template <Part kPart>
__global__ void __launch_bounds__(kWarps * 32)
    probe_kernel(const std::uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                 const __grid_constant__ CodeValues code_values,
                 const __nv_bfloat16* __restrict__ x, int in, float* __restrict__ y) {
  __shared__ alignas(16) std::uint32_t pairs[uses_table(kPart) ? 256 * 32 : 1];
  __shared__ float partial_sums[kWarps][kFeatures];
  if constexpr (uses_table(kPart)) fill_pair_table(code_values, pairs);
  __syncthreads();

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  // The MMA's column g is token g: at 1 token only group 0 carries x. The FFMA part's lanes each
  // multiply their own features by x.
  const LaneSource source =
      lane_source<1>(packed, absmax, x, kPart == Part::kDecodeFfma || lane / 4 == 0, in);
  const auto lane_column = static_cast<std::uint32_t>(__cvta_generic_to_shared(pairs + lane));
  const int steps = in / kStepValues;
  float sums[4] = {};
  std::uint32_t bits = 0;
  StepInputs current = load_step(source, warp);
  // Unrolled twice, so that `current` and `next` trade registers instead of being copied.
#pragma unroll 2
  for (int step = warp; step < steps; step += kWarps) {
    // The next step's loads go out before this step's work, so memory stays busy; past the last
    // step they re-read it (cached) rather than branch.
    const StepInputs next = load_step(source, min(step + kWarps, steps - 1));
    work_step<kPart>(current, lane_column, sums, bits);
    current = next;
  }
  // Column 0 of D (token 0) is sums[0] (feature g) and sums[2] (g + 8) of lane t = 0; the other
  // columns are zeros, so the quad's sums of all four may be added.
  store_block_sums(quad_sum(sums[0] + sums[1] + static_cast<float>(bits)),
                   quad_sum(sums[2] + sums[3]), partial_sums, y);
}

// The read part: the same bytes (packed codes, then absmax) read with coalesced 16-byte loads,
// four in flight per thread: the floor of this timing method.
__global__ void __launch_bounds__(256)
    read_kernel(const uint4* __restrict__ packed, int packed_chunks,
                const uint4* __restrict__ absmax, int absmax_chunks, float* __restrict__ y) {
  const int stride = static_cast<int>(gridDim.x * blockDim.x);
  const int first = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  std::uint32_t bits = 0;
  const auto fold = [&bits](uint4 chunk) { bits ^= chunk.x ^ chunk.y ^ chunk.z ^ chunk.w; };
  int i = first;
  for (; i + 3 * stride < packed_chunks; i += 4 * stride) {
    const uint4 chunks[4] = {__ldcs(packed + i), __ldcs(packed + i + stride),
                             __ldcs(packed + i + 2 * stride), __ldcs(packed + i + 3 * stride)};
    for (const uint4& chunk : chunks) fold(chunk);
  }
  for (; i < packed_chunks; i += stride) fold(__ldcs(packed + i));
  for (i = first; i < absmax_chunks; i += stride) fold(__ldcs(absmax + i));
  if (bits == 0x9e3779b9u) y[0] = 1.0f;  // all but never: keeps the loads alive
}

// ---- Two variants, chosen by Nsight Compute.
//
// The parts above all wait on their loads first (long-scoreboard stalls): 3 or 4 blocks fit an
// SM (registers bind; x's double buffer takes 32), each warp has one step of loads in flight, and
// the tensor pipe is under 13% busy. So the mma.sync path does not bind; how few bytes are in
// flight does. Read alone, the GEMV's pattern (each quad reads 64 bytes of a feature, half a
// 128-byte line, per load) runs well under the read part. A scratch sweep (up to four steps of
// loads ahead per warp, 4 to 16 warps per block, x in registers or in shared memory, half or
// whole lines) found that whole lines and x in shared memory gain and deeper prefetch does not
// (its registers cost blocks). Both variants therefore have:
//
//   - steps of 256 inputs, lane (g, t) reading two adjacent 16-byte chunks of features g and
//     g + 8: the quad reads whole lines, and the lane's 64 values are one absmax block;
//   - x copied once per block into shared memory (cp.async, cached in L1 for the SM's other
//     blocks), with 16 bytes of padding after every 128 so that the quads' 16-byte reads fall in
//     different banks, and read per step only by the lanes that carry x;
//   - the first step's loads issued before the table is built, and the table built with
//     warp-uniform constant loads.
//
// "whole lines" keeps the library's decode; group 0 carries x (column 0 of B, the token), so
// lane (g, 0) holds the sums. "whole lines, scale after" also drops the HMUL2 that scales each
// pair, a fifth of the step's instructions: the table's code pairs go to the MMA unscaled, lane
// (n, n) carries x in column n of B, so column n of D sums the inputs of quad lane n, one absmax
// block, and each block's sum is scaled in f32. Its weights are round_bf16(code) · absmax, not
// rounded again: another rounding than the library's product decode, checked against its own
// reference.
constexpr int kLineWarps = 8;
constexpr int kLineValues = 256;  // inputs per step

// Shared memory for x: its 16-byte chunks q at q + q / 8.
std::size_t line_x_bytes(int in) {
  return (in / 8 + in / 64) * sizeof(uint4);
}

// fill_pair_table's table, each constant load the same across a warp: thread i writes chunks
// i + 256k of the table (bytes i / 8 + 32k), whose low nibble, i / 8 % 16, is the thread's own
// and whose high nibble, 2k + i / 128, is the warp's. (fill_pair_table's loads of the low nibble
// differ across a warp, and a constant load is serialized over its distinct addresses.)
__device__ __forceinline__ void fill_pair_table_uniformly(const CodeValues& code_values,
                                                          std::uint32_t (&pairs)[256 * 32]) {
  static_assert(kLineWarps * 32 == 256, "one thread per 16-byte chunk of a byte's 128");
  const int i = static_cast<int>(threadIdx.x);
  const float low = code_values.values[i / 8 % 16];
  float high[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) high[k] = code_values.values[2 * k + i / 128];
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const std::uint32_t pair = bits_of(__floats2bfloat162_rn(high[k], low));
    reinterpret_cast<uint4*>(pairs)[i + 256 * k] = make_uint4(pair, pair, pair, pair);
  }
}

// shared[0] = global[0], by the copy engine of cp.async (no registers; cp.async.wait_all waits).
__device__ __forceinline__ void copy_16_bytes_async(uint4* shared, const uint4* global) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16;\n"
               :
               : "r"(static_cast<std::uint32_t>(__cvta_generic_to_shared(shared))), "l"(global)
               : "memory");
}

// What lane (g, t) reads for one step: inputs [256 · step + 64t, +64) of features g and g + 8.
struct LineStep {
  uint4 codes_low[2];  // feature g
  uint4 codes_high[2];
  float2 absmax_low;  // absmax of the lane's block (.x), or of blocks 4 · step + 2 (t % 2), + 1
  float2 absmax_high;
};

template <bool kScaleAfter>
__device__ __forceinline__ LineStep load_line_step(const LaneSource& source, int step) {
  LineStep inputs;
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    inputs.codes_low[c] = __ldcs(source.codes_low + 8 * step + c);
    inputs.codes_high[c] = __ldcs(source.codes_high + 8 * step + c);
  }
  if constexpr (kScaleAfter) {
    inputs.absmax_low = __ldg(reinterpret_cast<const float2*>(source.absmax_low + 4 * step));
    inputs.absmax_high = __ldg(reinterpret_cast<const float2*>(source.absmax_high + 4 * step));
  } else {
    inputs.absmax_low.x = __ldg(source.absmax_low + 4 * step);
    inputs.absmax_high.x = __ldg(source.absmax_high + 4 * step);
  }
  return inputs;
}

// sums[0] (feature g) and sums[1] (g + 8) += one step's products; x_first is the shared address
// of the lane's x for this step, read only by a lane that carries x (the others feed zeros).
template <bool kScaleAfter>
__device__ __forceinline__ void multiply_line_step(const LineStep& inputs, const uint4* x_first,
                                                   bool carries_x, std::uint32_t lane_column,
                                                   float (&sums)[2]) {
  const __nv_bfloat162 scale_low = __floats2bfloat162_rn(inputs.absmax_low.x, inputs.absmax_low.x);
  const __nv_bfloat162 scale_high =
      __floats2bfloat162_rn(inputs.absmax_high.x, inputs.absmax_high.x);
  float d[4] = {};  // D: (g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1)
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    uint4 x[4];
#pragma unroll
    for (int v = 0; v < 4; ++v) x[v] = carries_x ? x_first[4 * c + v] : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const std::uint32_t low = word_of(inputs.codes_low[c], j / 2);
      const std::uint32_t high = word_of(inputs.codes_high[c], j / 2);
      const int byte = 2 * (j % 2);
      if constexpr (kScaleAfter) {
        const std::uint32_t a[4] = {
            code_pair(lane_column, low, byte), code_pair(lane_column, high, byte),
            code_pair(lane_column, low, byte + 1), code_pair(lane_column, high, byte + 1)};
        mma_16x8x16<__nv_bfloat16>(d, a, word_of(x[j / 2], 2 * (j % 2)),
                                   word_of(x[j / 2], 2 * (j % 2) + 1));
      } else {
        const std::uint32_t a[4] = {decoded_pair(lane_column, low, byte, scale_low),
                                    decoded_pair(lane_column, high, byte, scale_high),
                                    decoded_pair(lane_column, low, byte + 1, scale_low),
                                    decoded_pair(lane_column, high, byte + 1, scale_high)};
        mma_16x8x16<__nv_bfloat16>(d, a, word_of(x[j / 2], 2 * (j % 2)),
                                   word_of(x[j / 2], 2 * (j % 2) + 1));
      }
    }
  }
  if constexpr (kScaleAfter) {
    // Lane t < 2 holds blocks 2t and 2t + 1 of the step; lanes t >= 2 hold zeros.
    sums[0] = fmaf(d[0], inputs.absmax_low.x, fmaf(d[1], inputs.absmax_low.y, sums[0]));
    sums[1] = fmaf(d[2], inputs.absmax_high.x, fmaf(d[3], inputs.absmax_high.y, sums[1]));
  } else {
    sums[0] += d[0];
    sums[1] += d[2];
  }
}

// y[16b + f] for block b, as probe_kernel, with the variants' steps. packed [out][in / 2],
// absmax [out][in / 64], x [in] bf16, y [out] f32; dynamic shared memory line_x_bytes(in).
template <bool kScaleAfter>
__global__ void __launch_bounds__(kLineWarps * 32)
    line_kernel(const std::uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                const __grid_constant__ CodeValues code_values, const __nv_bfloat16* __restrict__ x,
                int in, float* __restrict__ y) {
  __shared__ alignas(16) std::uint32_t pairs[256 * 32];
  __shared__ float partial_sums[kLineWarps][kFeatures];
  extern __shared__ uint4 x_shared[];

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int group = lane / 4;
  const int quad = lane % 4;
  // Lane t's absmax block is 4 · step + t; the scaled-after variant's lane t loads blocks
  // 4 · step + 2 (t % 2) and + 1 instead, t - 2 (t % 2) blocks before its own.
  LaneSource source = lane_source<2>(packed, absmax, x, true, in);
  if constexpr (kScaleAfter) {
    source.absmax_low -= quad - 2 * (quad % 2);
    source.absmax_high -= quad - 2 * (quad % 2);
  }
  const int steps = in / kLineValues;
  LineStep inputs = load_line_step<kScaleAfter>(source, warp);
  for (int q = static_cast<int>(threadIdx.x); q < in / 8; q += kLineWarps * 32) {
    copy_16_bytes_async(x_shared + q + q / 8, reinterpret_cast<const uint4*>(x) + q);
  }
  fill_pair_table_uniformly(code_values, pairs);
  asm volatile("cp.async.wait_all;\n" ::: "memory");
  __syncthreads();

  const auto lane_column = static_cast<std::uint32_t>(__cvta_generic_to_shared(pairs + lane));
  // The lane's x in step s: chunks 32s + 8t + 4c + v, at 36s + 9t + 4c + v.
  const uint4* x_lane = x_shared + 9 * quad;
  const bool carries_x = kScaleAfter ? group == quad : group == 0;
  float sums[2] = {};
  for (int step = warp; step < steps; step += kLineWarps) {
    multiply_line_step<kScaleAfter>(inputs, x_lane + 36 * step, carries_x, lane_column, sums);
    if (step + kLineWarps < steps) inputs = load_line_step<kScaleAfter>(source, step + kLineWarps);
  }
  if constexpr (kScaleAfter) {
    store_block_sums(quad_sum(sums[0]), quad_sum(sums[1]), partial_sums, y);
  } else {
    store_block_sums(sums[0], sums[1], partial_sums, y);  // column 0 of D, in lane (g, 0)
  }
}

bool check(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return true;
  std::fprintf(stderr, "kbit_gemv_cost_probe: %s: %s\n", what, cudaGetErrorString(error));
  return false;
}

float round_bf16(float value) {  // to nearest even; the probe's values are finite
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
  std::memcpy(&value, &bits, sizeof(bits));
  return value;
}

// One weight on the device: kCopies copies of the packed codes and absmax, and the host's
// float64 references y for x: with the library's product decode, round_bf16(round_bf16(code) ·
// round_bf16(absmax)), and with the scaled-after variant's weights, round_bf16(code) · absmax.
struct Problem {
  Shape shape;
  std::size_t packed_bytes;  // of one copy
  std::size_t absmax_count;  // of one copy
  std::uint8_t* packed = nullptr;
  float* absmax = nullptr;
  __nv_bfloat16* x = nullptr;
  float* y = nullptr;
  std::vector<double> product_reference;
  std::vector<double> scaled_after_reference;
};

bool make_problem(Shape shape, std::mt19937& random, Problem& problem) {
  problem.shape = shape;
  problem.packed_bytes = static_cast<std::size_t>(shape.out) * shape.in / 2;
  problem.absmax_count = static_cast<std::size_t>(shape.out) * shape.in / kBlockSize;
  std::vector<std::uint8_t> packed(problem.packed_bytes);
  std::vector<float> absmax(problem.absmax_count);
  std::vector<__nv_bfloat16> x(shape.in);
  std::vector<float> x_values(shape.in);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(0.01f, 0.1f);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  for (auto& b : packed) b = static_cast<std::uint8_t>(byte(random));
  for (auto& a : absmax) a = scale(random);
  for (int i = 0; i < shape.in; ++i) {
    x_values[i] = round_bf16(value(random));
    x[i] = __float2bfloat16(x_values[i]);
  }
  problem.product_reference.assign(shape.out, 0.0);
  problem.scaled_after_reference.assign(shape.out, 0.0);
  for (int o = 0; o < shape.out; ++o) {
    for (int i = 0; i < shape.in; ++i) {
      const std::size_t index = static_cast<std::size_t>(o) * shape.in + i;
      const int code = i % 2 == 0 ? packed[index / 2] >> 4 : packed[index / 2] & 15;
      const float code_value = round_bf16(kbit::quant::kNf4Values[code]);
      const float block_absmax = absmax[index / kBlockSize];
      const float product_weight = round_bf16(code_value * round_bf16(block_absmax));
      problem.product_reference[o] += static_cast<double>(product_weight) * x_values[i];
      problem.scaled_after_reference[o] +=
          static_cast<double>(code_value) * block_absmax * x_values[i];
    }
  }
  if (!check(cudaMalloc(&problem.packed, problem.packed_bytes * kCopies), "cudaMalloc") ||
      !check(cudaMalloc(&problem.absmax, problem.absmax_count * 4 * kCopies), "cudaMalloc") ||
      !check(cudaMalloc(&problem.x, shape.in * sizeof(__nv_bfloat16)), "cudaMalloc") ||
      !check(cudaMalloc(&problem.y, shape.out * sizeof(float)), "cudaMalloc") ||
      !check(
          cudaMemcpy(problem.x, x.data(), shape.in * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice),
          "cudaMemcpy")) {
    return false;
  }
  for (int copy = 0; copy < kCopies; ++copy) {
    if (!check(cudaMemcpy(problem.packed + copy * problem.packed_bytes, packed.data(),
                          problem.packed_bytes, cudaMemcpyHostToDevice),
               "cudaMemcpy") ||
        !check(cudaMemcpy(problem.absmax + copy * problem.absmax_count, absmax.data(),
                          problem.absmax_count * 4, cudaMemcpyHostToDevice),
               "cudaMemcpy")) {
      return false;
    }
  }
  return true;
}

void free_problem(Problem& problem) {
  cudaFree(problem.packed);
  cudaFree(problem.absmax);
  cudaFree(problem.x);
  cudaFree(problem.y);
}

// The launch part: the same grid, doing nothing.
__global__ void empty_kernel() {}

template <Part kPart>
cudaError_t launch(const Problem& problem, int copy) {
  if constexpr (kPart == Part::kLaunch) {
    empty_kernel<<<problem.shape.out / kFeatures, kWarps * 32>>>();
  } else {
    probe_kernel<kPart><<<problem.shape.out / kFeatures, kWarps * 32>>>(
        problem.packed + copy * problem.packed_bytes, problem.absmax + copy * problem.absmax_count,
        nf4_code_values(), problem.x, problem.shape.in, problem.y);
  }
  return cudaGetLastError();
}

cudaError_t launch_read(const Problem& problem, int copy) {
  read_kernel<<<problem.shape.out / kFeatures, 256>>>(
      reinterpret_cast<const uint4*>(problem.packed + copy * problem.packed_bytes),
      static_cast<int>(problem.packed_bytes / sizeof(uint4)),
      reinterpret_cast<const uint4*>(problem.absmax + copy * problem.absmax_count),
      static_cast<int>(problem.absmax_count * sizeof(float) / sizeof(uint4)), problem.y);
  return cudaGetLastError();
}

template <bool kScaleAfter>
cudaError_t launch_line(const Problem& problem, int copy) {
  const auto kernel = line_kernel<kScaleAfter>;
  // Once: x's copy can take a block past the default 48 KB of shared memory.
  static const cudaError_t raised =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(line_x_bytes(largest_in())));
  if (raised != cudaSuccess) return raised;
  kernel<<<problem.shape.out / kFeatures, kLineWarps * 32, line_x_bytes(problem.shape.in)>>>(
      problem.packed + copy * problem.packed_bytes, problem.absmax + copy * problem.absmax_count,
      nf4_code_values(), problem.x, problem.shape.in, problem.y);
  return cudaGetLastError();
}

using Launcher = cudaError_t (*)(const Problem&, int copy);

// ‖y − reference‖ / ‖reference‖ of one launch on copy 0, y poisoned (NaN) before it.
bool relative_error(const Problem& problem, Launcher run, const std::vector<double>& reference,
                    double& error) {
  std::vector<float> y(problem.shape.out);
  if (!check(cudaMemset(problem.y, 0xff, y.size() * sizeof(float)), "cudaMemset") ||
      !check(run(problem, 0), "launch") ||
      !check(cudaMemcpy(y.data(), problem.y, y.size() * sizeof(float), cudaMemcpyDeviceToHost),
             "cudaMemcpy")) {
    return false;
  }
  double difference = 0.0;
  double norm = 0.0;
  for (std::size_t o = 0; o < y.size(); ++o) {
    difference += (y[o] - reference[o]) * (y[o] - reference[o]);
    norm += reference[o] * reference[o];
  }
  error = std::sqrt(difference / norm);  // NaN (an unwritten y) fails the caller's comparison
  return true;
}

// What a part's y is checked against: nothing (a part that only spends the work), or a reference.
enum class Check { kNone, kProductDecode, kScaledAfter };

struct TimedPart {
  const char* name;
  Launcher run;
  Check check;
};

// Prints the part's median time and, for a part that computes y, its relative error; false if
// a CUDA call failed or the check did.
bool time_part(const TimedPart& part, const Problem& problem) {
  double error = 0.0;
  if (part.check != Check::kNone &&
      !relative_error(problem, part.run,
                      part.check == Check::kProductDecode ? problem.product_reference
                                                          : problem.scaled_after_reference,
                      error)) {
    return false;
  }
  cudaEvent_t start;
  cudaEvent_t stop;
  if (!check(cudaEventCreate(&start), "cudaEventCreate") ||
      !check(cudaEventCreate(&stop), "cudaEventCreate")) {
    return false;
  }
  std::vector<float> times;
  for (int index = 0; index < kRuns; ++index) {
    cudaEventRecord(start);
    const cudaError_t launched = part.run(problem, index % kCopies);
    cudaEventRecord(stop);
    if (!check(launched, part.name) || !check(cudaEventSynchronize(stop), part.name)) {
      return false;
    }
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    if (index >= kWarmRuns) times.push_back(ms * 1000.0f);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  const double us = times[times.size() / 2];
  const double bytes = problem.packed_bytes + 4.0 * problem.absmax_count;
  std::printf("%-28s %7.2f us  %6.0f GB/s", part.name, us, bytes / us / 1e3);
  if (part.check != Check::kNone) std::printf("  rel. error %.1e", error);
  std::printf("\n");
  return part.check == Check::kNone || error <= kTolerance;
}

template <Part kPart>
constexpr TimedPart probe_part(const char* name) {
  return {name, launch<kPart>, computes_y(kPart) ? Check::kProductDecode : Check::kNone};
}

constexpr TimedPart kParts[] = {
    probe_part<Part::kLaunch>("launch"),
    {"read", launch_read, Check::kNone},
    probe_part<Part::kStream>("stream"),
    probe_part<Part::kDecode>("decode"),
    probe_part<Part::kMma>("mma"),
    probe_part<Part::kDecodeMma>("decode + mma"),
    probe_part<Part::kDecodeFfma>("decode + ffma"),
    {"whole lines", launch_line<false>, Check::kProductDecode},
    {"whole lines, scale after", launch_line<true>, Check::kScaledAfter},
};

template <std::size_t kCount>
bool probe_shape(Shape shape, std::mt19937& random, const TimedPart (&parts)[kCount]) {
  Problem problem;
  bool ok = make_problem(shape, random, problem);
  if (ok) {
    std::printf("NF4 %d x %d, 1 token, %d features per block\n", shape.out, shape.in, kFeatures);
  }
  for (const TimedPart& part : parts) {
    ok = ok && time_part(part, problem);
  }
  free_problem(problem);
  return ok;
}

}  // namespace

int main() {
  std::mt19937 random(20261124);
  for (const Shape shape : kShapes) {
    if (!probe_shape(shape, random, kParts)) return 1;
  }
  return 0;
}

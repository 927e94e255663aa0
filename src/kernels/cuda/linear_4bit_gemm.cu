// linear_4bit's tensor-core GEMM (linear_4bit_gemm.h): many rows of x through a 4-bit weight,
// the weight decoded in registers and multiplied by Hopper's warpgroup MMA, so that what memory
// holds of it is read once per block of tokens as codes and never written back as values.
//
// Block: kWarpgroups warpgroups, kBlockFeatures output features × kBlockTokens rows of x (one or
// two tiles of 128 tokens: two for more than 128 rows, where each decoded fragment then serves
// both tiles, at one block per SM for their 128 accumulators per thread). The
// product is computed transposed, D [features, tokens] = W · xᵀ, so that the weight is wgmma's A
// operand, which may come from registers, and x its B operand, read from shared memory:
//   - each pipeline stage (kStepInputs inputs) brings, by cp.async, x's tile [kBlockTokens,
//     kStepInputs] in the compute dtype, its rows 128 bytes long and swizzled in 16-byte chunks
//     as wgmma's 128-byte swizzle expects, and the codes of the block's features [kBlockFeatures,
//     kStepInputs / 2 bytes], as stored;
//   - warpgroup g owns features [64 g, 64 g + 64) of the block, and in it warp w the 16 features
//     [16 w, 16 w + 16); lane (r, q) (r = lane / 4, q = lane % 4) holds, for each k16 slice of
//     the stage, the A fragment of features 16 w + r and + 8 at inputs 2q, 2q + 1, 2q + 8, 2q + 9
//     of the slice: byte q of words 2s and 2s + 1 of each feature's codes. It decodes them
//     exactly (ExactDecode) with the absmax of the feature's quantization block, which holds the
//     whole stage (blocks of at least 64 values);
//   - then one m64n128k16 wgmma per slice and tile, accumulating in f32 registers, 64 per thread
//     and tile.
// The MMAs run asynchronously: while those of step k run, each warpgroup decodes step k + 1 into
// a second set of fragment registers. That overlap measured no faster than waiting for each
// step's MMAs: the barrier every step and the decode's dependency chains bind the kernel, not the
// tensor cores (Nsight Compute, BENCHMARKS.md), which a warp-specialized pipeline would address.
// A stage's buffers are refilled kStages − 1 stages later, after the barrier that follows every
// warpgroup's wait for its MMAs on them. The epilogue rounds each sum as the reference does
// (finish_output) and stores it; features and tokens past the last are computed from clamped or
// zero inputs and not stored.
#include "kernels/cuda/linear_4bit_gemm.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/async_copy.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device_queries.h"
#include "kernels/cuda/launch_with_shared.cuh"

namespace kbit::kernels::cuda {
namespace {

constexpr int kWarpgroupThreads = 128;
constexpr int kWarpgroups = 2;
constexpr int kGemmThreads = kWarpgroups * kWarpgroupThreads;
constexpr int kWarpgroupFeatures = 64;  // the M of wgmma
constexpr int kBlockFeatures = kWarpgroups * kWarpgroupFeatures;
constexpr int kTileTokens = 128;  // the N of wgmma
constexpr int kStepInputs = 64;   // a 128-byte row of 16-bit x: one swizzle row
constexpr int kSliceInputs = 16;  // the K of wgmma
constexpr int kSlices = kStepInputs / kSliceInputs;
constexpr int kAccumulators = kWarpgroupFeatures * kTileTokens / kWarpgroupThreads;  // a tile's
constexpr int kFeatureCodeBytes = kStepInputs / 2;  // one feature's codes in a stage
constexpr int kSwizzleBytes = 1024;                 // the period of the 128-byte swizzle

// A block takes kTokenTiles tiles of kTileTokens tokens (1 or 2): with 2, each decoded weight
// fragment feeds two MMAs, halving the decode per product, at one block per SM.
template <int kTokenTiles>
constexpr int kBlockTokens = kTokenTiles* kTileTokens;

template <typename C, int kTokenTiles>
struct GemmStage {
  C x[kBlockTokens<kTokenTiles> * kStepInputs];  // [token][input], chunks swizzled
  std::uint8_t codes[kBlockFeatures * kFeatureCodeBytes];
};
static_assert(sizeof(GemmStage<__nv_bfloat16, 1>) % kSwizzleBytes == 0);
static_assert(sizeof(GemmStage<__nv_bfloat16, 2>) % kSwizzleBytes == 0);

// Pipeline stages (5 and 6 measured no faster, BENCHMARKS.md).
constexpr int kStages = 4;

template <int kTokenTiles>
constexpr std::size_t kGemmSharedBytes =
    kStages * sizeof(GemmStage<__nv_bfloat16, kTokenTiles>) + kSwizzleBytes;

// The element offset of 16-byte chunk `chunk` of row `row` in a tile of 128-byte rows with the
// 128-byte swizzle: chunk index XOR row mod 8 (tiles start 1024-byte aligned).
__device__ __forceinline__ int swizzled_chunk(int row, int chunk) {
  return row * kStepInputs + (chunk ^ (row % 8)) * 8;
}

// What one thread copies into every stage, worked out once: kCopiedRows chunks of x, rows
// kRowsApart apart (the same chunk of each, so the same swizzled column), and half a feature's
// codes. Step `step` reads x and the codes kStepInputs · step inputs further on.
constexpr int kRowChunks = kStepInputs * 2 / 16;  // 16-byte chunks of a row of 16-bit x
constexpr int kRowsApart = kGemmThreads / kRowChunks;
template <int kTokenTiles>
constexpr int kCopiedRows = kBlockTokens<kTokenTiles> / kRowsApart;
static_assert(kRowsApart % 8 == 0 && kTileTokens % kRowsApart == 0);
static_assert(kGemmThreads == 2 * kBlockFeatures, "each thread copies half a feature's codes");

template <typename C>
struct StageCopies {
  const C* x_row;             // the first row's chunk at input 0 (x itself where absent)
  std::int64_t x_rows_apart;  // elements between the rows' sources
  unsigned present;           // bit j: row j is one of x's (else zeros are copied)
  int x_offset;               // the first row's chunk in a stage's x, in elements
  const std::uint8_t* codes;  // the thread's 16 bytes at input 0
  int codes_offset;           // where they go in a stage's codes
  bool decode_tiles;          // the codes in kbit/quant/decode_tiles.h's layout
};

// Bytes from step 0's codes of a feature to step s's: 32 a step in bitsandbytes' layout; in the
// decode tiles (s / 4) tile steps of 2 048 bytes and (s % 4) lanes of 16.
__device__ __forceinline__ std::int64_t stage_codes_offset(bool decode_tiles, int step) {
  return decode_tiles ? std::int64_t{2048} * (step >> 2) + 16 * (step & 3)
                      : std::int64_t{32} * step;
}

// Rows [first_token, + kBlockTokens) of x [rows, in] (zeros past `rows`) and the codes of
// features [first_feature, + kBlockFeatures) (the last feature's again past `out`).
template <int kTokenTiles, typename C>
__device__ __forceinline__ StageCopies<C> plan_stage_copies(const C* x, int rows, std::int64_t in,
                                                            int first_token,
                                                            const FourBitSource& weight,
                                                            std::int64_t first_feature,
                                                            std::int64_t out) {
  const int thread = static_cast<int>(threadIdx.x);
  const int row = thread / kRowChunks;
  const int chunk = thread % kRowChunks;
  StageCopies<C> copies{};
  for (int j = 0; j < kCopiedRows<kTokenTiles>; ++j) {
    if (first_token + row + j * kRowsApart < rows) copies.present |= 1u << j;
  }
  copies.x_row = (copies.present & 1u) != 0 ? x + (first_token + row) * in + chunk * 8 : x;
  copies.x_rows_apart = kRowsApart * in;
  copies.x_offset = swizzled_chunk(row, chunk);
  const int feature = thread / 2;
  const std::int64_t source_feature = std::min(first_feature + feature, out - 1);
  // The thread's half of the feature's 32 bytes a step: chunk 2s + thread % 2 of its row.
  copies.decode_tiles = weight.decode_tiles;
  copies.codes =
      weight.packed + (weight.decode_tiles
                           ? quant::decode_tile_code_offset(in, source_feature, thread % 2)
                           : source_feature * in / 2 + 16 * (thread % 2));
  copies.codes_offset = feature * kFeatureCodeBytes + 16 * (thread % 2);
  return copies;
}

// Queues the copies of step `step` into `stage`.
template <typename C, int kTokenTiles>
__device__ __forceinline__ void load_stage(const StageCopies<C>& copies, const C* x, int step,
                                           GemmStage<C, kTokenTiles>& stage) {
  const std::int64_t first_input = static_cast<std::int64_t>(step) * kStepInputs;
#pragma unroll
  for (int j = 0; j < kCopiedRows<kTokenTiles>; ++j) {
    // Row j's offset keeps its swizzle: kRowsApart is a multiple of the swizzle's 8 rows.
    const bool present = (copies.present >> j & 1u) != 0;
    const C* source = present ? copies.x_row + j * copies.x_rows_apart + first_input : x;
    copy_async_16_or_zeros(stage.x + copies.x_offset + j * kRowsApart * kStepInputs, source,
                           present);
  }
  copy_async_16(stage.codes + copies.codes_offset,
                copies.codes + stage_codes_offset(copies.decode_tiles, step));
}

// The wgmma descriptor of a K-major tile of 128-byte rows with the 128-byte swizzle, starting
// 1024-byte aligned: start address, stride between groups of 8 rows (1024 bytes), swizzle mode 1.
// A k16 slice s of the tile starts 32 · s bytes in: add 2 · s.
__device__ __forceinline__ std::uint64_t swizzled_tile_descriptor(const void* tile) {
  const std::uint64_t address = shared_address(tile);
  return ((address & 0x3ffff) >> 4) | (std::uint64_t{kSwizzleBytes >> 4} << 32) |
         (std::uint64_t{1} << 62);
}

// The warpgroup MMA instructions exist in the sm_90a code only; elsewhere (the PTX for older
// GPUs, where tensor_core_gemm_applies keeps the kernel from being launched) they trap.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KBIT_SM90A_ASM(...) asm volatile(__VA_ARGS__)
#else
#define KBIT_SM90A_ASM(...) __trap()
#endif

__device__ __forceinline__ void warpgroup_fence() {
  KBIT_SM90A_ASM("wgmma.fence.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void warpgroup_commit() {
  KBIT_SM90A_ASM("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

// Waits until at most kPending of the warpgroup's committed MMA groups are still running.
template <int kPending>
__device__ __forceinline__ void warpgroup_wait() {
  KBIT_SM90A_ASM("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// Orders the accumulators' uses around the asynchronous MMAs that write them: an empty asm that
// claims to change them, placed after a wait and before a fence.
template <int kTokenTiles>
__device__ __forceinline__ void pin_accumulators(float (&d)[kTokenTiles][kAccumulators]) {
#pragma unroll
  for (int t = 0; t < kTokenTiles; ++t) {
#pragma unroll
    for (int i = 0; i < kAccumulators; ++i) asm volatile("" : "+f"(d[t][i])::"memory");
  }
}

// A stage's A fragments: kSlices k16 slices, 4 registers each.
using StageFragments = std::uint32_t[kSlices][4];

// Keeps fragments that an MMA still reads out of the compiler's reuse until after the wait that
// ends it: an empty asm that claims to change them, placed after that wait.
__device__ __forceinline__ void pin_fragments(StageFragments& fragments) {
#pragma unroll
  for (int s = 0; s < kSlices; ++s) {
#pragma unroll
    for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(fragments[s][i])::"memory");
  }
}

#define KBIT_WGMMA_M64N128K16(TYPE)                                                                \
  KBIT_SM90A_ASM(                                                                                  \
      "{\n"                                                                                        \
      ".reg .pred accumulate;\n"                                                                   \
      "setp.ne.b32 accumulate, %69, 0;\n"                                                          \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE                                 \
      " {"                                                                                         \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                     \
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "           \
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "           \
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"             \
      "}, {%64, %65, %66, %67}, %68, accumulate, 1, 1, 0;\n"                                       \
      "}\n"                                                                                        \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),    \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), \
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), \
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), \
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), \
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), \
        "+f"(d[63])                                                                                \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1))

// d [64 features, 128 tokens] += a (this warp's 16 features × 16 inputs, mma.m16n8k16's A
// fragment) · the k16 slice of x that descriptor b points at, f32 accumulation.
template <typename C>
__device__ __forceinline__ void warpgroup_mma(float (&d)[kAccumulators],
                                              const std::uint32_t (&a)[4], std::uint64_t b) {
  if constexpr (std::is_same_v<C, __half>) {
    KBIT_WGMMA_M64N128K16("f16");
  } else {
    KBIT_WGMMA_M64N128K16("bf16");
  }
}
#undef KBIT_WGMMA_M64N128K16
#undef KBIT_SM90A_ASM

// The lane's A fragments of a stage (kernel comment): features `local` and local + 8 of the
// block, their codes decoded with scales low_scale and high_scale.
template <typename Decoder, typename C, int kTokenTiles>
__device__ __forceinline__ void decode_stage(const GemmStage<C, kTokenTiles>& stage, int local,
                                             int lane, float low_scale, float high_scale,
                                             const typename Decoder::Tables& tables,
                                             StageFragments& fragments) {
  const auto* low_codes = reinterpret_cast<const uint4*>(stage.codes + local * kFeatureCodeBytes);
  const auto* high_codes =
      reinterpret_cast<const uint4*>(stage.codes + (local + 8) * kFeatureCodeBytes);
  const uint4 low_chunks[2] = {low_codes[0], low_codes[1]};
  const uint4 high_chunks[2] = {high_codes[0], high_codes[1]};
  const std::uint32_t low_words[8] = {low_chunks[0].x, low_chunks[0].y, low_chunks[0].z,
                                      low_chunks[0].w, low_chunks[1].x, low_chunks[1].y,
                                      low_chunks[1].z, low_chunks[1].w};
  const std::uint32_t high_words[8] = {high_chunks[0].x, high_chunks[0].y, high_chunks[0].z,
                                       high_chunks[0].w, high_chunks[1].x, high_chunks[1].y,
                                       high_chunks[1].z, high_chunks[1].w};
  // Slice s's A fragment: (low, 2q..2q+1), (high, 2q..), (low, 2q+8..), (high, 2q+8..), each
  // pair byte q of a word: the lane's byte shifted down to byte 0.
  const int shift = 8 * (lane % 4);
#pragma unroll
  for (int s = 0; s < kSlices; ++s) {
    fragments[s][0] = Decoder::pair(tables, lane, low_words[2 * s] >> shift, 0, low_scale);
    fragments[s][1] = Decoder::pair(tables, lane, high_words[2 * s] >> shift, 0, high_scale);
    fragments[s][2] = Decoder::pair(tables, lane, low_words[2 * s + 1] >> shift, 0, low_scale);
    fragments[s][3] = Decoder::pair(tables, lane, high_words[2 * s + 1] >> shift, 0, high_scale);
  }
}

// Queues, as one group, the MMAs of a stage: every slice of every token tile.
template <typename C, int kTokenTiles>
__device__ __forceinline__ void multiply_stage(float (&sums)[kTokenTiles][kAccumulators],
                                               const StageFragments& fragments,
                                               const GemmStage<C, kTokenTiles>& stage) {
  warpgroup_fence();
#pragma unroll
  for (int t = 0; t < kTokenTiles; ++t) {
    const std::uint64_t descriptor =
        swizzled_tile_descriptor(stage.x + t * kTileTokens * kStepInputs);
#pragma unroll
    for (int s = 0; s < kSlices; ++s) {
      warpgroup_mma<C>(sums[t], fragments[s], descriptor + 2 * s);
    }
  }
  warpgroup_commit();
}

// y [rows, out] = x [rows, in] (of the compute dtype C) · Wᵀ (+ bias), rounded as the reference,
// for in a multiple of kStepInputs and blocks of at least kStepInputs values. Block b takes
// tokens [b % token_blocks · kBlockTokens, + kBlockTokens) and features [b / token_blocks ·
// kBlockFeatures, + kBlockFeatures): the blocks that run together share codes, read once.
template <typename A, typename C, typename W, int kTokenTiles>
__global__ void __launch_bounds__(kGemmThreads, 2 / kTokenTiles)
    linear_4bit_gemm_kernel(const C* __restrict__ x, const __grid_constant__ FourBitSource weight,
                            const __grid_constant__ FourBitTables tables,
                            const A* __restrict__ bias, int rows, std::int64_t in, std::int64_t out,
                            int token_blocks, A* __restrict__ y) {
  using Decoder = ExactDecode<C, W>;
  extern __shared__ std::uint8_t shared_bytes[];
  __shared__ typename Decoder::Tables decode_tables;
  __shared__ float absmax_map[256];
  const std::uint32_t misalignment = shared_address(shared_bytes) % kSwizzleBytes;
  auto* stages = reinterpret_cast<GemmStage<C, kTokenTiles>*>(
      shared_bytes + (misalignment == 0 ? 0 : kSwizzleBytes - misalignment));

  const int first_token = static_cast<int>(blockIdx.x % token_blocks) * kBlockTokens<kTokenTiles>;
  const std::int64_t first_feature =
      static_cast<std::int64_t>(blockIdx.x / token_blocks) * kBlockFeatures;
  const int steps = static_cast<int>(in / kStepInputs);
  const StageCopies<C> copies =
      plan_stage_copies<kTokenTiles>(x, rows, in, first_token, weight, first_feature, out);
#pragma unroll
  for (int step = 0; step < kStages - 1; ++step) {
    if (step < steps) {
      load_stage(copies, x, step, stages[step]);
    }
    commit_copies();
  }
  load_absmax_map(tables, absmax_map);
  Decoder::load(tables, decode_tables);

  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int quad = lane % 4;
  // The lane's features in the block: `local` and local + 8.
  const int local = static_cast<int>(threadIdx.x) / kWarpgroupThreads * kWarpgroupFeatures +
                    static_cast<int>(threadIdx.x) % kWarpgroupThreads / 32 * 16 + lane / 4;
  const std::int64_t low_source = std::min(first_feature + local, out - 1);
  const std::int64_t high_source = std::min(first_feature + local + 8, out - 1);
  // A step's 64 inputs lie in one block; in the decode tiles (blocks of 64) it is block `step`
  // of the feature's row.
  const auto absmax_of_step = [&](std::int64_t feature, int step) {
    const std::int64_t block =
        (feature * in + static_cast<std::int64_t>(step) * kStepInputs) >> weight.log2_block_size;
    return load_absmax(
        weight, weight.decode_tiles ? quant::decode_tile_absmax_index(in, feature, step) : block,
        block);
  };
  AbsmaxLoad low_absmax = absmax_of_step(low_source, 0);
  AbsmaxLoad high_absmax = absmax_of_step(high_source, 0);

  float sums[kTokenTiles][kAccumulators];
#pragma unroll
  for (int t = 0; t < kTokenTiles; ++t) {
#pragma unroll
    for (int i = 0; i < kAccumulators; ++i) sums[t][i] = 0.0f;
  }
  // The decode of step + 1 runs while the tensor cores multiply step: two sets of fragments, the
  // loop unrolled twice so that each has fixed registers.
  StageFragments fragments[2];
  const auto decode = [&](int step, StageFragments& target) {
    decode_stage<Decoder>(stages[step % kStages], local, lane,
                          decoded_absmax(weight, low_absmax, absmax_map),
                          decoded_absmax(weight, high_absmax, absmax_map), decode_tables, target);
    if (step + 1 < steps) {
      low_absmax = absmax_of_step(low_source, step + 1);
      high_absmax = absmax_of_step(high_source, step + 1);
    }
  };
  // Multiplies step with `current` and, where there is a next step, decodes it into `next`, once
  // the MMAs of step − 1 (which read `next` and the stage refilled here) are done.
  const auto pipeline_step = [&](int step, StageFragments& current, StageFragments& next) {
    pin_accumulators(sums);
    multiply_stage<C>(sums, current, stages[step % kStages]);
    if (step + 1 >= steps) return;
    warpgroup_wait<1>();
    pin_fragments(next);
    wait_copies<kStages - 3>();
    __syncthreads();
    if (step + kStages - 1 < steps) {
      load_stage(copies, x, step + kStages - 1, stages[(step + kStages - 1) % kStages]);
    }
    commit_copies();
    decode(step + 1, next);
  };
  wait_copies<kStages - 2>();
  __syncthreads();
  decode(0, fragments[0]);
  for (int step = 0; step < steps; step += 2) {
    pipeline_step(step, fragments[0], fragments[1]);
    if (step + 1 < steps) pipeline_step(step + 1, fragments[1], fragments[0]);
  }
  warpgroup_wait<0>();
  pin_accumulators(sums);

  // D fragment of tile t: sums[t][4i + e] at feature local (e < 2) or local + 8, token
  // kTileTokens · t + 8i + 2q + e % 2.
  const std::int64_t low_feature = first_feature + local;
#pragma unroll
  for (int t = 0; t < kTokenTiles; ++t) {
#pragma unroll
    for (int i = 0; i < kTileTokens / 8; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int token = first_token + kTileTokens * t + 8 * i + 2 * quad + e % 2;
        const std::int64_t feature = low_feature + (e < 2 ? 0 : 8);
        if (token < rows && feature < out) {
          y[token * out + feature] = finish_output<A, C>(sums[t][4 * i + e], bias, feature);
        }
      }
    }
  }
}

template <int kTokenTiles>
cudaError_t launch_gemm(const FourBitCall& call, const void* x_compute) {
  const std::int64_t token_blocks =
      (call.rows + kBlockTokens<kTokenTiles> - 1) / kBlockTokens<kTokenTiles>;
  const std::int64_t feature_blocks = (call.out + kBlockFeatures - 1) / kBlockFeatures;
  if (token_blocks * feature_blocks > INT_MAX) return cudaErrorInvalidValue;
  return visit_4bit_tensor_core_types(call, [&](auto a, auto c, auto w) {
    using A = decltype(a);
    using C = decltype(c);
    return launch_with_shared(
        linear_4bit_gemm_kernel<A, C, decltype(w), kTokenTiles>,
        dim3(static_cast<unsigned>(token_blocks * feature_blocks)), kGemmThreads,
        kGemmSharedBytes<kTokenTiles>, call.stream, static_cast<const C*>(x_compute), call.weight,
        call.tables, static_cast<const A*>(call.bias), static_cast<int>(call.rows), call.in,
        call.out, static_cast<int>(token_blocks), static_cast<A*>(call.y));
  });
}

}  // namespace

bool tensor_core_gemm_applies(const FourBitCall& call) {
  return (call.compute_dtype == DType::kBF16 || call.compute_dtype == DType::kF16) &&
         !call.product_decode && call.in % kStepInputs == 0 && call.weight.log2_block_size >= 6 &&
         call.weight.packed_aligned && current_device_runs_sm90a();
}

bool tensor_core_gemm_preferred(const FourBitCall& call) {
  constexpr std::int64_t kMinFeatureBlocks = 96;
  return call.rows <= kTileTokens && call.out >= kMinFeatureBlocks * kBlockFeatures;
}

cudaError_t launch_tensor_core_gemm(const FourBitCall& call, const void* x_compute) {
  return call.rows > kTileTokens ? launch_gemm<2>(call, x_compute)
                                 : launch_gemm<1>(call, x_compute);
}

}  // namespace kbit::kernels::cuda

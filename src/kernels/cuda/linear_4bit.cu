// linear_4bit (linear_launchers.h): bitsandbytes' Linear4bit on the GPU, with the numerics of
// linear_4bit_reference (kernels/cpu/quantized_linear.h). Every weight value is decoded as
//   w = round_C(round_W(code_value · absmax))      (absmax decoded from its nested form if need be)
// for the weight's dtype W and the compute dtype C, or, where the call takes the product decode
// (takes_4bit_product_decode), as w = round_C(round_C(code_value) · round_C(absmax)); multiplied
// by x rounded to C, summed in f32; then y = round_A(round_C(sum + round_C(bias))) for the
// activation dtype A.
//
// A few rows (decode): a fused GEMV, on the tensor cores where the compute dtype is f16 or bf16
// and the layout allows (linear_4bit_mma_gemv_kernel), else on the CUDA cores: each warp owns
// kGemvOutputsPerWarp output features; each lane takes 16-byte loads of packed codes (32 values,
// always inside one quantization block since blocks are multiples of 32 values) strided by the
// warp, decodes them once and multiplies them with every row of x, which stays in L1/L2. A
// butterfly of shuffles sums the lanes' partials.
//
// More rows (prompt): chunks of whole output features are dequantized into the workspace in C
// (linear_workspace.h) and multiplied by cublasGemmEx with f32 accumulation into a C-typed
// output pre-filled with the rounded bias (beta = 1), which is y itself when C is A.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>

#include "core/cuda_runtime.h"
#include "kernels/cpu/quantized_linear.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/four_bit_parts.cuh"
#include "kernels/cuda/fused_layers.h"
#include "kernels/cuda/linear_4bit_gemm.h"
#include "kernels/cuda/linear_launchers.h"
#include "kernels/cuda/linear_workspace.h"
#include "kernels/cuda/llama_launchers.h"
#include "kernels/cuda/mma_sync.cuh"
#include "kernels/cuda/overlapped_launch.cuh"
#include "kernels/unsigned_divisor.h"

namespace kbit::kernels::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kGemvThreads = 256;
constexpr int kGemvOutputsPerWarp = 2;
constexpr int kValuesPerLoad = 32;  // 16 packed bytes
constexpr int kValuesPerWord = 8;   // 4 packed bytes
constexpr int kDequantizeThreads = 256;
// Words of 8 values per thread: the tables a block loads serve 8 192 values, not 2 048.
constexpr int kDequantizeWordsPerThread = 4;
constexpr int kElementwiseThreads = 256;
constexpr int kMaxRows = static_cast<int>(kLinear4bitGemvMaxRows);

// Every thread of the block must call it (it synchronises).
__device__ __forceinline__ void load_tables(const FourBitTables& tables, float* code_values,
                                            float* absmax_map) {
  load_absmax_map(tables, absmax_map);
  if (threadIdx.x < 16) code_values[threadIdx.x] = tables.code_values[threadIdx.x];
  __syncthreads();
}

__device__ __forceinline__ std::uint32_t load_word_bytes(const std::uint8_t* bytes) {
  return static_cast<std::uint32_t>(bytes[0]) | static_cast<std::uint32_t>(bytes[1]) << 8 |
         static_cast<std::uint32_t>(bytes[2]) << 16 | static_cast<std::uint32_t>(bytes[3]) << 24;
}

// 16 packed bytes (32 codes); `aligned` promises a 16-byte aligned address. Read once: streamed.
__device__ __forceinline__ uint4 load_16_codes(const std::uint8_t* bytes, bool aligned) {
  if (aligned) return __ldcs(reinterpret_cast<const uint4*>(bytes));
  return make_uint4(load_word_bytes(bytes), load_word_bytes(bytes + 4), load_word_bytes(bytes + 8),
                    load_word_bytes(bytes + 12));
}

// The weight value as the matmul sees it: code value · absmax in f32, rounded to the weight's
// dtype W (dequantize_4bit's output), then to the compute dtype C; with the product decode the
// product of code value and absmax each rounded to C, rounded to C (exact in f32 before that).
template <typename C, typename W, bool kProduct>
__device__ __forceinline__ float weight_value(float code_value, float absmax) {
  if constexpr (kProduct) {
    return to_float(from_float<C>(
        __fmul_rn(to_float(from_float<C>(code_value)), to_float(from_float<C>(absmax)))));
  }
  const float dequantized = to_float(from_float<W>(__fmul_rn(code_value, absmax)));
  return to_float(from_float<C>(dequantized));
}

// The 8 values of one word of packed bytes; value 2j is the high nibble of byte j.
template <typename C, typename W, bool kProduct>
__device__ __forceinline__ void decode_word(std::uint32_t word, float absmax,
                                            const float* code_values, float (&values)[8]) {
#pragma unroll
  for (int k = 0; k < kValuesPerWord; ++k) {
    const std::uint32_t code = (word >> (8 * (k / 2) + (k % 2 == 0 ? 4 : 0))) & 0xfu;
    values[k] = weight_value<C, W, kProduct>(code_values[code], absmax);
  }
}

// x[0..8) rounded to the compute dtype C; `aligned` promises a 16-byte aligned address.
template <typename C, typename A>
__device__ __forceinline__ void load_8_activations(const A* x, bool aligned, float (&values)[8]) {
  A elements[kValuesPerWord];
  if (aligned) {
    constexpr int kPerVector = kValuesPerVector<A>;
#pragma unroll
    for (int v = 0; v < kValuesPerWord / kPerVector; ++v) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(x) + v);
      std::memcpy(elements + v * kPerVector, &raw, sizeof(raw));
    }
  } else {
#pragma unroll
    for (int k = 0; k < kValuesPerWord; ++k) elements[k] = x[k];
  }
#pragma unroll
  for (int k = 0; k < kValuesPerWord; ++k)
    values[k] = to_float(from_float<C>(to_float(elements[k])));
}

// y[rows, out] = x[rows, in] · Wᵀ (+ bias[out]) for rows <= kMaxRows and in a multiple of 32.
// Warp w computes outputs [w · kGemvOutputsPerWarp, (w + 1) · kGemvOutputsPerWarp) ∩ [0, out).
template <typename A, typename C, typename W, bool kProduct>
__global__ void __launch_bounds__(kGemvThreads)
    linear_4bit_gemv_kernel(const A* __restrict__ x, bool x_aligned,
                            const __grid_constant__ FourBitSource weight,
                            const __grid_constant__ FourBitTables tables,
                            const A* __restrict__ bias, int rows, std::int64_t in, std::int64_t out,
                            A* __restrict__ y) {
  __shared__ float code_values[16];
  __shared__ float absmax_map[256];
  load_tables(tables, code_values, absmax_map);

  const std::int64_t warp =
      (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const std::int64_t first_out = warp * kGemvOutputsPerWarp;
  // Whole warps leave together, so the shuffles below always see full warps.
  if (first_out >= out) return;

  float sums[kGemvOutputsPerWarp][kMaxRows] = {};
  const std::int64_t loads_per_row = in / kValuesPerLoad;
  for (std::int64_t load = lane; load < loads_per_row; load += kWarpSize) {
    uint4 codes[kGemvOutputsPerWarp];
    float absmax[kGemvOutputsPerWarp];
#pragma unroll
    for (int f = 0; f < kGemvOutputsPerWarp; ++f) {
      // Past the last output feature the warp re-reads the last one (staying in bounds); those
      // sums are never stored.
      const std::int64_t o = std::min(first_out + f, out - 1);
      const std::int64_t block = (o * in + load * kValuesPerLoad) >> weight.log2_block_size;
      const ValuePlace place = chunk_place(weight, in, o, load);
      codes[f] = load_16_codes(weight.packed + place.code_byte, weight.packed_aligned);
      absmax[f] =
          decoded_absmax(weight, load_absmax(weight, place.absmax_index, block), absmax_map);
    }
#pragma unroll
    for (int word = 0; word < kValuesPerLoad / kValuesPerWord; ++word) {
      float w[kGemvOutputsPerWarp][kValuesPerWord];
#pragma unroll
      for (int f = 0; f < kGemvOutputsPerWarp; ++f) {
        decode_word<C, W, kProduct>(word_of(codes[f], word), absmax[f], code_values, w[f]);
      }
      const std::int64_t first_in = load * kValuesPerLoad + word * kValuesPerWord;
#pragma unroll
      for (int r = 0; r < kMaxRows; ++r) {
        if (r >= rows) break;
        float activations[kValuesPerWord];
        load_8_activations<C>(x + r * in + first_in, x_aligned, activations);
#pragma unroll
        for (int f = 0; f < kGemvOutputsPerWarp; ++f) {
#pragma unroll
          for (int k = 0; k < kValuesPerWord; ++k) {
            sums[f][r] = fmaf(activations[k], w[f][k], sums[f][r]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int f = 0; f < kGemvOutputsPerWarp; ++f) {
#pragma unroll
    for (int r = 0; r < kMaxRows; ++r) {
      if (r < rows) sums[f][r] = warp_sum(sums[f][r]);
    }
  }
  if (lane != 0) return;
#pragma unroll
  for (int f = 0; f < kGemvOutputsPerWarp; ++f) {
    const std::int64_t o = first_out + f;
    if (o >= out) break;
#pragma unroll
    for (int r = 0; r < kMaxRows; ++r) {
      if (r >= rows) break;
      y[r * out + o] = finish_output<A, C>(sums[f][r], bias, o);
    }
  }
}

// ---- The tensor-core GEMV (rows <= 8, compute dtype f16 or bf16).
//
// Each block owns kMmaOutputs = 16 output features (the M of mma.m16n8k16) of one Linear layer,
// and its kWarps warps (8, or 16 for long inputs) split K: warp w takes steps w, w + kWarps, …
// of kLaneChunks · 128 inputs. In a step lane (g, t) (g = lane / 4, t = lane % 4) reads
// kLaneChunks adjacent 16-byte chunks of packed codes (32 values each) of features g and g + 8,
// at inputs [step · kLaneChunks · 128 + t · kLaneChunks · 32, + kLaneChunks · 32), all of one
// quantization block; decodes them in registers (ExactDecode or ProductDecode, below) and feeds
// them to kLaneChunks · 8 MMAs. The lanes of group g < rows supply x[row g] at the same inputs as
// the B operand, the others zeros. The MMA's k order is a permutation of the inputs, the same for A
// and B, so the products are those of the reference; the tensor core sums them in f32. The warps'
// partial sums meet in shared memory, in a fixed order, for the epilogue.
//
// Two chunks per lane (kTensorCoreGemvLines) make each quad read whole 128-byte lines, which
// took a quarter off the step (BENCHMARKS.md, "The GEMV's step taken apart"); one chunk serves
// inputs that are a multiple of 128 only. What else that profile asked for is here too: x is
// loaded where it is used, not a step ahead (its double buffer cost 32 registers and an SM's
// fourth block), each warp's first codes are requested before the tables are built, and the
// product decode's table is filled with warp-uniform constant loads.
//
// The weight's absmax form (nested or not) is a template parameter, and a lane finds its
// quantization blocks by 32-bit arithmetic: a step then issues one form's loads and none of the
// 64-bit index arithmetic, which took a fifth of its instructions. The nested absmax is decoded
// where the next step uses it, not where it is loaded, so that its table lookup does not wait on
// the load. The launch bounds hold the kernel to 64 registers, 4 blocks of 8 warps per SM (one
// instance took 77 registers, hence 3 blocks, without them). Together these took the decode
// step 3% (BENCHMARKS.md, "The 4-bit decode GEMV's absmax form as a template parameter").
//
// What binds the step is the L1's wavefronts, most of them the product decode's table lookups
// (one per packed byte) and, with more rows, x's loads. From kSplitLookupMinRows rows the half-line
// kernel therefore takes half its lookups from registers (kSplitLookups), trading wavefronts for
// instructions; with fewer rows the instructions cost more than the wavefronts save.
//
// One launch serves up to kMaxFusedLayers layers of the same x (MmaGemvLayers): each block
// finds its layer from its index (q, k and v in one launch), or, with the SiLU·mul epilogue,
// computes the same 16 features of gate and of up, one after the other, and stores
// silu(gate) · up.
constexpr int kMmaWarps = 8;
constexpr int kMmaWideWarps = 16;  // for long inputs (mma_gemv_warps)
// Warps per SM the launch bounds ask for: 64 registers a thread at most.
constexpr int kMmaWarpsPerMultiprocessor = 32;
constexpr int kMmaOutputs = 16;
constexpr int kMmaColumns = 8;
constexpr int kChunkValues = 32;  // one 16-byte chunk of packed codes

template <int kLaneChunks>
constexpr int kMmaStepValues = 4 * kLaneChunks* kChunkValues;

// The product of two pairs of C, each half rounded once, as C's own multiply.
template <typename C>
__device__ __forceinline__ std::uint32_t multiply_pairs(std::uint32_t a, std::uint32_t b) {
  using Pair = std::conditional_t<std::is_same_v<C, __half>, __half2, __nv_bfloat162>;
  Pair pa;
  Pair pb;
  std::memcpy(&pa, &a, sizeof(a));
  std::memcpy(&pb, &b, sizeof(b));
  const Pair product = __hmul2_rn(pa, pb);
  std::uint32_t bits;
  std::memcpy(&bits, &product, sizeof(bits));
  return bits;
}

// ProductDecode (FourBitDecode::kBitsandbytes): round_C(round_C(code) · round_C(absmax)). One
// lookup of the byte gives both codes, already paired in C, and one paired multiply scales them.
// The table holds the 256 byte values' pairs once per lane (entry (byte, lane) at word
// 32 · byte + lane), so that a warp's 32 lookups fall in 32 different banks.
template <typename C>
struct ProductDecode {
  struct Tables {
    alignas(16) std::uint32_t code_pairs[256 * kWarpSize];
  };
  using Scale = std::uint32_t;  // round_C(absmax), twice
  // Chunk i + 256k (k < 8) of the table, 16 bytes, is written by thread i, so that a warp's
  // stores fill consecutive banks. Its byte is i / 8 + 32k: the low nibble, i / 8 % 16, is the
  // thread's, and the high nibble, i / 128 + 2k, the same across a warp, so that half the
  // constant loads are uniform (a constant load is serialised over its distinct addresses).
  static __device__ __forceinline__ void load(const FourBitTables& tables, Tables& shared) {
    const int i = static_cast<int>(threadIdx.x) % 256;
    const float low = tables.code_values[i / 8 % 16];
    auto* chunks = reinterpret_cast<uint4*>(shared.code_pairs);
    for (int k = static_cast<int>(threadIdx.x) / 256; k < 8;
         k += static_cast<int>(blockDim.x) / 256) {
      const std::uint32_t pair = pack_pair<C>(tables.code_values[i / 128 + 2 * k], low);
      chunks[i + 256 * k] = make_uint4(pair, pair, pair, pair);
    }
  }
  static __device__ __forceinline__ Scale scale(float absmax) {
    return pack_pair<C>(absmax, absmax);
  }
  // The scale of an absmax already rounded to C: its bits twice.
  static __device__ __forceinline__ Scale scale_of_rounded(std::uint32_t bits) {
    return bits * 0x10001u;
  }
  // One PRMT extracts the byte and one IMAD adds it to the lane's column's shared address: the
  // lookup's address arithmetic is two instructions (written as a shared-space load because the
  // compiler, given an array index, splits the IMAD in two).
  static __device__ __forceinline__ std::uint32_t pair(const Tables& shared, int lane,
                                                       std::uint32_t word, int byte, Scale scale) {
    const std::uint32_t index = __byte_perm(word, 0u, 0x4440u | static_cast<std::uint32_t>(byte));
    const auto lane_column =
        static_cast<std::uint32_t>(__cvta_generic_to_shared(shared.code_pairs + lane));
    std::uint32_t codes;
    asm volatile("ld.shared.u32 %0, [%1];"
                 : "=r"(codes)
                 : "r"(lane_column + index * kWarpSize * 4u));
    return multiply_pairs<C>(codes, scale);
  }
};

// ProductDecode's pairs without its table: the codes' bytes in C held in registers and picked by
// PRMT. A pair of bytes (four codes) takes eleven instructions this way against six with the
// table, but no shared-memory lookup (where that pays: kSplitLookupMinRows). Byte i of low[q]
// (high[q]) is the low (high) byte of round_C(code 4q + i).
struct RegisterCodeBytes {
  std::uint32_t low[4];
  std::uint32_t high[4];
};

template <typename C>
__device__ __forceinline__ RegisterCodeBytes load_register_code_bytes(const FourBitTables& tables) {
  RegisterCodeBytes bytes;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const std::uint32_t first =
        pack_pair<C>(tables.code_values[4 * q], tables.code_values[4 * q + 1]);
    const std::uint32_t second =
        pack_pair<C>(tables.code_values[4 * q + 2], tables.code_values[4 * q + 3]);
    bytes.low[q] = __byte_perm(first, second, 0x6420u);
    bytes.high[q] = __byte_perm(first, second, 0x7531u);
  }
  return bytes;
}

// ProductDecode<C>::pair of bytes 0 and 1 of `word`. PRMT looks a byte up among 8 by the low 3
// bits of its selector nibble (the fourth bit would copy the byte's sign): each of the word's
// four codes is looked up in both halves of the codebook, and a third PRMT keeps the half its
// top bit names.
template <typename C>
__device__ __forceinline__ void product_pairs_from_registers(const RegisterCodeBytes& bytes,
                                                             std::uint32_t word,
                                                             std::uint32_t scale,
                                                             std::uint32_t& byte0_pair,
                                                             std::uint32_t& byte1_pair) {
  const std::uint32_t index = word & 0x7777u;
  const std::uint32_t half = ((word >> 1) & 0x4444u) | 0x3210u;
  const std::uint32_t low = __byte_perm(__byte_perm(bytes.low[0], bytes.low[1], index),
                                        __byte_perm(bytes.low[2], bytes.low[3], index), half);
  const std::uint32_t high = __byte_perm(__byte_perm(bytes.high[0], bytes.high[1], index),
                                         __byte_perm(bytes.high[2], bytes.high[3], index), half);
  // A byte's pair holds its high nibble's code first (ProductDecode::load).
  byte0_pair = multiply_pairs<C>(__byte_perm(low, high, 0x4051u), scale);
  byte1_pair = multiply_pairs<C>(__byte_perm(low, high, 0x6273u), scale);
}

// x[0..32) of one row as pairs of C (16-byte aligned), or zeros for a row past the last.
template <typename A, typename C>
__device__ __forceinline__ void load_x_pairs(const A* x, bool present,
                                             std::uint32_t (&pairs)[kChunkValues / 2]) {
  if (!present) {
#pragma unroll
    for (int p = 0; p < kChunkValues / 2; ++p) pairs[p] = 0;
    return;
  }
  if constexpr (std::is_same_v<A, C>) {
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(x) + v);
      pairs[4 * v] = raw.x;
      pairs[4 * v + 1] = raw.y;
      pairs[4 * v + 2] = raw.z;
      pairs[4 * v + 3] = raw.w;
    }
  } else {
#pragma unroll
    for (int v = 0; v < kChunkValues / 8; ++v) {
      float values[8];
      load_8_activations<C>(x + 8 * v, true, values);
#pragma unroll
      for (int p = 0; p < 4; ++p) pairs[4 * v + p] = pack_pair<C>(values[2 * p], values[2 * p + 1]);
    }
  }
}

// A lane's two features of one layer's weight: the first 16-byte chunk of codes it reads in
// step 0, and where the features' quantization blocks lie: the lane's first value in step 0 is
// first_block · block + block_offset, so its block in the step that starts at input s is
// first_block + (block_offset + s) / block, in 32 bits (tensor_core_gemv_applies keeps the
// weight's blocks below 2^32). In the decode tiles (kbit/quant/decode_tiles.h) the codes and the
// absmax lie at the tiled places, step 0's at codes_low and tiled_absmax (feature g + 8's 32
// units further); the blocks' own indices still give a nested absmax's group. The layout is a
// template parameter, not a flag: as a flag it cost the nested gate/up GEMV 40 bytes of spills
// and nf4_dq decode 5% (BENCHMARKS.md, twentieth session).
struct MmaLaneWeight {
  const uint4* codes_low;   // feature g
  const uint4* codes_high;  // feature g + 8
  std::uint32_t first_block_low;
  std::uint32_t first_block_high;
  std::uint32_t block_offset_low;
  std::uint32_t block_offset_high;
  std::uint32_t tiled_absmax;
};

constexpr bool is_tiled(quant::FourBitLayout layout) {
  return layout == quant::FourBitLayout::kDecodeTiles;
}

// In the decode tiles, step s of a lane lies kTiledStep · s − kTiledOddBack · (s & 1) units past
// step 0: 16-byte chunks for the codes, elements for the absmax. Whole lines (steps of 256
// inputs) advance one tile step each; half lines (128) take an even step's tile step and the
// neighbouring lanes' slots of it in odd steps.
template <int kLaneChunks>
constexpr int kTiledCodeStep = kLaneChunks == 2 ? 128 : 64;
template <int kLaneChunks>
constexpr int kTiledCodeOddBack = kLaneChunks == 2 ? 0 : 62;
template <int kLaneChunks>
constexpr std::uint32_t kTiledAbsmaxStep = kLaneChunks == 2 ? 64 : 32;
template <int kLaneChunks>
constexpr std::uint32_t kTiledAbsmaxOddBack = kLaneChunks == 2 ? 0 : 30;

template <int kLaneChunks, quant::FourBitLayout kLayout>
__device__ __forceinline__ MmaLaneWeight mma_lane_weight(const FourBitSource& weight,
                                                         std::int64_t feature_low,
                                                         std::int64_t feature_high, std::int64_t in,
                                                         std::int64_t first_in) {
  const std::int64_t low = feature_low * in;
  const std::int64_t high = feature_high * in;
  const std::int64_t offset_mask = (std::int64_t{1} << weight.log2_block_size) - 1;
  MmaLaneWeight lane{reinterpret_cast<const uint4*>(weight.packed + (low + first_in) / 2),
                     reinterpret_cast<const uint4*>(weight.packed + (high + first_in) / 2),
                     static_cast<std::uint32_t>(low >> weight.log2_block_size),
                     static_cast<std::uint32_t>(high >> weight.log2_block_size),
                     static_cast<std::uint32_t>((low & offset_mask) + first_in),
                     static_cast<std::uint32_t>((high & offset_mask) + first_in),
                     0};
  if constexpr (is_tiled(kLayout)) {
    // Lane (g, t) of the MMA: group g = the feature's row in its half tile, quad t from first_in.
    const std::int64_t tile_steps = in / quant::kDecodeTileStepInputs;
    const std::int64_t tile = feature_low / quant::kDecodeTileRows;
    const int group = static_cast<int>(feature_low % 8);
    const int quad = static_cast<int>(first_in / (kLaneChunks * kChunkValues));
    const int code_lane =
        kLaneChunks == 2 ? 4 * group + quad : 4 * group + quad / 2 + 64 * (quad % 2);
    const int absmax_lane = kLaneChunks == 2 ? 4 * group + quad : 4 * group + quad / 2;
    lane.codes_low =
        reinterpret_cast<const uint4*>(weight.packed) + tile * tile_steps * 128 + code_lane;
    lane.codes_high = lane.codes_low + 32;
    lane.tiled_absmax = static_cast<std::uint32_t>(tile * tile_steps * 64 + absmax_lane);
  }
  return lane;
}

// What one lane reads for one step.
template <int kLaneChunks>
struct MmaStepInputs {
  uint4 codes_low[kLaneChunks];   // feature g
  uint4 codes_high[kLaneChunks];  // feature g + 8
  AbsmaxLoad absmax_low;
  AbsmaxLoad absmax_high;
};

// The codes of step `step`: read once, streamed past the caches.
template <quant::FourBitLayout kLayout, int kLaneChunks>
__device__ __forceinline__ void load_mma_codes(const MmaLaneWeight& lane_weight, int step,
                                               MmaStepInputs<kLaneChunks>& inputs) {
  constexpr int kStepChunks = 4 * kLaneChunks;  // a feature's chunks per step
  // Chunk c of the step: the next 16 bytes in bitsandbytes' layout, 64 chunks on in the tiles.
  const int first = is_tiled(kLayout) ? kTiledCodeStep<kLaneChunks> * step -
                                            kTiledCodeOddBack<kLaneChunks> * (step & 1)
                                      : kStepChunks * step;
  constexpr int chunk_stride = is_tiled(kLayout) ? 64 : 1;
#pragma unroll
  for (int c = 0; c < kLaneChunks; ++c) {
    inputs.codes_low[c] = __ldcs(lane_weight.codes_low + first + chunk_stride * c);
    inputs.codes_high[c] = __ldcs(lane_weight.codes_high + first + chunk_stride * c);
  }
}

// The raw absmax of both features in the step that starts at input step_in (a lane's chunks lie
// in one quantization block), decoded where the step uses it.
template <AbsmaxForm kForm, quant::FourBitLayout kLayout, int kLaneChunks>
__device__ __forceinline__ void load_mma_absmax(const FourBitSource& weight,
                                                const MmaLaneWeight& lane_weight,
                                                std::uint32_t step_in,
                                                MmaStepInputs<kLaneChunks>& inputs) {
  const std::uint32_t low = lane_weight.first_block_low +
                            ((lane_weight.block_offset_low + step_in) >> weight.log2_block_size);
  const std::uint32_t high = lane_weight.first_block_high +
                             ((lane_weight.block_offset_high + step_in) >> weight.log2_block_size);
  // One load each, from where the layout keeps the value (or code).
  std::uint32_t low_index = low;
  std::uint32_t high_index = high;
  if constexpr (is_tiled(kLayout)) {
    const std::uint32_t step = step_in / kMmaStepValues<kLaneChunks>;
    low_index = lane_weight.tiled_absmax + kTiledAbsmaxStep<kLaneChunks> * step -
                kTiledAbsmaxOddBack<kLaneChunks> * (step & 1);
    high_index = low_index + 32;
  }
  inputs.absmax_low = load_absmax<kForm>(weight, low_index, low);
  inputs.absmax_high = load_absmax<kForm>(weight, high_index, high);
}

// The A fragment of bytes `byte` and byte + 1 of words `low` (feature g) and `high` (g + 8), in
// its order: (g, k 2t..2t+1), (g + 8, k 2t..), (g, k 2t+8..), (g + 8, k 2t+8..). With
// kSplitLookups, bytes 0 and 1 come from registers and bytes 2 and 3 from the table.
template <typename C, typename Decoder, bool kSplitLookups>
__device__ __forceinline__ void decode_fragment(const typename Decoder::Tables& tables,
                                                const RegisterCodeBytes& register_bytes, int lane,
                                                std::uint32_t low, std::uint32_t high, int byte,
                                                typename Decoder::Scale low_scale,
                                                typename Decoder::Scale high_scale,
                                                std::uint32_t (&a)[4]) {
  if constexpr (kSplitLookups) {
    if (byte == 0) {
      product_pairs_from_registers<C>(register_bytes, low, low_scale, a[0], a[2]);
      product_pairs_from_registers<C>(register_bytes, high, high_scale, a[1], a[3]);
      return;
    }
  }
  a[0] = Decoder::pair(tables, lane, low, byte, low_scale);
  a[1] = Decoder::pair(tables, lane, high, byte, high_scale);
  a[2] = Decoder::pair(tables, lane, low, byte + 1, low_scale);
  a[3] = Decoder::pair(tables, lane, high, byte + 1, high_scale);
}

// A feature's scale for one step: its absmax decoded, or a rounded absmax's bits (ProductDecode).
template <typename Decoder, AbsmaxForm kForm>
__device__ __forceinline__ typename Decoder::Scale step_scale(const FourBitSource& weight,
                                                              AbsmaxLoad load,
                                                              const float* absmax_map) {
  if constexpr (kForm == AbsmaxForm::kRounded) {
    return Decoder::scale_of_rounded(load.code);
  } else {
    return Decoder::scale(decoded_absmax<kForm>(weight, load, absmax_map));
  }
}

// sums += the products of one step: the absmax decoded, then per chunk x[row g] at its 32 inputs
// (x_lane, where the lane carries a row) and eight MMAs, each over 4 values of each feature per
// lane. With kSplitLookups (ProductDecode only), bytes 0 and 1 of each word come from registers.
template <typename A, typename C, typename Decoder, AbsmaxForm kForm, bool kSplitLookups,
          int kLaneChunks>
__device__ __forceinline__ void multiply_mma_step(
    const MmaStepInputs<kLaneChunks>& inputs, const FourBitSource& weight, const float* absmax_map,
    const A* x_lane, bool x_present, const typename Decoder::Tables& tables,
    const RegisterCodeBytes& register_bytes, int lane, float (&sums)[4]) {
  const typename Decoder::Scale low_scale =
      step_scale<Decoder, kForm>(weight, inputs.absmax_low, absmax_map);
  const typename Decoder::Scale high_scale =
      step_scale<Decoder, kForm>(weight, inputs.absmax_high, absmax_map);
#pragma unroll
  for (int c = 0; c < kLaneChunks; ++c) {
    std::uint32_t x_pairs[kChunkValues / 2];
    load_x_pairs<A, C>(x_lane + c * kChunkValues, x_present, x_pairs);
#pragma unroll
    for (int j = 0; j < kChunkValues / 4; ++j) {
      // Values [4j, 4j + 4) of the chunk: bytes 2j and 2j + 1 of the 16, in word j / 2.
      const std::uint32_t low = word_of(inputs.codes_low[c], j / 2);
      const std::uint32_t high = word_of(inputs.codes_high[c], j / 2);
      std::uint32_t a[4];
      decode_fragment<C, Decoder, kSplitLookups>(tables, register_bytes, lane, low, high,
                                                 2 * (j % 2), low_scale, high_scale, a);
      mma_16x8x16<C>(sums, a, x_pairs[2 * j], x_pairs[2 * j + 1]);
    }
  }
}

// The layers of one launch. Layer i owns blocks [end_block[i − 1], end_block[i]) (end_block[−1]
// = 0), 16 features each; with the SiLU·mul epilogue both layers (gate, up) own every block.
template <typename A>
struct MmaGemvLayers {
  FourBitSource weight[kMaxFusedLayers];
  const A* bias[kMaxFusedLayers];
  A* y[kMaxFusedLayers];
  std::int64_t out[kMaxFusedLayers];
  int end_block[kMaxFusedLayers];
  int count;
};

// For each layer of the block, y[rows, out] = x[rows, in] · Wᵀ (+ bias[out]), for rows <=
// kMmaColumns, in a multiple of kMmaStepValues<kLaneChunks>, x and the packed weights 16-byte
// aligned, blocks of at least kLaneChunks · 32 values and fewer than 2^32 of them, every layer's
// absmax of form kForm. With kSiluMul, y of layer 0 = silu_mul(its output, layer 1's output).
// kSplitLookups: half the lookups from registers (multiply_mma_step), ProductDecode only.
template <typename A, typename C, typename Decoder, int kLaneChunks, LinearEpilogue kEpilogue,
          int kWarps, AbsmaxForm kForm, quant::FourBitLayout kLayout, bool kSplitLookups>
__global__ void __launch_bounds__(kWarps* kWarpSize, kMmaWarpsPerMultiprocessor / kWarps)
    linear_4bit_mma_gemv_kernel(const A* __restrict__ x,
                                const __grid_constant__ MmaGemvLayers<A> layers,
                                const __grid_constant__ FourBitTables tables, int rows,
                                std::int64_t in) {
  constexpr int kPasses = kEpilogue == LinearEpilogue::kSiluMul ? 2 : 1;
  constexpr int kStepValues = kMmaStepValues<kLaneChunks>;
  static_assert(!kSplitLookups || std::is_same_v<Decoder, ProductDecode<C>>);
  __shared__ typename Decoder::Tables decode_tables;
  __shared__ float absmax_map[256];
  __shared__ float partial_sums[kPasses][kWarps][kMmaOutputs][kMmaColumns];

  const auto [layer, first_block] = block_layer(layers.end_block, layers.count);
  const std::int64_t first_out = static_cast<std::int64_t>(blockIdx.x - first_block) * kMmaOutputs;
  const std::int64_t out = layers.out[layer];
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int group = lane / 4;
  const int quad = lane % 4;
  // Features past the last re-read the last one (in bounds); their sums are never stored.
  const std::int64_t feature_low = std::min(first_out + group, out - 1);
  const std::int64_t feature_high = std::min(first_out + group + 8, out - 1);
  const std::int64_t first_in = static_cast<std::int64_t>(quad) * kLaneChunks * kChunkValues;
  const bool x_present = group < rows;
  const A* x_lane = x + (x_present ? group : 0) * in + first_in;
  const int steps = static_cast<int>(in / kStepValues);
  const bool has_steps = warp < steps;

  MmaStepInputs<kLaneChunks> inputs;
  MmaLaneWeight lane_weight = mma_lane_weight<kLaneChunks, kLayout>(
      layers.weight[layer], feature_low, feature_high, in, first_in);
  if (has_steps) load_mma_codes<kLayout>(lane_weight, warp, inputs);
  if constexpr (kForm == AbsmaxForm::kNested) load_absmax_map(tables, absmax_map);
  Decoder::load(tables, decode_tables);
  RegisterCodeBytes register_bytes{};
  if constexpr (kSplitLookups) register_bytes = load_register_code_bytes<C>(tables);
  __syncthreads();
  // Up to here only weights and tables: x and y belong to the kernels around this one.
  wait_for_previous_kernels();

  float sums[kPasses][4] = {};
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    if (!has_steps) break;
    // The plain (and rounded) form's weight is copied into registers where x is of the compute
    // dtype: read in place, at a layer index known only at run time, its fields kept that index
    // live and spilled it (24 bytes in the half-line bf16 instances, reloaded every step; the copy
    // took nf4 decode 2.4%). The nested form reads more fields, and its copy spilled instead (40
    // bytes in the whole-line gate/up), as did most instances that convert x; the split lookups
    // did not spill, and their copy cost 0.6% (BENCHMARKS.md, twenty-first session).
    constexpr bool kCopyWeight = (kForm == AbsmaxForm::kPlain || kForm == AbsmaxForm::kRounded) &&
                                 !kSplitLookups && std::is_same_v<A, C>;
    std::conditional_t<kCopyWeight, const FourBitSource, const FourBitSource&> weight =
        layers.weight[layer + pass];
    if (pass > 0) {
      lane_weight =
          mma_lane_weight<kLaneChunks, kLayout>(weight, feature_low, feature_high, in, first_in);
      load_mma_codes<kLayout>(lane_weight, warp, inputs);
    }
    load_mma_absmax<kForm, kLayout>(weight, lane_weight, warp * kStepValues, inputs);
    for (int step = warp; step < steps; step += kWarps) {
      multiply_mma_step<A, C, Decoder, kForm, kSplitLookups>(
          inputs, weight, absmax_map, x_lane + static_cast<std::int64_t>(step) * kStepValues,
          x_present, decode_tables, register_bytes, lane, sums[pass]);
      const int next = step + kWarps;
      if (next < steps) {
        load_mma_codes<kLayout>(lane_weight, next, inputs);
        load_mma_absmax<kForm, kLayout>(weight, lane_weight, next * kStepValues, inputs);
      }
    }
  }
  // The next kernel's blocks may take SMs from here on: at the start, as the shorter kernels
  // do, they took them unevenly and a layer of 256 blocks ran 30% slower (BENCHMARKS.md).
  allow_next_kernel_start();
  // D fragment: (g, columns 2t, 2t + 1) and (g + 8, the same columns).
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    partial_sums[pass][warp][group][2 * quad] = sums[pass][0];
    partial_sums[pass][warp][group][2 * quad + 1] = sums[pass][1];
    partial_sums[pass][warp][group + 8][2 * quad] = sums[pass][2];
    partial_sums[pass][warp][group + 8][2 * quad + 1] = sums[pass][3];
  }
  __syncthreads();
  for (int i = static_cast<int>(threadIdx.x); i < kMmaOutputs * kMmaColumns;
       i += kWarps * kWarpSize) {
    const int feature = i % kMmaOutputs;
    const int row = i / kMmaOutputs;
    const std::int64_t o = first_out + feature;
    if (row >= rows || o >= out) continue;
    float totals[kPasses];
#pragma unroll
    for (int pass = 0; pass < kPasses; ++pass) {
      totals[pass] = 0.0f;
      for (int w = 0; w < kWarps; ++w) totals[pass] += partial_sums[pass][w][feature][row];
    }
    const std::int64_t index = row * out + o;
    if constexpr (kEpilogue == LinearEpilogue::kStore) {
      layers.y[layer][index] = finish_output<A, C>(totals[0], layers.bias[layer], o);
    } else {
      const float gate = to_float(finish_output<A, C>(totals[0], layers.bias[0], o));
      const float up = to_float(finish_output<A, C>(totals[1], layers.bias[1], o));
      layers.y[0][index] = from_float<A>(silu_mul_value<A>(gate, up));
    }
  }
}

// rounded [blocks] = round_C(absmax of block b) for each block b of W [out, in] (rows of
// row_blocks), at the index the weight's layout keeps b's absmax; a nested group follows b.
template <typename C>
__global__ void __launch_bounds__(kElementwiseThreads)
    round_absmax_kernel(const __grid_constant__ FourBitSource weight,
                        const __grid_constant__ FourBitTables tables, std::int64_t row_blocks,
                        std::int64_t blocks, std::uint16_t* __restrict__ rounded) {
  const std::int64_t in = row_blocks << weight.log2_block_size;
  for (std::int64_t b = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       b < blocks; b += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t index =
        weight.decode_tiles ? quant::decode_tile_absmax_index(in, b / row_blocks, b % row_blocks)
                            : b;
    const float absmax = decoded_absmax(weight, load_absmax(weight, index, b), tables.absmax_map);
    rounded[index] = static_cast<std::uint16_t>(pack_pair<C>(absmax, absmax));
  }
}

// Where word `word` of a launch lies in the decode tiles: in row first_row + word / row_words, at
// inputs 8 · (word % row_words) on.
__device__ __forceinline__ ValuePlace tiled_word_place(std::int64_t in, std::int64_t first_row,
                                                       const UnsignedDivisor& row_words,
                                                       std::uint32_t word) {
  const std::uint32_t local_row = row_words.divide(word);
  const std::int64_t row = first_row + local_row;
  const std::int64_t column =
      std::int64_t{kValuesPerWord} * (word - local_row * row_words.divisor());
  return {quant::decode_tile_code_offset(in, row, column / 32) + column % 32 / 2,
          quant::decode_tile_absmax_index(in, row, column / quant::kDecodeTileBlockSize)};
}

// output [words · 8] = the values of W [out, in] from row first_row on (row_words = in / 8 words
// a row) as the matmul sees them, in the compute dtype C, from the layout kLayout; output 16-byte
// aligned. The decode tiles take fewer than 2^32 words a launch.
// Block b takes words [b, b + 1) · kDequantizeThreads · kDequantizeWordsPerThread, its threads
// side by side in each of kDequantizeWordsPerThread rounds, so that a warp's loads and stores are
// contiguous. Every round's codes are requested before the tables are built, so that they are in
// flight together (a round at a time ran at 0.68 of the copy's bandwidth, BENCHMARKS.md). The
// layout is a template parameter because the tiles' place arithmetic, as a flag, cost the
// bitsandbytes layout 7% (BENCHMARKS.md, twentieth session).
template <typename C, typename W, bool kProduct, quant::FourBitLayout kLayout>
__global__ void __launch_bounds__(kDequantizeThreads)
    dequantize_4bit_rows_kernel(const __grid_constant__ FourBitSource weight,
                                const __grid_constant__ FourBitTables tables, std::int64_t in,
                                std::int64_t first_row, const UnsignedDivisor row_words,
                                std::int64_t words, C* __restrict__ output) {
  __shared__ float code_values[16];
  __shared__ float absmax_map[256];
  const std::int64_t first_value = first_row * in;
  const std::int64_t block_first_word =
      static_cast<std::int64_t>(blockIdx.x) * kDequantizeThreads * kDequantizeWordsPerThread;
  std::uint32_t codes[kDequantizeWordsPerThread] = {};
  [[maybe_unused]] std::int64_t tiled_absmax[kDequantizeWordsPerThread] = {};
#pragma unroll
  for (int round = 0; round < kDequantizeWordsPerThread; ++round) {
    const std::int64_t word = block_first_word + round * kDequantizeThreads + threadIdx.x;
    if (word < words) {
      std::int64_t code_byte = (first_value + word * kValuesPerWord) / 2;
      if constexpr (is_tiled(kLayout)) {
        const ValuePlace place =
            tiled_word_place(in, first_row, row_words, static_cast<std::uint32_t>(word));
        code_byte = place.code_byte;
        tiled_absmax[round] = place.absmax_index;
      }
      const std::uint8_t* bytes = weight.packed + code_byte;
      codes[round] = weight.packed_aligned ? __ldcs(reinterpret_cast<const std::uint32_t*>(bytes))
                                           : load_word_bytes(bytes);
    }
  }
  load_tables(tables, code_values, absmax_map);
#pragma unroll
  for (int round = 0; round < kDequantizeWordsPerThread; ++round) {
    const std::int64_t word = block_first_word + round * kDequantizeThreads + threadIdx.x;
    if (word >= words) return;
    const std::int64_t block = (first_value + word * kValuesPerWord) >> weight.log2_block_size;
    const std::int64_t absmax_index = is_tiled(kLayout) ? tiled_absmax[round] : block;
    float values[kValuesPerWord];
    decode_word<C, W, kProduct>(
        codes[round], decoded_absmax(weight, load_absmax(weight, absmax_index, block), absmax_map),
        code_values, values);
    store_8_values(output + word * kValuesPerWord, values);
  }
}

// output[i] = input[i] rounded to O, for i < n.
template <typename I, typename O>
__global__ void convert_kernel(const I* __restrict__ input, std::int64_t n,
                               O* __restrict__ output) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) output[i] = from_float<O>(to_float(input[i]));
}

// y[i] = Y(C(sum[i] + C(bias[i % out]))) for i < n (y [n / out, out]); without a bias
// Y(C(sum[i])).
template <typename B, typename C, typename Y>
__global__ void finish_rows_kernel(const float* __restrict__ sum, const B* __restrict__ bias,
                                   std::int64_t out, std::int64_t n, Y* __restrict__ y) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float value = sum[i];
  if (bias != nullptr) value = __fadd_rn(value, to_float(from_float<C>(to_float(bias[i % out]))));
  y[i] = from_float<Y>(to_float(from_float<C>(value)));
}

// Blocks for one thread per item, or 0 where that exceeds the grid.
unsigned elementwise_blocks(std::int64_t items, int threads) {
  const std::int64_t blocks = (items + threads - 1) / threads;
  return blocks <= INT_MAX ? static_cast<unsigned>(blocks) : 0;
}

cudaError_t convert(const void* input, DType input_dtype, std::int64_t n, void* output,
                    DType output_dtype, cudaStream_t stream) {
  const unsigned blocks = elementwise_blocks(n, kElementwiseThreads);
  if (blocks == 0) return cudaErrorInvalidValue;
  return visit_float_dtype(input_dtype, [&](auto input_tag) {
    using I = typename decltype(input_tag)::type;
    return visit_float_dtype(output_dtype, [&](auto output_tag) {
      using O = typename decltype(output_tag)::type;
      convert_kernel<<<blocks, kElementwiseThreads, 0, stream>>>(static_cast<const I*>(input), n,
                                                                 static_cast<O*>(output));
      return cudaGetLastError();
    });
  });
}

cudaDataType_t cuda_data_type(DType dtype) {
  return dtype == DType::kF32 ? CUDA_R_32F : dtype == DType::kF16 ? CUDA_R_16F : CUDA_R_16BF;
}

// Calls body(std::bool_constant<call.product_decode>{}), the product decode only with a 16-bit
// compute dtype C (takes_4bit_product_decode), so that no kernel instantiates it for f32.
template <typename C, typename Body>
cudaError_t visit_decode(const FourBitCall& call, Body&& body) {
  if constexpr (std::is_same_v<C, float>) {
    return body(std::false_type{});
  } else {
    return call.product_decode ? body(std::true_type{}) : body(std::false_type{});
  }
}

// Whether the tensor-core GEMV with kLaneChunks = lane_chunks applies to the call.
bool tensor_core_gemv_applies(const FourBitCall& call, int lane_chunks) {
  const int log2_chunk_values = lane_chunks == 1 ? 5 : 6;  // a lane's values: one absmax block
  return call.rows <= kLinear4bitGemvMaxRows &&
         (call.compute_dtype == DType::kBF16 || call.compute_dtype == DType::kF16) &&
         call.in % (4 * lane_chunks * kChunkValues) == 0 &&
         call.weight.log2_block_size >= log2_chunk_values && call.weight.packed_aligned &&
         is_aligned_16(call.x) &&
         ((call.in * call.out) >> call.weight.log2_block_size) <= std::int64_t{UINT32_MAX};
}

// Rows up to which whole lines are the faster tensor-core GEMV (kbit_kernel_workbench): with
// more, the x that every lane group loads per step outweighs what whole lines save. Since the
// step's absmax arithmetic was cut, half lines gained more than whole ones: at 2 rows they are
// level or faster but for nf4_dq 4096 × 4096, at 3 and 4 rows faster on every shape
// (BENCHMARKS.md, eighteenth session).
constexpr std::int64_t kWholeLineMaxRows = 1;

// Whether whole lines serve `weight` up to kWholeLineMaxRows rows. In the decode tiles half
// lines are the faster for a plain absmax at one row too (nf4 decode +3%), and for a rounded one
// (nf4_dq decode +2%), while whole lines stay the faster for a nested one (half lines −1 to −2% on
// nf4_dq; BENCHMARKS.md, twenty-first and twenty-second sessions).
bool whole_lines_preferred(const FourBitSource& weight) {
  return !weight.decode_tiles ||
         (absmax_form(weight) == AbsmaxForm::kNested && weight.rounded_absmax == nullptr);
}

// Rows from which the half-line GEMV with ProductDecode takes half its lookups from registers
// (product_pairs_from_registers): with each row's x loads, the shared-memory lookups' L1
// wavefronts bind it. Measured in the model (BENCHMARKS.md, twenty-first session): at 8 rows
// nf4 decode +9.4% and nf4_dq +6.5%, at 5 rows +1% and level; at 4 rows it lost 3.5% and 5%. Only
// the decode tiles take it, the layout of every GPU model's weights: the instances it adds for the
// bitsandbytes layout would serve no model and lengthen the build and the GPU tests' pack.
constexpr std::int64_t kSplitLookupMinRows = 5;

// The lane chunks of the tensor-core GEMV for every call (whole lines up to kWholeLineMaxRows
// rows where whole_lines_preferred), or 0 where it applies to not all.
int tensor_core_lane_chunks(std::span<const FourBitCall> calls) {
  const bool few_rows =
      calls.front().rows <= kWholeLineMaxRows && whole_lines_preferred(calls.front().weight);
  for (const int lane_chunks : {few_rows ? 2 : 1, 1}) {
    if (std::all_of(calls.begin(), calls.end(), [&](const FourBitCall& call) {
          return tensor_core_gemv_applies(call, lane_chunks);
        })) {
      return lane_chunks;
    }
  }
  return 0;
}

// Warps per block of the tensor-core GEMV: kMmaWideWarps from kMmaWideInputs inputs (40 or more
// whole-line steps, 80 half-line ones). The MLP's down projection (4096 features, 14336 inputs)
// has 256 blocks, a few per SM, each warp a long chain of dependent loads: twice the warps halve
// the chains (BENCHMARKS.md: 16.6 -> 13.6 µs at one token, 28.1 -> 19.4 µs at eight). At 4096
// inputs, with many blocks, the wide blocks measured slower, and at the 70B shape's 8192 inputs
// (every Linear but down) a layer's decode took 4% longer with them, while Llama-2-7B's down
// projection (11008 inputs) gains 2% of the step. The choice depends on `in` alone, so that fused
// layers and separate calls sum in the same order.
constexpr std::int64_t kMmaWideInputs = 10240;

int mma_gemv_warps(std::int64_t in) {
  return in >= kMmaWideInputs ? kMmaWideWarps : kMmaWarps;
}

// One launch of the tensor-core GEMV for `calls`, which share x, rows, in, the dtypes, the code
// type, the absmax form, the layout and the decode (see linear_4bit_layers), with lane_chunks (1
// or 2) that apply to each.
cudaError_t launch_tensor_core_gemv(std::span<const FourBitCall> calls, int lane_chunks,
                                    LinearEpilogue epilogue) {
  const FourBitCall& first = calls.front();
  return visit_4bit_tensor_core_types(first, [&](auto a, auto c, auto w) {
    using A = decltype(a);
    using C = decltype(c);
    MmaGemvLayers<A> layers{};
    const int blocks = fused_layer_blocks(calls, kMmaOutputs, epilogue, layers.end_block);
    if (blocks == 0) return cudaErrorInvalidValue;
    for (std::size_t i = 0; i < calls.size(); ++i) {
      layers.weight[i] = calls[i].weight;
      layers.bias[i] = static_cast<const A*>(calls[i].bias);
      layers.y[i] = static_cast<A*>(calls[i].y);
      layers.out[i] = calls[i].out;
    }
    layers.count = static_cast<int>(calls.size());
    // An f32 weight decodes as one of dtype C (scaled_code skips both roundings): one instance
    // serves the two.
    using W = std::conditional_t<std::is_same_v<decltype(w), float>, C, decltype(w)>;
    return visit_decode<C>(first, [&](auto product) {
      using Decoder =
          std::conditional_t<decltype(product)::value, ProductDecode<C>, ExactDecode<C, W>>;
      const int warps = mma_gemv_warps(first.in);
      const bool nested = absmax_form(first.weight) == AbsmaxForm::kNested;
      const bool rounded = first.weight.rounded_absmax != nullptr;
      const auto launch = [&](auto chunks, auto kind) {
        constexpr int kChunks = decltype(chunks)::value;
        constexpr LinearEpilogue kKind = decltype(kind)::value;
        const auto run = [&](auto warps_tag, auto layout_tag, auto split_tag) {
          constexpr int kWarps = decltype(warps_tag)::value;
          constexpr quant::FourBitLayout kLayout = decltype(layout_tag)::value;
          constexpr bool kSplit = decltype(split_tag)::value;
          auto kernel = nested ? linear_4bit_mma_gemv_kernel<A, C, Decoder, kChunks, kKind, kWarps,
                                                             AbsmaxForm::kNested, kLayout, kSplit>
                               : linear_4bit_mma_gemv_kernel<A, C, Decoder, kChunks, kKind, kWarps,
                                                             AbsmaxForm::kPlain, kLayout, kSplit>;
          // Rounded absmax come with the product decode in the decode tiles only.
          if constexpr (std::is_same_v<Decoder, ProductDecode<C>> && is_tiled(kLayout)) {
            if (rounded) {
              kernel = linear_4bit_mma_gemv_kernel<A, C, Decoder, kChunks, kKind, kWarps,
                                                   AbsmaxForm::kRounded, kLayout, kSplit>;
            }
          }
          return launch_overlapped(kernel, static_cast<unsigned>(blocks), kWarps * kWarpSize, 0,
                                   first.stream, static_cast<const A*>(first.x), layers,
                                   first.tables, static_cast<int>(first.rows), first.in);
        };
        const auto run_layout = [&](auto warps_tag) {
          using Tiles =
              std::integral_constant<quant::FourBitLayout, quant::FourBitLayout::kDecodeTiles>;
          using Bitsandbytes =
              std::integral_constant<quant::FourBitLayout, quant::FourBitLayout::kBitsandbytes>;
          if (!first.weight.decode_tiles) return run(warps_tag, Bitsandbytes{}, std::false_type{});
          if constexpr (std::is_same_v<Decoder, ProductDecode<C>> && kChunks == 1) {
            if (first.rows >= kSplitLookupMinRows) {
              return run(warps_tag, Tiles{}, std::true_type{});
            }
          }
          return run(warps_tag, Tiles{}, std::false_type{});
        };
        return warps == kMmaWideWarps ? run_layout(std::integral_constant<int, kMmaWideWarps>{})
                                      : run_layout(std::integral_constant<int, kMmaWarps>{});
      };
      using Store = std::integral_constant<LinearEpilogue, LinearEpilogue::kStore>;
      using SiluMul = std::integral_constant<LinearEpilogue, LinearEpilogue::kSiluMul>;
      if (lane_chunks == 2) {
        using Two = std::integral_constant<int, 2>;
        return epilogue == LinearEpilogue::kStore ? launch(Two{}, Store{})
                                                  : launch(Two{}, SiluMul{});
      }
      using One = std::integral_constant<int, 1>;
      return epilogue == LinearEpilogue::kStore ? launch(One{}, Store{}) : launch(One{}, SiluMul{});
    });
  });
}

cudaError_t launch_gemv(const FourBitCall& call) {
  const std::int64_t warps = (call.out + kGemvOutputsPerWarp - 1) / kGemvOutputsPerWarp;
  const unsigned blocks = elementwise_blocks(warps * kWarpSize, kGemvThreads);
  if (blocks == 0) return cudaErrorInvalidValue;
  return visit_4bit_types(call, [&](auto a, auto c, auto w) {
    using A = decltype(a);
    using C = decltype(c);
    return visit_decode<C>(call, [&](auto product) {
      linear_4bit_gemv_kernel<A, C, decltype(w), decltype(product)::value>
          <<<blocks, kGemvThreads, 0, call.stream>>>(
              static_cast<const A*>(call.x), is_aligned_16(call.x), call.weight, call.tables,
              static_cast<const A*>(call.bias), static_cast<int>(call.rows), call.in, call.out,
              static_cast<A*>(call.y));
      return cudaGetLastError();
    });
  });
}

// Output features [first_out, first_out + count) of W into weight_chunk [count, in] of C.
cudaError_t dequantize_rows(const FourBitCall& call, std::int64_t first_out, std::int64_t count,
                            void* weight_chunk) {
  const std::int64_t row_words = call.in / kValuesPerWord;
  // The decode tiles' kernel finds a word's row in 32 bits: fewer than 2^32 words a launch.
  const std::int64_t launch_rows =
      call.weight.decode_tiles ? std::max<std::int64_t>(1, UINT32_MAX / row_words) : count;
  return visit_4bit_types(call, [&](auto, auto c, auto w) {
    using C = decltype(c);
    return visit_decode<C>(call, [&](auto product) {
      for (std::int64_t done = 0; done < count; done += launch_rows) {
        const std::int64_t rows = std::min(launch_rows, count - done);
        const std::int64_t words = rows * row_words;
        const unsigned blocks =
            elementwise_blocks((words + kDequantizeWordsPerThread - 1) / kDequantizeWordsPerThread,
                               kDequantizeThreads);
        if (blocks == 0) return cudaErrorInvalidValue;
        const auto launch = [&](auto kernel) {
          kernel<<<blocks, kDequantizeThreads, 0, call.stream>>>(
              call.weight, call.tables, call.in, first_out + done,
              UnsignedDivisor(static_cast<std::uint32_t>(row_words)), words,
              static_cast<C*>(weight_chunk) + done * call.in);
        };
        constexpr bool kProduct = decltype(product)::value;
        if (call.weight.decode_tiles) {
          launch(dequantize_4bit_rows_kernel<C, decltype(w), kProduct,
                                             quant::FourBitLayout::kDecodeTiles>);
        } else {
          launch(dequantize_4bit_rows_kernel<C, decltype(w), kProduct,
                                             quant::FourBitLayout::kBitsandbytes>);
        }
        const cudaError_t error = cudaGetLastError();
        if (error != cudaSuccess) return error;
      }
      return cudaSuccess;
    });
  });
}

Status cuda_status(cudaError_t error, const char* what) {
  return detail::status_from_cuda_error(static_cast<int>(error), what);
}

// product [rows, out] (of product_dtype: the compute dtype, or f32) = x · Wᵀ, one chunk of output
// features at a time: each dequantized into the workspace, then one cublasGemmEx.
Status multiply_in_chunks(LinearContext& context, const FourBitCall& call,
                          const LinearWorkspaceLayout& layout, const void* x, DType product_dtype,
                          char* product) {
  const float alpha = 1.0f;
  const float beta = 0.0f;
  const cudaDataType_t type = cuda_data_type(call.compute_dtype);
  const cudaDataType_t product_type = cuda_data_type(product_dtype);
  // As linear_float: PEDANTIC keeps f32 data off TF32 and emulations.
  const cublasComputeType_t compute =
      call.compute_dtype == DType::kF32 ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F;
  const std::size_t element_bytes = dtype_size(product_dtype);
  const int in = static_cast<int>(call.in);
  void* weight_chunk = static_cast<char*>(context.workspace()) + layout.four_bit_weight_chunk;
  const std::int64_t chunk_out =
      four_bit_chunk_out(call.in, call.out, dtype_size(call.compute_dtype));
  for (std::int64_t first_out = 0; first_out < call.out; first_out += chunk_out) {
    const std::int64_t count = std::min(chunk_out, call.out - first_out);
    KBIT_RETURN_IF_ERROR(cuda_status(dequantize_rows(call, first_out, count, weight_chunk),
                                     "linear_4bit: weight dequantization"));
    // Column-major C[count, rows] = W_chunk[count, in] · x[in, rows], written into columns
    // [first_out, first_out + count) of the row-major [rows, out] product.
    KBIT_RETURN_IF_ERROR(linear_cublas_status(
        cublasGemmEx(context.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(count),
                     static_cast<int>(call.rows), in, &alpha, weight_chunk, type, in, x, type, in,
                     &beta, product + static_cast<std::size_t>(first_out) * element_bytes,
                     product_type, static_cast<int>(call.out), compute, CUBLAS_GEMM_DEFAULT),
        "linear_4bit: cublasGemmEx"));
  }
  return ok_status();
}

// The workspace layout of a many-row call, refused where the context is too small for it.
Result<LinearWorkspaceLayout> many_rows_layout(const LinearContext& context,
                                               const FourBitCall& call) {
  const LinearWorkspaceLayout layout = linear_workspace_layout(call.rows, call.in, call.out);
  if (layout.total_bytes > context.workspace_bytes()) {
    return invalid_argument("linear_4bit: " + std::to_string(call.rows) + " rows × " +
                            std::to_string(call.in) + " inputs × " + std::to_string(call.out) +
                            " outputs exceed the sizes its LinearContext was created for");
  }
  return layout;
}

// x in the compute dtype: call.x itself where it is of that dtype and, if `aligned`, 16-byte
// aligned; else converted into the workspace.
Result<const void*> x_in_compute_dtype(LinearContext& context, const FourBitCall& call,
                                       const LinearWorkspaceLayout& layout, bool aligned) {
  if (call.compute_dtype == call.dtype && (!aligned || is_aligned_16(call.x))) return call.x;
  void* target = static_cast<char*>(context.workspace()) + layout.four_bit_x;
  KBIT_RETURN_IF_ERROR(cuda_status(
      convert(call.x, call.dtype, call.rows * call.in, target, call.compute_dtype, call.stream),
      "linear_4bit: activations to the compute dtype"));
  return static_cast<const void*>(target);
}

Status linear_4bit_gemm(LinearContext& context, const FourBitCall& call) {
  KBIT_ASSIGN_OR_RETURN(const LinearWorkspaceLayout layout, many_rows_layout(context, call));
  KBIT_ASSIGN_OR_RETURN(const void* x, x_in_compute_dtype(context, call, layout, true));
  return cuda_status(launch_tensor_core_gemm(call, x), "linear_4bit: tensor-core GEMM kernel");
}

Status linear_4bit_many_rows(LinearContext& context, const FourBitCall& call) {
  KBIT_ASSIGN_OR_RETURN(const LinearWorkspaceLayout layout, many_rows_layout(context, call));
  KBIT_ASSIGN_OR_RETURN(const void* x, x_in_compute_dtype(context, call, layout, false));
  const bool direct = call.compute_dtype == call.dtype;
  char* workspace = static_cast<char*>(context.workspace());
  // Without a bias and with y of the compute dtype, the GEMM writes y and rounds once. Otherwise
  // it writes f32 sums that finish_linear_rows completes: cuBLAS would round a 16-bit product
  // before adding a bias given as C, where the reference rounds once after the bias.
  if (direct && call.bias == nullptr) {
    return multiply_in_chunks(context, call, layout, x, call.compute_dtype,
                              static_cast<char*>(call.y));
  }
  char* sums = workspace + layout.gemm_output;
  KBIT_RETURN_IF_ERROR(multiply_in_chunks(context, call, layout, x, DType::kF32, sums));
  return cuda_status(
      finish_linear_rows(reinterpret_cast<const float*>(sums), call.rows, call.out, call.bias,
                         call.dtype, call.compute_dtype, call.y, call.dtype, call.stream),
      "linear_4bit: bias and output rounding");
}

// dx [rows, in] = dy · W (call.x is dy [rows, out]; see linear_4bit_backward_input): each chunk
// of W's output features dequantized, then its product with dy's matching columns added to the
// f32 sums by one cublasGemmEx, and the sums rounded to dx's dtype at the end (f32 dx holds
// the sums).
Status multiply_input_gradient_in_chunks(LinearContext& context, const FourBitCall& call,
                                         const LinearWorkspaceLayout& layout, const void* dy) {
  const float alpha = 1.0f;
  const cudaDataType_t type = cuda_data_type(call.compute_dtype);
  const cublasComputeType_t compute =
      call.compute_dtype == DType::kF32 ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F;
  char* workspace = static_cast<char*>(context.workspace());
  void* weight_chunk = workspace + layout.four_bit_weight_chunk;
  // f32 dx takes the sums itself.
  const bool direct = call.dtype == DType::kF32;
  auto* sums = direct ? static_cast<float*>(call.y)
                      : reinterpret_cast<float*>(workspace + layout.gemm_output);
  const std::size_t element_bytes = dtype_size(call.compute_dtype);
  const int in = static_cast<int>(call.in);
  const std::int64_t chunk_out =
      four_bit_chunk_out(call.in, call.out, dtype_size(call.compute_dtype));
  for (std::int64_t first_out = 0; first_out < call.out; first_out += chunk_out) {
    const std::int64_t count = std::min(chunk_out, call.out - first_out);
    KBIT_RETURN_IF_ERROR(cuda_status(dequantize_rows(call, first_out, count, weight_chunk),
                                     "linear_4bit_backward_input: weight dequantization"));
    // Column-major sums[in, rows] (+)= W_chunk[in, count] · dy_chunk[count, rows], dy_chunk
    // being columns [first_out, first_out + count) of the row-major [rows, out] dy.
    const float beta = first_out == 0 ? 0.0f : 1.0f;
    KBIT_RETURN_IF_ERROR(linear_cublas_status(
        cublasGemmEx(
            context.cublas(), CUBLAS_OP_N, CUBLAS_OP_N, in, static_cast<int>(call.rows),
            static_cast<int>(count), &alpha, weight_chunk, type, in,
            static_cast<const char*>(dy) + static_cast<std::size_t>(first_out) * element_bytes,
            type, static_cast<int>(call.out), &beta, sums, CUDA_R_32F, in, compute,
            CUBLAS_GEMM_DEFAULT),
        "linear_4bit_backward_input: cublasGemmEx"));
  }
  if (direct) return ok_status();
  return cuda_status(
      convert(sums, DType::kF32, call.rows * call.in, call.y, call.dtype, call.stream),
      "linear_4bit_backward_input: rounding dx");
}

bool is_float_dtype(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
}

Status check_4bit_call(const void* x, const FourBitWeightDevice& weight, std::int64_t rows,
                       std::int64_t in, std::int64_t out, DType compute_dtype, const void* y,
                       DType dtype) {
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return invalid_argument(std::string("linear_4bit: activations must be f32 or bf16, not ") +
                            std::string(dtype_name(dtype)));
  }
  if (!is_float_dtype(compute_dtype) || !is_float_dtype(weight.weight_dtype)) {
    return invalid_argument(
        "linear_4bit: the compute dtype and the weight's dtype must be f32, f16 or bf16 (got " +
        std::string(dtype_name(compute_dtype)) + " and " +
        std::string(dtype_name(weight.weight_dtype)) + ")");
  }
  if (rows < 0 || out < 1 || in < kValuesPerLoad || in % kValuesPerLoad != 0 || rows > INT_MAX ||
      in > INT_MAX || out > INT_MAX) {
    return invalid_argument("linear_4bit: sizes out of range (rows " + std::to_string(rows) +
                            ", in " + std::to_string(in) + ", out " + std::to_string(out) +
                            "; in must be a positive multiple of 32, each at most 2^31 - 1)");
  }
  if (!cpu::is_supported_4bit_layout(in, weight.block_size)) {
    return invalid_argument("linear_4bit: block size " + std::to_string(weight.block_size) +
                            " with " + std::to_string(in) +
                            " inputs: the block size must be a power of two from 32 to 4096 "
                            "that divides the inputs or is a multiple of them");
  }
  const bool plain = weight.absmax != nullptr;
  const bool nested = weight.absmax_codes != nullptr && weight.nested_absmax != nullptr;
  if (plain == nested || (plain && weight.absmax_codes != nullptr)) {
    return invalid_argument(
        "linear_4bit: the weight needs exactly one absmax form: absmax, or absmax_codes with "
        "nested_absmax");
  }
  if (weight.rounded_absmax != nullptr && weight.rounded_absmax_dtype != DType::kBF16 &&
      weight.rounded_absmax_dtype != DType::kF16) {
    return invalid_argument("linear_4bit: rounded absmax must be f16 or bf16, not " +
                            std::string(dtype_name(weight.rounded_absmax_dtype)));
  }
  if (rows > 0 && (x == nullptr || weight.packed == nullptr || y == nullptr)) {
    return invalid_argument("linear_4bit: x, the packed weight and y must not be null");
  }
  if (weight.layout == quant::FourBitLayout::kDecodeTiles &&
      !quant::decode_tiles_apply(out, in, weight.block_size)) {
    return invalid_argument(
        "linear_4bit: a weight [" + std::to_string(out) + ", " + std::to_string(in) +
        "] in blocks of " + std::to_string(weight.block_size) +
        " cannot be in the decode-tile layout (out a multiple of 16, in of 256, blocks of 64)");
  }
  return ok_status();
}

// The validated call of one layer (check_4bit_call first).
FourBitCall make_4bit_call(cudaStream_t stream, const void* x, const FourBitLayer& layer,
                           std::int64_t rows, std::int64_t in, DType compute_dtype, DType dtype,
                           cpu::FourBitDecode decode) {
  const FourBitWeightDevice& weight = layer.weight;
  FourBitSource source{weight.packed,
                       weight.absmax,
                       weight.absmax_codes,
                       weight.nested_absmax,
                       weight.nested_offset,
                       log2_of(weight.block_size),
                       is_aligned_16(weight.packed),
                       weight.layout == quant::FourBitLayout::kDecodeTiles,
                       nullptr};
  const bool product = cpu::takes_4bit_product_decode(decode, rows, compute_dtype);
  if (product && source.decode_tiles && weight.rounded_absmax != nullptr &&
      weight.rounded_absmax_dtype == compute_dtype) {
    source.rounded_absmax = static_cast<const std::uint16_t*>(weight.rounded_absmax);
  }
  return {x,
          source,
          make_tables(weight.type),
          weight.weight_dtype,
          layer.bias,
          rows,
          in,
          layer.out,
          compute_dtype,
          layer.y,
          dtype,
          product,
          stream};
}

}  // namespace

cudaError_t finish_linear_rows(const float* sums, std::int64_t rows, std::int64_t out,
                               const void* bias, DType bias_dtype, DType compute_dtype, void* y,
                               DType y_dtype, cudaStream_t stream) {
  const std::int64_t n = rows * out;
  const unsigned blocks = elementwise_blocks(n, kElementwiseThreads);
  if (out < 1 || blocks == 0) return cudaErrorInvalidValue;
  return visit_float_dtype(bias_dtype, [&](auto bias_tag) {
    using B = typename decltype(bias_tag)::type;
    return visit_float_dtype(compute_dtype, [&](auto compute_tag) {
      using C = typename decltype(compute_tag)::type;
      return visit_float_dtype(y_dtype, [&](auto y_tag) {
        using Y = typename decltype(y_tag)::type;
        finish_rows_kernel<B, C><<<blocks, kElementwiseThreads, 0, stream>>>(
            sums, static_cast<const B*>(bias), out, n, static_cast<Y*>(y));
        return cudaGetLastError();
      });
    });
  });
}

Status linear_4bit(LinearContext& context, const void* x, const FourBitWeightDevice& weight,
                   const void* bias, std::int64_t rows, std::int64_t in, std::int64_t out,
                   DType compute_dtype, void* y, DType dtype, cpu::FourBitDecode decode,
                   Linear4bitKernel kernel) {
  KBIT_RETURN_IF_ERROR(check_4bit_call(x, weight, rows, in, out, compute_dtype, y, dtype));
  if (rows == 0) return ok_status();
  const FourBitCall call = make_4bit_call(context.stream(), x, {weight, bias, out, y}, rows, in,
                                          compute_dtype, dtype, decode);
  const std::span<const FourBitCall> calls(&call, 1);
  if (kernel == Linear4bitKernel::kAuto) {
    const int lane_chunks = tensor_core_lane_chunks(calls);
    kernel = lane_chunks == 2                 ? Linear4bitKernel::kTensorCoreGemvLines
             : lane_chunks == 1               ? Linear4bitKernel::kTensorCoreGemv
             : rows <= kLinear4bitGemvMaxRows ? Linear4bitKernel::kGemv
             : tensor_core_gemm_applies(call) && tensor_core_gemm_preferred(call)
                 ? Linear4bitKernel::kTensorCoreGemm
                 : Linear4bitKernel::kManyRows;
  }
  switch (kernel) {
    case Linear4bitKernel::kTensorCoreGemvLines:
      if (!tensor_core_gemv_applies(call, 2)) {
        return invalid_argument(
            "linear_4bit: the whole-line tensor-core GEMV needs at most 8 rows, an f16 or bf16 "
            "compute dtype, inputs a multiple of 256, blocks of at least 64 values (fewer than "
            "2^32 of them) and 16-byte aligned x and packed weight");
      }
      return cuda_status(launch_tensor_core_gemv(calls, 2, LinearEpilogue::kStore),
                         "linear_4bit: tensor-core GEMV kernel");
    case Linear4bitKernel::kTensorCoreGemv:
      if (!tensor_core_gemv_applies(call, 1)) {
        return invalid_argument(
            "linear_4bit: the tensor-core GEMV needs at most 8 rows, an f16 or bf16 compute "
            "dtype, inputs a multiple of 128, fewer than 2^32 quantization blocks and 16-byte "
            "aligned x and packed weight");
      }
      return cuda_status(launch_tensor_core_gemv(calls, 1, LinearEpilogue::kStore),
                         "linear_4bit: tensor-core GEMV kernel");
    case Linear4bitKernel::kGemv:
      if (rows > kLinear4bitGemvMaxRows) {
        return invalid_argument("linear_4bit: the GEMV kernel takes at most 8 rows, not " +
                                std::to_string(rows));
      }
      return cuda_status(launch_gemv(call), "linear_4bit: GEMV kernel");
    case Linear4bitKernel::kTensorCoreGemm:
      if (!tensor_core_gemm_applies(call)) {
        return invalid_argument(
            "linear_4bit: the tensor-core GEMM needs a GPU of compute capability 9.0, an f16 or "
            "bf16 compute dtype, the exact decode, inputs a multiple of 64, blocks of at least 64 "
            "values and a 16-byte aligned packed weight");
      }
      return linear_4bit_gemm(context, call);
    case Linear4bitKernel::kManyRows:
    case Linear4bitKernel::kAuto:  // resolved above
      break;
  }
  return linear_4bit_many_rows(context, call);
}

Status linear_4bit_backward_input(LinearContext& context, const void* dy,
                                  const FourBitWeightDevice& weight, std::int64_t rows,
                                  std::int64_t in, std::int64_t out, DType compute_dtype, void* dx,
                                  DType dtype, cpu::FourBitDecode decode) {
  KBIT_RETURN_IF_ERROR(check_4bit_call(dy, weight, rows, in, out, compute_dtype, dx, dtype));
  if (rows == 0) return ok_status();
  const LinearWorkspaceLayout layout = linear_input_gradient_workspace_layout(rows, in, out);
  if (layout.total_bytes > context.workspace_bytes()) {
    return invalid_argument("linear_4bit_backward_input: " + std::to_string(rows) + " rows × " +
                            std::to_string(in) + " inputs × " + std::to_string(out) +
                            " outputs exceed the sizes its LinearContext was created for (create "
                            "it with this shape and input_gradient set)");
  }
  // The call as the forward's: x is dy here, y is dx; the dequantization reads only the weight.
  const FourBitCall call = make_4bit_call(context.stream(), dy, {weight, nullptr, out, dx}, rows,
                                          in, compute_dtype, dtype, decode);
  const void* converted_dy = dy;
  if (compute_dtype != dtype) {
    char* target = static_cast<char*>(context.workspace()) + layout.four_bit_x;
    KBIT_RETURN_IF_ERROR(
        cuda_status(convert(dy, dtype, rows * out, target, compute_dtype, context.stream()),
                    "linear_4bit_backward_input: dy to the compute dtype"));
    converted_dy = target;
  }
  return multiply_input_gradient_in_chunks(context, call, layout, converted_dy);
}

Status linear_4bit_layers(LinearContext& context, const void* x,
                          std::span<const FourBitLayer> layers, std::int64_t rows, std::int64_t in,
                          DType compute_dtype, DType dtype, cpu::FourBitDecode decode,
                          LinearEpilogue epilogue) {
  KBIT_RETURN_IF_ERROR(check_fused_layer_group("linear_4bit_layers", layers, epilogue));
  for (const FourBitLayer& layer : layers) {
    KBIT_RETURN_IF_ERROR(
        check_4bit_call(x, layer.weight, rows, in, layer.out, compute_dtype, layer.y, dtype));
  }
  if (rows == 0) return ok_status();
  std::array<FourBitCall, kMaxFusedLayers> storage;
  bool shared_types = true;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    storage[i] =
        make_4bit_call(context.stream(), x, layers[i], rows, in, compute_dtype, dtype, decode);
    shared_types = shared_types && layers[i].weight.type == layers[0].weight.type &&
                   absmax_form(storage[i].weight) == absmax_form(storage[0].weight) &&
                   (storage[i].weight.rounded_absmax == nullptr) ==
                       (storage[0].weight.rounded_absmax == nullptr) &&
                   layers[i].weight.weight_dtype == layers[0].weight.weight_dtype &&
                   layers[i].weight.layout == layers[0].weight.layout;
  }
  const std::span<const FourBitCall> calls(storage.data(), layers.size());
  const int lane_chunks = shared_types ? tensor_core_lane_chunks(calls) : 0;
  if (lane_chunks > 0) {
    return cuda_status(launch_tensor_core_gemv(calls, lane_chunks, epilogue),
                       "linear_4bit_layers: tensor-core GEMV kernel");
  }
  return linear_layers_one_by_one(layers, rows, dtype, epilogue, context.stream(),
                                  "linear_4bit_layers", [&](const FourBitLayer& layer) {
                                    return linear_4bit(context, x, layer.weight, layer.bias, rows,
                                                       in, layer.out, compute_dtype, layer.y, dtype,
                                                       decode);
                                  });
}

Status round_4bit_absmax(const FourBitWeightDevice& weight, std::int64_t out, std::int64_t in,
                         DType compute_dtype, void* rounded, cudaStream_t stream) {
  KBIT_RETURN_IF_ERROR(
      check_4bit_call(nullptr, weight, 0, in, out, compute_dtype, nullptr, DType::kF32));
  if (compute_dtype != DType::kBF16 && compute_dtype != DType::kF16) {
    return invalid_argument("round_4bit_absmax: the compute dtype must be f16 or bf16, not " +
                            std::string(dtype_name(compute_dtype)));
  }
  if (weight.packed == nullptr || rounded == nullptr || in % weight.block_size != 0) {
    return invalid_argument(
        "round_4bit_absmax: the packed weight and the output are required, and in must be a "
        "multiple of the block size");
  }
  const FourBitCall call = make_4bit_call(stream, nullptr, {weight, nullptr, out, nullptr}, 0, in,
                                          compute_dtype, DType::kF32, cpu::FourBitDecode::kExact);
  const std::int64_t row_blocks = in / weight.block_size;
  const std::int64_t blocks = out * row_blocks;
  const unsigned grid = elementwise_blocks(blocks, kElementwiseThreads);
  if (grid == 0) return invalid_argument("round_4bit_absmax: too many blocks");
  const auto launch = [&](auto c) {
    round_absmax_kernel<decltype(c)><<<grid, kElementwiseThreads, 0, stream>>>(
        call.weight, call.tables, row_blocks, blocks, static_cast<std::uint16_t*>(rounded));
    return cudaGetLastError();
  };
  return cuda_status(compute_dtype == DType::kF16 ? launch(__half{}) : launch(__nv_bfloat16{}),
                     "round_4bit_absmax");
}

Status dequantize_4bit_weight(const FourBitWeightDevice& weight, std::int64_t out, std::int64_t in,
                              DType compute_dtype, void* weight_out, cudaStream_t stream) {
  KBIT_RETURN_IF_ERROR(
      check_4bit_call(nullptr, weight, 0, in, out, compute_dtype, nullptr, DType::kF32));
  if (weight.packed == nullptr || weight_out == nullptr || !is_aligned_16(weight_out)) {
    return invalid_argument(
        "dequantize_4bit_weight: the packed weight and a 16-byte aligned output are required");
  }
  const FourBitCall call = make_4bit_call(stream, nullptr, {weight, nullptr, out, nullptr}, 0, in,
                                          compute_dtype, DType::kF32, cpu::FourBitDecode::kExact);
  return cuda_status(dequantize_rows(call, 0, out, weight_out), "dequantize_4bit_weight");
}

}  // namespace kbit::kernels::cuda

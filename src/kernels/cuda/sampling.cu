// Token sampling on the GPU (contract: sampling_launchers.h) with the CPU Sampler's semantics
// (src/generate/sampler.cc), step by step:
//
//   1. prepare: repetition penalty and temperature, in place; each chunk's best (score, first id).
//      Greedy ends here: the best of the chunks' bests is the token (torch.argmax).
//   2. With top-k or top-p: a stable radix sort (cub) of (score, id), ascending. Ties keep id
//      order, as std::stable_sort does, and cub sorts -0 and +0 as equal, as the CPU's operator<
//      does. Top-k's threshold is then the score at sorted position vocab - k.
//   3. With top-p: each chunk's mass Σ exp(s - max) over sorted positions (0 where top-k removes),
//      then one block finds the first sorted position at which the cumulative mass / total
//      exceeds 1 - top_p: the cut, kept with everything after it. The last position is always
//      kept. As a (score, id) pair the cut turns into a test each token can make on its own.
//   4. apply: -inf for what top-k, the cut and min-p remove; each chunk's kept mass and last kept
//      id.
//   5. draw: one block finds the first kept id at which the cumulative mass exceeds
//      uniform · total.
//
// The vocabulary is cut into at most kMaxChunks chunks of consecutive ids (or sorted positions),
// one block of kThreads per chunk, so that one block of kMaxChunks threads holds every chunk's
// partial result at once. Each kernel that needs the max reduces the chunks' bests again (at
// most kMaxChunks values) rather than waiting for a kernel that would store it. Which kernels
// run, and their shapes, depend on the vocabulary size and the parameters, never on the data.
//
// Masses are doubles, as on the CPU, summed in another order (a tree per chunk, then across
// chunks) and with the device's exp, which may differ from the host's in the last bit: a choice
// can differ from the CPU's only where a threshold falls within rounding of a cumulative sum.
// Min-p keeps exp(s - max) >= min_p: the CPU's p / kept_total >= min_p · (1 / kept_total), the
// same condition up to that rounding, without the kept total.
#include <cuda_runtime_api.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <limits>
#include <type_traits>

#include "kernels/cuda/sampling_launchers.h"

namespace kbit::kernels::cuda {
namespace {

constexpr int kThreads = 256;             // a block that takes one chunk
constexpr int kMaxChunks = 1024;          // also the threads of a block that sees every chunk
constexpr std::int64_t kMinChunk = 1024;  // ids per chunk, at least
constexpr std::size_t kAlignment = 256;   // of each scratch array
constexpr float kRemoved = -std::numeric_limits<float>::infinity();

// A score and its id, the better of two being the larger score, then the smaller id.
struct ScoredId {
  float score;
  std::int32_t id;
};

// Every score but NaN beats it; the id marks it.
constexpr ScoredId kNoScore{kRemoved, INT32_MAX};

// b only where it is strictly better, so that a NaN score never wins.
struct BetterOf {
  __device__ ScoredId operator()(const ScoredId& a, const ScoredId& b) const {
    return b.score > a.score || (b.score == a.score && b.id < a.id) ? b : a;
  }
};

struct Larger {
  template <typename T>
  __device__ T operator()(const T& a, const T& b) const {
    return a > b ? a : b;
  }
};

// Top-p's first kept token in (score, id) order: tokens before it are removed.
struct CutPoint {
  float score;
  std::int32_t id;
};

// Removes nothing: no score is below -inf, no id below 0.
constexpr CutPoint kNoCut{kRemoved, 0};

struct Range {
  std::int64_t begin;
  std::int64_t end;
};

__device__ std::int64_t smaller(std::int64_t a, std::int64_t b) {
  return a < b ? a : b;
}

// Ids (or sorted positions) of chunk c.
__device__ Range chunk_range(std::int64_t c, std::int64_t chunk, std::int64_t n) {
  const std::int64_t begin = c * chunk;
  return {begin, begin + chunk < n ? begin + chunk : n};
}

// exp(s - max) as the CPU computes it: a float difference, a double exp.
__device__ double weight(float score, float max_score) {
  return exp(static_cast<double>(score - max_score));
}

// The weight after top-k, which removes scores below kth.
__device__ double top_k_weight(float score, float kth, float max_score) {
  return score < kth ? 0.0 : weight(score, max_score);
}

// Top-k's threshold: the score at sorted position vocab - k, or -inf (removes nothing).
__device__ float kth_score(const float* sorted_scores, std::int64_t kth_position) {
  return kth_position >= 0 ? sorted_scores[kth_position] : kRemoved;
}

// The largest score, from chunk_best [chunks]; every thread of the block gets it.
template <int kBlockThreads>
__device__ float largest_score(const ScoredId* chunk_best, int chunks) {
  using Reduce = cub::BlockReduce<float, kBlockThreads>;
  __shared__ typename Reduce::TempStorage storage;
  __shared__ float result;
  float best = kRemoved;
  for (int c = threadIdx.x; c < chunks; c += kBlockThreads) {
    best = Larger{}(best, chunk_best[c].score);
  }
  best = Reduce(storage).Reduce(best, Larger{});
  if (threadIdx.x == 0) result = best;
  __syncthreads();
  return result;
}

// The first index i with weight_of(i) > 0 at which the running sum of weights, in index order,
// exceeds its target (exceeds(cumulative, total), total = Σ chunk_mass), or -1 where none does.
// chunk_mass [chunks] holds Σ weight_of over each chunk. The running sum is that of the chunks
// before, then of the elements before within the chunk; where a chunk's sum exceeds the target
// but none of its elements' does (rounding), the chunk's last element of positive weight.
// One block of kMaxChunks threads, all of which must call it and all of which get the result.
template <typename WeightOf, typename Exceeds>
__device__ std::int64_t first_crossing(const double* chunk_mass, int chunks, std::int64_t chunk,
                                       std::int64_t n, WeightOf weight_of, Exceeds exceeds) {
  using Scan = cub::BlockScan<double, kMaxChunks>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int crossing_chunk;
  __shared__ double chunk_before;
  __shared__ unsigned long long crossing;           // ULLONG_MAX: none
  __shared__ unsigned long long last_positive_end;  // last positive index + 1; 0: none
  if (threadIdx.x == 0) {
    crossing_chunk = chunks;
    crossing = ULLONG_MAX;
    last_positive_end = 0;
  }
  const int own_chunk = static_cast<int>(threadIdx.x);
  const double own_mass = own_chunk < chunks ? chunk_mass[own_chunk] : 0.0;
  double before = 0.0;
  double total = 0.0;
  Scan(scan_storage).ExclusiveSum(own_mass, before, total);
  __syncthreads();
  if (own_mass > 0.0 && exceeds(before + own_mass, total)) atomicMin(&crossing_chunk, own_chunk);
  __syncthreads();
  const int c = crossing_chunk;
  if (c == chunks) return -1;
  if (own_chunk == c) chunk_before = before;
  __syncthreads();

  // Each thread takes a run of consecutive elements of the chunk, in order.
  const Range range = chunk_range(c, chunk, n);
  const std::int64_t run = (range.end - range.begin + kMaxChunks - 1) / kMaxChunks;
  const std::int64_t run_begin = smaller(range.begin + own_chunk * run, range.end);
  const std::int64_t run_end = smaller(run_begin + run, range.end);
  double run_mass = 0.0;
  for (std::int64_t i = run_begin; i < run_end; ++i) run_mass += weight_of(i);
  double run_before = 0.0;
  Scan(scan_storage).ExclusiveSum(run_mass, run_before);
  double cumulative = chunk_before + run_before;
  std::int64_t last_positive = -1;
  for (std::int64_t i = run_begin; i < run_end; ++i) {
    const double w = weight_of(i);
    if (!(w > 0.0)) continue;
    cumulative += w;
    last_positive = i;
    if (exceeds(cumulative, total)) {
      atomicMin(&crossing, static_cast<unsigned long long>(i));
      break;
    }
  }
  atomicMax(&last_positive_end, static_cast<unsigned long long>(last_positive + 1));
  __syncthreads();
  if (crossing != ULLONG_MAX) return static_cast<std::int64_t>(crossing);
  return static_cast<std::int64_t>(last_positive_end) - 1;
}

// logits [n], in place: the penalty on ids marked in seen [n] (null: none), then the division by
// `divisor` (the temperature; 1: none). chunk_best [chunks]: each chunk's best score and first id
// with it. ids [n] (null: not written): 0, 1, ..., the values the sort carries.
__global__ void __launch_bounds__(kThreads)
    prepare_kernel(float* __restrict__ logits, std::int64_t n, std::int64_t chunk,
                   const std::uint8_t* __restrict__ seen, float penalty, float divisor,
                   std::int32_t* __restrict__ ids, ScoredId* __restrict__ chunk_best) {
  const Range range = chunk_range(blockIdx.x, chunk, n);
  ScoredId best = kNoScore;
  for (std::int64_t i = range.begin + threadIdx.x; i < range.end; i += kThreads) {
    float score = logits[i];
    if (seen != nullptr && seen[i] != 0) score = score < 0 ? score * penalty : score / penalty;
    if (divisor != 1.0f) score /= divisor;
    if (seen != nullptr || divisor != 1.0f) logits[i] = score;
    if (ids != nullptr) ids[i] = static_cast<std::int32_t>(i);
    best = BetterOf{}(best, ScoredId{score, static_cast<std::int32_t>(i)});
  }
  using Reduce = cub::BlockReduce<ScoredId, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  best = Reduce(storage).Reduce(best, BetterOf{});
  if (threadIdx.x == 0) chunk_best[blockIdx.x] = best;
}

// token = the best of chunk_best [chunks]: the first id with the largest score.
__global__ void __launch_bounds__(kMaxChunks)
    argmax_kernel(const ScoredId* __restrict__ chunk_best, int chunks,
                  std::int32_t* __restrict__ token) {
  using Reduce = cub::BlockReduce<ScoredId, kMaxChunks>;
  __shared__ typename Reduce::TempStorage storage;
  const ScoredId own = threadIdx.x < chunks ? chunk_best[threadIdx.x] : kNoScore;
  const ScoredId best = Reduce(storage).Reduce(own, BetterOf{});
  // Only NaN scores leave kNoScore; the CPU's argmax then gives 0 as well.
  if (threadIdx.x == 0) *token = best.id == kNoScore.id ? 0 : best.id;
}

// chunk_mass [chunks]: Σ top_k_weight over the chunk's positions of sorted_scores [n].
__global__ void __launch_bounds__(kThreads)
    sorted_mass_kernel(const float* __restrict__ sorted_scores, std::int64_t n, std::int64_t chunk,
                       const ScoredId* __restrict__ chunk_best, int chunks,
                       std::int64_t kth_position, double* __restrict__ chunk_mass) {
  const float largest = largest_score<kThreads>(chunk_best, chunks);
  const float kth = kth_score(sorted_scores, kth_position);
  const Range range = chunk_range(blockIdx.x, chunk, n);
  double mass = 0.0;
  for (std::int64_t i = range.begin + threadIdx.x; i < range.end; i += kThreads) {
    mass += top_k_weight(sorted_scores[i], kth, largest);
  }
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  mass = Reduce(storage).Sum(mass);
  if (threadIdx.x == 0) chunk_mass[blockIdx.x] = mass;
}

// cut = (score, id) at the first sorted position whose cumulative mass / total exceeds
// `threshold` (1 - top_p), or at the last position, which the CPU never removes.
// sorted_scores, sorted_ids [n]; chunk_mass [chunks] from sorted_mass_kernel.
__global__ void __launch_bounds__(kMaxChunks)
    top_p_cut_kernel(const float* __restrict__ sorted_scores,
                     const std::int32_t* __restrict__ sorted_ids, std::int64_t n,
                     std::int64_t chunk, const ScoredId* __restrict__ chunk_best,
                     const double* __restrict__ chunk_mass, int chunks, std::int64_t kth_position,
                     double threshold, CutPoint* __restrict__ cut) {
  const float largest = largest_score<kMaxChunks>(chunk_best, chunks);
  const float kth = kth_score(sorted_scores, kth_position);
  const std::int64_t found = first_crossing(
      chunk_mass, chunks, chunk, n,
      [&](std::int64_t i) { return top_k_weight(sorted_scores[i], kth, largest); },
      [&](double cumulative, double total) { return cumulative / total > threshold; });
  const std::int64_t position = found >= 0 && found < n - 1 ? found : n - 1;
  if (threadIdx.x == 0) *cut = CutPoint{sorted_scores[position], sorted_ids[position]};
}

// logits [n], in place: -inf for scores below kth, before `cut` in (score, id) order (null: no
// cut), or with exp(s - max) < min_p. chunk_mass [chunks]: Σ exp(s - max) over the chunk's kept
// tokens; chunk_last [chunks]: its last kept id, -1 if none.
__global__ void __launch_bounds__(kThreads)
    apply_kernel(float* __restrict__ logits, std::int64_t n, std::int64_t chunk,
                 const ScoredId* __restrict__ chunk_best, int chunks,
                 const float* __restrict__ sorted_scores, std::int64_t kth_position,
                 const CutPoint* __restrict__ cut, float min_p, double* __restrict__ chunk_mass,
                 std::int64_t* __restrict__ chunk_last) {
  const float largest = largest_score<kThreads>(chunk_best, chunks);
  const float kth = kth_score(sorted_scores, kth_position);
  const CutPoint top_p_cut = cut != nullptr ? *cut : kNoCut;
  const Range range = chunk_range(blockIdx.x, chunk, n);
  double mass = 0.0;
  std::int64_t last = -1;
  for (std::int64_t i = range.begin + threadIdx.x; i < range.end; i += kThreads) {
    const float score = logits[i];
    const double w = weight(score, largest);
    const bool before_cut =
        score < top_p_cut.score || (score == top_p_cut.score && i < top_p_cut.id);
    if (score < kth || before_cut || w < min_p) {
      logits[i] = kRemoved;
    } else if (score != kRemoved) {
      mass += w;
      last = i;
    }
  }
  using MassReduce = cub::BlockReduce<double, kThreads>;
  using LastReduce = cub::BlockReduce<std::int64_t, kThreads>;
  __shared__ typename MassReduce::TempStorage mass_storage;
  __shared__ typename LastReduce::TempStorage last_storage;
  mass = MassReduce(mass_storage).Sum(mass);
  last = LastReduce(last_storage).Reduce(last, Larger{});
  if (threadIdx.x == 0) {
    chunk_mass[blockIdx.x] = mass;
    chunk_last[blockIdx.x] = last;
  }
}

// token = the first kept id of logits [n] (processed) at which the cumulative exp(s - max)
// exceeds uniform · total; where rounding leaves none, the last kept id (0 if none is kept).
// chunk_mass, chunk_last [chunks] from apply_kernel.
__global__ void __launch_bounds__(kMaxChunks)
    draw_kernel(const float* __restrict__ logits, std::int64_t n, std::int64_t chunk,
                const ScoredId* __restrict__ chunk_best, const double* __restrict__ chunk_mass,
                const std::int64_t* __restrict__ chunk_last, int chunks, double uniform,
                std::int32_t* __restrict__ token) {
  const float largest = largest_score<kMaxChunks>(chunk_best, chunks);
  using LastReduce = cub::BlockReduce<std::int64_t, kMaxChunks>;
  __shared__ typename LastReduce::TempStorage last_storage;
  const std::int64_t own_last = threadIdx.x < chunks ? chunk_last[threadIdx.x] : -1;
  const std::int64_t last_kept = LastReduce(last_storage).Reduce(own_last, Larger{});
  const std::int64_t found = first_crossing(
      chunk_mass, chunks, chunk, n,
      [&](std::int64_t i) {
        const float score = logits[i];
        return score == kRemoved ? 0.0 : weight(score, largest);
      },
      [&](double cumulative, double total) { return cumulative > uniform * total; });
  if (threadIdx.x == 0) {
    const std::int64_t chosen = found >= 0 ? found : (last_kept >= 0 ? last_kept : 0);
    *token = static_cast<std::int32_t>(chosen);
  }
}

// seen [..]: seen[tokens[i]] = 1 for tokens [count].
__global__ void mark_seen_kernel(std::uint8_t* __restrict__ seen,
                                 const std::int32_t* __restrict__ tokens, std::int64_t count) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) seen[tokens[i]] = 1;
}

// ---- Host side.

bool valid_vocab(std::int64_t vocab) {
  return vocab > 0 && vocab <= INT32_MAX;
}

// Ids per chunk: enough that there are at most kMaxChunks chunks.
std::int64_t chunk_size(std::int64_t vocab) {
  const std::int64_t spread = (vocab + kMaxChunks - 1) / kMaxChunks;
  return spread > kMinChunk ? spread : kMinChunk;
}

int chunk_count(std::int64_t vocab) {
  const std::int64_t chunk = chunk_size(vocab);
  return static_cast<int>((vocab + chunk - 1) / chunk);
}

// The scratch arrays, all inside the caller's workspace.
struct Workspace {
  ScoredId* chunk_best;        // [chunks]
  double* chunk_mass;          // [chunks]
  std::int64_t* chunk_last;    // [chunks]
  CutPoint* cut;               // [1]
  std::int32_t* ids;           // [vocab]: 0, 1, ...
  float* sorted_scores;        // [vocab]
  std::int32_t* sorted_ids;    // [vocab]
  std::uint8_t* sort_storage;  // [sort_bytes]: cub's
  std::size_t sort_bytes;
};

// Places the arrays for `vocab` in the workspace at `base` (which need not be aligned; null to
// size it only) and sets *bytes to the size the workspace needs.
cudaError_t lay_out_workspace(void* base, std::int64_t vocab, Workspace* workspace,
                              std::size_t* bytes) {
  std::size_t sort_bytes = 0;
  const cudaError_t error = cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, static_cast<const float*>(nullptr), static_cast<float*>(nullptr),
      static_cast<const std::int32_t*>(nullptr), static_cast<std::int32_t*>(nullptr),
      static_cast<int>(vocab));
  if (error != cudaSuccess) return error;
  const std::uintptr_t start =
      (reinterpret_cast<std::uintptr_t>(base) + kAlignment - 1) / kAlignment * kAlignment;
  std::size_t offset = 0;
  auto place = [&](auto*& array, std::size_t count) {
    using T = std::remove_reference_t<decltype(*array)>;
    array = reinterpret_cast<T*>(start + offset);
    offset += (count * sizeof(T) + kAlignment - 1) / kAlignment * kAlignment;
  };
  const auto chunks = static_cast<std::size_t>(chunk_count(vocab));
  const auto n = static_cast<std::size_t>(vocab);
  place(workspace->chunk_best, chunks);
  place(workspace->chunk_mass, chunks);
  place(workspace->chunk_last, chunks);
  place(workspace->cut, 1);
  place(workspace->ids, n);
  place(workspace->sorted_scores, n);
  place(workspace->sorted_ids, n);
  place(workspace->sort_storage, sort_bytes);
  workspace->sort_bytes = sort_bytes;
  *bytes = offset + kAlignment - 1;  // room to align an unaligned base
  return cudaSuccess;
}

bool valid_params(const DeviceSamplingParams& params) {
  const float inf = std::numeric_limits<float>::infinity();
  return params.temperature >= 0.0f && params.temperature < inf && params.top_k >= 0 &&
         params.top_p > 0.0f && params.top_p <= 1.0f && params.min_p >= 0.0f &&
         params.min_p <= 1.0f && params.repetition_penalty > 0.0f &&
         params.repetition_penalty < inf;
}

// Which of the filters run, from the parameters alone (as the CPU decides).
struct Filters {
  std::int64_t kth_position;  // vocab - top_k, or -1 without top-k
  bool top_p;
  float min_p;  // 0: none
  bool sort() const { return kth_position >= 0 || top_p; }
};

Filters filters_for(const DeviceSamplingParams& params, std::int64_t vocab) {
  const bool top_k = params.top_k > 0 && params.top_k < vocab;
  return {top_k ? vocab - params.top_k : -1, params.top_p < 1.0f, params.min_p};
}

// Steps 2 to 5 of the file comment, after prepare_kernel.
cudaError_t filter_and_draw(float* logits, std::int64_t vocab, const Filters& filters, float top_p,
                            double uniform, const Workspace& workspace, std::int32_t* token,
                            cudaStream_t stream) {
  const std::int64_t chunk = chunk_size(vocab);
  const int chunks = chunk_count(vocab);
  cudaError_t error = cudaSuccess;
  if (filters.sort()) {
    std::size_t sort_bytes = workspace.sort_bytes;
    error = cub::DeviceRadixSort::SortPairs(
        workspace.sort_storage, sort_bytes, static_cast<const float*>(logits),
        workspace.sorted_scores, static_cast<const std::int32_t*>(workspace.ids),
        workspace.sorted_ids, static_cast<int>(vocab), 0, 32, stream);
    if (error != cudaSuccess) return error;
  }
  if (filters.top_p) {
    sorted_mass_kernel<<<chunks, kThreads, 0, stream>>>(workspace.sorted_scores, vocab, chunk,
                                                        workspace.chunk_best, chunks,
                                                        filters.kth_position, workspace.chunk_mass);
    if ((error = cudaGetLastError()) != cudaSuccess) return error;
    // The CPU compares its cumulative probability with 1.0 - top_p, in double.
    top_p_cut_kernel<<<1, kMaxChunks, 0, stream>>>(
        workspace.sorted_scores, workspace.sorted_ids, vocab, chunk, workspace.chunk_best,
        workspace.chunk_mass, chunks, filters.kth_position, 1.0 - static_cast<double>(top_p),
        workspace.cut);
    if ((error = cudaGetLastError()) != cudaSuccess) return error;
  }
  apply_kernel<<<chunks, kThreads, 0, stream>>>(
      logits, vocab, chunk, workspace.chunk_best, chunks, workspace.sorted_scores,
      filters.kth_position, filters.top_p ? workspace.cut : nullptr, filters.min_p,
      workspace.chunk_mass, workspace.chunk_last);
  if ((error = cudaGetLastError()) != cudaSuccess) return error;
  draw_kernel<<<1, kMaxChunks, 0, stream>>>(logits, vocab, chunk, workspace.chunk_best,
                                            workspace.chunk_mass, workspace.chunk_last, chunks,
                                            uniform, token);
  return cudaGetLastError();
}

}  // namespace

std::size_t sampling_workspace_bytes(std::int64_t vocab) {
  if (!valid_vocab(vocab)) return 0;
  Workspace workspace{};
  std::size_t bytes = 0;
  return lay_out_workspace(nullptr, vocab, &workspace, &bytes) == cudaSuccess ? bytes : 0;
}

cudaError_t sample_token(float* logits, std::int64_t vocab, const std::uint8_t* seen,
                         const DeviceSamplingParams& params, double uniform, void* workspace,
                         std::int32_t* token, cudaStream_t stream) {
  const bool greedy = params.temperature == 0.0f;
  const bool penalty = params.repetition_penalty != 1.0f;
  if (logits == nullptr || token == nullptr || workspace == nullptr || !valid_vocab(vocab) ||
      !valid_params(params) || (penalty && seen == nullptr) ||
      (!greedy && !(uniform >= 0.0 && uniform < 1.0))) {
    return cudaErrorInvalidValue;
  }
  Workspace scratch{};
  std::size_t bytes = 0;
  cudaError_t error = lay_out_workspace(workspace, vocab, &scratch, &bytes);
  if (error != cudaSuccess) return error;
  const Filters filters = filters_for(params, vocab);
  const bool sort = !greedy && filters.sort();
  prepare_kernel<<<chunk_count(vocab), kThreads, 0, stream>>>(
      logits, vocab, chunk_size(vocab), penalty ? seen : nullptr, params.repetition_penalty,
      greedy ? 1.0f : params.temperature, sort ? scratch.ids : nullptr, scratch.chunk_best);
  if ((error = cudaGetLastError()) != cudaSuccess) return error;
  if (greedy) {
    argmax_kernel<<<1, kMaxChunks, 0, stream>>>(scratch.chunk_best, chunk_count(vocab), token);
    return cudaGetLastError();
  }
  return filter_and_draw(logits, vocab, filters, params.top_p, uniform, scratch, token, stream);
}

cudaError_t mark_seen(std::uint8_t* seen, const std::int32_t* tokens, std::int64_t count,
                      cudaStream_t stream) {
  if (count < 0 || (count > 0 && (seen == nullptr || tokens == nullptr))) {
    return cudaErrorInvalidValue;
  }
  if (count == 0) return cudaSuccess;
  constexpr int kMarkThreads = 256;
  const std::int64_t blocks = (count + kMarkThreads - 1) / kMarkThreads;
  mark_seen_kernel<<<static_cast<unsigned>(blocks), kMarkThreads, 0, stream>>>(seen, tokens, count);
  return cudaGetLastError();
}

}  // namespace kbit::kernels::cuda

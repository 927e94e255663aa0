// GPU tests of attention_backward (llama_backward_launchers.h) against
// attention_backward_reference (kernels/cpu/llama_backward.h), in f32 and bf16 activations, on
// fresh random data.
//
// Both sides get the same values: q, k, v and d_out drawn in f32 and rounded to the activation
// dtype, and out, the true forward output, from attention_reference in f32 on those values,
// rounded to the dtype. The reference runs per sequence on f32 copies. Every device output and
// the workspace are poisoned (0xAB bytes) before each launch, so an element left unwritten, or a
// statistic read before it is written, fails the comparison.
//
// Tolerances are derived per element from the sizes of the terms each result sums (see
// gradient_magnitudes and gradient_bounds): both sides compute in f32, in different orders,
// and the GPU takes delta from d_out · out where the reference sums P · dP; in bf16 at head_dim
// 64 and 128 the GPU's tensor-core path also rounds P and dS to bf16 before multiplying.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "kbit/core/dtype.h"
#include "kernels/cpu/llama_backward.h"
#include "kernels/cpu/llama_ops.h"
#include "kernels/cuda/cuda_kernel_test_support.h"
#include "kernels/cuda/llama_backward_launchers.h"
#include "testing/shared_data.h"

namespace kbit::kernels {
namespace {

using namespace cuda_test;  // NOLINT: the shared helpers of cuda_kernel_test_support.h

struct BackwardCase {
  std::int64_t tokens;
  std::int64_t sequences;
  std::int64_t heads;
  std::int64_t kv_heads;
  std::int64_t head_dim;

  std::int64_t length() const { return tokens / sequences; }
  float scale() const { return 1.0f / std::sqrt(static_cast<float>(head_dim)); }
  std::int64_t q_size() const { return tokens * heads * head_dim; }
  std::int64_t kv_size() const { return tokens * kv_heads * head_dim; }
  std::string describe(DType dtype) const {
    std::ostringstream text;
    text << dtype_label(dtype) << ", tokens " << tokens << " in " << sequences << " sequences"
         << ", heads " << heads << "/" << kv_heads << ", head_dim " << head_dim;
    return text.str();
  }
};

// q, d_out and out [tokens, heads, head_dim]; k and v [tokens, kv_heads, head_dim]; every
// value representable in the test's dtype.
struct BackwardData {
  std::vector<float> q;
  std::vector<float> k;
  std::vector<float> v;
  std::vector<float> d_out;
  std::vector<float> out;
};

struct Gradients {
  std::vector<float> dq;
  std::vector<float> dk;
  std::vector<float> dv;
};

std::size_t at(std::int64_t index) {
  return static_cast<std::size_t>(index);
}

// The forward output of each sequence, attention_reference in f32 from position 0 (its k and v
// are the caches), rounded to dtype.
std::vector<float> forward_output(const BackwardCase& c, const BackwardData& data, DType dtype) {
  std::vector<float> out(at(c.q_size()));
  const std::int64_t q_rows = c.length() * c.heads * c.head_dim;
  const std::int64_t kv_rows = c.length() * c.kv_heads * c.head_dim;
  for (std::int64_t s = 0; s < c.sequences; ++s) {
    cpu::AttentionJob job;
    job.q = data.q.data() + s * q_rows;
    job.k_cache = data.k.data() + s * kv_rows;
    job.v_cache = data.v.data() + s * kv_rows;
    job.tokens = c.length();
    job.heads = c.heads;
    job.kv_heads = c.kv_heads;
    job.head_dim = c.head_dim;
    job.first_position = 0;
    job.window = 0;
    job.scale = c.scale();
    job.out = out.data() + s * q_rows;
    cpu::attention_reference(job, 0, c.length() * c.heads);
  }
  for (float& value : out) value = representable(value, dtype);
  return out;
}

BackwardData random_backward_data(const BackwardCase& c, DType dtype, std::uint64_t seed) {
  BackwardData data{random_values(c.q_size(), seed, dtype),
                    random_values(c.kv_size(), seed + 1, dtype),
                    random_values(c.kv_size(), seed + 2, dtype),
                    random_values(c.q_size(), seed + 3, dtype),
                    {}};
  data.out = forward_output(c, data, dtype);
  return data;
}

// attention_backward_reference of each sequence.
Gradients cpu_gradients(const BackwardCase& c, const BackwardData& data) {
  Gradients expected{std::vector<float>(at(c.q_size())), std::vector<float>(at(c.kv_size())),
                     std::vector<float>(at(c.kv_size()))};
  const std::int64_t q_rows = c.length() * c.heads * c.head_dim;
  const std::int64_t kv_rows = c.length() * c.kv_heads * c.head_dim;
  for (std::int64_t s = 0; s < c.sequences; ++s) {
    cpu::AttentionBackwardJob job;
    job.q = data.q.data() + s * q_rows;
    job.k = data.k.data() + s * kv_rows;
    job.v = data.v.data() + s * kv_rows;
    job.d_out = data.d_out.data() + s * q_rows;
    job.tokens = c.length();
    job.heads = c.heads;
    job.kv_heads = c.kv_heads;
    job.head_dim = c.head_dim;
    job.scale = c.scale();
    job.dq = expected.dq.data() + s * q_rows;
    job.dk = expected.dk.data() + s * kv_rows;
    job.dv = expected.dv.data() + s * kv_rows;
    cpu::attention_backward_reference(job);
  }
  return expected;
}

// The sizes the bounds scale with, per element of dq, dk and dv, in double from the exact
// softmax. For query t and key j: P exactly; alpha = 1 + scale·Σ|q·k| + |L|, the size of exp's
// argument (its rounding errors are absolute, so P's are relative to P and alpha times larger);
// b = Σ|d_out·v|, the size of dP's terms. Then
//   dq, dk, dv:      Σ over each result's terms of |term| · (the size its rounding errors scale
//                    with): P·alpha·|d_out| for dv; g·|q| for dk and g·|k| for dq with
//                    g = scale·P·(alpha·|dP − delta| + b + e), e = Σ_j P·alpha·b the size of
//                    delta's errors (the GPU's d_out·out carries out's, the reference's P·dP its
//                    P's and dP's);
//   dq_out, dk_out:  the same for out's rounding to bf16, which moves delta by at most
//                    2^-8·Σ|d_out|·|out|: scale·P·Σ|d_out|·|out| · |q| for dk, · |k| for dq;
//   dq_mma, dk_mma,  Σ|term| of each result, the size of the tensor-core path's rounding of P
//   dv_mma:          (in dv's terms P·d_out) and dS = scale·P·(dP − delta) (in dk's dS·q and
//                    dq's dS·k) to bf16.
struct Magnitudes {
  std::vector<double> dq;
  std::vector<double> dk;
  std::vector<double> dv;
  std::vector<double> dq_out;
  std::vector<double> dk_out;
  std::vector<double> dq_mma;
  std::vector<double> dk_mma;
  std::vector<double> dv_mma;
};

// One query's exact softmax over its keys and the sizes of its terms (see Magnitudes).
struct QueryTerms {
  std::vector<double> p;
  std::vector<double> alpha;
  std::vector<double> dp;
  std::vector<double> b;
  double delta = 0.0;
  double delta_error = 0.0;  // e
  double out_size = 0.0;     // Σ|d_out|·|out|
};

// q, d_out and out [head_dim] of the query; key and value j at k + j · kv_stride and
// v + j · kv_stride, j < keys.
QueryTerms query_terms(const float* q, const float* d_out, const float* out, const float* k,
                       const float* v, std::int64_t kv_stride, std::int64_t keys,
                       std::int64_t head_dim, double scale) {
  QueryTerms terms;
  const auto count = at(keys);
  terms.p.assign(count, 0.0);  // the scaled scores until the softmax below
  terms.alpha.assign(count, 1.0);
  terms.dp.assign(count, 0.0);
  terms.b.assign(count, 0.0);
  double max_score = -std::numeric_limits<double>::infinity();
  for (std::size_t j = 0; j < count; ++j) {
    const float* key = k + static_cast<std::int64_t>(j) * kv_stride;
    const float* value = v + static_cast<std::int64_t>(j) * kv_stride;
    for (std::int64_t i = 0; i < head_dim; ++i) {
      const double qk = static_cast<double>(q[i]) * key[i];
      const double gv = static_cast<double>(d_out[i]) * value[i];
      terms.p[j] += scale * qk;
      terms.alpha[j] += scale * std::fabs(qk);
      terms.dp[j] += gv;
      terms.b[j] += std::fabs(gv);
    }
    max_score = std::max(max_score, terms.p[j]);
  }
  double total = 0.0;
  for (double score : terms.p) total += std::exp(score - max_score);
  const double lse = max_score + std::log(total);
  for (std::size_t j = 0; j < count; ++j) {
    terms.p[j] = std::exp(terms.p[j] - lse);
    terms.alpha[j] += std::fabs(lse);
    terms.delta += terms.p[j] * terms.dp[j];
    terms.delta_error += terms.p[j] * terms.alpha[j] * terms.b[j];
  }
  for (std::int64_t i = 0; i < head_dim; ++i) {
    terms.out_size += std::fabs(d_out[i]) * std::fabs(out[i]);
  }
  return terms;
}

Magnitudes gradient_magnitudes(const BackwardCase& c, const BackwardData& data) {
  const std::int64_t d = c.head_dim;
  const std::int64_t group = c.heads / c.kv_heads;
  const std::int64_t kv_stride = c.kv_heads * d;
  const double scale = c.scale();
  Magnitudes m{std::vector<double>(at(c.q_size())),  std::vector<double>(at(c.kv_size())),
               std::vector<double>(at(c.kv_size())), std::vector<double>(at(c.q_size())),
               std::vector<double>(at(c.kv_size())), std::vector<double>(at(c.q_size())),
               std::vector<double>(at(c.kv_size())), std::vector<double>(at(c.kv_size()))};
  for (std::int64_t s = 0; s < c.sequences; ++s) {
    for (std::int64_t t = 0; t < c.length(); ++t) {
      for (std::int64_t h = 0; h < c.heads; ++h) {
        const std::int64_t query = ((s * c.length() + t) * c.heads + h) * d;
        const std::int64_t first_key = (s * c.length() * c.kv_heads + h / group) * d;
        const QueryTerms terms = query_terms(data.q.data() + query, data.d_out.data() + query,
                                             data.out.data() + query, data.k.data() + first_key,
                                             data.v.data() + first_key, kv_stride, t + 1, d, scale);
        for (std::int64_t j = 0; j <= t; ++j) {
          const std::size_t k = at(j);
          const double p = terms.p[k];
          const double g = scale * p *
                           (terms.alpha[k] * std::fabs(terms.dp[k] - terms.delta) + terms.b[k] +
                            terms.delta_error);
          const double g_out = scale * p * terms.out_size;
          const double ds = scale * p * std::fabs(terms.dp[k] - terms.delta);
          for (std::int64_t i = 0; i < d; ++i) {
            const std::size_t qi = at(query + i);
            const std::size_t ki = at(first_key + j * kv_stride + i);
            m.dv[ki] += p * terms.alpha[k] * std::fabs(data.d_out[qi]);
            m.dk[ki] += g * std::fabs(data.q[qi]);
            m.dk_out[ki] += g_out * std::fabs(data.q[qi]);
            m.dq[qi] += g * std::fabs(data.k[ki]);
            m.dq_out[qi] += g_out * std::fabs(data.k[ki]);
            m.dv_mma[ki] += p * std::fabs(data.d_out[qi]);
            m.dk_mma[ki] += ds * std::fabs(data.q[qi]);
            m.dq_mma[qi] += ds * std::fabs(data.k[ki]);
          }
        }
      }
    }
  }
  return m;
}

// bound = 2^-20 · rounding (a Magnitudes' dq, dk or dv), plus in bf16 2^-8 · out_rounding
// (dq_out or dk_out), 2^-8 · mma_rounding (dq_mma, dk_mma or dv_mma) and the store's rounding.
//
// 2^-20 is 16·u, u = 2^-24 the relative rounding of one f32 operation. In `rounding` each term
// carries the size of its own errors in units of u: P's through alpha (the dot product's rounding,
// about u·scale·Σ|q·k|; L's, u·|L|; exp's), dS's through alpha·|dP − delta|, b and e. The sums'
// terms have random signs, so their partial sums stay near sqrt(k) terms and their roundings walk
// randomly to about u·Σ|terms|, not to the worst case n·u·Σ|terms|; the softmax's sum of positive
// terms moves L by about sqrt(n / 3)·u, 10·u at n = 300, which the margin takes. A host emulation
// of the kernels' order of operations stays within 1.2·u·rounding on these cases; 16·u leaves a
// margin for the GPU's expf and logf (within 2 and 1 ulps, glibc's within 1).
//
// The tensor-core path accumulates its products in f32 too (bf16 products are exact in f32); its
// adder may truncate rather than round, a few u more per dot product, which the margin takes.
//
// bf16: out is rounded to bf16 (by at most 2^-8 relative), which moves the GPU's delta and not
// the reference's; the tensor-core path (head_dim 64 and 128) rounds each P and dS to bf16
// before its products, so each term P·d_out, dS·q or dS·k gains at most 2^-8 of its size, at most
// 2^-8 · mma_rounding in all (the CUDA-core path keeps them in f32 and is only held to a looser
// bound); the GPU's f32 result x is rounded on store, by at most
// 2^-8·|x| <= 2^-8·(|expected| + the f32 bound).
std::vector<float> gradient_bounds(const std::vector<float>& expected,
                                   const std::vector<double>& rounding,
                                   const std::vector<double>* out_rounding,
                                   const std::vector<double>& mma_rounding, DType dtype) {
  std::vector<float> bound(expected.size());
  for (std::size_t i = 0; i < bound.size(); ++i) {
    double error = std::ldexp(rounding[i], -20);
    if (dtype == DType::kBF16) {
      if (out_rounding != nullptr) error += std::ldexp((*out_rounding)[i], -8);
      error += std::ldexp(mma_rounding[i], -8);
      error += std::ldexp(std::fabs(expected[i]) + error, -8);
    }
    bound[i] = static_cast<float>(error);
  }
  return bound;
}

// attention_backward on the device: inputs uploaded once, outputs and workspace poisoned before
// every run.
class GpuAttentionBackward {
 public:
  GpuAttentionBackward(const BackwardCase& c, const BackwardData& data, DType dtype)
      : case_(c),
        dtype_(dtype),
        q_(data.q, dtype),
        k_(data.k, dtype),
        v_(data.v, dtype),
        d_out_(data.d_out, dtype),
        out_(data.out, dtype),
        dq_(c.q_size(), dtype),
        dk_(c.kv_size(), dtype),
        dv_(c.kv_size(), dtype),
        workspace_(static_cast<std::int64_t>(
                       cuda::attention_backward_workspace_floats(c.tokens, c.heads, c.head_dim)),
                   DType::kF32) {}

  Gradients run() const {
    dq_.poison();
    dk_.poison();
    dv_.poison();
    workspace_.poison();
    finish(cuda::attention_backward(make_job(), nullptr));
    return {dq_.to_floats(), dk_.to_floats(), dv_.to_floats()};
  }

 private:
  cuda::AttentionBackwardJob make_job() const {
    cuda::AttentionBackwardJob job;
    job.q = q_.data();
    job.k = k_.data();
    job.v = v_.data();
    job.out = out_.data();
    job.d_out = d_out_.data();
    job.tokens = case_.tokens;
    job.heads = case_.heads;
    job.kv_heads = case_.kv_heads;
    job.head_dim = case_.head_dim;
    job.scale = case_.scale();
    job.dq = dq_.data();
    job.dk = dk_.data();
    job.dv = dv_.data();
    job.dtype = dtype_;
    job.workspace = workspace_.as<float>();
    job.sequences = case_.sequences;
    return job;
  }

  BackwardCase case_;
  DType dtype_;
  DeviceArray q_;
  DeviceArray k_;
  DeviceArray v_;
  DeviceArray d_out_;
  DeviceArray out_;
  DeviceArray dq_;
  DeviceArray dk_;
  DeviceArray dv_;
  DeviceArray workspace_;
};

TEST(CudaAttentionBackward, MatchesReference) {
  KBIT_REQUIRE_CUDA();
  // {tokens, sequences, heads, kv_heads, head_dim}: one token; tiles of 32 (CUDA cores) and 64
  // (tensor cores) partial (37, 130, 300, 600, sequences of 100, 37 and 300 whose tiles start
  // off the array's multiples of 32 and 64) and full (3 sequences of 32, 2 of 128); GQA groups
  // 1, 4 and 8; head_dim 8 (fewer dimensions than lanes), 64 and 128 (in bf16 on the tensor
  // cores), 80 (not a multiple of 32) and 256 (beyond 48 KiB of shared memory) on the CUDA cores.
  const BackwardCase cases[] = {{1, 1, 4, 4, 64},    {37, 1, 8, 2, 80},   {130, 1, 8, 1, 128},
                                {300, 3, 8, 2, 64},  {300, 1, 4, 4, 128}, {111, 3, 4, 1, 256},
                                {96, 3, 16, 2, 128}, {45, 1, 2, 1, 8},    {37, 1, 4, 1, 64},
                                {600, 2, 8, 2, 128}, {256, 2, 8, 1, 64},  {600, 1, 4, 1, 128}};
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    std::uint64_t seed = dtype == DType::kF32 ? 100 : 200;
    for (const BackwardCase& c : cases) {
      const std::string what = c.describe(dtype);
      const BackwardData data = random_backward_data(c, dtype, seed);
      seed += 4;
      const Gradients actual = GpuAttentionBackward(c, data, dtype).run();
      const Gradients expected = cpu_gradients(c, data);
      const Magnitudes m = gradient_magnitudes(c, data);
      expect_close(expected.dq, actual.dq,
                   gradient_bounds(expected.dq, m.dq, &m.dq_out, m.dq_mma, dtype), 1.0,
                   what + ": dq");
      expect_close(expected.dk, actual.dk,
                   gradient_bounds(expected.dk, m.dk, &m.dk_out, m.dk_mma, dtype), 1.0,
                   what + ": dk");
      expect_close(expected.dv, actual.dv,
                   gradient_bounds(expected.dv, m.dv, nullptr, m.dv_mma, dtype), 1.0,
                   what + ": dv");
    }
  }
}

// Every sum in a fixed order, no atomics: two runs give the same bits.
TEST(CudaAttentionBackward, IsDeterministic) {
  KBIT_REQUIRE_CUDA();
  const BackwardCase c{512, 2, 8, 2, 128};
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const std::string what = c.describe(dtype);
    const GpuAttentionBackward gpu(c, random_backward_data(c, dtype, 300), dtype);
    const Gradients first = gpu.run();
    const Gradients second = gpu.run();
    expect_same_bits(first.dq, second.dq, what + ": dq");
    expect_same_bits(first.dk, second.dk, what + ": dk");
    expect_same_bits(first.dv, second.dv, what + ": dv");
  }
}

TEST(CudaAttentionBackward, RejectsUnsupportedArguments) {
  KBIT_REQUIRE_CUDA();
  // Arrays large enough for every shape below, so that a launch that should have been refused
  // would still only write into them.
  const std::int64_t size = 8 * 8 * 264;
  const DeviceArray input(random_values(size, 400, DType::kBF16), DType::kBF16);
  const DeviceArray dq(size, DType::kBF16);
  const DeviceArray dk(size, DType::kBF16);
  const DeviceArray dv(size, DType::kBF16);
  const DeviceArray workspace(2 * 8 * 8, DType::kF32);
  cuda::AttentionBackwardJob valid;
  valid.q = valid.k = valid.v = valid.out = valid.d_out = input.data();
  valid.tokens = 8;
  valid.heads = 4;
  valid.kv_heads = 2;
  valid.head_dim = 64;
  valid.scale = 0.125f;
  valid.dq = dq.data();
  valid.dk = dk.data();
  valid.dv = dv.data();
  valid.dtype = DType::kBF16;
  valid.workspace = workspace.as<float>();
  valid.sequences = 2;

  const auto expect_refused = [&](const std::string& what, auto change) {
    cuda::AttentionBackwardJob job = valid;
    change(job);
    EXPECT_EQ(cuda::attention_backward(job, nullptr), cudaErrorInvalidValue) << what;
  };
  expect_refused("head_dim 0", [](auto& job) { job.head_dim = 0; });
  expect_refused("head_dim 12, not a multiple of 8", [](auto& job) { job.head_dim = 12; });
  expect_refused("head_dim 264", [](auto& job) { job.head_dim = 264; });
  expect_refused("kv_heads 3 of heads 4", [](auto& job) { job.kv_heads = 3; });
  expect_refused("kv_heads 0", [](auto& job) { job.kv_heads = 0; });
  expect_refused("heads 0", [](auto& job) { job.heads = 0; });
  expect_refused("sequences 3 of tokens 8", [](auto& job) { job.sequences = 3; });
  expect_refused("sequences 0", [](auto& job) { job.sequences = 0; });
  expect_refused("tokens 0", [](auto& job) { job.tokens = 0; });
  expect_refused("tokens -8", [](auto& job) { job.tokens = -8; });
  expect_refused("dtype f16", [](auto& job) { job.dtype = DType::kF16; });
  expect_refused("no dq", [](auto& job) { job.dq = nullptr; });
  expect_refused("no out", [](auto& job) { job.out = nullptr; });
  expect_refused("no workspace", [](auto& job) { job.workspace = nullptr; });
  check(cudaDeviceSynchronize());
  const std::vector<std::uint8_t> poisoned(static_cast<std::size_t>(size) * 2, 0xAB);
  EXPECT_EQ(dq.bytes(), poisoned) << "a refused launch wrote dq";
  EXPECT_EQ(dk.bytes(), poisoned) << "a refused launch wrote dk";
  EXPECT_EQ(dv.bytes(), poisoned) << "a refused launch wrote dv";

  // The job the refused ones change is itself accepted.
  finish(cuda::attention_backward(valid, nullptr));
}

}  // namespace
}  // namespace kbit::kernels

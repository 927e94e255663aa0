// The GPU's approximate reciprocal and division, reproduced bit for bit on the CPU.
//
// bitsandbytes builds its CUDA kernels with --use_fast_math, so its quantizers normalise with
// sm_90's approximate instructions: `1.0f / absmax` compiles to rcp.approx.ftz.f32 (4-bit and
// 8-bit blockwise) and `__fdividef(127.0f, absmax)` to div.approx.ftz.f32 (LLM.int8 row-wise);
// kbit's CUDA kernels issue the same instructions (kernels/cuda/bnb_fast_math.cuh). Their
// results differ from IEEE 1/x by one ulp for about 13% of inputs, and a value whose normalised
// ratio lies on a code boundary then gets another code. To produce bitsandbytes' bytes on the
// CPU too, the CPU quantizers call these functions instead of dividing.
//
// The model, measured on an H200 for every input (scripts/dev/rcp_approx_probe.cu,
// docs/formats.md):
//   * for x in [1, 2), rcp.approx(x) = IEEE 1.0f / x + delta(mantissa of x) ulps, delta in
//     {-1, 0, +1}, read from a 2-bit table of all 2^23 mantissas (data/rcp_approx_sm90.bin,
//     embedded in the library);
//   * rcp.approx(x * 2^e) = rcp.approx(x) * 2^-e wherever that is a normal float;
//   * .ftz: subnormal inputs read as zero of their sign, subnormal results become zero of their
//     sign;
//   * div.approx(a, b) = a * rcp.approx(b), one IEEE rounding, subnormals flushed.
//
// Thread safety: pure functions of their arguments. The first call derives, from the table, the
// ranges that spare most lookups (gpu_approx_math.cc; about 20 ms, once per process, thread-safe).
#pragma once

#include <cstdint>
#include <span>

namespace kbit::kernels::cpu {

// rcp.approx.ftz.f32 of sm_90, for every float x:
//   zero or subnormal -> inf of x's sign; inf -> zero of its sign; NaN -> NaN 0x7fffffff;
//   normal -> the table's value, exponent-scaled; a result below FLT_MIN in magnitude -> zero of
//   x's sign (x >= 2^126 in magnitude, except x = 2^126 itself, whose result is FLT_MIN).
float rcp_approx_ftz(float x);

// div.approx.ftz.f32 of sm_90: a * rcp_approx_ftz(b) rounded to nearest even, where a subnormal
// a reads as zero and a subnormal product becomes zero, each keeping its sign; every NaN is
// 0x7fffffff. So a / 0 = inf, 0 / 0 = NaN, inf / inf = NaN, and for |b| > 2^126 the result is
// zero (NaN for infinite a).
float div_approx_ftz(float a, float b);

// rcp_approx_ftz of every x[i], into result[0, x.size()): one call for many reciprocals, whose
// work overlaps (the SIMD quantizers take those of a group of blocks at once:
// block_reciprocals.h).
void rcp_approx_ftz_each(std::span<const float> x, float* result);

// The embedded table, 2 bits per mantissa (see scripts/dev/make_rcp_approx_table.py).
std::span<const std::uint8_t> rcp_approx_table();

// The table's entry for mantissa m (0 <= m < 2^23): -1, 0 or +1 ulp.
int rcp_approx_delta(std::uint32_t mantissa);

}  // namespace kbit::kernels::cpu

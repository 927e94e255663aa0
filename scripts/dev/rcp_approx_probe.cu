// Measures the GPU's approximate reciprocal and division (rcp.approx.ftz.f32,
// div.approx.ftz.f32), which bitsandbytes' quantizers use, against IEEE arithmetic, to derive
// the table that lets kbit's CPU quantizers decide every value as the GPU does.
//
// Build and run on the GPU machine:
//   nvcc -O2 -gencode=arch=compute_90a,code=sm_90a scripts/dev/rcp_approx_probe.cu -o probe
//   ./probe OUT_DIR
// Writes OUT_DIR/rcp_delta.bin: for each of the 2^23 mantissas m (x = 1.m in [1, 2)), the
// signed difference in ulps between rcp.approx(x) and the correctly rounded 1/x, one int8 each.
// Prints whether rcp.approx scales exactly with the exponent and whether div.approx(a, b)
// equals a * rcp.approx(b) rounded to nearest.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

__device__ float rcp_approx(float x) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}
__device__ float div_approx(float a, float b) {
  float r;
  asm("div.approx.ftz.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}

__global__ void rcp_all_mantissas(std::int8_t* delta, int exponent_bits) {
  const std::uint32_t m = blockIdx.x * blockDim.x + threadIdx.x;
  if (m >= (1u << 23)) return;
  const float x = __uint_as_float((static_cast<std::uint32_t>(exponent_bits) << 23) | m);
  const float approx = rcp_approx(x);
  const float exact = __frcp_rn(x);
  delta[m] = static_cast<std::int8_t>(static_cast<std::int32_t>(__float_as_uint(approx)) -
                                      static_cast<std::int32_t>(__float_as_uint(exact)));
}

// For random (a, b): does div.approx(a, b) equal __fmul_rn(a, rcp.approx(b))?
__global__ void div_vs_mul_rcp(const float* a, const float* b, int n, unsigned* mismatches,
                               float* example) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float d = div_approx(a[i], b[i]);
  const float m = __fmul_rn(a[i], rcp_approx(b[i]));
  if (__float_as_uint(d) != __float_as_uint(m)) {
    if (atomicAdd(mismatches, 1u) == 0) {
      example[0] = a[i];
      example[1] = b[i];
      example[2] = d;
      example[3] = m;
    }
  }
}

// rcp.approx of x at every exponent against the [1, 2) result scaled: counts differences.
__global__ void exponent_scaling(const float* mantissa_samples, int n, unsigned* mismatches) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float base =
      __uint_as_float((__float_as_uint(mantissa_samples[i]) & 0x7fffffu) | 0x3f800000u);
  const float base_rcp = rcp_approx(base);
  for (int e = -125; e <= 125; ++e) {
    const float x = ldexpf(base, e);
    const float expected = ldexpf(base_rcp, -e);
    const float got = rcp_approx(x);
    // Only where the expected result is a normal float (FTZ flushes subnormals).
    if (fabsf(expected) >= 1.17549435e-38f && __float_as_uint(got) != __float_as_uint(expected)) {
      atomicAdd(mismatches, 1u);
    }
  }
}

#define CHECK(call)                                                   \
  do {                                                                \
    cudaError_t e = (call);                                           \
    if (e != cudaSuccess) {                                           \
      std::fprintf(stderr, "%s: %s\n", #call, cudaGetErrorString(e)); \
      return 1;                                                       \
    }                                                                 \
  } while (0)

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const int count = 1 << 23;
  std::int8_t* d_delta = nullptr;
  CHECK(cudaMalloc(&d_delta, count));
  std::vector<std::int8_t> delta(count);
  for (int exponent_bits : {127, 100, 150, 1, 253}) {
    rcp_all_mantissas<<<count / 256, 256>>>(d_delta, exponent_bits);
    CHECK(cudaMemcpy(delta.data(), d_delta, count, cudaMemcpyDeviceToHost));
    long histogram[5] = {0, 0, 0, 0, 0};
    long other = 0;
    for (int m = 0; m < count; ++m) {
      if (delta[m] >= -2 && delta[m] <= 2)
        ++histogram[delta[m] + 2];
      else
        ++other;
    }
    std::printf("exponent bits %d: delta -2:%ld -1:%ld 0:%ld +1:%ld +2:%ld other:%ld\n",
                exponent_bits, histogram[0], histogram[1], histogram[2], histogram[3], histogram[4],
                other);
    if (exponent_bits == 127) {
      const std::string path = std::string(argv[1]) + "/rcp_delta.bin";
      FILE* f = std::fopen(path.c_str(), "wb");
      std::fwrite(delta.data(), 1, count, f);
      std::fclose(f);
    }
  }

  std::mt19937 rng(1234);
  const int n = 1 << 24;
  std::vector<float> a(n), b(n);
  std::uniform_real_distribution<float> unit(1.0f, 2.0f);
  std::uniform_int_distribution<int> exponent(-60, 60);
  for (int i = 0; i < n; ++i) {
    a[i] = std::ldexp(unit(rng), exponent(rng)) * (i % 2 ? -1.0f : 1.0f);
    b[i] = std::ldexp(unit(rng), exponent(rng));
    if (i % 4 == 0) a[i] = 127.0f;
    if (i % 8 == 0) a[i] = 1.0f;
  }
  float *d_a, *d_b, *d_example;
  unsigned* d_mismatches;
  CHECK(cudaMalloc(&d_a, n * 4));
  CHECK(cudaMalloc(&d_b, n * 4));
  CHECK(cudaMalloc(&d_example, 16));
  CHECK(cudaMalloc(&d_mismatches, 4));
  CHECK(cudaMemcpy(d_a, a.data(), n * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(d_b, b.data(), n * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMemset(d_mismatches, 0, 4));
  div_vs_mul_rcp<<<n / 256, 256>>>(d_a, d_b, n, d_mismatches, d_example);
  unsigned mismatches = 0;
  float example[4];
  CHECK(cudaMemcpy(&mismatches, d_mismatches, 4, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(example, d_example, 16, cudaMemcpyDeviceToHost));
  std::printf("div.approx(a,b) != a*rcp.approx(b): %u of %d", mismatches, n);
  if (mismatches)
    std::printf(" e.g. a=%a b=%a div=%a mul=%a", example[0], example[1], example[2], example[3]);
  std::printf("\n");

  CHECK(cudaMemset(d_mismatches, 0, 4));
  exponent_scaling<<<n / 256 / 16, 256>>>(d_b, n / 16, d_mismatches);
  CHECK(cudaMemcpy(&mismatches, d_mismatches, 4, cudaMemcpyDeviceToHost));
  std::printf("exponent scaling mismatches: %u (of %d samples x 251 exponents)\n", mismatches,
              n / 16);
  CHECK(cudaDeviceSynchronize());
  return 0;
}

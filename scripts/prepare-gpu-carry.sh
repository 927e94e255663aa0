#!/usr/bin/env bash
# Prepares what scripts/gpu-check.sh needs on the GPU machine, which has CUDA, cmake and python3
# but none of the Debian -dev packages kbit builds against. Run it here, on the build machine:
#   scripts/prepare-gpu-carry.sh [tests|bench]
#   1. builds the `cuda` preset into build/cuda;
#   2. packs into .carry/gpu-carry.tar.xz (git-ignored) what the GPU run needs and nothing more:
#      the executables it runs (kbit and, for `tests`, the CUDA tests, for `bench`, the CUDA
#      benchmarks; both without an argument), the CTest files and CMakeCache.txt, the shared
#      libraries those executables need beyond the C/C++ runtime and the CUDA toolkit's own
#      (build/cuda/carry-lib/; cuBLAS is the GPU machine's), and for the tests their reference
#      data (.carry/shared/: golden files, shakespeare-llama3 and the text; shakespeare-llama2 is
#      the repository's models/ copy, linked).
# The device tool carries at most 64 MiB with the working tree, so the build folder itself
# (object files included) cannot travel; the compressed pack does, and where the whole of it is
# too large with the tree, the tests and the benchmarks go in two packs and two runs:
#   run(command="KBIT_GPU_CHECK_STEPS='tests sanitize-kernels ...' bash scripts/gpu-check.sh",
#       carry=[".carry"]) after `prepare-gpu-carry.sh tests`, and the `bench` steps after
#   `prepare-gpu-carry.sh bench`.
# Reference data: KBIT_SHARED_DIR, default ../shared.
set -euo pipefail
cd "$(dirname "$0")/.."

shared="${KBIT_SHARED_DIR:-../shared}"
shared_files=(golden/quant4bit.safetensors golden/quant8bit_blockwise.safetensors
              golden/int8.safetensors golden/codebooks.safetensors golden/optim8bit.safetensors golden/README.md
              golden/model-shakespeare-llama2.safetensors golden/model-shakespeare-llama3.safetensors
              golden/greedy-f32.safetensors golden/checkpoints/shakespeare-llama2-bnb-nf4_dq
              golden/checkpoints/shakespeare-llama2-bnb-nf4 golden/checkpoints/shakespeare-llama2-bnb-fp4
              golden/checkpoints/shakespeare-llama2-bnb-int8 golden/qlora-adapter-logits.safetensors
              golden/checkpoints/shakespeare-llama3-qlora-adapter models/shakespeare-llama3
              data/tinyshakespeare.txt)
pack="${1:-all}"
test_executables=(build/cuda/src/kernels/cuda/kbit_cuda_tests
                  build/cuda/src/model/kbit_model_cuda_tests
                  build/cuda/src/generate/kbit_gpu_perplexity_tests
                  build/cuda/src/optim/kbit_optim_cuda_tests
                  build/cuda/src/train/kbit_train_cuda_tests)
bench_executables=(build/cuda/bench/kbit_cuda_bench build/cuda/bench/kbit_kernel_workbench)
case "$pack" in
  all) executables=(build/cuda/kbit "${test_executables[@]}" "${bench_executables[@]}") ;;
  tests) executables=(build/cuda/kbit "${test_executables[@]}") ;;
  bench) executables=(build/cuda/kbit "${bench_executables[@]}"); shared_files=() ;;
  *) echo "usage: prepare-gpu-carry.sh [tests|bench] (without an argument: both)" >&2; exit 2 ;;
esac
carry_limit_mib=46  # with the working tree (~17 MiB) within the tool's 64 MiB

cmake --preset cuda >/dev/null
cmake --build --preset cuda

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/build/cuda/carry-lib" "$stage/.carry"
for exe in "${executables[@]}"; do
  mkdir -p "$stage/$(dirname "$exe")"
  cp "$exe" "$stage/$exe"
  strip --strip-unneeded "$stage/$exe"  # symbols the runs do not need: a few MiB less to carry
  # Everything but the C and C++ runtime, which every machine has.
  ldd "$exe" | awk '$3 ~ /^\// {print $3}' |
    { grep -Ev '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|ld-linux[^/]*|libcublas|libcublasLt)\.so' || true; } |
    while read -r lib; do cp -L -n "$lib" "$stage/build/cuda/carry-lib/"; done
done
(find build/cuda -name CTestTestfile.cmake -o -name '*_include.cmake' -o -name '*_tests.cmake';
 echo build/cuda/CMakeCache.txt) | while read -r file; do
  mkdir -p "$stage/$(dirname "$file")"
  cp "$file" "$stage/$file"
done
if [ "${#shared_files[@]}" -gt 0 ]; then
  mkdir -p "$stage/.carry/shared/golden/checkpoints" "$stage/.carry/shared/models" \
           "$stage/.carry/shared/data"
  for file in "${shared_files[@]}"; do cp -r "$shared/$file" "$stage/.carry/shared/$file"; done
  cmp -s models/shakespeare-llama2/model.safetensors "$shared/models/shakespeare-llama2/model.safetensors" ||
    { echo "prepare-gpu-carry: models/shakespeare-llama2 differs from the shared one" >&2; exit 1; }
  ln -s ../../../models/shakespeare-llama2 "$stage/.carry/shared/models/shakespeare-llama2"
fi

grep -qx '/.carry/' .gitignore || { echo "prepare-gpu-carry: add /.carry/ to .gitignore first" >&2; exit 1; }
rm -rf .carry && mkdir -p .carry
tar -C "$stage" -cf - build .carry | xz -T0 -9 > .carry/gpu-carry.tar.xz
size_kib=$(du -sk .carry | awk '{print $1}')
echo "prepare-gpu-carry: .carry/gpu-carry.tar.xz is $((size_kib / 1024)) MiB" \
     "($(du -sh "$stage" | awk '{print $1}') unpacked)"
if [ "$size_kib" -gt $((carry_limit_mib * 1024)) ]; then
  echo "prepare-gpu-carry: more than ${carry_limit_mib} MiB to carry" >&2
  exit 1
fi

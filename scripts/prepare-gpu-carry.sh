#!/usr/bin/env bash
# Prepares what scripts/gpu-check.sh needs on the GPU machine, which has CUDA, cmake and python3
# but none of the Debian -dev packages kbit builds against. Run it here, on the build machine:
#   1. builds the `cuda` preset into build/cuda;
#   2. packs into .carry/gpu-carry.tar.xz (git-ignored) what the GPU run needs and nothing more:
#      the executables it runs (kbit, the CUDA tests, the CUDA benchmarks), the CTest files and
#      CMakeCache.txt, the shared libraries those executables need beyond the C/C++ runtime
#      (build/cuda/carry-lib/), and the golden files of the CUDA tests (.carry/shared/golden/).
# The device tool carries at most 64 MiB with the working tree, so the build folder itself
# (object files included) cannot travel; the compressed pack does. Then:
#   run(command="bash scripts/gpu-check.sh", carry=[".carry"]).
# Reference data: KBIT_SHARED_DIR, default ../shared.
set -euo pipefail
cd "$(dirname "$0")/.."

shared="${KBIT_SHARED_DIR:-../shared}"
golden_files=(quant4bit.safetensors quant8bit_blockwise.safetensors int8.safetensors
              codebooks.safetensors README.md)
executables=(build/cuda/kbit build/cuda/src/kernels/cuda/kbit_cuda_tests
             build/cuda/bench/kbit_cuda_bench)
carry_limit_mib=40  # leaves room for the working tree within the tool's 64 MiB

cmake --preset cuda >/dev/null
cmake --build --preset cuda

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/build/cuda/carry-lib" "$stage/.carry/shared/golden"
for exe in "${executables[@]}"; do
  mkdir -p "$stage/$(dirname "$exe")"
  cp "$exe" "$stage/$exe"
  # Everything but the C and C++ runtime, which every machine has.
  ldd "$exe" | awk '$3 ~ /^\// {print $3}' |
    { grep -Ev '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|ld-linux[^/]*)\.so' || true; } |
    while read -r lib; do cp -L -n "$lib" "$stage/build/cuda/carry-lib/"; done
done
(find build/cuda -name CTestTestfile.cmake -o -name '*_include.cmake' -o -name '*_tests.cmake';
 echo build/cuda/CMakeCache.txt) | while read -r file; do
  mkdir -p "$stage/$(dirname "$file")"
  cp "$file" "$stage/$file"
done
for file in "${golden_files[@]}"; do cp "$shared/golden/$file" "$stage/.carry/shared/golden/"; done

grep -qx '/.carry/' .gitignore || { echo "prepare-gpu-carry: add /.carry/ to .gitignore first" >&2; exit 1; }
rm -rf .carry && mkdir -p .carry
tar -C "$stage" -cf - build .carry | xz -T0 -6 > .carry/gpu-carry.tar.xz
size_kib=$(du -sk .carry | awk '{print $1}')
echo "prepare-gpu-carry: .carry/gpu-carry.tar.xz is $((size_kib / 1024)) MiB" \
     "($(du -sh "$stage" | awk '{print $1}') unpacked)"
if [ "$size_kib" -gt $((carry_limit_mib * 1024)) ]; then
  echo "prepare-gpu-carry: more than ${carry_limit_mib} MiB to carry" >&2
  exit 1
fi

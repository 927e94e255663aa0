#!/usr/bin/env bash
# Prepares what scripts/gpu-check.sh needs on the GPU machine, which has CUDA, cmake and python3
# but none of the Debian -dev packages kbit builds against. Run it here, on the build machine:
#   1. builds the `cuda` preset into build/cuda;
#   2. copies the shared libraries the executables need beyond the C/C++ runtime (Debian's
#      Google Benchmark is only a .so) into build/cuda/carry-lib/;
#   3. copies the golden files of the CUDA tests into .carry/shared/golden/ (git-ignored).
# Then send both folders along: run(command="bash scripts/gpu-check.sh",
# carry=["build/cuda", ".carry"]). Reference data: KBIT_SHARED_DIR, default ../shared.
set -euo pipefail
cd "$(dirname "$0")/.."

shared="${KBIT_SHARED_DIR:-../shared}"
golden_files=(quant4bit.safetensors quant8bit_blockwise.safetensors int8.safetensors
              codebooks.safetensors README.md)
carry_limit_mib=60  # the device tool carries at most 64 MiB, working tree included

cmake --preset cuda >/dev/null
cmake --build --preset cuda

echo "prepare-gpu-carry: shared libraries -> build/cuda/carry-lib/"
rm -rf build/cuda/carry-lib
mkdir -p build/cuda/carry-lib
mapfile -t executables < <(find build/cuda -path build/cuda/carry-lib -prune -o \
                                 -type f -executable -name 'kbit*' -print)
for exe in "${executables[@]}"; do
  # Everything but the C and C++ runtime, which every machine has.
  ldd "$exe" | awk '$3 ~ /^\// {print $3}' |
    { grep -Ev '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|ld-linux[^/]*)\.so' || true; } |
    while read -r lib; do
      cp -L -n "$lib" build/cuda/carry-lib/
    done
done
ls -la build/cuda/carry-lib/

echo "prepare-gpu-carry: golden files from $shared/golden -> .carry/shared/golden/"
grep -qx '/.carry/' .gitignore || { echo "prepare-gpu-carry: add /.carry/ to .gitignore first" >&2; exit 1; }
mkdir -p .carry/shared/golden
for file in "${golden_files[@]}"; do
  cp -f "$shared/golden/$file" .carry/shared/golden/
done

total_kib=$(du -sk build/cuda .carry | awk '{s += $1} END {print s}')
echo "prepare-gpu-carry: carrying $((total_kib / 1024)) MiB (build/cuda + .carry)"
if [ "$total_kib" -gt $((carry_limit_mib * 1024)) ]; then
  echo "prepare-gpu-carry: more than ${carry_limit_mib} MiB; the device tool takes 64 MiB with the" \
       "working tree: remove object files from the carry (e.g. a copy with only executables and" \
       "CTest files)" >&2
  exit 1
fi

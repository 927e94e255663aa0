#!/usr/bin/env bash
# Builds kbit and runs its tests (every label but `slow`).
#
# The preset is KBIT_PRESET if set; otherwise `cuda` when nvcc is installed, so that the CUDA
# code is always compiled (its tests skip visibly without a GPU), else `release`.
# Tests that need the reference data read KBIT_SHARED_DIR (default: ../shared beside the
# repository) and skip with a message where it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."

preset="${KBIT_PRESET:-}"
if [ -z "$preset" ]; then
  if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
    preset=cuda
  else
    preset=release
  fi
fi

shared="${KBIT_SHARED_DIR:-../shared}"
if [ -d "$shared" ]; then
  # ctest runs each test in the build folder: make the path absolute.
  KBIT_SHARED_DIR="$(cd "$shared" && pwd)"
  export KBIT_SHARED_DIR
else
  echo "test.sh: no reference data at '$shared'; tests that need it will be skipped"
fi

echo "test.sh: preset '$preset'"
cmake --preset "$preset"
cmake --build --preset "$preset"
ctest --preset "$preset" -j "$(nproc)"

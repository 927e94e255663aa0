#!/usr/bin/env bash
# Fails if any C++/CUDA source differs from what .clang-format makes of it.
# Pinned to Debian 12's clang-format 14: other versions format some constructs differently.
# With --fix, rewrites the files instead.
set -euo pipefail
cd "$(dirname "$0")/.."
format=clang-format-14
command -v "$format" >/dev/null || format=clang-format
mapfile -t files < <(git ls-files --cached --others --exclude-standard '*.cc' '*.h' '*.cu' '*.cuh')
if [ "${1:-}" = "--fix" ]; then
  "$format" -i "${files[@]}"
else
  "$format" --dry-run --Werror "${files[@]}"
  echo "check-format: ${#files[@]} files formatted as .clang-format says"
fi

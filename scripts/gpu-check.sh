#!/usr/bin/env bash
# The one script run on the GPU machine: GPU facts, the CUDA tests, the CUDA benchmarks, and the
# CPU tests. Usage: scripts/gpu-check.sh [OUT]   (default: $OUT, else ./gpu-check-out)
#
# The GPU machine lacks the libraries kbit builds against, so the build is made on the build
# machine and carried packed (scripts/prepare-gpu-carry.sh, then carry=[".carry"]); this script
# unpacks it. Without it, it tries to build the `cuda` preset itself and says what is missing
# if it can't. The CPU suite is CI's; here the tests labelled `cuda` run.
#
# Writes into OUT: gpu-check.log (everything), results.json (summary: tests passed / failed /
# skipped per suite, the benchmark medians), cuda_bench.json (Google Benchmark's JSON) and the
# test suites' JUnit XML. Exits non-zero if any test failed or a step could not run.
set -uo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd -P)"
out="${1:-${OUT:-$repo/gpu-check-out}}"
mkdir -p "$out"
out="$(cd "$out" && pwd -P)"
log="$out/gpu-check.log"
: >"$log"
status=0

say() { echo "gpu-check: $*" | tee -a "$log"; }
# Runs a command with its output in the log (and on the console).
run_logged() { "$@" 2>&1 | tee -a "$log"; return "${PIPESTATUS[0]}"; }

# ---- The build.
build=build/cuda
if [ ! -f "$build/CTestTestfile.cmake" ] && [ -f .carry/gpu-carry.tar.xz ]; then
  say "unpacking .carry/gpu-carry.tar.xz"
  tar -xJf .carry/gpu-carry.tar.xz
fi
if [ ! -f "$build/CTestTestfile.cmake" ]; then
  say "no carried build in $build; building the cuda preset here"
  if ! run_logged cmake --preset cuda || ! run_logged cmake --build --preset cuda; then
    say "the build failed. This machine needs what scripts/install-deps.sh installs (GoogleTest," \
        "Google Benchmark, nlohmann-json, CLI11, fmt, PCRE2, OpenBLAS); where it has none of them," \
        "run scripts/prepare-gpu-carry.sh on the build machine and carry .carry"
    exit 2
  fi
fi
export LD_LIBRARY_PATH="$repo/$build/carry-lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# CTest files hold the build machine's absolute paths; make them resolve here.
source_dir=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt")
if [ -n "$source_dir" ] && [ "$(cd "$source_dir" 2>/dev/null && pwd -P)" != "$repo" ]; then
  if [ -e "$source_dir" ]; then
    say "$source_dir exists and is not this checkout: ctest will not find the tests"
  else
    mkdir -p "$(dirname "$source_dir")" && ln -s "$repo" "$source_dir" &&
      say "linked $source_dir -> $repo for the carried CTest files"
  fi
fi

# Tests that run CMake scripts name the build machine's cmake; use this machine's.
cmake_path=$(sed -n 's/^CMAKE_COMMAND:INTERNAL=//p' "$build/CMakeCache.txt")
if [ -n "$cmake_path" ] && [ ! -e "$cmake_path" ] && command -v cmake >/dev/null; then
  mkdir -p "$(dirname "$cmake_path")" && ln -s "$(command -v cmake)" "$cmake_path" &&
    say "linked $cmake_path -> $(command -v cmake) for the carried CTest files"
fi

# The reference data: ../shared where it exists (the build machine), else the carried copy.
if [ -z "${KBIT_SHARED_DIR:-}" ]; then
  if [ -d "$repo/../shared/golden" ]; then
    KBIT_SHARED_DIR="$(cd "$repo/../shared" && pwd -P)"
  elif [ -d "$repo/.carry/shared/golden" ]; then
    KBIT_SHARED_DIR="$repo/.carry/shared"
  fi
fi
if [ -n "${KBIT_SHARED_DIR:-}" ]; then
  export KBIT_SHARED_DIR
  say "reference data: $KBIT_SHARED_DIR"
else
  say "no reference data (../shared or .carry/shared): golden tests will be skipped"
fi

# ---- The GPU.
say "nvidia-smi"
run_logged nvidia-smi || say "nvidia-smi failed: no GPU or no driver here"

# ---- Tests.
run_suite() {  # label, time limit in seconds, extra ctest arguments
  say "ctest -L $1"
  (cd "$build" && run_logged timeout "$2" ctest -L "$1" --output-on-failure \
     --output-junit "$out/tests-$1.xml" "${@:3}")
}
# Verbose: the CUDA tests print how many codes and approximate-math results they compared.
run_suite cuda 420 --verbose || status=1

# ---- Memory and race checks of the CUDA tests, where the runtime supports compute-sanitizer.
cuda_tests="$build/src/kernels/cuda/kbit_cuda_tests"
if command -v compute-sanitizer >/dev/null && [ -x "$cuda_tests" ]; then
  for tool in memcheck racecheck; do
    say "compute-sanitizer --tool $tool $cuda_tests"
    # API errors are not reported: the out-of-memory test fails a cudaMalloc on purpose.
    run_logged timeout 240 compute-sanitizer --tool "$tool" --report-api-errors no \
      --error-exitcode 3 "$cuda_tests" --gtest_brief=1 ||
      { say "compute-sanitizer $tool reported errors"; status=1; }
  done
else
  say "compute-sanitizer or the CUDA test binary is missing: no memory and race checks"
fi

# ---- The command line, end to end on the GPU.
for args in "--format nf4" "--format nf4 --double-quant" "--format fp4" "--format 8bit --block-size 256"; do
  say "kbit roundtrip --device cuda --numel 268435456 $args"
  # shellcheck disable=SC2086
  run_logged "$build/kbit" roundtrip --device cuda --numel 268435456 $args || status=1
done

# ---- Benchmarks.
bench="$build/bench/kbit_cuda_bench"
if [ -x "$bench" ]; then
  say "$bench"
  run_logged timeout 300 "$bench" --benchmark_out="$out/cuda_bench.json" \
    --benchmark_out_format=json || { say "the CUDA benchmarks failed"; status=1; }
  run_logged nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw \
    --format=csv || true
else
  say "no $bench in the build"; status=1
fi

# ---- Summary.
python3 - "$out" <<'EOF' 2>&1 | tee -a "$log"
import json, os, sys
import xml.etree.ElementTree as ET

out = sys.argv[1]
results = {"tests": {}, "benchmarks": {}}
for label in ("cuda",):
    path = os.path.join(out, f"tests-{label}.xml")
    if not os.path.exists(path):
        results["tests"][label] = "did not run"
        continue
    counts = {"passed": 0, "failed": 0, "skipped": 0, "failed_names": []}
    for case in ET.parse(path).getroot().iter("testcase"):
        if case.find("failure") is not None or case.get("status") == "fail":
            counts["failed"] += 1
            counts["failed_names"].append(case.get("name"))
        elif case.find("skipped") is not None or case.get("status") in ("notrun", "disabled"):
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    results["tests"][label] = counts
path = os.path.join(out, "cuda_bench.json")
if os.path.exists(path):
    with open(path) as f:
        bench = json.load(f)
    results["device"] = bench.get("context", {}).get("host_name", "")
    for run in bench.get("benchmarks", []):
        if run.get("aggregate_name") != "median":
            continue
        results["benchmarks"][run["run_name"].split("/")[0]] = {
            "median_us": round(run["real_time"], 2),
            "GB_per_s": round(run.get("GB/s", 0.0), 1),
            "copy_fraction": round(run.get("copy_fraction", 0.0), 3),
        }
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
print(json.dumps(results, indent=2))
EOF

say "done; exit status $status"
exit "$status"

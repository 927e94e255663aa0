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
# skipped, the kernel benchmark medians, kbit bench's throughput and memory per mode),
# cuda_bench.json (Google Benchmark's JSON), workbench.json (the kernel workbench),
# bench-<mode>.json (kbit bench --json of the Llama-3.1-8B shape) and the tests' JUnit XML. Exits non-zero if any test failed or a step could
# not run. KBIT_GPU_CHECK_STEPS chooses the steps (default all: "tests sanitize-kernels
# racecheck-kernels racecheck-linear sanitize-model bench": memcheck of the kernel tests, racecheck
# of them (the linear kernels', which run beside cuBLAS, apart), both on the model tests; the
# step "workbench" runs the kernel workbench alone, which "bench" includes; "bench-shapes" runs
# kbit bench on the Llama-2-7B and 70B shapes, into bench-<config>-<mode>.json; "bench-finetune"
# runs kbit finetune-bench on the Llama-3.1-8B shape with bf16 and f32 LoRA, into
# finetune-<rows>x<length>-<lora dtype>.json); the device
# tool's 10-minute limit per command may need them run a few at a time.
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
steps=" ${KBIT_GPU_CHECK_STEPS:-tests sanitize-kernels racecheck-kernels racecheck-linear sanitize-model bench} "
want() { [[ "$steps" == *" $1 "* ]]; }
# Runs a command with its output in the log (and on the console).
run_logged() { "$@" 2>&1 | tee -a "$log"; return "${PIPESTATUS[0]}"; }

# ---- The build.
build=build/cuda
# A warm machine keeps build/ between calls while .carry is carried afresh: unpack again whenever
# either half (the build, the reference data in .carry/shared) is missing.
if { [ ! -f "$build/CTestTestfile.cmake" ] || [ ! -d .carry/shared ]; } &&
   [ -f .carry/gpu-carry.tar.xz ]; then
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
# cuBLAS is not carried (hundreds of MiB): the machine's CUDA toolkit or PyTorch's wheels have it.
if ! ldconfig -p 2>/dev/null | grep -q 'libcublasLt\.so\.13'; then
  for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
             $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, s, "lib") for p in nvidia.__path__ for s in os.listdir(p)))' 2>/dev/null); do
    if [ -e "$dir/libcublasLt.so.13" ]; then
      export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$dir"
      say "cuBLAS from $dir"
      break
    fi
  done
fi

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
if want tests; then run_suite cuda 540 --verbose || status=1; fi

# ---- Memory and race checks of the CUDA tests, where the runtime supports compute-sanitizer.
# The kernel tests whole (racecheck without the large-shape cases, which take it many minutes);
# the model tests on one model and the API cases.
sanitize() {  # tool, time limit, test binary, gtest filter
  # API errors are not reported: the out-of-memory tests fail allocations on purpose.
  say "compute-sanitizer --tool $1 $3 --gtest_filter=$4"
  run_logged timeout "$2" compute-sanitizer --tool "$1" --report-api-errors no \
    --error-exitcode 3 "$3" --gtest_filter="$4" ||
    { say "compute-sanitizer $1 reported errors (or timed out) on $3"; status=1; }
}
# racecheck of tests that also run cuBLAS: it reports hazards inside cuBLAS's own Hopper kernels
# (nvjet_*, whose asynchronous mbarrier/TMA synchronisation it does not model), and excluding
# them makes it skip their execution, so the tests break. Those reports are logged; a hazard in
# any other kernel fails the check.
racecheck_beside_cublas() {  # time limit, test binary, gtest filter
  say "compute-sanitizer --tool racecheck $2 --gtest_filter=$3 (cuBLAS's nvjet_* reports logged)"
  local report="$out/racecheck-$(basename "$2").txt"
  timeout "$1" compute-sanitizer --tool racecheck --report-api-errors no "$2" --gtest_brief=1 \
    --gtest_filter="$3" >"$report" 2>&1
  local code=$?
  cat "$report" >>"$log"
  if [ "$code" -ne 0 ] || ! grep -q "RACECHECK SUMMARY" "$report"; then
    say "racecheck did not finish cleanly on $2 (exit $code)"; status=1
  elif grep "Race reported" "$report" | grep -v "Read access at nvjet_" | grep -q .; then
    say "racecheck found a hazard outside cuBLAS in $2"; status=1
  else
    say "racecheck: no hazard outside cuBLAS's nvjet_* kernels in $2"
  fi
}
kernel_tests="$build/src/kernels/cuda/kbit_cuda_tests"
model_tests="$build/src/model/kbit_model_cuda_tests"
optim_tests="$build/src/optim/kbit_optim_cuda_tests"
if ! command -v compute-sanitizer >/dev/null; then
  say "compute-sanitizer is missing here: no memory and race checks"
else
  # racecheck instruments every shared-memory access and takes minutes over the largest cases:
  # it leaves out the exhaustive approximate-math probes, the golden files and the largest
  # shapes, whose kernels the smaller cases run too.
  if want sanitize-kernels; then
    sanitize memcheck 240 "$kernel_tests" '*'
    sanitize memcheck 120 "$optim_tests" '*'
  fi
  if want racecheck-kernels; then
    # The sampling cases left out run the kernels of CombinedFiltersMatchSampler again, at
    # 50-60 s each under racecheck.
    sanitize racecheck 240 "$kernel_tests" 'CudaLlamaOps.*'
    sanitize racecheck 170 "$kernel_tests" \
      'SampleToken.*:MarkSeen.*:SamplerUniform.*-*ManyDraws*:*LargeVocabularies*:*TopK*:*TopP*'
    sanitize racecheck 150 "$kernel_tests" 'CudaQuant*:CudaNestedAbsmax.*:CudaInt8Rowwise.*'
    sanitize racecheck 150 "$kernel_tests" \
      'CudaAttentionBackward.*:CudaLlamaBackward.*-*Deterministic*'
  fi
  if want racecheck-linear; then
    # The int8 tests run cuBLAS too (the outlier columns' GEMM).
    racecheck_beside_cublas 300 "$kernel_tests" \
      'CudaLinearFloat.*:CudaLinear4bit.*:CudaLinearInt8.*-*LlamaShapes*'
  fi
  if want sanitize-model; then
    sanitize memcheck 200 "$model_tests" '*llama2_nf4*:*llama2_int8*:GpuModelApi.*:GpuBatch.*'
    racecheck_beside_cublas 200 "$model_tests" '*llama2_nf4_dq*:GpuBatch.*'
  fi
fi

# ---- The command line, end to end on the GPU.
want tests && for args in "--format nf4" "--format nf4 --double-quant" "--format fp4" "--format 8bit --block-size 256"; do
  say "kbit roundtrip --device cuda --numel 268435456 $args"
  # shellcheck disable=SC2086
  run_logged "$build/kbit" roundtrip --device cuda --numel 268435456 $args || status=1
done
if want tests; then
  for flags in "" "--load-in-4bit --double-quant" "--load-in-8bit"; do
    say "kbit generate -m models/shakespeare-llama2 --device cuda $flags"
    # shellcheck disable=SC2086
    run_logged "$build/kbit" generate -m models/shakespeare-llama2 --device cuda $flags \
      -p "ROMEO:" --max-new-tokens 60 --temperature 0.8 --top-p 0.9 --seed 1 || status=1
    echo | tee -a "$log"
  done
fi

# ---- Benchmarks.
bench="$build/bench/kbit_cuda_bench"
if ! want bench; then
  say "benchmarks not asked for (KBIT_GPU_CHECK_STEPS)"
elif [ -x "$bench" ]; then
  say "$bench"
  run_logged timeout 300 "$bench" --benchmark_out="$out/cuda_bench.json" \
    --benchmark_out_format=json || { say "the CUDA benchmarks failed"; status=1; }
  run_logged nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw \
    --format=csv || true
else
  say "no $bench in the build"; status=1
fi

# ---- The kernel workbench: the decode step's kernels checked and timed against the copy.
workbench="$build/bench/kbit_kernel_workbench"
if want bench || want workbench; then
  say "$workbench --json $out/workbench.json"
  run_logged timeout 300 "$workbench" --json "$out/workbench.json" ||
    { say "the kernel workbench failed (a check, or the run)"; status=1; }
fi

# ---- kbit bench (random weights), as BENCHMARKS.md reports it: bench_mode CONFIG MODE JSON_OUT.
bench_mode() {
  local flags
  case "$2" in
    bf16) flags=(--dtype bf16) ;;
    nf4) flags=(--load-in-4bit) ;;
    nf4_dq) flags=(--load-in-4bit --double-quant) ;;
    int8) flags=(--load-in-8bit) ;;
  esac
  say "kbit bench --random-weights bench/configs/$1.json -p 512 -n 128 -b 1,8 ${flags[*]}"
  timeout 300 "$build/kbit" bench --random-weights "bench/configs/$1.json" -p 512 -n 128 \
    -b 1,8 "${flags[@]}" --json >"$3" 2>>"$log" || { say "kbit bench failed for $1 $2"; status=1; }
  cat "$3" >>"$log"
}
modes=(bf16 nf4 nf4_dq int8)
# The Llama-3.1-8B shape.
if want bench; then
  for mode in "${modes[@]}"; do bench_mode llama-3.1-8b "$mode" "$out/bench-$mode.json"; done
fi
# The other shapes users run: Llama-2-7B, and the 70B shape's first 8 and 16 layers (a layer's
# time is the difference over 8; the whole model's, the 8 layers' plus 72 more).
if want bench-shapes; then
  for config in llama-2-7b llama-3.1-70b-8-layers llama-3.1-70b-16-layers; do
    for mode in "${modes[@]}"; do bench_mode "$config" "$mode" "$out/bench-$config-$mode.json"; done
  done
fi

# ---- kbit finetune-bench (random weights): QLoRA steps of the Llama-3.1-8B shape in nf4_dq, LoRA
# r 16 on every Linear, PagedAdamW8bit, at 1 x 2048 and 4 x 512 tokens (issue 8's must-show 6).
if want bench-finetune; then
  for lora in bf16 f32; do
    for shape in 1x2048 4x512; do
      rows="${shape%x*}"; length="${shape#*x}"
      say "kbit finetune-bench --random-weights bench/configs/llama-3.1-8b.json --load-in-4bit --double-quant --compute-dtype bf16 --lora-dtype $lora -b $rows -l $length"
      timeout 400 "$build/kbit" finetune-bench --random-weights bench/configs/llama-3.1-8b.json \
        --load-in-4bit --double-quant --compute-dtype bf16 --lora-dtype "$lora" -b "$rows" \
        -l "$length" --json >"$out/finetune-$shape-$lora.json" 2>>"$log" ||
        { say "kbit finetune-bench failed at $shape, LoRA $lora"; status=1; }
      cat "$out/finetune-$shape-$lora.json" >>"$log"
    done
  done
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
results["kbit_bench"] = {}
for mode in ("bf16", "nf4", "nf4_dq", "int8"):
    path = os.path.join(out, f"bench-{mode}.json")
    try:
        with open(path) as f:
            bench = json.load(f)
    except (OSError, ValueError):
        continue
    results["kbit_bench"][mode] = {
        "weight_bytes": bench["weight_bytes"],
        "results": [{k: r[k] for k in ("batch", "prompt_tokens_per_second",
                                       "decode_tokens_per_second", "peak_device_bytes",
                                       "kv_cache_and_scratch_bytes")}
                    for r in bench["results"]]}
path = os.path.join(out, "workbench.json")
if os.path.exists(path):
    with open(path) as f:
        results["workbench"] = json.load(f)
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
print(json.dumps(results, indent=2))
EOF

say "done; exit status $status"
exit "$status"

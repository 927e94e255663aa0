#!/usr/bin/env bash
# Check that quantized checkpoints written by `kbit quantize` load and run in transformers +
# bitsandbytes (CPU backend): scripts/check_bnb_interop.py, in a throwaway virtual environment.
#
# Usage: scripts/check-bnb-interop.sh [--venv DIR] QUANTIZED_DIR[,QUANTIZED_DIR...] FLOAT_MODEL_DIR [GOLDEN_DIR] [-- ARGS]
#   QUANTIZED_DIR   a Hugging Face folder with a bitsandbytes quantization_config (kbit quantize's
#                   output); several, comma-separated, are checked one after the other
#   FLOAT_MODEL_DIR the model they were quantized from
#   GOLDEN_DIR      default ${KBIT_SHARED_DIR:-../shared}/golden
#   ARGS            passed to check_bnb_interop.py (--tolerance-factor, --max-tol, --mean-tol,
#                   --golden-model, --new-tokens, --max-code-mismatch)
#   --venv DIR, or KBIT_BNB_VENV=DIR: use (and keep) the virtual environment DIR, created and filled
#                   on first use, to save the install next time. Without it a venv is made in a
#                   temporary folder and removed at the end.
#   KBIT_BNB_PIP_SPECS: the packages to install (default: torch transformers accelerate bitsandbytes
#                   safetensors numpy; pin versions here, e.g. "torch transformers==5.17.0 ...").
# Torch comes from https://download.pytorch.org/whl/cpu where that is reachable, else from PyPI
# (whose Linux wheel pulls in the CUDA libraries: about 6 GB in all).
# Exit status: 0 when every folder passes, 1 when a check fails, 2 on a usage or install error.
# Example (the golden checkpoints, in the format kbit quantize writes):
#   g=../shared/golden/checkpoints/shakespeare-llama2-bnb
#   scripts/check-bnb-interop.sh $g-nf4,$g-nf4_dq,$g-fp4,$g-int8 ../shared/models/shakespeare-llama2
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

venv="${KBIT_BNB_VENV:-}"
# shellcheck source=scripts/lib/python-venv.sh
source "$root/scripts/lib/python-venv.sh"
kbit_parse_check_args "$@"
[[ ${#positional[@]} -ge 2 && ${#positional[@]} -le 3 ]] || usage
IFS=',' read -r -a quantized <<<"${positional[0]}"
float_model="${positional[1]}"
golden="${positional[2]:-}"
golden="${golden:-${KBIT_SHARED_DIR:-$root/../shared}/golden}"
for d in "${quantized[@]}" "$float_model" "$golden"; do
  [[ -d "$d" ]] || { echo "check-bnb-interop: $d is not a folder" >&2; exit 2; }
done

kbit_python_venv check-bnb-interop "$venv" \
  "${KBIT_BNB_PIP_SPECS:-torch transformers accelerate bitsandbytes safetensors numpy}" \
  "torch, transformers, accelerate, bitsandbytes, safetensors"
venv="$KBIT_VENV"
"$venv/bin/python" -c "import torch, transformers, bitsandbytes; print('check-bnb-interop: torch', torch.__version__, 'transformers', transformers.__version__, 'bitsandbytes', bitsandbytes.__version__)" 2>/dev/null

status=0
for q in "${quantized[@]}"; do
  rc=0
  "$venv/bin/python" "$root/scripts/check_bnb_interop.py" "$q" "$float_model" "$golden" ${extra[@]+"${extra[@]}"} || rc=$?
  echo
  if [[ $rc -ne 0 && $status -ne 1 ]]; then status=$rc; fi
done
[[ -z "${KBIT_VENV_TMP:-}" ]] && echo "check-bnb-interop: kept the virtual environment $venv" >&2
exit $status

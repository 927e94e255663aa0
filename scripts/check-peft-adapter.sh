#!/usr/bin/env bash
# Check that a LoRA adapter written by kbit (kbit finetune) loads in PEFT and computes what kbit
# computes: scripts/check_peft_adapter.py, in a throwaway virtual environment, on the CPU.
#
# Usage: scripts/check-peft-adapter.sh [--venv DIR] BASE_MODEL_DIR ADAPTER_DIR [-- ARGS]
#   BASE_MODEL_DIR  the float model the adapter was trained on
#   ADAPTER_DIR     the adapter folder (adapter_config.json, adapter_model.safetensors)
#   ARGS            passed to check_peft_adapter.py (--prompt, --tolerance)
#   --venv DIR, or KBIT_PEFT_VENV=DIR: use (and keep) the virtual environment DIR, created and
#                   filled on first use. Without it a venv is made in a temporary folder and
#                   removed at the end.
#   KBIT_PEFT_PIP_SPECS: the packages to install (default: torch transformers==5.17.0 peft==0.21.0
#                   safetensors numpy).
#   KBIT: the kbit command (default build/cuda/kbit, else build/release/kbit).
# kbit writes the logits of the base with the adapter (`kbit logits --adapter`, f32 on the CPU);
# the script loads the same adapter with PeftModel.from_pretrained and compares.
# Exit status: 0 when the adapter passes, 1 when a check fails, 2 on a usage or install error.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

venv="${KBIT_PEFT_VENV:-}"
# shellcheck source=scripts/lib/python-venv.sh
source "$root/scripts/lib/python-venv.sh"
kbit_parse_check_args "$@"
[[ ${#positional[@]} -eq 2 ]] || usage
base="${positional[0]}"
adapter="${positional[1]}"
for d in "$base" "$adapter"; do
  [[ -d "$d" ]] || { echo "check-peft-adapter: $d is not a folder" >&2; exit 2; }
done
kbit="${KBIT:-}"
for candidate in "$root/build/cuda/kbit" "$root/build/release/kbit"; do
  [[ -z "$kbit" && -x "$candidate" ]] && kbit="$candidate"
done
[[ -x "$kbit" ]] || { echo "check-peft-adapter: no kbit command; build it or set KBIT" >&2; exit 2; }

kbit_python_venv check-peft-adapter "$venv" \
  "${KBIT_PEFT_PIP_SPECS:-torch transformers==5.17.0 peft==0.21.0 safetensors numpy}" \
  "torch, transformers, peft, safetensors"
venv="$KBIT_VENV"

work="$(mktemp -d -t kbit-peft-check.XXXXXX)"
trap 'rm -rf "$work" ${KBIT_VENV_TMP:+"$KBIT_VENV_TMP"}' EXIT
status=0
"$venv/bin/python" "$root/scripts/check_peft_adapter.py" "$base" "$adapter" "$kbit" "$work" \
  ${extra[@]+"${extra[@]}"} || status=$?
[[ -z "${KBIT_VENV_TMP:-}" ]] && echo "check-peft-adapter: kept the virtual environment $venv" >&2
exit $status

# A throwaway (or kept) Python virtual environment for the scripts that check kbit's files against
# the Python libraries, and their shared command line. Sourced, not run.
#
# kbit_parse_check_args "$@"
#   [--venv DIR | --venv=DIR] ARGUMENT... [-- EXTRA...]: sets `venv` to DIR (leaving the caller's
#   default without the flag), the arrays `positional` and `extra`; calls the caller's `usage`
#   function for -h, --help or a --venv without its DIR.
kbit_parse_check_args() {
  positional=()
  extra=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --venv) [[ $# -ge 2 ]] || usage; venv="$2"; shift 2 ;;
      --venv=*) venv="${1#--venv=}"; shift ;;
      -h|--help) usage ;;
      --) shift; extra=("$@"); break ;;
      *) positional+=("$1"); shift ;;
    esac
  done
}
#
# kbit_python_venv TOOL VENV SPECS IMPORTS
#   TOOL     the calling script's name, for messages
#   VENV     the environment's folder, created and filled on first use and kept; empty: one in a
#            temporary folder, removed when the script exits
#   SPECS    pip specs, space separated ("torch transformers==5.17.0 peft"); torch comes from
#            https://download.pytorch.org/whl/cpu where that is reachable, else from PyPI (whose
#            Linux wheel pulls in the CUDA libraries: about 6 GB in all)
#   IMPORTS  the modules that must import, comma separated ("torch, transformers"); when they do,
#            nothing is installed
# Sets KBIT_VENV to the environment's folder, and KBIT_VENV_TMP to the temporary folder that holds
# it when it is not kept; exits with status 2 if it cannot be made.
kbit_python_venv() {
  local tool="$1" venv="$2" specs="$3" imports="$4"
  if [[ -z "$venv" ]]; then
    KBIT_VENV_TMP="$(mktemp -d -t "kbit-$tool.XXXXXX")"
    venv="$KBIT_VENV_TMP/venv"
    trap 'rm -rf "$KBIT_VENV_TMP"' EXIT
  fi
  if [[ ! -x "$venv/bin/python" ]]; then
    echo "$tool: creating the virtual environment $venv" >&2
    python3 -m venv "$venv" ||
      { echo "$tool: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 2; }
  fi
  if ! "$venv/bin/python" -c "import $imports" 2>/dev/null; then
    echo "$tool: installing $specs" >&2
    "$venv/bin/pip" install -q --upgrade pip >&2 || true
    local torch_spec
    torch_spec="$(tr ' ' '\n' <<<"$specs" | grep -E '^torch([=<>!~].*)?$' || true)"
    if [[ -n "$torch_spec" ]]; then
      # The CPU wheel is a fraction of the size of PyPI's CUDA build; fall back to PyPI.
      "$venv/bin/pip" install -q --retries 0 --timeout 15 "$torch_spec" \
        --index-url https://download.pytorch.org/whl/cpu >&2 2>/dev/null ||
        echo "$tool: download.pytorch.org not reachable, torch from PyPI" >&2
    fi
    # shellcheck disable=SC2086
    "$venv/bin/pip" install -q $specs >&2 || { echo "$tool: pip install failed" >&2; exit 2; }
  fi
  KBIT_VENV="$venv"
}

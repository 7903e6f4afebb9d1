#!/usr/bin/env bash
# Create .bench-venv-ref: Python 3.11 + torch 2.13.0 (CPU) + transformers, the Hugging Face side of
# bench/pretrain_throughput.py. It is a separate venv on purpose: torch never goes into the project
# venv (OneFlow 0.9 needs Python 3.10 and its own NumPy 1.x; transformers wants newer everything).
#   REF_VENV=path      where to create it (default: .bench-venv-ref in the repository)
#   PYTHON311=path     interpreter to use (default: python3.11 on PATH, then pyenv's 3.11)
#   TORCH_INDEX_URL=u  e.g. https://download.pytorch.org/whl/cpu to get the CPU-only wheel
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${REF_VENV:-.bench-venv-ref}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

try() { "$1" -c 'import sys; assert sys.version_info[:2] == (3, 11)' >/dev/null 2>&1 && command -v "$1"; }
find_python311() {
  for cand in "${PYTHON311:-}" python3.11; do
    [ -n "$cand" ] && try "$cand" && return 0
  done
  if command -v pyenv >/dev/null 2>&1; then
    for dir in "$(pyenv root)"/versions/3.11*/bin; do
      [ -x "$dir/python3.11" ] && try "$dir/python3.11" && return 0
    done
  fi
  echo "error: no Python 3.11 found for the reference venv (install python3.11 or set PYTHON311=...)" >&2
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  PY="$(find_python311)"
  echo "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
extra=()
[ -n "${TORCH_INDEX_URL:-}" ] && extra=(--extra-index-url "$TORCH_INDEX_URL")
"$VENV/bin/python" -m pip install --quiet "${extra[@]}" "torch==${TORCH_VERSION}" transformers
"$VENV/bin/python" -c 'import torch, transformers; print("reference venv ready: torch", torch.__version__, "transformers", transformers.__version__)'

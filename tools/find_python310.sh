#!/usr/bin/env bash
# Print the path of a working Python 3.10 interpreter, or explain what to install and fail.
# OneFlow 0.9.0 has compiled wheels only up to CPython 3.10, so nothing newer will do.
set -u
try() { "$1" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1 && command -v "$1"; }
for cand in "${PYTHON310:-}" python3.10 "${CONDA_PREFIX:+$CONDA_PREFIX/bin/python}"; do
  [ -n "$cand" ] && try "$cand" && exit 0
done
# pyenv keeps 3.10 installed but not global: its shim fails, the interpreter itself works.
if command -v pyenv >/dev/null 2>&1; then
  for dir in "$(pyenv root)"/versions/3.10*/bin; do
    [ -x "$dir/python3.10" ] && try "$dir/python3.10" && exit 0
  done
fi
cat >&2 <<'MSG'
error: no working Python 3.10 found (OneFlow 0.9.0 has wheels for CPython 3.7-3.10 only).
Install one of:
  conda env create -f environment.yml && conda activate bertlib   (then: make test PYTHON310=python)
  your OS package, e.g. `apt-get install python3.10 python3.10-venv`
  pyenv install 3.10
or point PYTHON310=/path/to/python3.10 at an existing interpreter.
MSG
exit 1

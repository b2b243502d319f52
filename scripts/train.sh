#!/usr/bin/env bash
# `pnpm run train [-- options]`: on first use create .venv and install dndllama into it (this builds
# llama.cpp, a few minutes), reinstall when the native sources change, then run `dndllama train`.
# DNDLLAMA_PYTHON picks the interpreter (3.11+), DNDLLAMA_VENV the environment's folder.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${DNDLLAMA_VENV:-$root/.venv}"
python="${DNDLLAMA_PYTHON:-python3}"

# what a rebuild depends on; Python sources are live in an editable install
stamp="$(cat "$root/pyproject.toml" "$root/CMakeLists.txt" "$root"/cpp/*.* "$root"/cpp/patches/* | sha256sum | cut -c1-16)"
if [ ! -x "$venv/bin/dndllama" ] || [ "$(cat "$venv/.dndllama-stamp" 2>/dev/null)" != "$stamp" ]; then
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: dndllama needs Python 3.11 or newer ('$python' is missing or older)" >&2
    echo "  what to do: install Python 3.11+, or set DNDLLAMA_PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  [ -x "$venv/bin/python" ] || { echo "creating $venv ..."; "$python" -m venv "$venv"; }
  echo "installing dndllama into $venv (first run or native sources changed: builds llama.cpp) ..."
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$root"
  echo "$stamp" > "$venv/.dndllama-stamp"
fi

[ "${1:-}" = "--" ] && shift   # `pnpm run train -- --max-steps 4` forwards the "--" on some pnpm versions
cd "$root"
exec "$venv/bin/dndllama" train "$@"

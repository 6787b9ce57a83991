#!/usr/bin/env bash
# Creates .venv (Debian's system Python refuses pip install) with the few small packages the tests use:
# numpy, safetensors, tokenizers. Never torch. Prints the venv's python path as its last line.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2
fi
if ! "$venv/bin/python" -c 'import numpy, safetensors, tokenizers' 2>/dev/null; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check numpy safetensors tokenizers >&2
fi
echo "$venv/bin/python"

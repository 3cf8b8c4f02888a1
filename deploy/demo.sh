#!/usr/bin/env bash
# The README's demo command: make .venv if needed, install mirrord into it, and
# run deploy/demo.py (a three-node cluster on 127.0.0.11-13 with a mirrored
# database). Extra arguments go to demo.py (e.g. --keep-running, --stop).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.mirrord-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet -e .
    touch "$stamp"
fi
exec .venv/bin/python deploy/demo.py "$@"

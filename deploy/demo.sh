#!/usr/bin/env bash
# The README's demo command, for a fresh machine with Python 3.11+:
#
#     bash deploy/demo.sh          make .venv if needed, install mirrord into it, run
#                                  deploy/demo.py: three nodes on 127.0.0.11-13, a
#                                  mirrored database with a witness, SIGKILLs, failover,
#                                  rejoin; the nodes stay up at the end
#     bash deploy/demo.sh stop     stop the nodes the demo left running
#
# Other arguments go to demo.py (e.g. --stop-at-end). Exit status non-zero if any
# step did not come out as expected.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "${1:-}" = stop ]; then
    shift
    set -- --stop "$@"
fi

if [ ! -x .venv/bin/python ]; then
    echo "=== creating the virtual environment .venv"
    python3 -m venv .venv
fi
stamp=.venv/.mirrord-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "=== installing mirrord into .venv (pip install -e .)"
    .venv/bin/python -m pip install --quiet -e .
    touch "$stamp"
fi
exec .venv/bin/python deploy/demo.py "$@"

#!/usr/bin/env bash
# The README's test command: make .venv if needed, install mirrord with its test
# extras, run pytest. Extra arguments go to pytest (e.g. -m "not cluster", -k name).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# reinstall only when the project metadata changed since the last install
stamp=.venv/.mirrord-test-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet -e '.[test]'
    touch "$stamp"
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"

"""A short seeded nemesis run: real nodes, real faults, every invariant checked (exit status 0).

Seed 331's three rounds hold every fault kind: a link cut, a SIGKILL, a node
isolated from both others, manual failovers, an endpoint STOPPED, SAFETY OFF,
a node frozen. The command runs as a child process, exactly as a person would run
it, on this run's own address range.
"""

from __future__ import annotations

import subprocess
import sys

from .conftest import FIRST_IP

SEED = 331
ROUNDS = 3


def test_nemesis_short_run_finds_no_violation(tmp_path):
    data = tmp_path / "nemesis"
    proc = subprocess.run(
        [sys.executable, "-m", "mirrord.nemesis", "--rounds", str(ROUNDS), "--seed", str(SEED),
         "--data", str(data), "--first-ip", str(FIRST_IP)],
        capture_output=True, text=True, timeout=240,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"nemesis failed (exit {proc.returncode}):\n{out}"
    assert f"rounds: {ROUNDS}\n" in out
    assert "violations: none" in out and "OK" in out
    assert "lost (SAFETY FULL): 0," in out and "split-brain role sequences: 0" in out
    for n in range(1, ROUNDS + 1):
        assert f"round {n}: " in out

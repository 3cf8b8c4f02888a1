"""benchmarks/ab.py's pure part: medians per cell on either side, and B / A."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import ab  # noqa: E402


def _run(mode: str, clients: int, cps: float, p50: float | None = 1.0, cpu: float | None = 0.5, errors: int = 0) -> dict:
    return {"mode": mode, "clients": clients, "commits_per_s": cps, "p50_ms": p50, "server_cpu_ms": cpu, "errors": errors}


def test_medians_per_cell_and_the_ratio_of_b_to_a():
    runs = {
        "a": [[_run("SAFETY FULL", 1, 100), _run("SAFETY FULL", 8, 800)],
              [_run("SAFETY FULL", 1, 300), _run("SAFETY FULL", 8, 1000)],
              [_run("SAFETY FULL", 1, 200, errors=2), _run("SAFETY FULL", 8, 900)]],
        "b": [[_run("SAFETY FULL", 1, 400, cpu=0.25), _run("SAFETY FULL", 8, 1800)],
              [_run("SAFETY FULL", 1, 500, cpu=0.25), _run("SAFETY FULL", 8, 1800)],
              [_run("SAFETY FULL", 1, 600, cpu=0.25), _run("SAFETY FULL", 8, 1800)]],
    }
    one, eight = ab.summarize(runs)
    assert (one["mode"], one["clients"], one["rounds"]) == ("SAFETY FULL", 1, 3)
    assert one["commits_per_s"] == {"a": 200, "b": 500, "ratio": 2.5}
    assert one["server_cpu_ms"] == {"a": 0.5, "b": 0.25, "ratio": 0.5}
    assert one["errors"] == {"a": 2, "b": 0}
    assert eight["clients"] == 8 and eight["commits_per_s"]["ratio"] == 2.0


def test_rows_are_ordered_by_clients_then_mode_and_a_missing_metric_has_no_ratio():
    runs = {"a": [[_run("standalone", 32, 10, p50=None), _run("SAFETY OFF", 1, 10)]],
            "b": [[_run("standalone", 32, 20, p50=None), _run("SAFETY OFF", 1, 5)]]}
    rows = ab.summarize(runs)
    assert [(r["clients"], r["mode"]) for r in rows] == [(1, "SAFETY OFF"), (32, "standalone")]
    assert rows[1]["p50_ms"] == {"a": None, "b": None, "ratio": None}
    assert rows[0]["commits_per_s"]["ratio"] == 0.5


def test_a_cell_only_one_side_ran_counts_no_rounds():
    rows = ab.summarize({"a": [[_run("SAFETY FULL", 128, 10)]], "b": [[]]})
    assert rows[0]["rounds"] == 0
    assert rows[0]["commits_per_s"] == {"a": 10, "b": None, "ratio": None}


@pytest.mark.parametrize("argv, why", [
    (["x", "y", "--rounds", "0"], "--rounds"),
    (["x", "y", "--seconds", "0"], "--seconds"),
    (["x"], "required"),
])
def test_bad_arguments_are_refused_with_the_reason(argv, why, capsys):
    with pytest.raises(SystemExit) as exc:
        ab.parse_args(argv)
    assert exc.value.code == 2
    assert why in capsys.readouterr().err

"""A short run of `python -m mirrord_testing.fuzz` in CI: every target, no crash."""

from __future__ import annotations

import pytest

from mirrord_testing import fuzz


@pytest.mark.parametrize("target", sorted(fuzz.TARGETS))
def test_short_fuzz_run_finds_no_crash(target):
    outcome = fuzz.run(3000, seed=12, targets=[target], report_every=0)
    assert outcome["inputs"][target] == 3000
    assert outcome["crashes"][target] == [], outcome["crashes"][target][0]


def test_the_command_reports_and_exits_zero(capsys):
    assert fuzz.main(["--inputs", "600", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "total" in out and "0 crashes" in out


def test_a_crash_is_reported_with_its_seed(monkeypatch, capsys):
    def broken(rng, corpus):
        raise KeyError("boom")

    monkeypatch.setitem(fuzz.TARGETS, "sql", broken)
    assert fuzz.main(["--inputs", "50", "--seed", "4", "--target", "sql"]) == 1
    assert "--seed 4 --skip 0" in capsys.readouterr().out

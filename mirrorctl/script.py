"""Scripts for `mirrorctl -i FILE`: batches separated by GO lines, as sqlcmd reads them.

A line holding only `GO` (any case, optionally `GO n` to run the batch n
times) ends a batch; it is never sent to the server. Text after the last GO
is a batch too. Empty batches (blank lines, comments only between two GOs)
are skipped, as sqlcmd skips them. Pure: text in, batches out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_GO = re.compile(r"^\s*GO(?:\s+(\d+))?\s*(?:--.*)?$", re.IGNORECASE)
MAX_REPEAT = 1_000_000


@dataclass(frozen=True)
class Batch:
    """One batch: its text, how many times to run it, and the line it starts on (for errors)."""

    sql: str
    repeat: int
    line: int


class ScriptError(ValueError):
    """The script cannot be split (a GO count out of range)."""


def split_batches(text: str) -> list[Batch]:
    """The batches of a script, in order; ScriptError on a bad GO count."""
    batches: list[Batch] = []
    lines: list[str] = []
    start = 1
    for number, line in enumerate(text.splitlines(), start=1):
        match = _GO.match(line)
        if match is None:
            lines.append(line)
            continue
        repeat = int(match.group(1)) if match.group(1) else 1
        if not 1 <= repeat <= MAX_REPEAT:
            raise ScriptError(f"line {number}: GO {match.group(1)}: the count must be 1..{MAX_REPEAT}")
        _add(batches, lines, repeat, start)
        lines, start = [], number + 1
    _add(batches, lines, 1, start)
    return batches


def _add(batches: list[Batch], lines: list[str], repeat: int, start: int) -> None:
    sql = "\n".join(lines).strip()
    if _has_statement(sql):
        skipped = next(i for i, line in enumerate(lines) if line.strip())  # report the first line with text
        batches.append(Batch(sql, repeat, start + skipped))


def _has_statement(sql: str) -> bool:
    """False for a batch of blank lines and `--` comments only."""
    return any(line.strip() and not line.strip().startswith("--") for line in sql.splitlines())

"""One rule for database names, and the check that a name-built path stays home.

Database names become directory and file names (databases/<db>/,
witness/<db>.json) and travel on the wire (hello, w_hello, queries). One rule
applies everywhere they enter: a statement, a wire message, a witness record,
a meta.json read at start. The rule is deliberately narrow: ASCII letters,
digits and `_`, not starting with a digit, at most 128 characters. Such a
name has no `/`, no `.`, no NUL and no case-folding surprises beyond the
file system's own, so it can never name a parent or a sibling directory.

`inside(base, *parts)` is the second line of defence: it resolves the joined
path (following links) and refuses anything that is not strictly below the
resolved base. Every path built from something a peer or client sent goes
through it, so a future relaxation of the name rule cannot reopen the hole.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
DB_NAME_RULE = "letters, digits and _ (not starting with a digit, at most 128 characters)"


class PathOutside(ValueError):
    """A path built from outside input does not stay inside its base directory."""


def is_db_name(name: object) -> bool:
    """True when name follows the one database-name rule."""
    return isinstance(name, str) and DB_NAME.fullmatch(name) is not None


def db_name_refusal(name: object) -> str | None:
    """Why name is not a valid database name, or None."""
    if is_db_name(name):
        return None
    shown = repr(name)[:60] if isinstance(name, str) else type(name).__name__
    return f"{shown} is not a valid database name: use {DB_NAME_RULE}"


def inside(base: Path, *parts: str) -> Path:
    """base/parts resolved (links followed); PathOutside unless strictly below base resolved."""
    root = Path(os.path.realpath(base))
    target = Path(os.path.realpath(root.joinpath(*parts)))
    if target == root or not target.is_relative_to(root):
        raise PathOutside(f"{os.path.join(*parts) if parts else ''!r} resolves outside {root}")
    return target

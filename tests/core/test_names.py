"""The one database-name rule and the path check, and where they are enforced."""

from __future__ import annotations

import os

import pytest

from mirrord.core import messages
from mirrord.core.names import PathOutside, db_name_refusal, inside, is_db_name
from mirrord.core.statements import parse
from mirrord.core.types import ProtocolError, StatementSyntaxError

GOOD = ["shop", "_x", "A1_b", "x" * 128]
BAD = ["", "1abc", "../../x", "../databases/v2/meta", "a/b", "a.b", "a b", "x" * 129, "é", "a\x00", ".", "..",
       "shop\n", None, 5, b"shop"]


@pytest.mark.parametrize("name", GOOD)
def test_good_names(name):
    assert is_db_name(name) and db_name_refusal(name) is None


@pytest.mark.parametrize("name", BAD)
def test_bad_names_everywhere(name):
    assert not is_db_name(name)
    assert "not a valid database name" in db_name_refusal(name)
    hello = {"t": "w_hello", "db": name, "from_endpoint": "tcp://h:1", "role": "PRINCIPAL", "role_sequence": 1,
             "partner": "tcp://h:2", "synchronized": True, "safety": "FULL", "timeout": 5}
    with pytest.raises(ProtocolError, match="'db' must be a database name"):
        messages.validate(hello)
    if isinstance(name, str) and "\n" not in name and "'" not in name:
        with pytest.raises(StatementSyntaxError):
            parse(f"EXEC sp_transaction_status '{name}', 1, 1")


def test_inside_refuses_escapes(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", base / "link")
    assert inside(base, "x.json") == (base / "x.json").resolve()
    assert inside(base, "sub/x") == (base / "sub" / "x").resolve()
    for part in ("../x", "/etc/passwd", "link/x", ".", "", "a/../../x"):
        with pytest.raises(PathOutside):
            inside(base, part)

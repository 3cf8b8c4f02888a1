"""mirrorctl against real nodes: a partner list that follows the principal, and typos."""

from __future__ import annotations

import json

from mirrorctl import cli
from tests.cluster.helpers import create_table, ids_on

DB = "shop"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_mirrorctl_follows_the_principal_and_names_typos(cluster, capsys, tmp_path):
    cluster.setup_session(DB, principal="a", mirror="b")
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)

    # sent to the mirror alone: its refusal names the principal, and the statement goes there
    code, out, err = run(capsys, "-S", b.address, "-d", DB, "-Q", "INSERT INTO t(id, v) VALUES (1, 'via b')")
    assert (code, out.strip(), err) == (0, "OK (1 row affected)", "")
    # a partner list, mirror first, and a script of GO batches
    script = tmp_path / "load.sql"
    script.write_text("INSERT INTO t(id, v) VALUES (2, 'x')\nGO\nINSERT INTO t(id, v) VALUES (3, 'y')\nGO\n")
    code, out, err = run(capsys, "-S", f"{b.address},{a.address}", "-d", DB, "-i", str(script), "-b")
    assert code == 0 and err == "" and out.count("OK (1 row affected)") == 2
    assert ids_on(a, DB) == {1, 2, 3}

    code, out, _ = run(capsys, "-S", f"{b.address},{a.address}", "-d", DB, "-Q", "SELECT id FROM t ORDER BY id", "--json")
    assert code == 0 and json.loads(out) == [{"id": 1}, {"id": 2}, {"id": 3}]

    code, out, err = run(capsys, "-S", a.address, "-Q", f"ALTER DATABSE {DB} SET PARTNER OFF")
    assert code == 1 and out == ""
    assert "unexpected word DATABSE" in err and "did you mean ALTER DATABASE?" in err
    assert a.status(DB)["partner"] is not None  # the refused statement changed nothing

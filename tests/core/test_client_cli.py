"""Client library and CLI against a tiny fake node speaking the real framing.

The fake server runs its own event loop in a thread, so the blocking `Client`
and `mirrorctl.cli.main` can be called from the test thread as they are from
scripts, and `AsyncClient` from the pytest-asyncio loop.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Iterator

import pytest

from mirrorctl import cli
from mirrorctl.client import (AnswerLost, AnswerTimeout, AsyncClient, BadSyntax, Client, ConnectionLost, NotPrincipal, OutcomeUnknown,
                              QueryTimeout, Result, ServerError, Unreachable)
from mirrord.core import messages
from mirrord.core.types import ProtocolError
from mirrord.net.framing import read_message, write_message

STATUS_COLUMNS = ["database", "role", "state", "safety", "partner", "witness", "witness_state",
                  "role_sequence", "failover_lsn", "end_of_log_lsn", "hardened_lsn", "redo_lsn",
                  "send_queue_bytes", "redo_queue_bytes", "timeout"]
STATUS_ROWS = [
    ["shop", "PRINCIPAL", "SYNCHRONIZED", "FULL", "tcp://b:5022", "tcp://w:5022", "CONNECTED",
     2, 10, 12, 12, 11, 0, 40, 10],
    ["crm", "MIRROR", "SUSPENDED", "OFF", "tcp://a:5022", None, "UNKNOWN",
     1, 0, 5, 5, 5, 0, 0, 10],
]


EVENT_COLUMNS = ["time", "node", "database", "event", "role", "state", "role_sequence", "lsn", "detail"]
EVENT_ROWS = [
    ["2027-01-15T08:00:01.000Z", "a", "shop", "STEPPED_DOWN", "MIRROR", "DISCONNECTED", 2, 40, "the witness records b"],
    ["2027-01-15T08:00:03.000Z", "a", "crm", "SUSPEND", "PRINCIPAL", "SUSPENDED", 1, 9, "SET PARTNER SUSPEND"],
]


def answer(msg: dict) -> dict | None:
    """The fake node's answer to one query (None: special handling)."""
    sql, qid = msg["sql"], msg["id"]
    if sql.startswith("SELECT * FROM sys.database_mirroring_events"):
        rows = [r for r in EVENT_ROWS if "WHERE" not in sql or f"'{r[2]}'" in sql]
        return messages.result(qid, EVENT_COLUMNS, rows, len(rows))
    if sql.startswith("SELECT * FROM sys.database_mirroring"):
        rows = [r for r in STATUS_ROWS if "WHERE" not in sql or f"'{r[0]}'" in sql]
        return messages.result(qid, STATUS_COLUMNS, rows, len(rows))
    if sql == "ECHO":
        return messages.result(qid, ["db", "params", "[b]"], [[msg["db"], msg["params"], b"\x01"]], 1)
    if sql.startswith("INSERT"):
        return messages.result(qid, [], [], 2, lsn=7, role_sequence=1)
    if sql.startswith("CREATE TABLE"):
        return messages.result(qid, [], [], -1)
    if sql.startswith("CREATE DATABASE"):
        return messages.result(qid, [], [], 0, message="Database shop created.")
    if sql == "FAIL":
        return messages.error(qid, "not_principal", "shop is a mirror here", "tcp://b:5022")
    if sql == "SYNTAX":
        return messages.error(qid, "syntax", "CREATE DATABASE: expected a database name")
    if sql == "WRONGID":
        return messages.result(qid + 1, [], [], 0)
    return None


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Serve one connection until it closes."""
    try:
        while True:
            msg = messages.validate(await read_message(reader))
            if msg["sql"] == "SLOW":
                await asyncio.sleep(1.0)
            if msg["sql"] == "GARBAGE":
                writer.write(b"\x00\x00\x00\x01\x07\x00\x00\x00\x00x")
            elif (reply := answer(msg)) is not None:
                write_message(writer, reply)
            else:
                break  # "DROP" and anything unknown: hang up without answering
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ProtocolError):
        pass
    finally:
        writer.close()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Address of a fake node serving in a background thread."""
    ready = threading.Event()
    state: dict = {}

    async def serve() -> None:
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        state["address"] = "127.0.0.1:%d" % srv.sockets[0].getsockname()[1]
        state["stop"] = asyncio.get_running_loop().create_future()
        ready.set()
        async with srv:
            await state["stop"]
        # Connections still being served (a SLOW answer) end here, not at loop close.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    ready.wait(5)
    yield state["address"]
    loop.call_soon_threadsafe(state["stop"].set_result, None)
    thread.join(5)
    loop.close()


@pytest.fixture
def dead_address() -> str:
    """An address where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "127.0.0.1:%d" % s.getsockname()[1]


# ---------------------------------------------------------------- blocking client


def test_client_query_and_ids(server: str) -> None:
    with Client.connect(server) as c:
        r = c.query("ECHO", db="shop", params=[1, "x"])
        assert r.rows == [["shop", [1, "x"], b"\x01"]]
        assert c.query("INSERT INTO t VALUES (1)") == Result([], [], 2, 7, 1, None)
        assert c.query("ECHO").as_dicts() == [{"db": None, "params": None, "[b]": b"\x01"}]


def test_client_status(server: str) -> None:
    with Client.connect("tcp://" + server) as c:
        assert [row["database"] for row in c.status()] == ["shop", "crm"]
        assert [row["role"] for row in c.status("crm")] == ["MIRROR"]


def test_client_server_errors(server: str) -> None:
    with Client.connect(server) as c:
        with pytest.raises(NotPrincipal) as info:
            c.query("FAIL")
        assert (info.value.code, info.value.principal) == ("not_principal", "tcp://b:5022")
        with pytest.raises(BadSyntax):
            c.query("SYNTAX")
        assert c.query("ECHO").rowcount == 1  # an error answer leaves the connection usable


def test_client_connection_lost(server: str) -> None:
    c = Client.connect(server)
    with pytest.raises(AnswerLost):  # sent, then the connection dropped: the outcome is unknown
        c.query("DROP")
    with pytest.raises(ConnectionLost) as info:  # closed before sending: plainly unreachable
        c.query("ECHO")
    assert not isinstance(info.value, OutcomeUnknown)


def test_client_timeout_closes(server: str) -> None:
    c = Client.connect(server)
    with pytest.raises(AnswerTimeout) as info:
        c.query("SLOW", timeout=0.1)
    assert isinstance(info.value, (OutcomeUnknown, QueryTimeout, Unreachable))  # older handlers still catch it
    with pytest.raises(Unreachable) as info:
        c.query("ECHO")
    assert not isinstance(info.value, OutcomeUnknown)


@pytest.mark.parametrize("sql", ["WRONGID", "GARBAGE"])
def test_client_protocol_errors(server: str, sql: str) -> None:
    with pytest.raises(ProtocolError):
        Client.connect(server).query(sql)


def test_client_unreachable(dead_address: str) -> None:
    with pytest.raises(Unreachable):
        Client.connect(dead_address, timeout=1)


# ------------------------------------------------------------------- async client


async def test_async_client(server: str) -> None:
    async with await AsyncClient.connect(server) as c:
        assert (await c.query("ECHO", db="d", params={"a": 1})).rows[0][:2] == ["d", {"a": 1}]
        assert len(await c.status()) == 2
        with pytest.raises(ServerError, match="not_principal"):
            await c.query("FAIL")
        assert (await c.query("CREATE DATABASE shop")).message == "Database shop created."


async def test_async_client_sends_and_takes_frames_larger_than_the_transport_buffers(server: str) -> None:
    big = "x" * 4_000_000  # far past the transport's high-water mark: the request waits for the server to read it
    async with await AsyncClient.connect(server) as c:
        assert (await c.query("ECHO", params=[big], timeout=20)).rows[0][1] == [big]
        assert (await c.query("ECHO", db="d")).rows[0][0] == "d"  # the next answer is the next request's


async def test_async_client_failures(server: str, dead_address: str) -> None:
    with pytest.raises(Unreachable):
        await AsyncClient.connect(dead_address, timeout=1)
    c = await AsyncClient.connect(server)
    with pytest.raises(AnswerTimeout):
        await c.query("SLOW", timeout=0.1)
    with pytest.raises(ConnectionLost) as info:
        await c.query("ECHO")
    assert not isinstance(info.value, OutcomeUnknown)
    c = await AsyncClient.connect(server)
    with pytest.raises(AnswerLost):
        await c.query("DROP")
    c = await AsyncClient.connect(server)
    with pytest.raises(ProtocolError):
        await c.query("WRONGID")


# --------------------------------------------------------------------------- CLI


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """main(argv) in-process: (status, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_query_table(server: str, capsys) -> None:
    code, out, err = run(capsys, "-S", server, "-d", "shop", "-Q", "ECHO")
    assert code == 0 and err == ""
    assert "shop" in out and "[b]" in out and "0x01" in out and "\x1b[" not in out


def test_cli_query_json(server: str, capsys) -> None:
    code, out, _ = run(capsys, "-S", server, "-Q", "ECHO", "--json", "-d", "x")
    assert code == 0
    assert json.loads(out) == [{"db": "x", "params": None, "[b]": {"$binary": "AQ=="}}]  # never mistaken for text


@pytest.mark.parametrize("sql,expected", [
    ("INSERT INTO t VALUES (1)", "OK (2 rows affected)"),
    ("CREATE TABLE t (x)", "OK"),
    ("CREATE DATABASE shop", "Database shop created."),
])
def test_cli_no_columns(server: str, capsys, sql: str, expected: str) -> None:
    code, out, _ = run(capsys, "-S", server, "-Q", sql)
    assert (code, out.strip()) == (0, expected)


def test_cli_no_columns_json(server: str, capsys) -> None:
    code, out, _ = run(capsys, "-S", server, "-Q", "INSERT INTO t VALUES (1)", "--json")
    assert json.loads(out) == {"rowcount": 2, "message": None, "lsn": 7, "role_sequence": 1, "seq": None}


def test_cli_status_table(server: str, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MIRRORCTL_SERVER", "tcp://" + server)
    code, out, _ = run(capsys, "status")
    assert code == 0
    header = [h.strip() for h in out.splitlines()[0].split("|")]
    # the readable summary: the columns a DBA looks at first, of those the server has; the rest is in --json
    assert header == ["database", "role", "state", "safety", "witness", "role seq"]
    assert "SYNCHRONIZED" in out and "crm" in out


def test_cli_status_json_one_database(server: str, capsys) -> None:
    code, out, _ = run(capsys, "-S", server, "status", "--json", "-d", "crm")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 1
    assert list(rows[0]) == STATUS_COLUMNS and rows[0]["witness"] is None


def test_cli_server_error(server: str, capsys) -> None:
    code, out, err = run(capsys, "-S", server, "-Q", "FAIL")
    assert (code, out) == (1, "")
    assert err.splitlines() == ["error [not_principal]: shop is a mirror here",
                                "principal: tcp://b:5022"]


def test_cli_server_error_without_principal(server: str, capsys) -> None:
    code, _, err = run(capsys, "-S", server, "-Q", "SYNTAX")
    assert code == 1 and "principal" not in err and err.startswith("error [syntax]: ")


def test_cli_unreachable(dead_address: str, capsys) -> None:
    code, out, err = run(capsys, "-S", dead_address, "-Q", "SELECT 1")
    assert code == 3 and out == "" and "cannot talk to" in err


@pytest.mark.parametrize("sql", ["SLOW", "DROP"])
def test_cli_a_statement_sent_and_never_answered_is_outcome_unknown_not_unreachable(server: str, sql: str, capsys) -> None:
    code, out, err = run(capsys, "-S", server, "--timeout", "0.2", "-Q", sql)
    assert code == 4 and out == ""
    assert err.startswith("mirrorctl: outcome unknown: ") and "may have committed" in err and "cannot talk" not in err


@pytest.mark.parametrize("argv", [
    ["-Q", "SELECT 1"],                          # no server anywhere
    ["-S", "nohost", "-Q", "SELECT 1"],          # no port
    ["-S", "h:1"],                               # neither -Q nor status
    ["-S", "h:1", "-Q", "x", "status"],          # both
    ["-S", "h:1", "frobnicate"],
    ["--bogus"],
])
def test_cli_usage_errors(argv: list[str], capsys, monkeypatch) -> None:
    monkeypatch.delenv("MIRRORCTL_SERVER", raising=False)
    code, _, err = run(capsys, *argv)
    assert code == 2 and "usage" in err


def test_cli_help(capsys) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "status" in out


@pytest.mark.parametrize("argv", [
    ["-S", "h:1", "-Q", "SELECT 1", "--timeout", "-1"],
    ["-S", "h:1", "-Q", "SELECT 1", "--timeout", "0"],
    ["-S", "h:1", "-Q", "SELECT 1", "--timeout", "nan"],
    ["-S", "h:1", "-Q", "SELECT 1", "--timeout", "inf"],
    ["-S", "h:1", "-Q", ""],
    ["-S", "h:1", "-Q", "   "],
    ["-S", "h:1", "-Q", "x", "-i", "f.sql"],
    ["-S", "h:1", "status", "-b"],
    ["-S", "h:1", "-b", "status"],
    ["-S", "h:1", "monitor", "--interval", "0"],
    ["-S", "h:1", "status", "--once"],
    ["-S", ",", "-Q", "x"],
    ["-S", "h:1,nohost", "-Q", "x"],
    ["-S", "h:1", "-o"],
    ["-S", "h:1", "monitor", "-o", "x.txt"],
    ["-S", "h:1", "history", "--last", "0"],
    ["-S", "h:1", "history", "--last", "x"],
    ["-S", "h:1", "history", "-b"],
])
def test_cli_bad_values_are_usage_errors(argv: list[str], capsys) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and "usage" in err and "Traceback" not in err + out


@pytest.mark.parametrize("argv,expected", [
    (["-S", "{server}", "-i", "/nonexistent/script.sql"], "cannot read the script"),
    (["-S", "{server}", "-Q", "ECHO", "-o", "/nonexistent/dir/out.txt"], "cannot write the output"),
])
def test_cli_unusable_files_are_usage_errors(server: str, capsys, argv: list[str], expected: str) -> None:
    code, out, err = run(capsys, *[a.format(server=server) for a in argv])
    assert code == 2 and expected in err and "Traceback" not in err


def test_cli_version(capsys) -> None:
    from mirrord import node

    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("mirrorctl ")
    with pytest.raises(SystemExit) as info:
        node.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("mirrord ")


@pytest.mark.parametrize("command", ["status", "monitor", "history"])
def test_cli_subcommand_help_has_examples(capsys, command: str) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and "examples:" in out and f"mirrorctl -S 127.0.0.11:1433" in out


def test_cli_output_file(server: str, capsys, tmp_path) -> None:
    out_file = tmp_path / "out.txt"
    code, out, _ = run(capsys, "-S", server, "-d", "shop", "-Q", "ECHO", "-o", str(out_file))
    assert code == 0 and out == ""
    assert "shop" in out_file.read_text()
    code, out, _ = run(capsys, "-S", server, "status", "-o", str(out_file), "--json")
    assert code == 0 and out == "" and [r["database"] for r in json.loads(out_file.read_text())] == ["shop", "crm"]


SCRIPT = """-- a comment-only batch is skipped
GO
INSERT INTO t VALUES (1)
GO
SYNTAX
go
INSERT INTO t VALUES (2)
GO 2
"""


def test_cli_script_runs_go_batches_and_continues_after_an_error(server: str, capsys, tmp_path) -> None:
    script = tmp_path / "s.sql"
    script.write_text(SCRIPT)
    code, out, err = run(capsys, "-S", server, "-i", str(script))
    assert code == 1  # a batch failed
    assert out.splitlines() == ["OK (2 rows affected)"] * 3  # GO 2 ran its batch twice
    assert err.startswith(f"error [syntax] ({script}, line 5): ")


def test_cli_script_b_stops_at_the_first_error(server: str, capsys, tmp_path) -> None:
    script = tmp_path / "s.sql"
    script.write_text(SCRIPT)
    code, out, err = run(capsys, "-S", server, "-i", str(script), "-b")
    assert code == 1 and out.splitlines() == ["OK (2 rows affected)"]


def test_cli_status_with_nothing_to_show_says_so(server: str, capsys) -> None:
    cli.print_result(Result(["database", "role"], [], 0), as_json=False, is_status=True)
    assert capsys.readouterr().out == "no databases on this node\n"
    code, out, err = run(capsys, "-S", server, "status", "-d", "nosuch")
    assert code == 1 and out == "" and "no database nosuch" in err


def test_cli_follows_a_partner_list_past_dead_addresses(server: str, dead_address: str, capsys) -> None:
    code, out, _ = run(capsys, "-S", f"{dead_address},{server}", "-d", "shop", "-Q", "ECHO")
    assert code == 0 and "shop" in out
    code, _, err = run(capsys, "-S", f"{dead_address},{dead_address}", "-Q", "ECHO")
    assert code == 3 and "cannot talk to" in err


@pytest.fixture
def frozen_addresses() -> Iterator[list[str]]:
    """Two addresses that accept connections (the kernel's backlog) and never answer: frozen nodes."""
    socks = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        socks.append(s)
    yield ["127.0.0.1:%d" % s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()


def test_cli_monitor_asks_all_nodes_at_once(server: str, frozen_addresses: list[str], capsys) -> None:
    import time as _time

    started = _time.monotonic()
    code, out, _ = run(capsys, "-S", ",".join([*frozen_addresses, server]), "monitor", "--once", "--json", "--timeout", "1")
    took = _time.monotonic() - started
    rows = json.loads(out)
    assert code == 0 and [r["state"] for r in rows[:2]] == ["UNREACHABLE", "UNREACHABLE"]
    assert {r["database"] for r in rows[2:]} == {"shop", "crm"}
    assert took < 1.9, f"two frozen nodes cost {took:.2f} s: asked one after another"


def test_cli_history_merges_the_nodes_by_time_and_names_the_missing(server: str, dead_address: str, capsys) -> None:
    code, out, err = run(capsys, "-S", f"{server},{server}", "history", "--json")
    rows = json.loads(out)
    assert (code, err) == (0, "") and [r["event"] for r in rows] == ["STEPPED_DOWN", "STEPPED_DOWN", "SUSPEND", "SUSPEND"]
    assert all(r["server"] == server for r in rows)
    code, out, err = run(capsys, "-S", f"{server},{dead_address}", "history", "-d", "shop", "--last", "1")
    assert code == 1 and f"no events from {dead_address}" in err
    assert "STEPPED_DOWN" in out and "SUSPEND" not in out and "2027-01-15T08:00:01.000Z" in out
    code, out, err = run(capsys, "-S", dead_address, "history")
    assert code == 3 and out == ""

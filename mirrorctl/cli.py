"""`mirrorctl`: run one statement against a node, show mirroring status, or watch a cluster.

    mirrorctl -S HOST:PORT [-d DB] -Q "STATEMENT" [--json]
    mirrorctl -S HOST:PORT status [-d DB] [--json]
    mirrorctl -S HOST:PORT[,HOST:PORT...] monitor [-d DB] [--interval S] [--once] [--json]

How it works: parse arguments, open a blocking `Client`, run one query, print
the rows as a table (rich; colours only on a terminal) or as JSON, and map the
outcome to an exit status that scripts can test:

    0 success · 1 the server returned an error · 2 usage error · 3 server unreachable

Why a blocking client: one statement per process needs no event loop, and
`main(argv)` returns the status instead of exiting, so tests call it in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mirrord.core.types import ProtocolError
from mirrorctl.client import (Client, Result, ServerError, Unreachable, parse_address,
                              status_sql)

EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
SERVER_ENV = "MIRRORCTL_SERVER"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(
        prog="mirrorctl", description="Run a statement on a mirrord node, or show mirroring status.")
    parser.add_argument("-S", "--server", default=os.environ.get(SERVER_ENV),
                        help=f"HOST:PORT or tcp://HOST:PORT of the client port (default ${SERVER_ENV})")
    parser.add_argument("-d", "--database", help="database to run in (status: show only this one)")
    parser.add_argument("-Q", "--query", help="the statement to run")
    parser.add_argument("--json", action="store_true", help="print rows as a JSON array of objects")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the answer (default 30)")
    parser.add_argument("--interval", type=float, default=2.0, help="monitor: seconds between refreshes (default 2)")
    parser.add_argument("--once", action="store_true", help="monitor: print one snapshot and exit")
    parser.add_argument("command", nargs="?", choices=["status", "monitor"],
                        help="status: show mirroring status; monitor: watch every node given to -S (comma-separated)")
    return parser


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject contradictory or missing arguments (exits 2 through argparse)."""
    if not args.server:
        parser.error(f"no server: give -S HOST:PORT or set {SERVER_ENV}")
    servers = _servers(args.server) if args.command == "monitor" else [args.server]
    for server in servers:
        try:
            parse_address(server)
        except ValueError as exc:
            parser.error(str(exc))
    if not servers:
        parser.error("monitor needs -S HOST:PORT[,HOST:PORT...]")
    if (args.command is None) == (args.query is None):
        parser.error("give either -Q STATEMENT or the status or monitor command")
    if args.command != "monitor" and (args.once or args.interval != 2.0):
        parser.error("--once and --interval go with the monitor command")
    if not 0.1 <= args.interval <= 3600:
        parser.error("--interval must be 0.1..3600 seconds")


def _parse_args(argv: list[str] | None) -> argparse.Namespace | int:
    """Parsed arguments, or the exit status argparse chose (usage error, --help)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _check_usage(parser, args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return args


def _run(args: argparse.Namespace) -> Result:
    """Connect and run the one statement the arguments ask for."""
    with Client.connect(args.server) as client:
        if args.command == "status":
            return client.query(status_sql(args.database), timeout=args.timeout)
        return client.query(args.query, db=args.database, timeout=args.timeout)


def _cell(value: Any) -> str:
    """How a value shows in a table cell."""
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


def _json_default(value: Any) -> Any:
    """JSON for what msgpack carries but JSON lacks: bytes become 0x-hex."""
    if isinstance(value, bytes):
        return "0x" + value.hex()
    raise TypeError(f"cannot show {type(value).__name__} as JSON")


def print_table(result: Result, console: Console) -> None:
    """Rows as a table; Text cells, so [brackets] in data are not rich markup."""
    table = Table(box=box.SIMPLE_HEAD if console.is_terminal else box.ASCII, show_edge=False)
    for name in result.columns:
        table.add_column(Text(name), overflow="fold")
    for row in result.rows:
        table.add_row(*(Text(_cell(v)) for v in row))
    console.print(table)


def print_result(result: Result, as_json: bool, is_status: bool = False) -> None:
    """Print a Result on stdout as the user asked."""
    if as_json:
        print(json.dumps(_json_shape(result, is_status), default=_json_default))
    elif is_status and result.rows:
        _console().print(status_table(result.as_dicts(), _console().is_terminal))
    elif result.columns:
        print_table(result, _console())
    elif is_status:
        print("no mirrored databases")
    else:
        print(result.message or _affected(result.rowcount))


def _json_shape(result: Result, is_status: bool) -> Any:
    """Row objects; a statement without columns gives its outcome as one object."""
    if result.columns or is_status:
        return result.as_dicts()
    return {"rowcount": result.rowcount, "message": result.message,
            "lsn": result.lsn, "epoch": result.epoch}


def _affected(rowcount: int) -> str:
    """'OK (n rows affected)', or just 'OK' when SQLite does not know (-1)."""
    if rowcount < 0:
        return "OK"
    return f"OK ({rowcount} row{'' if rowcount == 1 else 's'} affected)"


def _console() -> Console:
    """A console on the current stdout; off a terminal, wide enough not to wrap rows."""
    if sys.stdout.isatty():
        return Console(file=sys.stdout, highlight=False)
    return Console(file=sys.stdout, highlight=False, width=100_000, no_color=True)


# ------------------------------------------------------------------ status and monitor tables

# (column, heading) of the readable status table; the rest is in --json and sys.database_mirroring
STATUS_SUMMARY = [
    ("database", "database"), ("role", "role"), ("state", "state"), ("state_reason", "why"), ("safety", "safety"),
    ("witness_state", "witness"), ("role_sequence", "role seq"), ("partner_address", "partner"),
    ("send_queue_kb", "send queue KB"), ("send_rate_kb_s", "send KB/s"), ("new_transactions_per_s", "txn/s"),
    ("redo_queue_kb", "redo queue KB"), ("redo_rate_kb_s", "redo KB/s"), ("transaction_delay_ms", "delay ms"),
    ("estimated_failover_s", "failover s"), ("failover_ready", "failover ready"), ("warnings", "warnings"),
]
MONITOR_SUMMARY = [("node", "node")] + [c for c in STATUS_SUMMARY if c[0] not in ("safety", "partner_address")]
FAILOVER_KINDS = ("automatic", "manual", "forced")
SHOWN_WHEN_SET = {"failover_ready", "state_reason"}  # columns left out while no row has a value


def failover_ready(row: dict) -> str | None:
    """Which failovers could happen now, e.g. 'automatic, manual'; None on a server without readiness."""
    if not any(f"{k}_failover" in row for k in FAILOVER_KINDS):
        return None
    ready = [k for k in FAILOVER_KINDS if row.get(f"{k}_failover") == "READY"]
    return ", ".join(ready) if ready else "none"


def summary_table(rows: list[dict], columns: list[tuple[str, str]], terminal: bool) -> Table:
    """A readable table of the chosen columns the rows have (an older server may lack some)."""
    for row in rows:
        row.setdefault("failover_ready", failover_ready(row))
    shown = [(c, h) for c, h in columns if any(c in r and (c not in SHOWN_WHEN_SET or r[c] is not None) for r in rows)]
    table = Table(box=box.SIMPLE_HEAD if terminal else box.ASCII, show_edge=False)
    for _, heading in shown:
        table.add_column(Text(heading), overflow="fold")
    for row in rows:
        table.add_row(*(Text("" if row.get(c) is None else _cell(row[c])) for c, _ in shown))
    return table


def status_table(rows: list[dict], terminal: bool) -> Table:
    """`mirrorctl status`: one line per database, the columns a DBA looks at first."""
    return summary_table(rows, STATUS_SUMMARY, terminal)


def _servers(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def collect(servers: list[str], db: str | None, timeout: float) -> list[dict]:
    """One row per (node, database) across the servers, witnesses included.

    A node that does not answer gives one row saying so, and so does one with
    nothing to show, so every node given is in the answer.
    """
    rows: list[dict] = []
    for server in servers:
        try:
            with Client.connect(server, timeout=min(timeout, 5.0)) as client:
                partners = client.query(status_sql(db), timeout=timeout).as_dicts()
                witnessed = client.query(_witness_sql(db), timeout=timeout).as_dicts()
        except (ServerError, Unreachable, ProtocolError, OSError) as exc:
            rows.append({"node": server, "database": None, "role": None, "state": "UNREACHABLE", "error": str(exc)})
            continue
        found = [{"node": server, **row} for row in partners] + [_witness_row(server, w) for w in witnessed]
        rows.extend(found or [{"node": server, "database": None, "role": None, "state": "NO DATABASES"}])
    return rows


def _witness_sql(db: str | None) -> str:
    where = "" if db is None else f" WHERE database = '{db}'"
    return f"SELECT * FROM sys.database_mirroring_witnesses{where}"


def _witness_row(server: str, w: dict) -> dict:
    """A witness's record of a session, shaped like a partner's row."""
    def seen(flag: object) -> str:
        return "CONNECTED" if flag else "DISCONNECTED"

    return {
        "node": server, "database": w.get("database"), "role": "WITNESS",
        "state": f"principal {seen(w.get('principal_connected'))}, mirror {seen(w.get('mirror_connected'))}",
        "role_sequence": w.get("role_sequence"), "safety": w.get("safety"), "witness_state": None,
        "principal": w.get("principal"), "mirror": w.get("mirror"), "mirror_synchronized": w.get("mirror_synchronized"),
    }


def monitor(args: argparse.Namespace) -> int:
    """`mirrorctl monitor`: a live table across the cluster's nodes (or one snapshot with --once)."""
    servers = _servers(args.server)
    timeout = min(args.timeout, max(1.0, args.interval * 2))
    if args.once:
        rows = collect(servers, args.database, timeout)
        if args.json:
            print(json.dumps(rows, default=_json_default))
        else:
            _console().print(summary_table(rows, MONITOR_SUMMARY, _console().is_terminal))
        return EXIT_OK if any(r.get("state") != "UNREACHABLE" for r in rows) else EXIT_UNREACHABLE
    console = _console()

    def render() -> Table:
        table = summary_table(collect(servers, args.database, timeout), MONITOR_SUMMARY, console.is_terminal)
        if console.is_terminal:
            table.title = f"mirrord monitor: {', '.join(servers)} (every {args.interval:g} s; Ctrl-C to quit)"
        return table

    try:
        with Live(render(), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(args.interval)  # the refresh period the user asked for
                live.update(render(), refresh=True)
    except KeyboardInterrupt:
        return EXIT_OK


def _report_error(exc: ServerError) -> None:
    """The server's error on stderr."""
    print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
    if exc.principal:
        print(f"principal: {exc.principal}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `mirrorctl`; returns the exit status."""
    args = _parse_args(argv)
    if isinstance(args, int):
        return args
    if args.command == "monitor":
        return monitor(args)
    try:
        result = _run(args)
    except ServerError as exc:
        _report_error(exc)
        return EXIT_SERVER_ERROR
    except (Unreachable, ProtocolError) as exc:
        print(f"mirrorctl: cannot talk to {args.server}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print_result(result, args.json, is_status=args.command == "status")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

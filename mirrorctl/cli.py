"""`mirrorctl`: run statements against a node, show mirroring status, or watch a cluster.

    mirrorctl -S HOST:PORT[,HOST:PORT...] [-d DB] (-Q "STATEMENT" | -i FILE...) [-b] [-o FILE] [--json]
    mirrorctl -S HOST:PORT[,HOST:PORT...] status [-d DB] [--json] [-o FILE]
    mirrorctl -S HOST:PORT[,HOST:PORT...] monitor [-d DB] [--interval S] [--once] [--json]
    mirrorctl -S HOST:PORT[,HOST:PORT...] history [-d DB] [--last N] [--json] [-o FILE]

How it works: parse arguments (every bad flag or value is a usage error, exit
2), send each statement through a `PrincipalFollower` (the -S list, following
"the principal is X" answers as the DB-API driver does), print the rows as a
table (rich; colours only on a terminal) or as JSON, and map the outcome to an
exit status that scripts can test:

    0 success · 1 the server returned an error · 2 usage error · 3 server unreachable
    4 outcome unknown: a statement was sent and its answer never came (it may have committed)

Why a blocking client: a few statements per process need no event loop, and
`main(argv)` returns the status instead of exiting, so tests call it in-process.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, TextIO

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mirrord.core.events import COLUMNS as EVENT_COLUMNS, merged
from mirrord.core.types import ProtocolError
from mirrord.version import installed_version
from mirrorctl.client import Client, OutcomeUnknown, Result, ServerError, Unreachable, status_sql
from mirrorctl.follow import PrincipalFollower, partner_address
from mirrorctl.script import ScriptError, split_batches

EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_OUTCOME_UNKNOWN = 0, 1, 2, 3, 4
SERVER_ENV = "MIRRORCTL_SERVER"
CONNECT_TIMEOUT = 5.0

EXAMPLES = """examples:
  mirrorctl -S 127.0.0.11:1433 -Q "CREATE DATABASE shop"
  mirrorctl -S 127.0.0.11:1433,127.0.0.12:1433 -d shop -Q "SELECT * FROM items"   # follows the principal
  mirrorctl -S 127.0.0.11:1433 -d shop -i schema.sql -b -o out.txt               # GO batches, stop at the first error
  mirrorctl -S 127.0.0.12:1433 -Q "ALTER DATABASE shop SET PARTNER = 'tcp://127.0.0.11:5022'"

exit status: 0 success, 1 the server returned an error, 2 usage error, 3 server unreachable (nothing was sent),
4 outcome unknown (a statement was sent and no answer came: it may have committed)"""
STATUS_EXAMPLES = """examples:
  mirrorctl -S 127.0.0.11:1433 status
  mirrorctl -S 127.0.0.11:1433 status -d shop --json      # every column of sys.database_mirroring"""
HISTORY_EXAMPLES = """examples:
  mirrorctl -S 127.0.0.11:1433,127.0.0.12:1433,127.0.0.13:1433 history          # every node's events, merged by time
  mirrorctl -S 127.0.0.11:1433,127.0.0.12:1433 history -d shop --last 50 --json"""
MONITOR_EXAMPLES = """examples:
  mirrorctl -S 127.0.0.11:1433,127.0.0.12:1433,127.0.0.13:1433 monitor
  mirrorctl -S 127.0.0.11:1433,127.0.0.12:1433 monitor -d shop --once --json"""


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def positive(text: str) -> int:
    """An argparse type: a whole number > 0."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number > 0, got {text!r}")
    return value


def add_connection_options(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    """Where and how to connect (the place for more connection flags)."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("-S", "--server", default=argparse.SUPPRESS if suppress else os.environ.get(SERVER_ENV),
                        help=f"HOST:PORT (or tcp://HOST:PORT) of a client port; a comma-separated partner list "
                             f"follows the principal (default ${SERVER_ENV})")
    parser.add_argument("--timeout", type=seconds, default=argparse.SUPPRESS if suppress else 30.0,
                        help="seconds to wait for each answer (default 30)")
    parser.add_argument("-d", "--database", default=default, help="database to run in (status, monitor: show only this one)")
    parser.add_argument("-U", "--user", default=default, help="login name (default $MIRRORCTL_USER)")
    parser.add_argument("-P", "--password", default=default,
                        help="password (default $MIRRORCTL_PASSWORD; prefer it: a command line is visible to other users)")
    parser.add_argument("--tls-ca", dest="tls_ca", default=default,
                        help="CA certificate that signed the node's (default $MIRRORCTL_TLS_CA); "
                             "without one, plaintext (a node run with --insecure)")


def auth_args(args: argparse.Namespace) -> dict:
    """-U, -P and --tls-ca for Client.connect (what is not given comes from the environment there)."""
    return {"user": getattr(args, "user", None), "password": getattr(args, "password", None),
            "tls_ca": getattr(args, "tls_ca", None)}


def add_output_options(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    """How results are printed."""
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS if suppress else False,
                        help='print rows as JSON objects (binary values as {"$binary": "<base64>"})')
    parser.add_argument("-o", "--output", default=argparse.SUPPRESS if suppress else None, metavar="FILE",
                        help="write results to FILE instead of standard output (errors stay on standard error)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: statements by default, `status` and `monitor` subcommands."""
    parser = argparse.ArgumentParser(
        prog="mirrorctl", description="Run statements on a mirrord node, or show mirroring status.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_connection_options(parser)
    add_output_options(parser)
    parser.add_argument("-Q", "--query", help="the statement to run")
    parser.add_argument("-i", "--input", action="append", metavar="FILE",
                        help="run the script FILE, batches separated by GO lines (repeatable)")
    parser.add_argument("-b", "--abort-on-error", action="store_true", dest="abort_on_error",
                        help="stop at the first batch that fails (exit 1)")
    parser.add_argument("--version", action="version", version=f"mirrorctl {installed_version()}")
    commands = parser.add_subparsers(dest="command", metavar="{status,monitor,history}",
                                     title="commands (each has its own --help)")
    status = commands.add_parser("status", help="show mirroring status, one line per database",
                                 description="Show mirroring status: one line per database of the first node that answers.",
                                 epilog=STATUS_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    monitor = commands.add_parser("monitor", help="watch every node given to -S, asked all at once",
                                  description="A live table across the cluster: every node given to -S, asked concurrently.",
                                  epilog=MONITOR_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    history = commands.add_parser("history", help="the event history of every node given to -S, merged by time",
                                  description="Every node's sys.database_mirroring_events (role changes, state changes "
                                              "and why, forced service and its loss, SUSPEND/RESUME, alerts, connections), "
                                              "asked concurrently and merged into one table by time.",
                                  epilog=HISTORY_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    history.add_argument("--last", type=positive, default=None, metavar="N", help="only the newest N events of the merge")
    for sub in (status, monitor, history):
        add_connection_options(sub, suppress=True)
        add_output_options(sub, suppress=True)
    monitor.add_argument("--interval", type=seconds, default=2.0, help="seconds between refreshes (default 2)")
    monitor.add_argument("--once", action="store_true", help="print one snapshot and exit")
    return parser


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject contradictory or missing arguments (exits 2 through argparse)."""
    if not args.server:
        parser.error(f"no server: give -S HOST:PORT or set {SERVER_ENV}")
    servers = _servers(args.server)
    if not servers:
        parser.error("-S needs HOST:PORT[,HOST:PORT...]")
    for server in servers:
        try:
            partner_address(server)
        except ValueError as exc:
            parser.error(f"-S {server}: {exc}")
    given = [flag for flag, value in (("-Q", args.query), ("-i", args.input), (args.command, args.command)) if value is not None]
    if len(given) != 1:
        parser.error("give one of -Q STATEMENT, -i FILE, or the status, monitor or history command"
                     + (f" (got {' and '.join(given)})" if given else ""))
    if args.query is not None and not args.query.strip():
        parser.error("-Q needs a statement (it is empty)")
    if args.abort_on_error and args.command is not None:
        parser.error("-b goes with -Q or -i")
    if args.command == "monitor" and args.output is not None:
        parser.error("-o does not go with monitor (a live table); use --once with a shell redirection")
    if args.command == "monitor" and args.interval > 3600:
        parser.error("--interval must be more than 0 and at most 3600 seconds")


def _parse_args(argv: list[str] | None) -> argparse.Namespace | int:
    """Parsed arguments, or the exit status argparse chose (usage error, --help, --version)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _check_usage(parser, args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return args


def _cell(value: Any) -> str:
    """How a value shows in a table cell."""
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


def _json_default(value: Any) -> Any:
    """JSON for what msgpack carries but JSON lacks: bytes as {"$binary": base64}, never mistaken for text."""
    if isinstance(value, bytes):
        return {"$binary": base64.b64encode(value).decode("ascii")}
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
    elif is_status:
        print("no databases on this node")
    elif result.columns:
        print_table(result, _console())
    else:
        print(result.message or _affected(result.rowcount))


def _json_shape(result: Result, is_status: bool) -> Any:
    """Row objects; a statement without columns gives its outcome as one object."""
    if result.columns or is_status:
        return result.as_dicts()
    return {"rowcount": result.rowcount, "message": result.message,
            "lsn": result.lsn, "role_sequence": result.role_sequence, "seq": result.seq}


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


def collect(servers: list[str], db: str | None, timeout: float, auth: dict | None = None) -> list[dict]:
    """One row per (node, database) across the servers, witnesses included, all nodes asked at once.

    A node that does not answer gives one row saying so, and so does one with
    nothing to show, so every node given is in the answer. Asked concurrently,
    one frozen node costs one timeout, not one per node.
    """
    with ThreadPoolExecutor(max_workers=max(1, len(servers)), thread_name_prefix="monitor") as pool:
        answers = list(pool.map(lambda server: _collect_one(server, db, timeout, auth or {}), servers))
    return [row for rows in answers for row in rows]


def _collect_one(server: str, db: str | None, timeout: float, auth: dict) -> list[dict]:
    """The rows of one node (its partner and witness rows), or one row saying why there are none."""
    try:
        with Client.connect(server, timeout=min(timeout, CONNECT_TIMEOUT), **auth) as client:
            partners = client.query(status_sql(db), timeout=timeout).as_dicts()
            witnessed = client.query(_witness_sql(db), timeout=timeout).as_dicts()
    except (ServerError, Unreachable, ProtocolError, OSError) as exc:
        return [{"node": server, "database": None, "role": None, "state": "UNREACHABLE", "error": str(exc)}]
    found = [{"node": server, **row} for row in partners] + [_witness_row(server, w) for w in witnessed]
    return found or [{"node": server, "database": None, "role": None, "state": "NO DATABASES"}]


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


def _events_sql(db: str | None) -> str:
    where = "" if db is None else f" WHERE database = '{db.replace(chr(39), chr(39) * 2)}'"
    return f"SELECT * FROM sys.database_mirroring_events{where}"


def _history_one(server: str, db: str | None, timeout: float, auth: dict) -> tuple[list[dict], str | None]:
    """One node's events with the address asked as `node` beside the node's own name, or why there are none."""
    try:
        with Client.connect(server, timeout=min(timeout, CONNECT_TIMEOUT), **auth) as client:
            rows = client.query(_events_sql(db), timeout=timeout).as_dicts()
    except (ServerError, Unreachable, ProtocolError, OSError) as exc:
        return [], str(exc)
    return [{**row, "server": server} for row in rows], None


def history(args: argparse.Namespace) -> int:
    """`mirrorctl history`: every node's events merged by time (like patronictl history / pg_autoctl show events)."""
    servers = _servers(args.server)
    auth = auth_args(args)
    with ThreadPoolExecutor(max_workers=max(1, len(servers)), thread_name_prefix="history") as pool:
        answers = list(pool.map(lambda server: _history_one(server, args.database, args.timeout, auth), servers))
    for server, (_, error) in zip(servers, answers):
        if error is not None:
            print(f"mirrorctl: no events from {server}: {error}", file=sys.stderr)
    if all(error is not None for _, error in answers):
        return EXIT_UNREACHABLE
    rows = merged(rows for rows, _ in answers)
    if args.last is not None:
        rows = rows[-args.last:]
    if args.json:
        print(json.dumps(rows, default=_json_default))
    elif not rows:
        print("no events")
    else:
        columns = EVENT_COLUMNS
        print_table(Result(columns, [[row.get(c) for c in columns] for row in rows], len(rows)), _console())
    return EXIT_OK if all(error is None for _, error in answers) else EXIT_SERVER_ERROR


def monitor(args: argparse.Namespace) -> int:
    """`mirrorctl monitor`: a live table across the cluster's nodes (or one snapshot with --once)."""
    servers = _servers(args.server)
    timeout = min(args.timeout, max(1.0, args.interval * 2))
    if args.once:
        rows = collect(servers, args.database, timeout, auth_args(args))
        if args.json:
            print(json.dumps(rows, default=_json_default))
        else:
            _console().print(summary_table(rows, MONITOR_SUMMARY, _console().is_terminal))
        return EXIT_OK if any(r.get("state") != "UNREACHABLE" for r in rows) else EXIT_UNREACHABLE
    console = _console()

    def render() -> Table:
        table = summary_table(collect(servers, args.database, timeout, auth_args(args)), MONITOR_SUMMARY, console.is_terminal)
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


def _report_error(exc: ServerError, where: str = "") -> None:
    """The server's error on stderr (the principal once: the message may name it already)."""
    print(f"error [{exc.code}]{where}: {exc.message}", file=sys.stderr)
    if exc.principal and exc.principal not in exc.message:
        print(f"principal: {exc.principal}", file=sys.stderr)


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    """Standard output, or -o FILE (created or truncated) for the time of the run."""
    if path is None:
        yield sys.stdout
        return
    with open(path, "w", encoding="utf-8") as out, contextlib.redirect_stdout(out):
        yield out


def _status(args: argparse.Namespace) -> int:
    """`mirrorctl status`: the first listed node that answers."""
    follower = PrincipalFollower(_servers(args.server), min(args.timeout, CONNECT_TIMEOUT), auth_args(args))
    try:
        result = follower.query(status_sql(args.database), None, args.timeout)
    finally:
        follower.close()
    if args.database is not None and not result.rows:
        print(f"mirrorctl: no database {args.database} on {follower.partners.current}", file=sys.stderr)
        return EXIT_SERVER_ERROR
    print_result(result, args.json, is_status=True)
    return EXIT_OK


def _batches(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(statement, where it comes from, repeat) for -Q or every -i file; ScriptError/OSError if unreadable."""
    if args.query is not None:
        return [(args.query, "", 1)]
    out = []
    for path in args.input:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        out.extend((b.sql, f" ({path}, line {b.line})", b.repeat) for b in split_batches(text))
    return out


def _statements(args: argparse.Namespace, batches: list[tuple[str, str, int]]) -> int:
    """Run the batches in order through the partner list; -b stops at the first error."""
    follower = PrincipalFollower(_servers(args.server), min(args.timeout, CONNECT_TIMEOUT), auth_args(args))
    status = EXIT_OK
    try:
        for sql, where, repeat in batches:
            for _ in range(repeat):
                try:
                    result = follower.query(sql, args.database, args.timeout)
                except ServerError as exc:
                    _report_error(exc, where)
                    status = EXIT_SERVER_ERROR
                    if args.abort_on_error:
                        return status
                    break
                print_result(result, args.json)
    finally:
        follower.close()
    return status


def main(argv: list[str] | None = None) -> int:
    """Entry point of `mirrorctl`; returns the exit status."""
    args = _parse_args(argv)
    if isinstance(args, int):
        return args
    if args.command == "monitor":
        return monitor(args)
    if args.command == "history":
        try:
            with _output(args.output):
                return history(args)
        except OSError as exc:  # -o FILE could not be written
            print(f"mirrorctl: cannot write the output: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        batches = [] if args.command == "status" else _batches(args)
    except (OSError, ScriptError, UnicodeDecodeError) as exc:
        print(f"mirrorctl: cannot read the script: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with _output(args.output):
            return _status(args) if args.command == "status" else _statements(args, batches)
    except OutcomeUnknown as exc:  # before Unreachable, which it also is
        print(f"mirrorctl: outcome unknown: {exc}. The statement may or may not have run (a write may have "
              f"committed); check before running it again", file=sys.stderr)
        return EXIT_OUTCOME_UNKNOWN
    except (Unreachable, ProtocolError) as exc:
        print(f"mirrorctl: cannot talk to {args.server}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except OSError as exc:  # -o FILE could not be written
        print(f"mirrorctl: cannot write the output: {exc}", file=sys.stderr)
        return EXIT_USAGE

if __name__ == "__main__":
    sys.exit(main())

"""`mirrorctl`: run one statement against a node, or show mirroring status.

    mirrorctl -S HOST:PORT [-d DB] -Q "STATEMENT" [--json]
    mirrorctl -S HOST:PORT status [-d DB] [--json]

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
from typing import Any

from rich import box
from rich.console import Console
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
    parser.add_argument("command", nargs="?", choices=["status"], help="status: show mirroring status")
    return parser


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject contradictory or missing arguments (exits 2 through argparse)."""
    if not args.server:
        parser.error(f"no server: give -S HOST:PORT or set {SERVER_ENV}")
    try:
        parse_address(args.server)
    except ValueError as exc:
        parser.error(str(exc))
    if (args.command is None) == (args.query is None):
        parser.error("give either -Q STATEMENT or the status command")


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

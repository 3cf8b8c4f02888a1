"""The client port alone: server CPU per request, with an answer that costs nothing.

    python benchmarks/client_port_bench.py [--clients 8,32] [--seconds 4] [--tls] [--driver]

A child process serves only the client port (`net.client_port.ClientPort`
behind `net.tls.Listener`, as the node does) on 127.0.0.121:14330, with a
session that answers every query with an empty result at once: no SQL, no
log, no mirror. This process opens N connections and sends one-row INSERT
query frames back to back, one outstanding per connection, for the given
seconds. Server CPU is the child's utime + stime from /proc over the run,
divided by the requests answered; it is what the port costs per statement
(framing, validation, the wait for the next frame, the answer's write) and
nothing else. With --tls both sides use TLS 1.3 with a throwaway CA.

Client CPU is this process's, per request: with --driver the connections are
`mirrorctl.client.AsyncClient`s (what commit_bench and applications use), so
it is what the driver costs per statement; without, bare frames on streams.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mirrord import certs
from mirrord.net import framing, tls
from mirrord.net.client_port import ClientLimits, ClientPort, ClientReader

HOST, PORT = "127.0.0.121", 14330


class _EmptySession:
    statement_timeout_ms = None

    async def answer(self, msg: dict) -> dict:
        return {"t": "result", "id": msg["id"], "columns": [], "rows": [], "rowcount": 1, "lsn": None,
                "role_sequence": None, "message": None}

    def holds_transaction(self) -> bool:
        return False

    async def abort_idle_transaction(self, seconds: float) -> None:
        return None


async def _serve(tls_dir: str | None) -> None:
    port = ClientPort(ClientLimits())
    ctx = tls.TlsContexts.load(Path(tls_dir), "a").client_server if tls_dir else None

    async def handler(reader, writer) -> None:
        try:
            await port.serve(reader, writer, _EmptySession())
        finally:
            writer.close()

    await tls.Listener.start(HOST, PORT, ctx, handler, "client", reader_class=ClientReader)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def _load(clients: int, seconds: float, ctx: ssl.SSLContext | None, ca: str | None = None) -> int:
    count = 0
    stop = time.monotonic() + seconds

    async def driver() -> None:
        nonlocal count
        from mirrorctl.client import AsyncClient

        client = await AsyncClient.connect(f"{HOST}:{PORT}", tls_ca=ca or "", user="")
        while time.monotonic() < stop:
            await client.query("INSERT INTO t VALUES (1)", params=[], timeout=30)
            count += 1
        await client.close()

    async def one() -> None:
        nonlocal count
        reader, writer = await asyncio.open_connection(HOST, PORT, ssl=ctx, server_hostname=HOST if ctx else None)
        i = 0
        while time.monotonic() < stop:
            i += 1
            writer.write(framing.encode_frame({"t": "query", "id": i, "db": None, "sql": "INSERT INTO t VALUES (1)",
                                               "params": []}))
            await framing.read_message(reader)
            count += 1
        writer.close()

    await asyncio.gather(*((driver if ca is not None else one)() for _ in range(clients)))
    return count


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="8,32")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--driver", action="store_true", help="load with mirrorctl.client.AsyncClient (its CPU per request)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # the child: serve with this TLS directory ("" for none)
    args = parser.parse_args()
    import uvloop

    if args.serve is not None:
        uvloop.run(_serve(args.serve or None))
        return
    print(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), f"· {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="mirrord-cpb-") as tmp:
        ctx = None
        if args.tls:
            certs.make_ca(Path(tmp))
            certs.make_node(Path(tmp), "a", [HOST])
            ctx = tls.client_context(Path(tmp) / "ca.crt")
        server = subprocess.Popen([sys.executable, __file__, "--serve", tmp if args.tls else ""],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            table = Table(title=f"client port alone (empty answers){', driver: AsyncClient' if args.driver else ''}")
            for column in ("clients", "requests/s", "server CPU us/request", "client CPU us/request"):
                table.add_column(column, justify="right")
            ca = (str(Path(tmp) / "ca.crt") if args.tls else "") if args.driver else None
            for clients in (int(c) for c in args.clients.split(",")):
                before, mine = _cpu_seconds(server.pid), time.process_time()
                count = uvloop.run(_load(clients, args.seconds, ctx, ca))
                cpu, mine = _cpu_seconds(server.pid) - before, time.process_time() - mine
                table.add_row(str(clients), f"{count / args.seconds:,.0f}", f"{1e6 * cpu / max(count, 1):.1f}",
                              f"{1e6 * mine / max(count, 1):.1f}")
            Console().print(table)
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()

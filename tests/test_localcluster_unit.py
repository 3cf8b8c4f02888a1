"""The parts of mirrord_testing.localcluster that need no daemon: ports, waiting, log scanning."""

from __future__ import annotations

import itertools
import socket
import os
import sys

import pytest

from mirrord_testing.localcluster import LocalCluster, LocalNode, free_port, wait_for


def test_free_port_can_be_listened_on():
    port = free_port("127.0.0.11")
    with socket.socket() as s:
        s.bind(("127.0.0.11", port))
        s.listen()


def test_free_port_skips_a_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.12", 0))
        s.listen()
        taken = s.getsockname()[1]
        assert all(free_port("127.0.0.12") != taken for _ in range(50))


def test_wait_for_returns_the_first_truthy_value():
    counter = itertools.count()
    assert wait_for(lambda: next(counter) >= 3 and "done", 5, "three polls", interval=0.001) == "done"


def test_wait_for_timeout_says_what_and_last_value():
    with pytest.raises(TimeoutError) as info:
        wait_for(lambda: [], 0.05, "the answer", interval=0.01)
    assert str(info.value) == "timed out after 0.05s waiting for the answer; last value: []"


def test_wait_for_retries_listed_errors_and_reports_the_last():
    def boom():
        raise LookupError("no row yet")

    with pytest.raises(TimeoutError, match="last error: LookupError\\('no row yet'\\)"):
        wait_for(boom, 0.05, "a row", interval=0.01, retry_on=(LookupError,))


def test_wait_for_propagates_other_errors_at_once():
    with pytest.raises(ZeroDivisionError):
        wait_for(lambda: 1 / 0, 5, "nothing")


def test_cluster_layout(tmp_path):
    cluster = LocalCluster(tmp_path, names=("x", "y"), first_ip=21)
    x, y = cluster["x"], cluster["y"]
    assert (x.host, y.host) == ("127.0.0.21", "127.0.0.22")
    assert x.endpoint_port != x.listen_port
    assert x.endpoint_url == f"tcp://127.0.0.21:{x.endpoint_port}"
    assert x.address == f"127.0.0.21:{x.listen_port}"
    assert x.data_dir == tmp_path / "x" and x.log_path == tmp_path / "x.log"
    assert x.command()[:3] == [sys.executable, "-m", "mirrord.node"]
    cluster.stop_all()  # nothing started: a no-op that does not raise


def test_tracebacks_finds_raw_tracebacks_and_bad_events(tmp_path):
    node = LocalNode("n", "127.0.0.30", tmp_path / "n", tmp_path / "n.log")
    node.log_path.write_text("\n".join([
        '{"event": "started", "level": "info"}',
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "    1 / 0",
        "ZeroDivisionError: division by zero",
        '{"event": "ok", "level": "info"}',
        '{"event": "boom", "level": "critical"}',
        '{"event": "caught", "level": "error", "exception": "Traceback (most recent call last):\\n  ..."}',
        '{"event": "peer_lost", "level": "warning"}',
    ]) + "\n")
    blocks = node.tracebacks()
    assert len(blocks) == 3
    assert blocks[0].splitlines()[-1] == "ZeroDivisionError: division by zero"
    assert '"boom"' in blocks[1] and '"caught"' in blocks[2]


def test_start_fails_fast_with_the_log_tail_when_the_process_dies(tmp_path, monkeypatch):
    node = LocalNode("n", "127.0.0.31", tmp_path / "n", tmp_path / "n.log")
    monkeypatch.setattr(node, "command", lambda: [sys.executable, "-c", "import sys; print('bad flag'); sys.exit(2)"])
    with pytest.raises(RuntimeError, match="exited with status 2(.|\n)*bad flag"):
        node.start()


# A stand-in daemon: listens late (so start() has to wait), answers the status
# query with one row per name in argv, anything else with an error frame, and
# exits 0 on SIGTERM. It speaks the real client protocol.
FAKE_NODE = r'''
import asyncio, signal, sys, time
from mirrord.core import messages
from mirrord.net.framing import encode_frame, read_message

host, port, dbs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
COLUMNS = ["database", "role", "state"]

async def handle(reader, writer):
    try:
        while True:
            msg = await read_message(reader)
            if msg["sql"].startswith("SELECT * FROM sys.database_mirroring"):
                rows = [[db, "PRINCIPAL", "SYNCHRONIZED"] for db in dbs]
                answer = messages.result(msg["id"], COLUMNS, rows, len(rows))
            else:
                answer = messages.error(msg["id"], "refused", "fake node")
            writer.write(encode_frame(answer))
            await writer.drain()
    except Exception:
        writer.close()

async def main():
    time.sleep(0.3)
    server = await asyncio.start_server(handle, host, port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("fake node listening", flush=True)
    await stop.wait()

asyncio.run(main())
'''


@pytest.fixture
def fake_node(tmp_path, monkeypatch):
    script = tmp_path / "fake_node.py"
    script.write_text(FAKE_NODE)
    node = LocalNode("f", "127.0.0.32", tmp_path / "f", tmp_path / "f.log")
    monkeypatch.setattr(node, "command", lambda: [sys.executable, str(script), node.host, str(node.listen_port), "shop"])
    yield node
    node.kill()


def test_start_waits_for_a_status_answer_and_status_finds_the_row(fake_node):
    fake_node.start()
    assert fake_node.is_running()
    assert fake_node.status("shop") == {"database": "shop", "role": "PRINCIPAL", "state": "SYNCHRONIZED"}
    with pytest.raises(LookupError, match="no status row for 'nope'; it has \\['shop'\\]"):
        fake_node.status("nope")


def test_terminate_kill_freeze_restart(fake_node):
    fake_node.start()
    fake_node.freeze()
    assert fake_node.terminate() == 0  # thawed first, then SIGTERM
    fake_node.restart()
    first = fake_node.pid
    fake_node.restart()
    assert fake_node.pid != first and fake_node.status("shop")["role"] == "PRINCIPAL"
    fake_node.kill()
    assert not fake_node.is_running()
    assert fake_node.log_text().count("fake node listening") == 3
    assert fake_node.tracebacks() == []


def test_power_cut_needs_a_node_on_lazyfs(tmp_path):
    node = LocalNode("a", "127.0.0.21", tmp_path / "a", tmp_path / "a.log")
    assert node.lazyfs is None
    with pytest.raises(RuntimeError, match="no power-cut file system"):
        node.power_cut()


def test_lazyfs_nodes_keep_their_disk_beside_the_data_directory(tmp_path):
    cluster = LocalCluster(tmp_path, names=("a", "b"), first_ip=21, lazyfs=["b"])
    assert cluster["a"].lazyfs is None
    fs = cluster["b"].lazyfs
    assert fs.mount_point == tmp_path / "b" and fs.backing == tmp_path / "b.disk"
    assert not fs.is_mounted()  # mounted at the node's first start, not before


def test_a_cluster_is_secured_by_default_and_puts_the_client_environment_back(tmp_path, monkeypatch):
    monkeypatch.setenv("MIRRORCTL_USER", "someone-else")
    monkeypatch.delenv("MIRRORCTL_TLS_CA", raising=False)
    cluster = LocalCluster(tmp_path, names=("x", "y"), first_ip=21)
    tls = tmp_path / "tls"
    assert {p.name for p in tls.iterdir()} >= {"ca.crt", "ca.key", "x.crt", "x.key", "y.crt", "y.key", "admin-password"}
    cmd = cluster["x"].command()
    assert cmd[cmd.index("--tls-dir") + 1] == str(tls) and "--insecure" not in cmd
    assert cmd[cmd.index("--admin-password-file") + 1] == str(tls / "admin-password")
    assert cluster["x"].connect_args() == {"user": "sa", "password": cluster.security.password, "tls_ca": str(tls / "ca.crt")}
    assert os.environ["MIRRORCTL_USER"] == "sa" and os.environ["MIRRORCTL_TLS_CA"] == str(tls / "ca.crt")
    cluster.stop_all()
    assert os.environ["MIRRORCTL_USER"] == "someone-else" and "MIRRORCTL_TLS_CA" not in os.environ
    again = LocalCluster(tmp_path, names=("x", "y"), first_ip=21)  # the same keys and password on a second run
    assert again.security == cluster.security
    again.stop_all()


def test_an_insecure_cluster_says_so_and_its_clients_ignore_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MIRRORCTL_TLS_CA", "/elsewhere/ca.crt")
    cluster = LocalCluster(tmp_path, names=("x",), first_ip=21, secure=False)
    assert "--insecure" in cluster["x"].command() and not (tmp_path / "tls").exists()
    assert cluster["x"].connect_args() == {"user": "", "password": "", "tls_ca": ""}
    assert "MIRRORCTL_TLS_CA" not in os.environ
    cluster.stop_all()
    assert os.environ["MIRRORCTL_TLS_CA"] == "/elsewhere/ca.crt"

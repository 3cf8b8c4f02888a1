"""The daemon at its edges: bad frames, a full log, configuration, clean shutdown."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys

import pytest

from mirrord_testing.localcluster import wait_for
from mirrord.net.tls import TlsContexts, client_context
from mirrorctl.client import ServerError

from .helpers import create_table, wait_synchronized

DB = "shop"


def _send_raw(cluster, node, port: str, data: bytes) -> bytes:
    """Send bytes over the node's TLS (as node b on the endpoint, a client on the client port); return the answer."""
    tls_dir = cluster.security.tls_dir
    if port == "endpoint":
        ctx, number = TlsContexts.load(tls_dir, "b").endpoint_client, node.endpoint_port
    else:
        ctx, number = client_context(tls_dir / "ca.crt"), node.listen_port
    with socket.create_connection((node.host, number), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=node.host) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # not our protocol: absurd length
        struct.pack(">IBI", 5, 0, 0) + b"hello",  # bad crc
        struct.pack(">IBI", 1, 4, 0) + b"x",  # unknown flags
        struct.pack(">I", 0xFFFFFFFF) + b"\x00" * 5,  # length past the limit
    ],
)
def test_malformed_frames_close_the_connection_not_the_daemon(cluster, garbage):
    a = cluster["a"]
    _send_raw(cluster, a, "client", garbage)
    _send_raw(cluster, a, "endpoint", garbage)
    assert a.is_running()
    a.query(f"CREATE DATABASE {DB}")  # still serving
    assert "client_frame_rejected" in a.log_text()
    assert "endpoint_frame_rejected" in a.log_text()


def test_a_valid_frame_of_the_wrong_kind_is_refused_with_a_reason(cluster):
    from mirrord.net.framing import encode_frame

    a = cluster["a"]
    _send_raw(cluster, a, "endpoint", encode_frame({"t": "log", "records": [], "end_lsn": 1}))
    _send_raw(cluster, a, "client", encode_frame({"t": "query", "id": "not-an-int", "db": None, "sql": "SELECT 1", "params": None}))
    assert "first frame must be hello" in a.log_text()
    assert a.is_running()


def test_log_full_refuses_writes_and_loses_nothing(cluster):
    a, b = cluster["a"], cluster["b"]
    a.terminate()
    a.extra_args = ["--log-size-limit-mb", "1"]
    a.start()
    cluster.setup_session(DB, principal="a", mirror="b")
    create_table(a, DB)
    a.query(f"ALTER DATABASE {DB} SET PARTNER SUSPEND")  # the mirror stops taking log: the log must grow
    acked = []
    with pytest.raises(ServerError) as info:
        for i in range(10_000):
            a.query("INSERT INTO t VALUES (?, ?)", db=DB, params=[i, "y" * 2000])
            acked.append(i)
    assert info.value.code == "log_full"
    assert "mirror" in info.value.message and "SET PARTNER OFF" in info.value.message
    assert 100 < len(acked) < 10_000
    assert a.query("SELECT count(*) FROM t", db=DB).rows == [[len(acked)]]
    a.query(f"ALTER DATABASE {DB} SET PARTNER RESUME")
    wait_synchronized(cluster, DB, "a", "b")
    wait_for(lambda: _insert_ok(a), 30, "writes accepted again once the mirror caught up")


def _insert_ok(node) -> bool:
    try:
        node.query("INSERT INTO t VALUES (NULL, 'after')", db=DB)
        return True
    except ServerError as exc:
        assert exc.code == "log_full"
        return False


def test_config_file_and_bad_config(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('name = "x"\ndata_dir = "d"\nendpoint = "127.0.0.1:1"\nlisten = "nonsense"\n')
    proc = subprocess.run([sys.executable, "-m", "mirrord.node", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "bad configuration" in proc.stderr and "nonsense" in proc.stderr
    cfg.write_text('name = "x"\ndata_dir = "d"\nendpoint = "127.0.0.1:1"\nlisten = "127.0.0.1:2"\nlog_size_limit = 5\n')
    proc = subprocess.run([sys.executable, "-m", "mirrord.node", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "unknown setting" in proc.stderr


def test_sigterm_is_a_clean_shutdown_and_state_survives(cluster):
    cluster.setup_session(DB, principal="a", mirror="b", timeout=7)
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    a.query("INSERT INTO t VALUES (1, 'kept')", db=DB)
    assert b.terminate() == 0
    assert a.terminate() == 0
    a.start()
    b.start()
    wait_synchronized(cluster, DB, "a", "b")
    row = a.status(DB)
    assert (row["role"], row["timeout"], row["role_sequence"]) == ("PRINCIPAL", 7, 1)
    assert b.status(DB)["role"] == "MIRROR"
    assert a.query("SELECT v FROM t", db=DB).rows == [["kept"]]

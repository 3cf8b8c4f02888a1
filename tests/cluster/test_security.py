"""Mutual TLS on the mirroring endpoint: forged peers are refused and change nothing.

The attacks of issue 12 replayed against a secured cluster (a principal, b
mirror, c witness): a peer with no TLS, with TLS but no certificate, with a
certificate from another CA for the right address, and with a certificate
from the cluster's own CA for another host ("mallory", 127.0.0.first+3). Each
sends what a principal or partner would (hello, seeding, failover,
partner_off, a witness vote); afterwards the roles, role sequence, witness
record and data are as before, and the cluster still commits.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from mirrord import certs
from mirrord_testing.localcluster import ClusterSecurity, LocalNode, wait_for
from mirrord.net.framing import FrameDecoder, encode_frame
from mirrorctl import dbapi
from mirrorctl.client import Client, LoginFailed, PermissionDenied, ServerError, Unreachable

from .helpers import create_table, ids_on, wait_synchronized

DB = "vault"
FIRST_HOST = f"127.0.0.{int(os.environ.get('MIRRORD_TEST_FIRST_IP') or '11')}"


def _context(cert_dir: Path | None, name: str | None) -> ssl.SSLContext:
    """An attacker's TLS client: trusts any server, presents name's certificate from cert_dir (if any)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if name is not None:
        ctx.load_cert_chain(cert_dir / f"{name}.crt", cert_dir / f"{name}.key")
    return ctx


def _attack(node: LocalNode, source: str, ctx: ssl.SSLContext | None, frames: list[dict]) -> list[dict] | str:
    """Dial node's endpoint from source, send frames, return the answers (or how the connection was refused)."""
    raw = socket.create_connection((node.host, node.endpoint_port), timeout=5, source_address=(source, 0))
    try:
        sock = raw if ctx is None else ctx.wrap_socket(raw)
        for frame in frames:
            sock.sendall(encode_frame(frame))
        decoder, answers = FrameDecoder(), []
        while data := sock.recv(65536):
            decoder.feed(data)
            while (msg := decoder.next_message()) is not None:
                answers.append(msg)
        return answers
    except (ssl.SSLError, ConnectionError) as exc:
        return f"closed: {exc!r}"
    finally:
        raw.close()


def _refused(out: list[dict] | str) -> bool:
    """Cut at the handshake, closed without an answer, or one refuse frame: nothing else."""
    return isinstance(out, str) or [m["t"] for m in out] in ([], ["refuse"])


def _forged_principal_frames(cluster, role_sequence: int) -> list[dict]:
    """What a's endpoint would send b to take it over: hello, a seed of its own, failover, partner_off."""
    a = cluster["a"]
    image = b"SQLite format 3\x00" + b"\x10\x00" + b"\x00" * 4078  # one 4 KiB page, enough to be taken for a database
    return [
        {"t": "hello", "v": 1, "db": DB, "from_node": "a", "from_endpoint": a.endpoint_url, "role": "PRINCIPAL",
         "role_sequence": role_sequence + 1, "end_lsn": 10_000, "safety": "FULL", "timeout": 10, "suspended": False,
         "listen": a.address, "failover_lsn": 0, "witness": ""},
        {"t": "seed_begin", "lsn": 10_000, "role_sequence": role_sequence + 1, "page_size": 4096, "size": len(image)},
        {"t": "seed_chunk", "offset": 0, "data": image},
        {"t": "seed_end", "crc": zlib.crc32(image)},
        {"t": "settings", "safety": "OFF", "timeout": 1, "suspended": True, "witness": ""},
        {"t": "failover", "role_sequence": role_sequence + 2, "failover_lsn": 10_000},
        {"t": "partner_off"},
    ]


def _forged_witness_frames(cluster, role_sequence: int) -> list[dict]:
    """What b would send the witness to be promoted: w_hello as b, then a vote."""
    b = cluster["b"]
    return [
        {"t": "w_hello", "db": DB, "from_endpoint": b.endpoint_url, "role": "MIRROR", "role_sequence": role_sequence,
         "partner": cluster["a"].endpoint_url, "synchronized": True, "safety": "FULL", "timeout": 10},
        {"t": "w_vote", "rid": 1, "role_sequence": role_sequence + 1, "hardened_lsn": 10 ** 9, "forced": True},
    ]


def _forged_newer_principal_hello(cluster, role_sequence: int) -> list[dict]:
    """What b's endpoint would say to a to make a step down (b principal of a newer role sequence)."""
    b = cluster["b"]
    return [{"t": "hello", "v": 1, "db": DB, "from_node": "b", "from_endpoint": b.endpoint_url, "role": "PRINCIPAL",
             "role_sequence": role_sequence + 5, "end_lsn": 0, "safety": "FULL", "timeout": 10, "suspended": False,
             "listen": b.address, "failover_lsn": 0, "witness": ""}]


def _snapshot(cluster) -> tuple:
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    pa, pb = a.status(DB), b.status(DB)
    witness = c.query(f"SELECT principal, mirror, role_sequence FROM sys.database_mirroring_witnesses WHERE database = '{DB}'").rows
    return (pa["role"], pa["role_sequence"], pa["safety"], pb["role"], pb["role_sequence"], pb["safety"], witness)


def _mallory(cluster, name: str, host: str) -> Path:
    """A certificate the cluster's own CA signed, for a host that is none of the session's nodes."""
    tls_dir = cluster.security.tls_dir
    if not (tls_dir / f"{name}.crt").exists():
        certs.make_node(tls_dir, name, [host])
    return tls_dir


def test_forged_peers_are_refused_and_change_nothing(cluster, tmp_path):
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    cluster.setup_session(DB, principal="a", mirror="b", witness="c")
    create_table(a, DB)
    a.query("INSERT INTO t VALUES (1, 'before')", db=DB)
    wait_synchronized(cluster, DB, "a", "b")
    before = _snapshot(cluster)
    role_sequence = before[1]

    mallory_host = ".".join(a.host.split(".")[:3] + [str(int(a.host.split(".")[3]) + 3)])
    mallory_dir = _mallory(cluster, "mallory", mallory_host)
    other_ca = tmp_path / "other-ca"
    certs.make_ca(other_ca)
    certs.make_node(other_ca, "a", [a.host])  # the right address, the wrong CA
    certs.make_node(other_ca, "b", [b.host])

    identities = {
        "plaintext": (a.host, None),
        "no certificate": (a.host, _context(None, None)),
        "another CA": (a.host, _context(other_ca, "a")),
        "cluster CA, another host": (mallory_host, _context(mallory_dir, "mallory")),
    }
    for label, (source, ctx) in identities.items():
        out = _attack(b, source, ctx, _forged_principal_frames(cluster, role_sequence))
        assert _refused(out), f"{label} -> mirror: {out}"
        out = _attack(a, source if label != "another CA" else a.host, ctx, _forged_newer_principal_hello(cluster, role_sequence))
        assert _refused(out), f"{label} -> principal: {out}"
        witness_ctx = _context(other_ca, "b") if label == "another CA" else ctx
        out = _attack(c, source if label != "another CA" else b.host, witness_ctx, _forged_witness_frames(cluster, role_sequence))
        assert _refused(out), f"{label} -> witness: {out}"
        assert _snapshot(cluster) == before, f"after the {label} attacks"

    # the refusals are logged with the reason
    assert "tls_handshake_refused" in b.log_text() and "tls_handshake_refused" in c.log_text()
    assert "peer_refused" in b.log_text() and "certificate covers only" in b.log_text()
    assert "peer_refused" in c.log_text() and "peer_refused" in a.log_text()

    # nothing was seeded, promoted, stepped down or ended: the session goes on as before
    a.query("INSERT INTO t VALUES (2, 'after')", db=DB)
    wait_synchronized(cluster, DB, "a", "b")
    assert _snapshot(cluster) == before
    assert ids_on(a, DB) == {1, 2}
    assert b.status(DB)["state"] == "SYNCHRONIZED" and a.status(DB)["witness_state"] == "CONNECTED"


def test_a_partner_alone_cannot_depose_or_promote_where_a_witness_is_set(cluster):
    """With a partner's own key (a compromised partner, or a bug): the witness's record decides.

    b's certificate, from b's address, tells a that b is principal of a newer role
    sequence; a's certificate, from a's address, asks b to take over. Neither is
    in the witness's record, so a stays principal and b stays mirror.
    """
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    cluster.setup_session(DB, principal="a", mirror="b", witness="c")
    create_table(a, DB)
    a.query("INSERT INTO t VALUES (1, 'before')", db=DB)
    wait_synchronized(cluster, DB, "a", "b")
    before = _snapshot(cluster)
    role_sequence, tls = before[1], cluster.security.tls_dir

    out = _attack(a, b.host, _context(tls, "b"), _forged_newer_principal_hello(cluster, role_sequence))
    assert _refused(out), out
    wait_for(lambda: "step_down_refused" in a.log_text(), 10, "a logs why it did not step down")
    assert "the witness records" in a.log_text()

    end = b.status(DB)["hardened_lsn"]
    hello = {"t": "hello", "v": 1, "db": DB, "from_node": "a", "from_endpoint": a.endpoint_url, "role": "PRINCIPAL",
             "role_sequence": role_sequence, "end_lsn": end, "safety": "FULL", "timeout": 10, "suspended": False,
             "listen": a.address, "failover_lsn": 0, "witness": c.endpoint_url}
    out = _attack(b, a.host, _context(tls, "a"), [hello, {"t": "failover", "role_sequence": role_sequence + 1, "failover_lsn": end}])
    assert isinstance(out, str) or "failover_done" not in [m["t"] for m in out], out
    wait_for(lambda: "manual_failover_refused" in b.log_text(), 10, "b logs why it did not take over")
    assert _snapshot(cluster) == before

    # the real session goes on: a reconnects to b and commits
    a.query("INSERT INTO t VALUES (2, 'after')", db=DB)
    wait_synchronized(cluster, DB, "a", "b")
    assert _snapshot(cluster) == before and ids_on(a, DB) == {1, 2}
    assert a.tracebacks() == [] and b.tracebacks() == []


def test_manual_failover_needs_the_witness_where_one_is_set(cluster):
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    cluster.setup_session(DB, principal="a", mirror="b", witness="c")
    wait_synchronized(cluster, DB, "a", "b")
    c.kill()
    wait_for(lambda: a.status(DB)["witness_state"] == "DISCONNECTED", 30, "a loses the witness")
    with pytest.raises(ServerError) as info:
        a.query(f"ALTER DATABASE {DB} SET PARTNER FAILOVER")
    assert info.value.code == "refused" and "witness" in info.value.message and "SET WITNESS OFF" in info.value.message
    assert a.status(DB)["role"] == "PRINCIPAL" and b.status(DB)["role"] == "MIRROR"
    c.start()
    wait_for(lambda: a.status(DB)["witness_state"] == "CONNECTED", 30, "a reaches the witness again")
    wait_synchronized(cluster, DB, "a", "b")
    a.query(f"ALTER DATABASE {DB} SET PARTNER FAILOVER")
    wait_for(lambda: b.status(DB)["role"] == "PRINCIPAL" and a.status(DB)["role"] == "MIRROR", 30, "the roles switch")


def test_a_node_of_another_ca_cannot_join(cluster, tmp_path):
    a = cluster["a"]
    a.query(f"CREATE DATABASE {DB}")
    host = ".".join(a.host.split(".")[:3] + [str(int(a.host.split(".")[3]) + 4)])
    stranger = LocalNode("d", host, tmp_path / "d", tmp_path / "d.log",
                         security=ClusterSecurity.create(tmp_path / "d-tls", {"d": host}))
    try:
        stranger.start()
        stranger.query(f"ALTER DATABASE {DB} SET PARTNER = '{a.endpoint_url}'")  # d would mirror a
        with pytest.raises(ServerError) as info:
            a.query(f"ALTER DATABASE {DB} SET PARTNER = 'tcp://{host}:{stranger.endpoint_port}'")
        assert info.value.code == "refused" and "CERTIFICATE_VERIFY_FAILED" in info.value.message
        assert a.status(DB)["role"] == "NONE"
        assert stranger.status(DB)["status"] == "RESTORING"  # never seeded
        assert stranger.tracebacks() == []
    finally:
        stranger.kill()


# ------------------------------------------------------------------ logins on the client port


def _connects(node, user: str, password: str) -> bool:
    try:
        with Client.connect(node.address, user=user, password=password, tls_ca=str(node.security.ca_file), timeout=5):
            return True
    except LoginFailed:
        return False


def _mirrorctl(node, *args: str, user: str, password: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORCTL_")}
    return subprocess.run([sys.executable, "-m", "mirrorctl.cli", "-S", node.address, "-U", user, "-P", password,
                           "--tls-ca", str(node.security.ca_file), *args], capture_output=True, text=True, timeout=60, env=env)


def test_logins_grants_and_failover(cluster):
    a, b = cluster["a"], cluster["b"]
    cluster.setup_session(DB, principal="a", mirror="b")
    create_table(a, DB)
    a.query("CREATE LOGIN app WITH PASSWORD = 'app-password-1'")
    a.query(f"GRANT WRITE ON DATABASE::{DB} TO app")
    a.query("CREATE LOGIN viewer WITH PASSWORD = 'viewer-password'")
    a.query(f"GRANT SELECT ON DATABASE::{DB} TO viewer")
    ca = str(a.security.ca_file)

    # the mirror learns the logins from its principal
    wait_for(lambda: _connects(b, "app", "app-password-1"), 30, "b to accept login app", interval=0.2)

    with Client.connect(a.address, user="app", password="app-password-1", tls_ca=ca) as app:
        app.query("INSERT INTO t VALUES (1, 'by app')", db=DB)
        with pytest.raises(PermissionDenied, match="sysadmin"):
            app.query("CREATE DATABASE other")
        with pytest.raises(PermissionDenied, match="sysadmin"):
            app.query(f"ALTER DATABASE {DB} SET PARTNER OFF")
        with pytest.raises(PermissionDenied, match="sysadmin"):
            app.query("ALTER ENDPOINT mirroring STATE = STOPPED")
    with pytest.raises(ServerError, match="ENCRYPTION = DISABLED is not offered"):
        a.query("ALTER ENDPOINT mirroring FOR DATABASE_MIRRORING (ENCRYPTION = DISABLED)")
    assert "as it already was" in a.query(
        "ALTER ENDPOINT mirroring FOR DATABASE_MIRRORING (AUTHENTICATION = CERTIFICATE, ENCRYPTION = REQUIRED)").message
    assert a.status(DB)["transport_security"] == "mutual TLS"
    with Client.connect(a.address, user="viewer", password="viewer-password", tls_ca=ca) as viewer:
        assert viewer.query("SELECT v FROM t", db=DB).rows == [["by app"]]
        with pytest.raises(PermissionDenied, match=f"GRANT WRITE ON DATABASE::{DB} TO viewer"):
            viewer.query("INSERT INTO t VALUES (2, 'by viewer')", db=DB)
        with pytest.raises(PermissionDenied):
            viewer.query("PRAGMA query_only=OFF", db=DB)
        assert viewer.status()  # status is for any login

    # wrong credentials: one error, whether or not the login exists; the CLI says the same
    errors = set()
    for user, password in (("app", "wrong-password"), ("nobody", "app-password-1")):
        with pytest.raises(LoginFailed) as info:
            Client.connect(a.address, user=user, password=password, tls_ca=ca)
        errors.add((info.value.code, info.value.message))
        proc = _mirrorctl(a, "status", user=user, password=password)
        assert proc.returncode == 1 and "login_failed" in proc.stderr
        errors.add(proc.stderr.strip())
    assert len(errors) == 2  # one frame error and one CLI line, each the same for both cases
    assert "app-password-1" not in a.log_text() and "viewer-password" not in a.log_text()
    with pytest.raises(LoginFailed, match="log in first"):
        Client.connect(a.address, user="", tls_ca=ca).query("SELECT 1")
    with pytest.raises(Unreachable):
        Client.connect(a.address, user="", tls_ca="", timeout=2).query("SELECT 1", timeout=2)  # no TLS: cut at the handshake
    proc = _mirrorctl(a, "-d", DB, "-Q", "SELECT count(*) FROM t", user="viewer", password="viewer-password")
    assert proc.returncode == 0 and "1" in proc.stdout, proc.stderr

    # after a failover the logins work on the new principal, and changes made there come back
    wait_synchronized(cluster, DB, "a", "b")
    a.query(f"ALTER DATABASE {DB} SET PARTNER FAILOVER")
    wait_for(lambda: b.status(DB)["role"] == "PRINCIPAL", 30, "b to be principal")
    wait_for(lambda: _try_insert(b, ca, 2), 30, "app to write on the new principal", interval=0.2)
    b.query("ALTER LOGIN app WITH PASSWORD = 'app-password-2'")
    wait_for(lambda: _connects(a, "app", "app-password-2"), 30, "a to learn app's new password", interval=0.2)
    assert not _connects(a, "app", "app-password-1")

    # the DB-API URL carries the login and the CA
    conn = dbapi.connect(f"mirror://app:app-password-2@{a.address},{b.address}/{DB}?tls_ca={ca}", failover_timeout=30)
    with conn:
        conn.execute("INSERT INTO t VALUES (3, 'dbapi')")
    with pytest.raises(dbapi.OperationalError) as info:
        dbapi.connect(f"mirror://app:wrong-password@{a.address},{b.address}/{DB}?tls_ca={ca}", failover_timeout=30)
    assert info.value.code == "login_failed"
    assert ids_on(b, DB) == {1, 2, 3}


def _try_insert(node, ca: str, row_id: int) -> bool:
    try:
        with Client.connect(node.address, user="app", password="app-password-1", tls_ca=ca) as app:
            app.query("INSERT INTO t VALUES (?, 'after failover')", db=DB, params=[row_id])
        return True
    except ServerError as exc:
        if exc.code in ("not_principal", "not_serving"):
            return False
        raise


def test_an_insecure_node_warns_and_says_so_in_status(tmp_path):
    host = ".".join(FIRST_HOST.split(".")[:3] + [str(int(FIRST_HOST.split(".")[3]) + 5)])
    node = LocalNode("e", host, tmp_path / "e", tmp_path / "e.log")  # no security: --insecure
    try:
        node.start()
        node.query(f"CREATE DATABASE {DB}")
        assert node.status(DB)["transport_security"].startswith("INSECURE")
        assert '"insecure_mode"' in node.log_text() and '"level": "warning"' in node.log_text()
        with pytest.raises(ServerError, match="--insecure"):
            Client.connect(node.address, user="sa", password="whatever-it-is", tls_ca="")
        node.terminate()
        node.start()
        assert node.log_text().count('"insecure_mode"') == 2  # at every start
    finally:
        node.kill()

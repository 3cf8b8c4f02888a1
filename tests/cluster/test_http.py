"""The HTTP routes on real nodes, and real HAProxy in front of them through a failover."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mirrord_testing.localcluster import LocalCluster, _can_bind, free_port, wait_for
from mirrorctl import cli
from tests.cluster.helpers import Writer, create_table, ids_on

DB = "shop"
REPO = Path(__file__).resolve().parents[2]
CHECK_INTER = 1.0  # HAProxy's check interval in this test (s)
TIMEOUT = 5  # PARTNER TIMEOUT of the session (s)


def get(url: str) -> tuple[int, object]:
    """(HTTP status, JSON body or text) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            status, raw, kind = answer.status, answer.read(), answer.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        status, raw, kind = err.code, err.read(), err.headers.get("Content-Type", "")
    return status, json.loads(raw) if "json" in kind else raw.decode()


def http_port(cluster: LocalCluster) -> int:
    """One port free on every node's address (HAProxy checks one port on each server)."""
    while True:
        port = free_port(cluster["a"].host)
        if all(_can_bind(node.host, port) for node in cluster):
            return port


def serve_http(cluster: LocalCluster) -> dict[str, str]:
    """Restart every node with --metrics on one shared port; their base URLs."""
    port = http_port(cluster)
    urls = {}
    for node in cluster:
        node.extra_args = ["--metrics", f"{node.host}:{port}"]
        node.terminate()
        node.start()
        urls[node.name] = f"http://{node.host}:{port}"
    return urls


def test_health_routes_answer_by_role(cluster, capsys):
    urls = serve_http(cluster)
    cluster.setup_session(DB, principal="a", mirror="b", witness="c")
    a, b, c = (urls[n] for n in "abc")

    assert get(f"{a}/principal?db={DB}")[0] == 200
    assert get(f"{a}/primary?db={DB}")[0] == 200  # Patroni's name for the same question
    status, body = get(f"{b}/principal?db={DB}")
    assert status == 503 and body["role"] == "MIRROR" and body["principal"] is False
    assert get(f"{c}/principal?db={DB}")[0] == 503  # the witness hosts no copy
    assert get(f"{a}/principal?db=nosuch")[0] == 503
    status, body = get(f"{a}/principal")
    assert status == 400 and "db=NAME" in body["error"]

    assert get(f"{b}/mirror?db={DB}")[0] == 200
    assert get(f"{b}/replica?db={DB}")[0] == 200
    assert get(f"{a}/mirror?db={DB}")[0] == 503

    status, body = get(f"{a}/health")
    assert status == 200 and body == {"node": "a", "databases": 1, "state": "running", "quarantined": {}}
    assert get(f"{c}/health")[0] == 200

    assert get(f"{a}/nothing-here")[0] == 404  # a wrong question never reads "yes"
    status, text = get(f"{a}/metrics")
    assert status == 200 and 'mirrord_role{database="shop",node="a",role="PRINCIPAL"}' in text

    status, rows = get(f"{a}/status")
    assert status == 200 and [r["database"] for r in rows] == [DB]
    capsys.readouterr()
    assert cli.main(["-S", cluster["a"].address, "status", "--json"]) == 0
    from_cli = json.loads(capsys.readouterr().out)
    assert set(rows[0]) == set(from_cli[0])  # /status is status --json
    assert {k: rows[0][k] for k in ("role", "state", "role_sequence")} == {k: from_cli[0][k] for k in ("role", "state", "role_sequence")}

    cluster["a"].query(f"ALTER DATABASE {DB} SET PARTNER FAILOVER")
    wait_for(lambda: get(f"{b}/principal?db={DB}")[0] == 200, 10, "b answers as principal", retry_on=(OSError,))
    assert get(f"{a}/principal?db={DB}")[0] == 503
    assert get(f"{a}/mirror?db={DB}")[0] == 200


class HAProxy:
    """deploy/haproxy.cfg run by the Debian haproxy binary, in the foreground, on a test address."""

    def __init__(self, cluster: LocalCluster, http: int, workdir: Path) -> None:
        self.listen = cluster.service_host  # in every node's certificate: clients verify it through the proxy
        self.address = f"{self.listen}:{free_port(self.listen)}"
        env = dict(os.environ, MIRRORD_HAPROXY_DB=DB, MIRRORD_HAPROXY_LISTEN=self.address, MIRRORD_HAPROXY_HTTP_PORT=str(http),
                   MIRRORD_HAPROXY_CHECK_INTER=f"{int(CHECK_INTER * 1000)}ms",
                   **{f"MIRRORD_HAPROXY_NODE_{n.upper()}": cluster[n].address for n in "abc"})
        self.log = open(workdir / "haproxy.log", "wb")
        self.proc = subprocess.Popen([shutil.which("haproxy"), "-db", "-f", str(REPO / "deploy" / "haproxy.cfg")],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (Debian package haproxy; .ci/run installs it)")
def test_haproxy_follows_the_principal_through_a_sigkill(cluster, tmp_path):
    urls = serve_http(cluster)
    restarted = time.monotonic()
    port = int(urls["a"].rsplit(":", 1)[1])
    cluster.setup_session(DB, principal="a", mirror="b", witness="c", timeout=TIMEOUT)
    create_table(cluster["a"], DB)
    proxy = HAProxy(cluster, port, tmp_path)
    writer = None
    try:
        writer = Writer(None, DB, address=proxy.address)
        writer.start()
        wait_for(lambda: writer.acked_count_reaches(50), 20, "writes acknowledged through HAProxy")
        # a restarted witness votes only once it has been up a full TIMEOUT (fencing): measure HAProxy, not that
        wait_for(lambda: time.monotonic() - restarted >= TIMEOUT, TIMEOUT + 10, "the witness up for a full TIMEOUT")
        old_role_sequence = cluster["a"].status(DB)["role_sequence"]
        killed_at = time.monotonic()
        cluster["a"].kill()
        promoted: list[float] = []  # when b first answered /principal with 200

        def new_principal_written() -> bool:
            if not promoted and get(f"{urls['b']}/principal?db={DB}")[0] == 200:
                promoted.append(time.monotonic())
            return bool(promoted) and sum(e > old_role_sequence for e in writer.acked_role_sequence) >= 20
        wait_for(new_principal_written, 30, "writes through HAProxy to the new principal", retry_on=(OSError,))
        # the first write of the new role sequence went through HAProxy to the new principal
        first = next(i for i, e in enumerate(writer.acked_role_sequence) if e > old_role_sequence)
        took = writer.acked_at[first] - killed_at
        assert took <= TIMEOUT + CHECK_INTER, f"HAProxy took {took:.2f} s to reach the new principal"
    finally:
        if writer is not None:
            writer.stop()
        proxy.stop()
    assert cluster.principal_of(DB, among=["b"]) is cluster["b"]
    assert writer.acked and set(writer.acked) <= ids_on(cluster["b"], DB)  # every acknowledged write is there
    print(f"b answered /principal 200 {promoted[0] - killed_at:.2f} s after the SIGKILL; "
          f"HAProxy on the new principal {took:.2f} s after the SIGKILL (bound {TIMEOUT + CHECK_INTER} s); "
          f"{len(writer.acked)} writes acknowledged, {len(writer.errors)} errors")


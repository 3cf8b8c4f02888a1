"""The Docker path as users take it: deploy/docker-compose.yml on a real Docker engine.

Compose up, the setup one-shot, writes through the published client port,
`docker kill` of the principal's container, automatic failover with every
acknowledged row, `docker start` and rejoin as a SYNCHRONIZED mirror, and
compose down (also on failure).

Runs only where a Docker engine and the image's base are prepared:
MIRRORD_DOCKER=1 (.ci/run sets it once `deploy/ci-docker.sh start` succeeded;
on a machine with Docker and network access, set it yourself). Alone:

    MIRRORD_DOCKER=1 bash deploy/test.sh -m docker

MIRRORD_COMPOSE picks the compose command ("docker-compose" or "docker compose");
by default docker-compose when installed, else `docker compose`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from mirrord_testing.localcluster import free_port, wait_for
from mirrorctl.client import Client, NotPrincipal, ServerError, Unreachable

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
DB = "demo"
NOT_READY = (LookupError, Unreachable, ServerError, OSError, IndexError)

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        os.environ.get("MIRRORD_DOCKER") != "1",
        reason=os.environ.get("MIRRORD_DOCKER_SKIP_REASON")
        or "no Docker engine prepared: set MIRRORD_DOCKER=1 where `docker info` works (.ci/run does)"),
]


def compose_command() -> list[str]:
    chosen = os.environ.get("MIRRORD_COMPOSE")
    if chosen:
        return shlex.split(chosen)
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


class ComposeCluster:
    """One compose project of deploy/docker-compose.yml, with its own name and host ports."""

    def __init__(self) -> None:
        self.project = f"mirrordtest{os.getpid()}"
        self.ports = {name: free_port("127.0.0.1") for name in ("a", "b", "c")}
        while len(set(self.ports.values())) < 3:
            self.ports["c"] = free_port("127.0.0.1")
        self.password = f"test-{os.getpid()}-password"
        self.env = dict(os.environ, COMPOSE_PROJECT_NAME=self.project,
                        MIRRORD_PORT_A=str(self.ports["a"]), MIRRORD_PORT_B=str(self.ports["b"]),
                        MIRRORD_PORT_C=str(self.ports["c"]), MIRRORD_ADMIN_PASSWORD=self.password)
        self.ca_file = Path(tempfile.mkdtemp(prefix=f"{self.project}-")) / "ca.crt"

    def fetch_ca(self) -> None:
        """Copy the CA certificate the certs one-shot made out of the tls volume (through node-a)."""
        subprocess.run(["docker", "cp", f"{self.container('node-a')}:/tls/ca.crt", str(self.ca_file)],
                       check=True, capture_output=True, timeout=60)

    def client(self, name: str, timeout: float = 5.0) -> Client:
        """A connection to node `name`'s published port, with TLS, as sa."""
        return Client.connect(self.address(name), timeout=timeout, user="sa", password=self.password,
                              tls_ca=str(self.ca_file))

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def compose(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        argv = [*compose_command(), "-f", str(COMPOSE_FILE), "-p", self.project, *args]
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{shlex.join(argv)} exited {done.returncode}\n"
                                 f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
        return done

    def container(self, service: str) -> str:
        """The container ID of a service (running or not)."""
        ids = self.compose("ps", "-q", service).stdout.split()
        assert len(ids) == 1, f"expected one container for {service}, found {ids}"
        return ids[0]

    def health(self, service: str) -> str:
        done = subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", self.container(service)],
                              capture_output=True, text=True, timeout=30, check=True)
        return done.stdout.strip()

    def status(self, name: str) -> dict:
        """The demo database's status row on node `name`, through its published client port."""
        with self.client(name, timeout=2) as client:
            return client.status(DB)[0]

    def ids(self, name: str) -> list[int]:
        with self.client(name, timeout=2) as client:
            return [row[0] for row in client.query("SELECT id FROM items ORDER BY id", db=DB, timeout=10).rows]

    def logs(self) -> str:
        done = self.compose("logs", "--no-color", "--tail", "80", check=False, timeout=60)
        return done.stdout + done.stderr

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False, timeout=180)


@pytest.fixture
def compose_cluster(request):
    cluster = ComposeCluster()
    failed_before = request.session.testsfailed
    try:
        yield cluster
    finally:
        # the call phase is reported before teardown: a failure shows in the count by now
        if request.session.testsfailed != failed_before:
            print(f"\ncompose logs of {cluster.project}:\n{cluster.logs()}")
        cluster.down()


def insert(cluster: ComposeCluster, name: str, ids: range) -> list[int]:
    """One commit per row through node `name`'s published port; the ids acknowledged."""
    acked = []
    with cluster.client(name) as client:
        for i in ids:
            client.query("INSERT INTO items(id, name) VALUES (?, ?)", db=DB, params=[i, f"item {i}"], timeout=30)
            acked.append(i)
    return acked


def test_compose_cluster_fails_over_and_rejoins(compose_cluster: ComposeCluster):
    c = compose_cluster
    # the image is built by deploy/ci-docker.sh (or here, when missing)
    c.compose("up", "-d", timeout=900)
    for service in ("node-a", "node-b", "node-c"):
        wait_for(lambda: c.health(service) == "healthy", 90, f"{service} healthy (mirrorctl status healthcheck)",
                 interval=0.5)

    c.fetch_ca()
    for name in ("node-a", "node-b", "node-c"):  # each node holds its own key and the CA's certificate, nothing else
        listing = c.compose("exec", "-T", name, "ls", "/tls", timeout=60).stdout.split()
        assert sorted(listing) == sorted(["ca.crt", f"{name}.crt", f"{name}.key"]), (name, listing)
    setup = c.compose("run", "--rm", "setup", timeout=240)
    assert "set up: demo on node-a (principal) -> node-b (mirror), witness node-c" in setup.stdout, setup.stdout

    a = c.status("a")
    assert (a["role"], a["state"], a["witness_state"]) == ("PRINCIPAL", "SYNCHRONIZED", "CONNECTED"), a
    acked = insert(c, "a", range(1, 301))

    # a SIGKILL, as `docker kill` sends; restart policy "no" keeps it down
    node_a = c.container("node-a")
    subprocess.run(["docker", "kill", node_a], check=True, capture_output=True, timeout=60)
    wait_for(lambda: c.status("b")["role"] == "PRINCIPAL", 60, "node-b to become PRINCIPAL",
             interval=0.1, retry_on=NOT_READY)
    assert c.ids("b") == acked, "the new principal lacks acknowledged rows (or has others)"
    b = c.status("b")
    assert b["role_sequence"] == a["role_sequence"] + 1, (a, b)
    acked += insert(c, "b", range(301, 351))

    subprocess.run(["docker", "start", node_a], check=True, capture_output=True, timeout=60)

    def rejoined() -> bool:
        a_row, b_row = c.status("a"), c.status("b")
        return (a_row["role"], a_row["state"], b_row["role"], b_row["state"]) == (
            "MIRROR", "SYNCHRONIZED", "PRINCIPAL", "SYNCHRONIZED")

    wait_for(rejoined, 90, "node-a to rejoin as a SYNCHRONIZED mirror of node-b", interval=0.2, retry_on=NOT_READY)
    assert c.ids("b") == acked
    # the mirror sends clients to the principal by the address that works inside the network
    with c.client("a") as client:
        with pytest.raises(NotPrincipal) as refused:
            client.query("SELECT count(*) FROM items", db=DB)
    assert refused.value.principal == "node-b:1433"
    wait_for(lambda: c.health("node-a") == "healthy", 60, "node-a healthy again", interval=0.5)

    logs = c.compose("logs", "--no-color", timeout=60).stdout
    assert "Traceback" not in logs, f"node logs contain tracebacks:\n{logs}"

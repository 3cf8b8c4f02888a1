"""core.health: what each HTTP route answers, for every role, status and quorum."""

from __future__ import annotations

import itertools

import pytest

from mirrord.core.health import DatabaseFacts, health_answer, mirror_answer, principal_answer
from mirrord.core.types import DatabaseStatus, Role


def facts(role=Role.PRINCIPAL, status=DatabaseStatus.ONLINE, open=True, refusal=None) -> DatabaseFacts:
    return DatabaseFacts(role=role, status=status, state="SYNCHRONIZED", role_sequence=3, open=open, quorum_refusal=refusal)


@pytest.mark.parametrize("role,status,is_open,refusal",
                         list(itertools.product(Role, DatabaseStatus, (True, False), (None, "lost quorum"))))
def test_principal_is_200_only_for_an_open_principal_with_quorum(role, status, is_open, refusal):
    answer = principal_answer("shop", facts(role, status, is_open, refusal))
    serving = role is Role.PRINCIPAL and status is DatabaseStatus.ONLINE and is_open and refusal is None
    assert answer.status == (200 if serving else 503)
    assert answer.body["principal"] is serving
    if not serving:
        assert answer.body["reason"]  # always says why not


def test_a_principal_out_of_quorum_says_why():
    answer = principal_answer("shop", facts(refusal="database shop has lost quorum here"))
    assert answer.status == 503 and answer.body["reason"] == "database shop has lost quorum here"


@pytest.mark.parametrize("role", list(Role))
def test_mirror_is_200_only_for_the_mirror(role):
    answer = mirror_answer("shop", facts(role, DatabaseStatus.RESTORING, open=False))
    assert answer.status == (200 if role is Role.MIRROR else 503)
    assert answer.body["mirror"] is (role is Role.MIRROR)


@pytest.mark.parametrize("route", [principal_answer, mirror_answer])
def test_a_database_not_here_is_503_and_no_database_is_400(route):
    assert route("nosuch", None).status == 503
    assert "not on this node" in route("nosuch", None).body["reason"]
    for missing in (None, ""):
        answer = route(missing, None)
        assert answer.status == 400 and "?db=NAME" in answer.body["error"]


def test_health_is_200_once_loaded():
    assert health_answer("a", True, 2).status == 200
    degraded = health_answer("a", True, 1, {"crm": "meta.json: bad JSON"})
    assert degraded.status == 200 and degraded.body["quarantined"] == {"crm": "meta.json: bad JSON"}
    starting = health_answer("a", False, 0)
    assert starting.status == 503 and starting.body["state"] == "starting"


async def test_a_failing_route_answers_500_without_a_traceback():
    from aiohttp.test_utils import TestClient, TestServer
    from prometheus_client import CollectorRegistry

    from mirrord.httpapi import HttpServer, NodeView

    def broken(_db):
        raise RuntimeError("a bug")

    view = NodeView(name="a", facts=lambda db: None, status_rows=broken, up=lambda: (True, 0, {}), registry=CollectorRegistry())
    async with TestClient(TestServer(HttpServer(view).app())) as client:
        answer = await client.get("/status")
        assert answer.status == 500 and "Traceback" not in await answer.text()
        assert (await client.get("/principal?db=x")).status == 503
        assert (await client.get("/nothing")).status == 404
        assert (await client.post("/health")).status == 405

"""Nodes named by hostname, as in docker-compose (tcp://node-b:5022): no engine needed.

In compose a node's --endpoint is its service name (node-a:5022): partners and
the witness know it by that name, so it must parse, bind, and be the source
address a node dials from (Node.connect_endpoint binds it). 0.0.0.0 must also
work as a source address, for a node started that way by hand.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from mirrord.core.types import Endpoint
from mirrord.node import Node
from mirrord.node_config import NodeConfig


def test_endpoint_parses_hostnames():
    assert Endpoint.parse("tcp://node-b:5022") == Endpoint("node-b", 5022)
    assert Endpoint.parse("node-b:5022") == Endpoint("node-b", 5022)
    assert str(Endpoint.parse("node-b:5022")) == "tcp://node-b:5022"


def test_node_config_takes_hostnames(tmp_path):
    cfg = NodeConfig._validated({"name": "node-a", "data_dir": str(tmp_path), "endpoint": "node-a:5022",
                                 "listen": "node-a:1433", "insecure": True})
    assert cfg.endpoint == Endpoint("node-a", 5022)
    assert cfg.listen == Endpoint("node-a", 1433)


@pytest.mark.parametrize("own_host", ["localhost", "0.0.0.0", "127.0.0.1"])
@pytest.mark.parametrize("peer_host", ["localhost", "127.0.0.1"])
async def test_connect_endpoint_binds_hostname_or_any(own_host, peer_host):
    peers: asyncio.Queue = asyncio.Queue()

    async def on_connect(reader, writer):
        await peers.put(writer.get_extra_info("peername")[0])
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    node = SimpleNamespace(config=SimpleNamespace(endpoint=Endpoint(own_host, 5022)), tls=None)  # plain TCP here
    try:
        reader, writer = await Node.connect_endpoint(node, Endpoint(peer_host, port))
        assert await asyncio.wait_for(peers.get(), 5) == "127.0.0.1"
        writer.close()
    finally:
        server.close()
        await server.wait_closed()

"""Stream limits of the real ADS server: one client cannot take the server for itself.

A real ``grpc.aio`` server on 127.0.0.1 and real gRPC clients; each client is its own
channel with its own connection (so its own ``context.peer()``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tsunagi.xds.cache import SnapshotCache
from tsunagi.xds.resources import CLUSTER
from tsunagi.xds.server import start_server

from .test_xds_protocol import name_of, world

_SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
# Generous bound so that a bug hangs the test for seconds, not until pytest's timeout.
_BOUND = 30.0


class Client:
    """One client connection and the streams it opened."""

    def __init__(self, port: int) -> None:
        # A channel of its own subchannel pool gets its own TCP connection: another peer.
        self.channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.calls: list[Any] = []

    async def open(self, node_id: str) -> tuple[str, Any]:
        """Open a SotW stream asking for clusters; ("served", response) or (code, details).

        A served stream then stays open and idle: it never ACKs and never closes.
        """
        call = self.channel.stream_stream(
            _SOTW,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )()
        self.calls.append(call)
        request = discovery_pb2.DiscoveryRequest(
            type_url=CLUSTER, node=base_pb2.Node(id=node_id, cluster="svc")
        )
        try:
            await call.write(request)
            response = await call.read()
        except grpc.aio.AioRpcError as e:
            return e.code().name, e.details()
        except asyncio.InvalidStateError:
            pass  # refused before the request went out; the status says why
        else:
            if response is not grpc.aio.EOF:
                return "served", response
        return (await call.code()).name, await call.details()

    async def silent(self) -> tuple[str, str]:
        """Open a stream and send nothing; how it ended."""
        call = self.channel.stream_stream(
            _SOTW,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )()
        self.calls.append(call)
        try:
            await call.read()
        except grpc.aio.AioRpcError as e:
            return e.code().name, e.details()
        return (await call.code()).name, await call.details()

    async def close(self) -> None:
        for call in self.calls:
            call.cancel()
        await self.channel.close()


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    """Starts servers (with the given limits) serving ``world()`` to every node."""
    servers: list[grpc.aio.Server] = []
    clients: list[Client] = []
    snap = world()

    async def start(**limits: Any) -> tuple[int, list[Client]]:
        cache = SnapshotCache()
        cache.resolver = lambda node_id, metadata, verified, proven: snap
        server, port = await start_server(cache, "127.0.0.1", 0, **limits)
        servers.append(server)
        return port, clients

    try:
        yield start
    finally:
        for client in clients:
            await client.close()
        for server in servers:
            await server.stop(None)


def _tally(outcomes: list[tuple[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for code, _ in outcomes:
        counts[code] = counts.get(code, 0) + 1
    return counts


async def _until_served(client: Client, node_id: str) -> None:
    """Open streams until one is served; only refusals for a full limit may come first
    (the server frees a place just after the client learns its stream ended)."""
    while True:
        code, details = await client.open(node_id)
        if code == "served":
            return
        assert code == "RESOURCE_EXHAUSTED", (code, details)
        await asyncio.sleep(0.02)


async def test_hundreds_of_idle_streams_from_one_client_are_capped(serve: Any) -> None:
    port, clients = await serve()  # the defaults: 64 streams per client connection
    hostile = Client(port)
    clients.append(hostile)
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(hostile.open(f"hostile-{i}") for i in range(300))), _BOUND
    )
    assert _tally(outcomes) == {"served": 64, "RESOURCE_EXHAUSTED": 236}
    refusal = next(details for code, details in outcomes if code == "RESOURCE_EXHAUSTED")
    assert "xDS stream limit reached" in refusal
    assert "max_streams_per_peer=64" in refusal and "start_server" in refusal

    # The 64 idle streams are still open, and another client is served in full.
    good = Client(port)
    clients.append(good)
    code, response = await asyncio.wait_for(good.open("good"), _BOUND)
    assert code == "served"
    assert sorted(name_of(r) for r in response.resources) == ["a", "b"]
    assert response.version_info == world().version(CLUSTER)


async def test_server_wide_cap_and_streams_are_released(serve: Any) -> None:
    port, clients = await serve(max_streams_per_peer=8, max_streams=12)
    first, second = Client(port), Client(port)
    clients += [first, second]
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(first.open(f"first-{i}") for i in range(20))), _BOUND
    )
    assert _tally(outcomes) == {"served": 8, "RESOURCE_EXHAUSTED": 12}
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(second.open(f"second-{i}") for i in range(10))), _BOUND
    )
    assert _tally(outcomes) == {"served": 4, "RESOURCE_EXHAUSTED": 6}
    refusal = next(details for code, details in outcomes if code == "RESOURCE_EXHAUSTED")
    assert "max_streams=12" in refusal and "start_server" in refusal

    # Closing the first client's streams gives their places back.
    await first.close()
    clients.remove(first)
    await asyncio.wait_for(_until_served(second, "second-again"), _BOUND)


async def test_a_silent_stream_is_closed_and_gives_its_place_back(serve: Any) -> None:
    port, clients = await serve(max_streams_per_peer=1, first_request_timeout=0.2)
    client = Client(port)
    clients.append(client)
    code, details = await asyncio.wait_for(client.silent(), _BOUND)
    assert code == "DEADLINE_EXCEEDED"
    assert "no request within 0.2 s" in details
    await asyncio.wait_for(_until_served(client, "after"), _BOUND)

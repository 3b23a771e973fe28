"""Only a gateway holding the ticket of its node id and namespace gets Secrets over xDS.

A real ``grpc.aio`` ADS server fed by the real push path (store → World → translation) and a
hand-made ADS client that claims to be a gateway of the Secret's namespace: it asks for the
credential's SDS secret as Envoy does, and the test looks at what it is sent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2

from tests.certs import make_cert
from tsunagi import proxy_contract as pc
from tsunagi.agent.bootstrap import TICKET_METADATA, ProxyIdentity, bootstrap
from tsunagi.api import load_documents
from tsunagi.controlplane.auth import TICKET_KEY_FILE, ensure_ticket_key
from tsunagi.controlplane.push import Pusher
from tsunagi.store.memory import MemoryStore
from tsunagi.xds import resources as rs
from tsunagi.xds import tickets
from tsunagi.xds.cache import SnapshotCache
from tsunagi.xds.server import start_server
from tsunagi.xds.translate.names import credential_secret

if TYPE_CHECKING:
    from tsunagi.controlplane.http_api import Api

_SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
_BOUND = 30.0  # generous: a bug hangs the test for seconds, not until pytest's timeout
NS = "istio-system"
SERVER = make_cert("bookinfo.example.com")
SECRET = credential_secret("cred")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


CONFIG = [
    {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": NS},
        "spec": {
            "selector": {"istio": "ingressgateway"},
            "servers": [
                {
                    "port": {"number": 8443, "name": "https", "protocol": "HTTPS"},
                    "hosts": ["*"],
                    "tls": {"mode": "SIMPLE", "credentialName": "cred"},
                }
            ],
        },
    },
    {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "cred", "namespace": NS},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": _b64(SERVER.cert), "tls.key": _b64(SERVER.key)},
    },
]
KEY = b"k" * 32


@pytest.fixture
async def xds_port() -> AsyncIterator[int]:
    """An ADS server whose World holds a Gateway naming ``cred`` and the Secret ``cred``."""
    store = MemoryStore()
    docs = load_documents("\n---\n".join(json.dumps(d) for d in CONFIG), "test.yaml")
    await store.commit([(r.key, dict(r.document)) for r in docs])
    cache = SnapshotCache()
    Pusher(store, cache)  # sets the cache's resolver: what a connecting node gets
    server, port = await start_server(cache, "127.0.0.1", 0, ticket_key=KEY)
    try:
        yield port
    finally:
        await server.stop(None)


class _Ads:
    """One SotW ADS stream asking for :data:`SECRET`, as Envoy's SDS subscription does,
    sending ``ticket`` (if any) as Envoy sends the one its bootstrap holds."""

    def __init__(
        self, channel: grpc.aio.Channel, node_id: str, kind: str, ticket: str | None
    ) -> None:
        meta = struct_pb2.Struct()
        fields: dict[str, Any] = {pc.META_NAMESPACE: NS, pc.META_SERVICE: "ingress"}
        if kind == pc.GATEWAY_KIND:
            fields |= {pc.META_KIND: kind, pc.META_LABELS: {"istio": "ingressgateway"}}
        meta.update(fields)
        self.node = base_pb2.Node(id=node_id, cluster="ingress", metadata=meta)
        self.call = channel.stream_stream(
            _SOTW,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )(metadata=((TICKET_METADATA, ticket),) if ticket is not None else None)

    async def ask(self, last: discovery_pb2.DiscoveryResponse | None = None) -> None:
        """Subscribe (or ACK ``last``), asking for the credential's secret."""
        request = discovery_pb2.DiscoveryRequest(
            type_url=rs.SECRET, resource_names=[SECRET], node=self.node
        )
        if last is not None:
            request.version_info, request.response_nonce = last.version_info, last.nonce
        await self.call.write(request)

    async def next_keys(self) -> tuple[discovery_pb2.DiscoveryResponse, dict[str, bytes]]:
        """The next SDS response and its secrets: name → private key."""
        async with asyncio.timeout(_BOUND):
            response = await self.call.read()
        return response, private_keys(response)


async def _secrets_sent(port: int, node_id: str, ticket: str | None) -> dict[str, bytes]:
    """Connect as a gateway of ``NS`` (sending ``ticket``, if any), ask for the SDS secret
    as Envoy does, and return what the first SDS response holds: name → private key."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        ads = _Ads(channel, node_id, pc.GATEWAY_KIND, ticket)
        await ads.ask()
        _, keys = await ads.next_keys()
        ads.call.cancel()
    return keys


def private_keys(response: object) -> dict[str, bytes]:
    """The secrets an SDS response holds: name → private key."""
    assert response is not grpc.aio.EOF
    assert isinstance(response, discovery_pb2.DiscoveryResponse)
    assert response.type_url == rs.SECRET
    out = {}
    for any_msg in response.resources:
        msg = secret_pb2.Secret()
        assert any_msg.Unpack(msg)
        out[msg.name] = msg.tls_certificate.private_key.inline_bytes
    return out


async def test_only_a_gateway_with_its_ticket_gets_the_secret(
    xds_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    node = "ingress-1.istio-system"
    with caplog.at_level(logging.WARNING, logger="tsunagi.xds"):
        assert await _secrets_sent(xds_port, node, None) == {}
    [warning] = [r.getMessage() for r in caplog.records if node in r.getMessage()]
    assert "claims to be a gateway" in warning and "no xDS ticket" in warning
    # a ticket of another node, or of this node in another namespace, proves nothing
    for wrong in (
        tickets.ticket(KEY, "other.istio-system", NS),
        tickets.ticket(KEY, node, "default"),
        tickets.ticket(b"x" * 32, node, NS),
        "",
    ):
        assert await _secrets_sent(xds_port, node, wrong) == {}
    right = tickets.ticket(KEY, node, NS)
    assert await _secrets_sent(xds_port, node, right) == {SECRET: SERVER.key}


def test_the_ticket_key_is_made_once_and_only_its_owner_reads_it(tmp_path: Path) -> None:
    key = ensure_ticket_key(tmp_path / "state")
    path = tmp_path / "state" / TICKET_KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # a restarted control plane keeps it, so the tickets it handed out stay valid
    assert ensure_ticket_key(tmp_path / "state") == key
    assert tickets.matches(key, tickets.ticket(key, "n.ns", "ns"), "n.ns", "ns")
    # the id and namespace are bound separately: "a.b"+"c" is not "a"+"b.c"
    assert not tickets.matches(key, tickets.ticket(key, "a.b", "c"), "a", "b.c")


def test_the_bootstrap_sends_the_ticket_on_the_ads_stream() -> None:
    ident = ProxyIdentity("gw.ns", "gw", "ns", kind=pc.GATEWAY_KIND)
    [service] = bootstrap(ident, "127.0.0.1", 15010, 15000, ticket="abc")["dynamic_resources"][
        "ads_config"
    ]["grpc_services"]
    assert service["initial_metadata"] == [{"key": TICKET_METADATA, "value": "abc"}]
    [plain] = bootstrap(ident, "127.0.0.1", 15010, 15000)["dynamic_resources"]["ads_config"][
        "grpc_services"
    ]
    assert "initial_metadata" not in plain


async def _ticketing_api() -> Api:
    """The control plane's HTTP API over an empty store, signing tickets with ``KEY``;
    its token is ``t``."""
    from tsunagi.controlplane.http_api import Api
    from tsunagi.registry import Registry

    store = MemoryStore()
    await store.open()
    cache = SnapshotCache()
    return Api(
        store,
        Registry(store, ttl=15.0),
        Pusher(store, cache),
        cache,
        "t",
        ("127.0.0.1", 1),
        ticket_key=KEY,
    )


async def test_bootstrap_hands_out_the_ticket_of_the_node_it_names() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    api = await _ticketing_api()
    auth = {"Authorization": "Bearer t"}
    async with TestClient(TestServer(api.app())) as client:
        query = {"node": "gw-1.istio-system", "namespace": NS}
        async with client.get("/v1/bootstrap", params=query, headers=auth) as r:
            assert r.status == 200
            xds = (await r.json())["xds"]
        assert xds["ticket"] == tickets.ticket(KEY, "gw-1.istio-system", NS)
        async with client.get("/v1/bootstrap", params={"node": "n"}, headers=auth) as r:
            assert (await r.json())["xds"]["ticket"] == tickets.ticket(KEY, "n", "default")
        async with client.get("/v1/bootstrap", headers=auth) as r:
            assert "ticket" not in (await r.json())["xds"]
        async with client.get("/v1/bootstrap", params=query) as r:  # no token, no ticket
            assert r.status == 401


def test_a_control_character_cannot_shift_the_id_namespace_boundary() -> None:
    # NUL separates the id and the namespace in the signed message: one inside either would
    # let ("x\0ns2", "y") sign as ("x", "ns2\0y"), so neither may hold a control character
    for node, ns in (("x\0ns2", "y"), ("x", "ns2\0y"), ("a\nb", "ns"), ("a", "n\ts")):
        with pytest.raises(ValueError, match="control character"):
            tickets.ticket(KEY, node, ns)
        # what an unchecked signer would have handed out, and (for NUL) also the other pair's
        signed = f"tsunagi-xds-ticket-v1\0{node}\0{ns}".encode()
        forged = hmac.new(KEY, signed, hashlib.sha256).hexdigest()
        assert not tickets.matches(KEY, forged, node, ns)
    assert tickets.matches(KEY, tickets.ticket(KEY, "x", "ns2"), "x", "ns2")


async def test_bootstrap_rejects_a_node_or_namespace_a_ticket_cannot_bind() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    api = await _ticketing_api()
    auth = {"Authorization": "Bearer t"}
    async with TestClient(TestServer(api.app())) as client:
        for query, field in (
            ({"node": "x\0ns2", "namespace": "y"}, "node"),
            ({"node": "gw\n", "namespace": NS}, "node"),
            ({"node": "x", "namespace": "ns2\0y"}, "namespace"),
            ({"node": "x", "namespace": "Not_A_Label"}, "namespace"),
            ({"node": "x", "namespace": "a.b"}, "namespace"),
        ):
            async with client.get("/v1/bootstrap", params=query, headers=auth) as r:
                assert r.status == 400, query
                message = (await r.json())["error"]
            assert message.startswith(f"invalid query: query parameter {field}: "), message
            assert ("control character" if field == "node" else "DNS label") in message

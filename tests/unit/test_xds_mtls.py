"""The xDS port admits only who it should: mutual TLS with certificates of the mesh's CA,
and a node must be what its certificate says.

A real ``grpc.aio`` ADS server with the control plane's own credentials
(:class:`~tsunagi.controlplane.xds_tls.ServingCertificate` from a real
:class:`~tsunagi.ca.authority.Authority`), fed by the real push path (store → World →
translation), and hand-made ADS clients that present workload certificates the CA signed
for keys made as the agent makes them (:mod:`tsunagi.agent.csr`). They ask for a gateway
credential's SDS secret as Envoy does; the test looks at what each is sent, or how it is
refused.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2

from tests.certs import make_ca, make_cert
from tsunagi import proxy_contract as pc
from tsunagi.agent.csr import key_and_csr
from tsunagi.api import load_documents
from tsunagi.ca.authority import Authority
from tsunagi.ca.issue import issue
from tsunagi.ca.keystore import plugged_in, self_signed
from tsunagi.controlplane.push import Debounce, Pusher
from tsunagi.controlplane.xds_tls import (
    ServingCertificate,
    control_plane_identity,
    serving_hosts,
)
from tsunagi.spiffe import spiffe_id
from tsunagi.store.memory import MemoryStore
from tsunagi.xds import peer_identity
from tsunagi.xds import resources as rs
from tsunagi.xds.cache import SnapshotCache
from tsunagi.xds.server import start_server
from tsunagi.xds.translate.names import credential_secret

_SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
_BOUND = 30.0  # generous: a bug hangs the test for seconds, not until pytest's timeout
TD = "cluster.local"
NS = "istio-system"
SERVER = make_cert("bookinfo.example.com")
ROTATED = make_cert("bookinfo.example.com")
SECRET = credential_secret("cred")
XDS_ID = control_plane_identity(TD, NS)


def _b64(data: bytes) -> str:
    import base64

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


class Mesh:
    """The CA, the store, the push loop and the mTLS xDS port."""

    def __init__(self, authority: Authority, store: MemoryStore, cache: SnapshotCache) -> None:
        self.authority = authority
        self.store = store
        self.cache = cache
        self.pusher = Pusher(store, cache, Debounce(quiet=0.001, max_delay=0.01))
        self.port = 0

    def credentials(
        self, namespace: str, account: str, gateway: bool = False
    ) -> grpc.ChannelCredentials:
        """What a proxy of ``namespace``/``account`` presents: a key made as the agent
        makes it, its certificate signed by this CA (a gateway's, with the mark that lets
        it hold keys, when ``gateway``), and the trust bundle."""
        key, csr = key_and_csr(spiffe_id(TD, namespace, account))
        now = datetime.datetime.now(datetime.UTC)
        signed = self.authority.sign_csr(
            csr, spiffe_id(TD, namespace, account), datetime.timedelta(hours=1), now, gateway
        )
        return grpc.ssl_channel_credentials(
            root_certificates=self.authority.root_pem,
            private_key=key,
            certificate_chain=signed.chain,
        )

    def channel(self, creds: grpc.ChannelCredentials) -> grpc.aio.Channel:
        # The serving certificate names 127.0.0.1; gRPC checks that as Envoy checks the URI.
        return grpc.aio.secure_channel(f"127.0.0.1:{self.port}", creds)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    authority = self_signed(tmp_path / "state", TD, datetime.datetime.now(datetime.UTC))
    store = MemoryStore()
    docs = load_documents("\n---\n".join(json.dumps(d) for d in CONFIG), "test.yaml")
    await store.commit([(r.key, dict(r.document)) for r in docs])
    m = Mesh(authority, store, SnapshotCache())
    serving = ServingCertificate(authority, XDS_ID, ("127.0.0.1",))
    server, m.port = await start_server(
        m.cache, "127.0.0.1", 0, credentials=serving.credentials(), trust_domain=TD
    )
    task = asyncio.create_task(m.pusher.run())
    try:
        yield m
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop(None)


class _Ads:
    """One SotW ADS stream asking for :data:`SECRET`, as Envoy's SDS subscription does."""

    def __init__(
        self, channel: grpc.aio.Channel, node_id: str, kind: str, namespace: str, account: str
    ) -> None:
        meta = struct_pb2.Struct()
        fields: dict[str, Any] = {pc.META_NAMESPACE: namespace, pc.META_SERVICE: "ingress"}
        if account:
            fields[pc.META_SERVICE_ACCOUNT] = account
        if kind == pc.GATEWAY_KIND:
            fields |= {pc.META_KIND: kind, pc.META_LABELS: {"istio": "ingressgateway"}}
        meta.update(fields)
        self.node = base_pb2.Node(id=node_id, cluster="ingress", metadata=meta)
        self.call = channel.stream_stream(
            _SOTW,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )()

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
        assert isinstance(response, discovery_pb2.DiscoveryResponse)
        assert response.type_url == rs.SECRET
        out = {}
        for any_msg in response.resources:
            msg = secret_pb2.Secret()
            assert any_msg.Unpack(msg)
            out[msg.name] = msg.tls_certificate.private_key.inline_bytes
        return response, out

    async def refusal(self) -> grpc.aio.AioRpcError:
        """How the server ends this stream (it must, before sending anything)."""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.ask()
            async with asyncio.timeout(_BOUND):
                await self.call.read()
        return caught.value


async def test_a_gateway_proven_by_its_certificate_gets_its_secret_and_rotations(
    mesh: Mesh,
) -> None:
    node = "ingress-aaaaaa.istio-system"
    async with mesh.channel(mesh.credentials(NS, "ingress", gateway=True)) as channel:
        gw = _Ads(channel, node, pc.GATEWAY_KIND, NS, "ingress")
        await gw.ask()
        first, keys = await gw.next_keys()
        assert keys == {SECRET: SERVER.key}
        assert mesh.cache.nodes[node].verified
        await gw.ask(first)  # ACK, so the next version may come

        rotated = dict(CONFIG[1])
        rotated["data"] = {"tls.crt": _b64(ROTATED.cert), "tls.key": _b64(ROTATED.key)}
        await mesh.store.commit([(("Secret", NS, "cred"), rotated)])
        _, keys = await gw.next_keys()  # the push, not a reconnect, brings the new key
        assert keys == {SECRET: ROTATED.key}
        gw.call.cancel()


@pytest.mark.parametrize(
    ("node", "kind", "account"),
    [
        ("app-1.istio-system", pc.DEFAULT_KIND, "app"),
        ("ingress-cccccc.istio-system", pc.GATEWAY_KIND, "ingress"),
    ],
    ids=["sidecar", "gateway-without-the-mark"],
)
async def test_a_proxy_without_the_cas_gateway_mark_gets_no_secret(
    mesh: Mesh, node: str, kind: str, account: str
) -> None:
    """Admitted (its certificate proved its namespace and account), but the certificate
    lacks the mark only a gateway token (or the admin) obtains: any workload token of the
    namespace could have got it, so no keys, be it a sidecar or a gateway."""
    async with mesh.channel(mesh.credentials(NS, account)) as channel:
        proxy = _Ads(channel, node, kind, NS, account)
        await proxy.ask()
        _, keys = await proxy.next_keys()
        assert keys == {}
        assert node in mesh.cache.nodes and not mesh.cache.nodes[node].verified
        proxy.call.cancel()


async def test_a_certificate_of_another_namespace_cannot_claim_this_one(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    """A forged gateway: its certificate is of ``default``, its metadata claims the
    Secret's namespace. Refused, before any config, with both named; logged once."""
    caplog.set_level(logging.WARNING, "tsunagi.xds")
    async with mesh.channel(mesh.credentials("default", "ingress")) as channel:
        for _ in range(3):  # as Envoy retries
            forged = _Ads(channel, "ingress-bbbbbb.istio-system", pc.GATEWAY_KIND, NS, "ingress")
            error = await forged.refusal()
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            message = error.details() or ""
            assert "namespace 'istio-system'" in message
            assert "spiffe://cluster.local/ns/default/sa/ingress" in message
    assert "ingress-bbbbbb.istio-system" not in mesh.cache.nodes
    refusals = [r for r in caplog.records if "refused an xDS stream" in r.getMessage()]
    assert len(refusals) == 1


async def test_a_connected_node_id_is_not_taken_over_by_another_identity(mesh: Mesh) -> None:
    """Same namespace, another service account, the same node id: refused while the holder
    is connected, naming both; the holder keeps its entry. The same identity reconnecting
    replaces its own stream as before."""
    node = "app-1.istio-system"
    holder, thief = spiffe_id(TD, NS, "app"), spiffe_id(TD, NS, "thief")
    async with (
        mesh.channel(mesh.credentials(NS, "app")) as mine,
        mesh.channel(mesh.credentials(NS, "thief")) as theirs,
    ):
        first = _Ads(mine, node, pc.DEFAULT_KIND, NS, "app")
        await first.ask()
        await first.next_keys()
        held = mesh.cache.nodes[node]
        assert held.identity == holder
        for account in ("thief", ""):  # with its own account, or claiming none
            error = await _Ads(theirs, node, pc.DEFAULT_KIND, NS, account).refusal()
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            message = error.details() or ""
            assert holder in message and thief in message, message
            assert mesh.cache.nodes[node] is held
        again = _Ads(mine, node, pc.DEFAULT_KIND, NS, "app")
        await again.ask()
        await again.next_keys()
        assert mesh.cache.nodes[node] is not held
        assert mesh.cache.nodes[node].identity == holder
        first.call.cancel()
        again.call.cancel()


def test_the_takeover_rule() -> None:
    a, b = spiffe_id(TD, NS, "a"), spiffe_id(TD, NS, "b")
    assert peer_identity.takeover("x.ns", a, None) is None
    assert peer_identity.takeover("x.ns", a, a) is None
    assert a in (peer_identity.takeover("x.ns", b, a) or "")


async def test_a_certificate_of_another_service_account_is_refused(mesh: Mesh) -> None:
    async with mesh.channel(mesh.credentials(NS, "reviews")) as channel:
        claims = _Ads(channel, "ratings-1.istio-system", pc.DEFAULT_KIND, NS, "ratings")
        error = await claims.refusal()
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "service account 'ratings'" in (error.details() or "")
    assert "sa/reviews" in (error.details() or "")


async def test_without_a_certificate_of_the_mesh_no_stream_opens(mesh: Mesh) -> None:
    """No client certificate, or one from another CA: the handshake fails, so no stream
    (and no config) at all; the server's certificate is the mesh's."""
    other = make_ca("other-ca")
    foreign = make_cert("app", issuer=other)
    for creds in (
        grpc.ssl_channel_credentials(root_certificates=mesh.authority.root_pem),
        grpc.ssl_channel_credentials(
            root_certificates=mesh.authority.root_pem,
            private_key=foreign.key,
            certificate_chain=foreign.cert,
        ),
    ):
        async with mesh.channel(creds) as channel:
            error = await _Ads(channel, "app-1.default", pc.DEFAULT_KIND, "default", "").refusal()
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert not mesh.cache.nodes
    # and a plaintext client gets nothing either
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.port}") as channel:
        error = await _Ads(channel, "app-1.default", pc.DEFAULT_KIND, "default", "").refusal()
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_the_serving_certificate_is_renewed_past_half_its_lifetime(tmp_path: Path) -> None:
    now = [datetime.datetime.now(datetime.UTC)]
    authority = self_signed(tmp_path / "state", TD, now[0])
    serving = ServingCertificate(
        authority, XDS_ID, ("127.0.0.1",), datetime.timedelta(hours=2), clock=lambda: now[0]
    )
    first = serving.serial
    now[0] += datetime.timedelta(minutes=59)
    assert serving.fetch() is None and serving.serial == first  # not yet due
    now[0] += datetime.timedelta(minutes=2)
    assert serving.fetch() is not None and serving.serial != first


@pytest.mark.parametrize(
    ("metadata", "presented", "reason"),
    [
        ({pc.META_NAMESPACE: "shop"}, None, "presented no client certificate"),
        ({pc.META_NAMESPACE: "shop"}, "spiffe://cluster.local/ns/shop", "not a workload"),
        ({pc.META_NAMESPACE: "shop"}, "spiffe://other.td/ns/shop/sa/cart", "trust domain"),
        ({pc.META_NAMESPACE: "shop"}, "spiffe://cluster.local/ns/web/sa/cart", "'web'"),
        # no namespace claimed is the default namespace, as the node's config would be
        ({}, "spiffe://cluster.local/ns/shop/sa/cart", "namespace 'default'"),
        (
            {pc.META_NAMESPACE: "shop", pc.META_SERVICE_ACCOUNT: "pay"},
            "spiffe://cluster.local/ns/shop/sa/cart",
            "service account 'pay'",
        ),
    ],
)
def test_a_node_must_be_what_its_certificate_says(
    metadata: dict[str, Any], presented: str | None, reason: str
) -> None:
    why = peer_identity.refusal("cart-1.shop", metadata, presented, TD)
    assert why is not None and reason in why and "cart-1.shop" in why


def test_a_node_id_cannot_reach_into_another_namespace() -> None:
    """The id keys a node's config and pushes: one of another namespace would take them."""
    cert = "spiffe://cluster.local/ns/shop/sa/cart"
    why = peer_identity.refusal("cart-1.payments", {pc.META_NAMESPACE: "shop"}, cert, TD)
    assert why is not None and "NAME.shop" in why
    assert peer_identity.refusal("cart-1.shop", {pc.META_NAMESPACE: "shop"}, cert, TD) is None


def test_a_node_that_claims_no_service_account_needs_only_its_namespace() -> None:
    """As Istio's xDS server: an empty claim is not checked (an older agent sends none)."""
    for meta in (
        {pc.META_NAMESPACE: "shop"},
        {pc.META_NAMESPACE: "shop", "service_account": "cart"},
    ):
        assert (
            peer_identity.refusal("c.shop", meta, "spiffe://cluster.local/ns/shop/sa/cart", TD)
            is None
        )
    assert peer_identity.presented_identity({"peer_spiffe_id": [b"spiffe://a/ns/b/sa/c"]}) == (
        "spiffe://a/ns/b/sa/c"
    )
    assert peer_identity.presented_identity({"x509_subject_alternative_name": [b"x"]}) is None


async def test_with_a_plugged_in_intermediate_ca_chains_verify_both_ways(tmp_path: Path) -> None:
    """``tsunagi up --ca-cert INTERMEDIATE --ca-chain``: the serving certificate and the
    workload's carry the intermediate, the trust bundle is the root alone."""
    now = datetime.datetime.now(datetime.UTC)
    root = make_ca("root")
    inter = issue("intermediate", issuer=root, is_ca=True, now=now)
    (tmp_path / "ca.pem").write_bytes(inter.cert)
    (tmp_path / "ca.key").write_bytes(inter.key)
    (tmp_path / "chain.pem").write_bytes(inter.cert + root.cert)
    authority = plugged_in(
        tmp_path / "ca.pem", tmp_path / "ca.key", tmp_path / "chain.pem", TD, now
    )
    assert authority.root_pem == root.cert
    store = MemoryStore()
    m = Mesh(authority, store, SnapshotCache())
    serving = ServingCertificate(authority, XDS_ID, ("127.0.0.1",))
    server, m.port = await start_server(
        m.cache, "127.0.0.1", 0, credentials=serving.credentials(), trust_domain=TD
    )
    task = asyncio.create_task(m.pusher.run())
    try:
        # a gateway's certificate: its mark is read through the intermediate's chain too
        async with m.channel(m.credentials(NS, "app", gateway=True)) as channel:
            sidecar = _Ads(channel, "app-1.istio-system", pc.DEFAULT_KIND, NS, "app")
            await sidecar.ask()
            await sidecar.next_keys()
            assert m.cache.nodes["app-1.istio-system"].verified
            sidecar.call.cancel()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop(None)


def test_the_serving_certificate_names_where_local_proxies_reach_it() -> None:
    assert serving_hosts("127.0.0.1") == ("127.0.0.1", "localhost")
    assert serving_hosts("0.0.0.0") == ("127.0.0.1", "localhost")
    assert serving_hosts("10.1.2.3") == ("10.1.2.3",)
    assert serving_hosts("cp.example.com") == ("cp.example.com",)

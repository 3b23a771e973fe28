"""A thin grpc.aio adapter around the sans-I/O ADS streams (SotW and delta).

All protocol decisions live in :mod:`tsunagi.xds.protocol`; this module only moves messages
between gRPC and that state machine, tells the cache when something was ACKed (and an
injected :class:`~tsunagi.xds.observer.StreamObserver` what happened, for metrics), and keeps
one client from taking the server for itself (stream limits, gRPC transport limits).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format

from tsunagi.spiffe import DEFAULT_TRUST_DOMAIN
from tsunagi.xds import peer_identity
from tsunagi.xds.cache import SnapshotCache
from tsunagi.xds.dependencies import DependencyCache
from tsunagi.xds.observer import NO_OBSERVER, StreamObserver
from tsunagi.xds.protocol import DeltaStream, Nack, SotwStream

log = logging.getLogger("tsunagi.xds")
_stream_ids = itertools.count(1)

MAX_STREAMS_PER_PEER = 64
"""Default cap on simultaneous ADS streams over one client connection. An Envoy opens one;
64 leaves room for test clients and simulators that multiplex many proxies per connection."""

MAX_STREAMS = 10_000
"""Default cap on simultaneous ADS streams of the whole server (ten times the scale
benchmark's fleet); each costs a task pair and per-type state."""

FIRST_REQUEST_TIMEOUT = 30.0
"""Seconds a new stream may stay silent before its first request. Envoy sends it at once; a
stream that never does would hold its place under the limits forever."""

MAX_REQUEST_BYTES = 16 * 1024 * 1024
"""Largest request accepted. A delta reconnect lists every resource Envoy holds with its
version (a gateway with tens of thousands of endpoints sends a few MB); more is not Envoy."""

_MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class StreamLimits:
    """Counts open streams per peer and in total, and refuses those past either cap.

    A peer is what ``context.peer()`` says: address *and port*, i.e. one client connection.
    Counting per IP address instead would put every sidecar of the local mesh (all on
    127.0.0.1) under one cap.
    """

    def __init__(self, per_peer: int = MAX_STREAMS_PER_PEER, total: int = MAX_STREAMS) -> None:
        if per_peer < 1 or total < 1:
            raise ValueError("stream limits must be at least 1")
        self.per_peer = per_peer
        self.total = total
        self._open: dict[str, int] = {}
        self._total = 0

    def admit(self, peer: str) -> str | None:
        """Count a new stream from ``peer``; or, when a cap is reached, say which (and
        count nothing)."""
        n = self._open.get(peer, 0)
        if n >= self.per_peer:
            return (
                f"xDS stream limit reached: {peer} already has {n} streams open, the most one "
                f"client connection may have (max_streams_per_peer={self.per_peer}); close "
                "some, open another connection, or raise max_streams_per_peer in "
                "tsunagi.xds.server.start_server"
            )
        if self._total >= self.total:
            return (
                f"xDS stream limit reached: this control plane already serves {self._total} "
                f"streams, its maximum (max_streams={self.total}); add a control-plane "
                "replica or raise max_streams in tsunagi.xds.server.start_server"
            )
        self._open[peer] = n + 1
        self._total += 1
        return None

    def release(self, peer: str) -> None:
        """A stream that :meth:`admit` counted has ended."""
        n = self._open[peer] - 1
        if n:
            self._open[peer] = n
        else:
            del self._open[peer]
        self._total -= 1

    def open_streams(self, peer: str | None = None) -> int:
        """Streams open from ``peer``, or in total."""
        return self._total if peer is None else self._open.get(peer, 0)


_ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def _add_ads(servicer: AdsServicer, server: grpc.aio.Server) -> None:
    """ADS's two methods, as the generated registration adds them but with no response
    serializer: the servicer writes each response as the bytes it was made from
    (``protocol.Outgoing``)."""
    handlers = {
        "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
            servicer.StreamAggregatedResources,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
        ),
        "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
            servicer.DeltaAggregatedResources,
            request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_ADS_SERVICE, handlers),))
    server.add_registered_method_handlers(_ADS_SERVICE, handlers)


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Serves ADS to Envoy; one task reads, one loop writes, per stream."""

    def __init__(
        self,
        cache: SnapshotCache,
        limits: StreamLimits | None = None,
        first_request_timeout: float = FIRST_REQUEST_TIMEOUT,
        observer: StreamObserver = NO_OBSERVER,
        trust_domain: str | None = None,
    ) -> None:
        self.cache = cache
        self.trust_domain = trust_domain
        """Set when the port takes only mutual TLS: every node must then prove its claims
        with its certificate (:mod:`.peer_identity`). None (a plaintext port, for tests):
        no node is verified."""
        self.limits = limits if limits is not None else StreamLimits()
        self.first_request_timeout = first_request_timeout
        self.observer = observer
        # One cache of "which EDS/RDS names does this resource reference" for every stream:
        # every sidecar gets the same clusters, so each is decoded once, not once per stream.
        self.deps = DependencyCache()
        # Peers refused since a stream last ended: logged once, not once per attempt.
        self._refused: set[str] = set()
        # Identity refusals logged already: Envoy retries every second.
        self._impostors: set[str] = set()

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> None:
        await self._serve(
            SotwStream(nonce_prefix=f"s{next(_stream_ids)}-", deps=self.deps),
            request_iterator,
            context,
        )

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> None:
        await self._serve(
            DeltaStream(nonce_prefix=f"d{next(_stream_ids)}-", deps=self.deps),
            request_iterator,
            context,
        )

    async def _serve(
        self,
        stream: SotwStream | DeltaStream,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
    ) -> None:
        peer: str = context.peer()
        refusal = self.limits.admit(peer)
        if refusal is not None:
            # Logged once per peer (or once for the whole server when a peer without streams
            # hits the total cap) until a stream ends: a flood must not flood the log, and
            # the set holds only peers that have streams, plus "".
            key = peer if self.limits.open_streams(peer) else ""
            if key not in self._refused:
                self._refused.add(key)
                log.warning("%s", refusal)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            return
        try:
            await self._run(stream, requests, context)
        finally:
            self.limits.release(peer)
            self._refused.discard(peer)
            self._refused.discard("")

    async def _run(
        self,
        stream: SotwStream | DeltaStream,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
    ) -> None:
        try:
            async with asyncio.timeout(self.first_request_timeout):
                first = await anext(requests, None)
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no request within {self.first_request_timeout:g} s of opening the stream",
            )
            return
        if first is None:
            return
        stream.receive(first)
        node = stream.node
        if node is None or not node.id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry a node id"
            )
            return
        metadata = json_format.MessageToDict(node.metadata)
        why, presented, verified = self._identity(node.id, metadata, context)
        if why is not None:
            self._log_refusal(why)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
            return
        # No await since the check: nobody can have taken the id in between.
        entry = self.cache.connect(node.id, metadata, stream, verified, presented)
        wake = entry.wake
        kind = "delta" if isinstance(stream, DeltaStream) else "sotw"
        log.info("proxy %s connected (%s ADS)", node.id, kind)
        observer = self.observer
        observer.connected(entry, _build_version(node))

        async def read() -> None:
            async for request in requests:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s <- %s", node.id, json_format.MessageToDict(request))
                events = stream.receive(request)
                for event in events:
                    if isinstance(event, Nack):
                        log.warning(
                            "proxy %s rejected %s: %s", node.id, event.type_url, event.message
                        )
                observer.received(entry, events)
                wake.set()
                await self.cache.notify()

        reader = asyncio.create_task(read())
        try:
            while not reader.done():
                started = time.perf_counter()
                while (out := stream.next_wire()) is not None:
                    if log.isEnabledFor(logging.DEBUG):
                        log.debug("%s -> %s %s", node.id, out.type_url, out.nonce)
                    await context.write(out.data)
                    now = time.perf_counter()
                    observer.sent(entry, out.type_url, now - started)
                    started = now
                wake.clear()
                waiter = asyncio.create_task(wake.wait())
                await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
            reader.result()
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            reader.cancel()
            observer.disconnected(entry)
            self.cache.disconnect(entry)
            await self.cache.notify()
            log.info("proxy %s disconnected", node.id)

    def _identity(
        self, node_id: str, metadata: dict[str, Any], context: grpc.aio.ServicerContext
    ) -> tuple[str | None, str | None, bool]:
        """What the stream's client certificate says of node ``node_id``: why it may not
        connect (None: it may), the SPIFFE ID it proved, and whether it may hold private
        keys (its namespace is proven and it carries the CA's gateway mark). On a plaintext
        port (tests): nothing is proven and nothing refused."""
        if self.trust_domain is None:
            return None, None, False
        auth = context.auth_context()
        presented = peer_identity.presented_identity(auth)
        why = peer_identity.refusal(node_id, metadata, presented, self.trust_domain)
        if why is None and presented is not None:
            held = self.cache.nodes.get(node_id)
            why = peer_identity.takeover(node_id, presented, held.identity if held else None)
        return why, presented, why is None and peer_identity.may_hold_keys(auth)

    def _log_refusal(self, why: str) -> None:
        """Log an identity refusal once (the set is bounded: a flood of distinct ones
        starts it afresh rather than growing it)."""
        if why in self._impostors:
            return
        if len(self._impostors) >= 1000:
            self._impostors.clear()
        self._impostors.add(why)
        log.warning("refused an xDS stream: %s", why)


def _build_version(node: Any) -> str:
    """The client's build version as ``major.minor.patch`` ("" when it sent none)."""
    if not node.HasField("user_agent_build_version"):
        return ""
    v = node.user_agent_build_version.version
    return f"{v.major_number}.{v.minor_number}.{v.patch}"


async def start_server(
    cache: SnapshotCache,
    host: str,
    port: int,
    *,
    max_streams_per_peer: int = MAX_STREAMS_PER_PEER,
    max_streams: int = MAX_STREAMS,
    first_request_timeout: float = FIRST_REQUEST_TIMEOUT,
    observer: StreamObserver = NO_OBSERVER,
    credentials: grpc.ServerCredentials | None = None,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
) -> tuple[grpc.aio.Server, int]:
    """Start serving ADS on ``host:port`` (0 picks a free port); return the server and port.

    Streams past ``max_streams_per_peer`` on one client connection, or past ``max_streams``
    in total, are refused with ``RESOURCE_EXHAUSTED`` naming the limit; a stream that sends
    nothing for ``first_request_timeout`` seconds is closed with ``DEADLINE_EXCEEDED``.
    ``observer`` hears of every connection, request and response (for metrics).
    ``credentials``: mutual-TLS server credentials that require a client certificate
    (``grpc.ssl_server_credentials(..., require_client_auth=True)``); every node must then
    be what its certificate in ``trust_domain`` says (:mod:`.peer_identity`), and is
    ``verified`` (may receive private keys) when that certificate carries the CA's gateway
    mark. Without them the port is plaintext and no node is verified (tests only:
    ``tsunagi up`` always passes them).
    """
    limits = StreamLimits(max_streams_per_peer, max_streams)
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", _MAX_RESPONSE_BYTES),
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            # A backstop against floods, far above the per-peer cap: a client that opens a
            # few hundred streams too many gets the handler's clear RESOURCE_EXHAUSTED; only
            # one opening thousands at once is refused by the transport (REFUSED_STREAM).
            ("grpc.max_concurrent_streams", 16 * max_streams_per_peer),
            # Ping every 30 s and drop a connection whose peer does not answer within 10 s:
            # a vanished client does not keep its streams (and their places) for hours.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            # A connection with no stream for 5 minutes serves nobody; Envoy always has one.
            ("grpc.max_connection_idle_ms", 300_000),
            # gRPC sets SO_REUSEPORT by default: a second control plane on the same port
            # would share it silently (proxies split between two configs) instead of failing.
            ("grpc.so_reuseport", 0),
        ]
    )
    _add_ads(
        AdsServicer(
            cache,
            limits,
            first_request_timeout,
            observer,
            trust_domain if credentials is not None else None,
        ),
        server,
    )
    address = f"{host}:{port}"
    if credentials is not None:
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    await server.start()
    return server, bound

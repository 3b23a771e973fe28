"""Many simulated sidecars in one process: lightweight ADS clients that behave like Envoy.

Each stream has its own node id and the metadata a real sidecar sends (see
:mod:`tsunagi.agent.bootstrap`), subscribes the way Envoy does and ACKs every response:

* CDS wildcard first; for the EDS clusters it receives it subscribes to their endpoints
  (``eds_cluster_config.service_name`` or the cluster name), then ACKs CDS;
* once endpoints arrived (clusters warmed), LDS wildcard; for the listeners' RDS route names
  it subscribes to RDS, then ACKs LDS; RDS responses are ACKed as they come.

SotW ACKs carry ``version_info``, ``response_nonce`` and the full subscription; delta ACKs carry
the nonce and subscription changes go in ``resource_names_subscribe``/``_unsubscribe``.

Resources are decoded only to learn names and references, and each distinct content is
decoded once for the whole process (every proxy gets the same bytes), so 1,000 streams cost
little more than their sockets. Per stream it records when it first had a full config (all
four types ACKed, EDS/RDS subscriptions covering what clusters/listeners reference and every
subscribed name received) and every response: arrival and ACK time, type, number of resources
and removals, and which resources changed content.

Control channel: one command per line on stdin, one JSON object per line on stdout::

    status        -> {"event": "status", "full": N, "since_mark": {...}, ...}
    mark NAME     -> {"event": "marked", ...}   later status counts only what came after
    report [PATH] -> {"event": "reported", "path": ...}   the full JSON report (--report)
    quit          -> {"event": "bye"}           closes every stream and exits

The xDS port takes only mutual TLS: with ``--api`` (and the admin token from
``TSUNAGI_TOKEN`` or ``--token-file``, never the command line, where ``ps`` shows it) the
process gets one workload certificate per namespace (``spiffe://TD/ns/NS/sa/adsclient``, a
key made here) from ``POST /v1/certificates`` and opens each namespace's streams on channels
that present it; every proxy claims that service account. Without ``--api`` it speaks
plaintext (a test server without TLS).

Several control-plane replicas (``--xds A,B``): the ``j``-th proxy of each namespace
connects to address ``j % n``, so the fleet is split evenly and every replica serves every
namespace (as a mesh's proxies, each connecting to any replica, would; ``i % n`` over the
whole fleet would give each replica only every other namespace, since proxy ``i`` is in
namespace ``i % namespaces``). The report names each proxy's address.

Run: ``python -m benchmarks.adsclient --xds 127.0.0.1:15012 --api http://127.0.0.1:15014
--count 1000 --protocol delta``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2

from tsunagi.controlplane.heap import raise_malloc_thresholds

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SHORT = {CDS: "CDS", EDS: "EDS", LDS: "LDS", RDS: "RDS"}
_HCM = (
    "type.googleapis.com/" + http_connection_manager_pb2.HttpConnectionManager.DESCRIPTOR.full_name
)

_SOTW_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
_DELTA_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"

STREAMS_PER_CHANNEL = 50
SERVICE_ACCOUNT = "adsclient"
"""The service account of every simulated proxy (one certificate per namespace)."""
CHANGED_NAMES_LIMIT = 20
"""A response record lists the names that changed when there are at most this many."""

SERVICE_PORT = 9080
INBOUND_LISTEN_PORT = 15006
OUTBOUND_PORT = 15001


def service_name(index: int) -> str:
    """The synthetic mesh's service ``index``: ``svc-0042``."""
    return f"svc-{index:04d}"


def service_namespace(index: int, namespaces: Sequence[str]) -> str:
    """The namespace service ``index`` lives in: services go round-robin over namespaces."""
    return namespaces[index % len(namespaces)]


@dataclass(frozen=True, slots=True)
class Info:
    """What a proxy needs from one resource content: its name and what it references."""

    name: str
    refs: frozenset[str] = frozenset()


def _cluster_info(data: bytes) -> Info:
    c = cluster_pb2.Cluster.FromString(data)
    eds = c.WhichOneof("cluster_discovery_type") == "type" and c.type == cluster_pb2.Cluster.EDS
    refs = frozenset({c.eds_cluster_config.service_name or c.name}) if eds else frozenset()
    return Info(c.name, refs)


def _listener_info(data: bytes) -> Info:
    lis = listener_pb2.Listener.FromString(data)
    names = set()
    for chain in lis.filter_chains:
        for f in chain.filters:
            if f.typed_config.type_url != _HCM:
                continue
            hcm = http_connection_manager_pb2.HttpConnectionManager.FromString(f.typed_config.value)
            if hcm.WhichOneof("route_specifier") == "rds":
                names.add(hcm.rds.route_config_name)
    return Info(lis.name, frozenset(names))


def _cla_info(data: bytes) -> Info:
    return Info(endpoint_pb2.ClusterLoadAssignment.FromString(data).cluster_name)


def _route_info(data: bytes) -> Info:
    # Only the name (field 1) is needed; parsing a 500 kB RouteConfiguration once per
    # distinct content is cheap enough.
    return Info(route_pb2.RouteConfiguration.FromString(data).name)


_DECODERS: dict[str, Callable[[bytes], Info]] = {
    CDS: _cluster_info,
    EDS: _cla_info,
    LDS: _listener_info,
    RDS: _route_info,
}


class Decoder:
    """Decodes each distinct resource content once for every stream of the process.

    The returned :class:`Info` is canonical per content, so ``a is b`` means "same bytes".
    """

    def __init__(self) -> None:
        self._seen: dict[str, dict[bytes, Info]] = {t: {} for t in _DECODERS}
        self.decoded = 0

    def info(self, type_url: str, data: bytes) -> Info:
        seen = self._seen[type_url]
        got = seen.get(data)
        if got is None:
            got = seen[data] = _DECODERS[type_url](data)
            self.decoded += 1
        return got


@dataclass(slots=True)
class Record:
    """One response a proxy received and ACKed."""

    received: float
    acked: float
    type: str
    resources: int
    removed: int
    changed: list[str] | int

    def to_json(self) -> list[Any]:
        return [self.received, self.acked, self.type, self.resources, self.removed, self.changed]


@dataclass
class Proxy:
    """One simulated sidecar and its ADS stream's bookkeeping."""

    node_id: str
    namespace: str
    service: str
    labels: dict[str, str]
    held: dict[str, dict[str, Info]] = field(default_factory=lambda: {t: {} for t in SHORT})
    subscribed: dict[str, set[str]] = field(default_factory=lambda: {EDS: set(), RDS: set()})
    acked: set[str] = field(default_factory=set)
    lds_requested: bool = False
    started: float | None = None
    first_full: float | None = None
    records: list[Record] = field(default_factory=list)
    error: str | None = None
    failures: list[tuple[float, str]] = field(default_factory=list)
    """Streams that failed (time, status); like Envoy, the proxy reconnects after a backoff."""

    def node(self) -> base_pb2.Node:
        meta = struct_pb2.Struct()
        meta.update(
            {
                "namespace": self.namespace,
                "service": self.service,
                "labels": self.labels,
                "outbound_port": OUTBOUND_PORT,
                "inbound": {
                    str(SERVICE_PORT): {"listen": INBOUND_LISTEN_PORT, "app": SERVICE_PORT}
                },
                "kind": "sidecar",
                "service_account": SERVICE_ACCOUNT,
            }
        )
        return base_pb2.Node(id=self.node_id, cluster=self.service, metadata=meta)

    def reset(self) -> None:
        """A new stream starts from nothing (Envoy would keep serving what it has)."""
        self.held = {t: {} for t in SHORT}
        self.subscribed = {EDS: set(), RDS: set()}
        self.acked = set()
        self.lds_requested = False

    def required(self, parent: str) -> set[str]:
        out: set[str] = set()
        for info in self.held[parent].values():
            out |= info.refs
        return out

    def full(self) -> bool:
        if self.acked != {CDS, EDS, LDS, RDS}:
            return False
        for parent, child in ((CDS, EDS), (LDS, RDS)):
            if not self.required(parent) <= self.subscribed[child]:
                return False
            if not self.subscribed[child] <= self.held[child].keys():
                return False
        return True

    def apply(
        self, decoder: Decoder, type_url: str, resources: list[tuple[str | None, bytes]], sotw: bool
    ) -> tuple[list[str] | int, int]:
        """Take a response's resources in; returns (changed names or count, removals)."""
        held = self.held[type_url]
        fresh = {}
        for name, data in resources:
            info = decoder.info(type_url, data)
            fresh[name or info.name] = info
        changed = [n for n, i in fresh.items() if held.get(n) is not i]
        removed = 0
        if sotw and type_url in (CDS, LDS):
            removed = len(held.keys() - fresh.keys())
            held.clear()
        held.update(fresh)
        return (changed if len(changed) <= CHANGED_NAMES_LIMIT else len(changed)), removed


async def _responses(call: Any, p: Proxy) -> AsyncIterator[tuple[float, Any]]:
    """Each response of a stream with the time it arrived, until the server closes it."""
    while (resp := await call.read()) is not grpc.aio.EOF:
        yield time.time(), resp
    p.error = "stream closed by the server"


class Client:
    """All proxies of this process, their streams, marks and the report."""

    def __init__(
        self,
        xds: str,
        proxies: list[Proxy],
        protocol: str,
        credentials: dict[str, grpc.ChannelCredentials] | None = None,
    ) -> None:
        self.addresses = [a for a in xds.split(",") if a]
        """The ADS servers (replicas), shared as :func:`split_between` says."""
        if not self.addresses:
            raise ValueError("no xDS address given")
        self.xds = ",".join(self.addresses)
        self.address_of = split_between(proxies, self.addresses)
        self.credentials = credentials
        """Namespace → what its proxies' channels present (None: plaintext)."""
        self.proxies = proxies
        self.protocol = protocol
        self.decoder = Decoder()
        self.started = 0.0
        self.marks: list[dict[str, Any]] = []
        self._mark_index: list[int] = [0] * len(proxies)
        self._channels: list[grpc.aio.Channel] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Open every stream at once, as a fleet of sidecars restarting would."""
        self.started = time.time()
        options = [
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
            # Own connections per channel: the global pool would share one socket.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        # A channel's streams share its certificate and server, so each channel holds one
        # namespace's proxies of one address.
        groups: dict[tuple[str, str], list[Proxy]] = {}
        for proxy, address in zip(self.proxies, self.address_of, strict=True):
            groups.setdefault((proxy.namespace, address), []).append(proxy)
        for (namespace, address), proxies in groups.items():
            for i, proxy in enumerate(proxies):
                if i % STREAMS_PER_CHANNEL == 0:
                    if self.credentials is None:
                        channel = grpc.aio.insecure_channel(address, options=options)
                    else:
                        creds = self.credentials[namespace]
                        channel = grpc.aio.secure_channel(address, creds, options=options)
                    self._channels.append(channel)
                self._tasks.append(asyncio.create_task(self._keep(self._channels[-1], proxy)))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for ch in self._channels:
            await ch.close()

    async def _keep(self, channel: grpc.aio.Channel, p: Proxy) -> None:
        """Run the proxy's stream; when it fails, reconnect with Envoy's backoff."""
        backoff = 0.1
        run = self._sotw if self.protocol == "sotw" else self._delta
        while True:
            await run(channel, p)
            if p.error is None:
                return
            p.failures.append((time.time(), p.error))
            p.error = None
            p.reset()
            await asyncio.sleep(backoff)
            backoff = min(1.0, backoff * 2)

    # --- SotW

    async def _sotw(self, channel: grpc.aio.Channel, p: Proxy) -> None:
        call = channel.stream_stream(
            _SOTW_METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )()
        p.started = p.started or time.time()
        versions: dict[str, str] = {}
        nonces: dict[str, str] = {}

        def request(t: str) -> discovery_pb2.DiscoveryRequest:
            names = sorted(p.subscribed[t]) if t in p.subscribed else []
            return discovery_pb2.DiscoveryRequest(
                type_url=t,
                version_info=versions.get(t, ""),
                response_nonce=nonces.get(t, ""),
                resource_names=names,
            )

        try:
            first = request(CDS)
            first.node.CopyFrom(p.node())
            await call.write(first)
            async for received, resp in _responses(call, p):
                t = resp.type_url
                changed, removed = p.apply(
                    self.decoder, t, [(None, a.value) for a in resp.resources], sotw=True
                )
                versions[t], nonces[t] = resp.version_info, resp.nonce
                child = EDS if t == CDS else RDS if t == LDS else None
                if child is not None:
                    # Like Envoy: subscribe to what the new clusters/listeners need, then ACK.
                    need = p.required(t)
                    if need != p.subscribed[child]:
                        p.subscribed[child] = need
                        await call.write(request(child))
                await call.write(request(t))
                p.acked.add(t)
                if t == EDS and not p.lds_requested:
                    # Clusters warmed: Envoy's listener initialization starts now.
                    p.lds_requested = True
                    await call.write(request(LDS))
                self._record(p, received, t, len(resp.resources), removed, changed)
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as e:
            if isinstance(e, grpc.aio.AioRpcError):
                p.error = f"{e.code().name}: {e.details()}"

    # --- delta

    async def _delta(self, channel: grpc.aio.Channel, p: Proxy) -> None:
        call = channel.stream_stream(
            _DELTA_METHOD,
            request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
        )()
        p.started = p.started or time.time()
        try:
            await call.write(discovery_pb2.DeltaDiscoveryRequest(node=p.node(), type_url=CDS))
            async for received, resp in _responses(call, p):
                t = resp.type_url
                changed, _ = p.apply(
                    self.decoder,
                    t,
                    [(r.name, r.resource.value) for r in resp.resources],
                    sotw=False,
                )
                for name in resp.removed_resources:
                    p.held[t].pop(name, None)
                child = EDS if t == CDS else RDS if t == LDS else None
                if child is not None:
                    need = p.required(t)
                    add, drop = need - p.subscribed[child], p.subscribed[child] - need
                    if add or drop:
                        p.subscribed[child] = need
                        await call.write(
                            discovery_pb2.DeltaDiscoveryRequest(
                                type_url=child,
                                resource_names_subscribe=sorted(add),
                                resource_names_unsubscribe=sorted(drop),
                            )
                        )
                await call.write(
                    discovery_pb2.DeltaDiscoveryRequest(type_url=t, response_nonce=resp.nonce)
                )
                p.acked.add(t)
                if t == EDS and not p.lds_requested:
                    p.lds_requested = True
                    await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=LDS))
                self._record(
                    p, received, t, len(resp.resources), len(resp.removed_resources), changed
                )
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as e:
            if isinstance(e, grpc.aio.AioRpcError):
                p.error = f"{e.code().name}: {e.details()}"

    def _record(
        self, p: Proxy, received: float, t: str, n: int, removed: int, changed: list[str] | int
    ) -> None:
        now = time.time()
        p.records.append(Record(received, now, SHORT[t], n, removed, changed))
        if p.first_full is None and p.full():
            p.first_full = now

    # --- control channel

    def mark(self, name: str) -> dict[str, Any]:
        self._mark_index = [len(p.records) for p in self.proxies]
        mark = {"name": name, "time": time.time()}
        self.marks.append({**mark, "index": list(self._mark_index)})
        return {"event": "marked", **mark}

    def status(self) -> dict[str, Any]:
        """Counts since the last mark, for a driver that polls for convergence."""
        by_type: dict[str, int] = {}
        streams_with: dict[str, int] = {}
        last = 0.0
        for p, start in zip(self.proxies, self._mark_index, strict=True):
            seen = set()
            for r in p.records[start:]:
                by_type[r.type] = by_type.get(r.type, 0) + 1
                seen.add(r.type)
                last = max(last, r.acked)
            for t in seen:
                streams_with[t] = streams_with.get(t, 0) + 1
        fulls = [p.first_full for p in self.proxies if p.first_full is not None]
        return {
            "event": "status",
            "time": time.time(),
            "started": self.started,
            "streams": len(self.proxies),
            "full": len(fulls),
            "last_full": max(fulls, default=None),
            "reconnected": sum(1 for p in self.proxies if p.failures),
            "failure_examples": sorted({e for p in self.proxies for _, e in p.failures})[:5],
            "mark": self.marks[-1]["name"] if self.marks else None,
            "mark_time": self.marks[-1]["time"] if self.marks else self.started,
            "responses_since_mark": by_type,
            "streams_with_response_since_mark": streams_with,
            "last_ack_since_mark": last or None,
            "decoded_contents": self.decoder.decoded,
        }

    def report(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "xds": self.xds,
            "started": self.started,
            "marks": self.marks,
            "proxies": [
                {
                    "id": p.node_id,
                    "namespace": p.namespace,
                    "xds": address,
                    "started": p.started,
                    "first_full": p.first_full,
                    "failures": p.failures,
                    "held": {SHORT[t]: len(h) for t, h in p.held.items()},
                    "records": [r.to_json() for r in p.records],
                }
                for p, address in zip(self.proxies, self.address_of, strict=True)
            ],
        }


def make_proxies(count: int, services: int, namespaces: Sequence[str]) -> list[Proxy]:
    """Proxy ``i`` is a sidecar of service ``i % services`` in that service's namespace."""
    out = []
    for i in range(count):
        k = i % services
        svc, ns = service_name(k), service_namespace(k, namespaces)
        labels = {"app": svc, "version": f"v{i % 2 + 1}"}
        out.append(Proxy(f"{svc}-{i}.{ns}", ns, svc, labels))
    return out


def split_between(proxies: Sequence[Proxy], addresses: Sequence[str]) -> list[str]:
    """Each proxy's server: the ``j``-th proxy of a namespace gets ``addresses[j % n]``."""
    seen: dict[str, int] = {}
    out = []
    for p in proxies:
        j = seen[p.namespace] = seen.get(p.namespace, -1) + 1
        out.append(addresses[j % len(addresses)])
    return out


def namespace_credentials(
    api: str, token: str, namespaces: Sequence[str]
) -> dict[str, grpc.ChannelCredentials]:
    """One workload certificate per namespace, for a key made here, from the control plane's
    CA (the admin token may obtain any identity)."""
    from tsunagi.agent.csr import key_and_csr
    from tsunagi.client import Client
    from tsunagi.spiffe import spiffe_id

    client = Client(api, token)
    trust_domain = str(client.request("GET", "/v1/bootstrap")["trust"]["trustDomain"])
    out = {}
    for ns in namespaces:
        key, csr = key_and_csr(spiffe_id(trust_domain, ns, SERVICE_ACCOUNT))
        body = {"csr": csr.decode(), "namespace": ns, "serviceAccount": SERVICE_ACCOUNT}
        reply = client.request("POST", "/v1/certificates", body)
        out[ns] = grpc.ssl_channel_credentials(
            root_certificates=reply["rootCertificates"].encode(),
            private_key=key,
            certificate_chain=reply["certificateChain"].encode(),
        )
    return out


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main_async(args: argparse.Namespace) -> int:
    namespaces = [n for n in args.namespace.split(",") if n]
    proxies = make_proxies(args.count, args.services, namespaces)
    credentials = None
    if args.api:
        token = os.environ.get("TSUNAGI_TOKEN", "")
        if args.token_file:
            token = Path(args.token_file).read_text().strip()
        credentials = namespace_credentials(args.api, token, sorted({p.namespace for p in proxies}))
    client = Client(args.xds, proxies, args.protocol, credentials)
    await client.start()
    _emit({"event": "started", "time": client.started, "streams": args.count})
    try:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            cmd, _, rest = line.strip().partition(" ")
            if cmd == "status":
                _emit(client.status())
            elif cmd == "mark":
                _emit(client.mark(rest or f"mark{len(client.marks) + 1}"))
            elif cmd == "report":
                path = Path(rest or args.report)
                path.write_text(json.dumps(client.report()))
                _emit({"event": "reported", "path": str(path)})
            elif cmd == "quit":
                break
            elif cmd:
                _emit({"event": "error", "message": f"unknown command {cmd!r}"})
    finally:
        with contextlib.suppress(Exception):
            await client.stop()
        _emit({"event": "bye"})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="adsclient", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--xds",
        required=True,
        help="HOST:PORT of the ADS server, or several comma-separated (replicas): the j-th "
        "proxy of each namespace connects to the (j mod n)-th",
    )
    p.add_argument("--count", type=int, default=1, help="number of simulated proxies")
    p.add_argument("--protocol", choices=["sotw", "delta"], default="delta")
    p.add_argument("--namespace", default="default", help="namespaces, comma-separated")
    p.add_argument("--services", type=int, default=1, help="services the proxies belong to")
    p.add_argument("--report", default="adsclient-report.json", help="where `report` writes")
    p.add_argument(
        "--api",
        default="",
        help="the control plane's API (http://HOST:PORT): present certificates from its CA "
        "(needed: its xDS port takes only mutual TLS)",
    )
    p.add_argument(
        "--token-file",
        default="",
        help="a file holding the admin token (default: $TSUNAGI_TOKEN; never the token "
        "itself on the command line, where every user's `ps` shows it)",
    )
    args = p.parse_args(argv)
    # It parses the same megabyte responses the control plane serializes (h14: client CPU
    # 8.5 → 7.7 s with the thresholds raised).
    raise_malloc_thresholds()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())

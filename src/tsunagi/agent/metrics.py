"""Istio's standard metrics, aggregated from the metric lines Envoy writes per request.

Envoy's access loggers (``xds/translate/accesslog.py``) write one tab-separated line per
HTTP request and per TCP connection event; :class:`Aggregator` turns them into
``istio_requests_total``, the three request histograms and ``istio_tcp_*``, with Istio's
names, labels and label order (docs/design/metrics.md), and renders them in Prometheus'
text format. Feeding keeps raw line fields as series keys (no label work per request);
labels are built from a series' key at each scrape (a scrape's work, not a request's), and
kept nowhere: caching the rendered label strings would cost ~1 KB per series for a saving
only scrapes see.

The number of series is capped (:data:`MAX_HTTP_SERIES`, :data:`MAX_TCP_SERIES`): a caller
that reaches an inbound port directly chooses the ``x-tsunagi-peer`` value it sends, and
each value would otherwise be a new series. For the same reason a server's principal on
the client side counts only when it is one workload identity (:func:`server_principal`):
an upstream outside the mesh chooses the certificate it presents.
"""

from __future__ import annotations

import re
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from tsunagi import proxy_contract as pc
from tsunagi import spiffe
from tsunagi.agent.logs import log
from tsunagi.agent.records import NamedTuple

BUCKETS: tuple[float, ...] = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
BUCKETS += (10000, 30000, 60000, 300000, 600000, 1800000, 3600000)
"""Envoy's default histogram bounds, which Istio's histograms use."""

LABELS = (
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)
"""Istio's labels, in the order its stats filter emits them."""
TCP_LABELS = tuple(x for x in LABELS if x not in ("response_code", "grpc_response_status"))

HTTP_METRICS = (
    ("REQUEST_COUNT", "istio_requests_total", "counter"),
    ("REQUEST_DURATION", "istio_request_duration_milliseconds", "histogram"),
    ("REQUEST_SIZE", "istio_request_bytes", "histogram"),
    ("RESPONSE_SIZE", "istio_response_bytes", "histogram"),
)
TCP_METRICS = (
    ("TCP_OPENED_CONNECTIONS", "istio_tcp_connections_opened_total"),
    ("TCP_CLOSED_CONNECTIONS", "istio_tcp_connections_closed_total"),
    ("TCP_SENT_BYTES", "istio_tcp_sent_bytes_total"),
    ("TCP_RECEIVED_BYTES", "istio_tcp_received_bytes_total"),
)
_WIDTH = len(BUCKETS) + 2
"""Slots per histogram: a count per bound, the count above the last bound, the sum."""
UNKNOWN = "unknown"
MAX_OPEN_CONNECTIONS = 10000
"""TCP connections remembered for byte deltas; beyond, the oldest are forgotten (a
connection whose end Envoy never logged, e.g. across an Envoy restart)."""
MAX_HTTP_SERIES = 2000
"""HTTP series kept (each key: peer, cluster, code, flags, gRPC status). Beyond, a new label
set is folded into the series with the peer ``unknown``, so every request is still counted
and only who called is lost (what Istio reports for a caller it cannot identify)."""
MAX_TCP_SERIES = 500
"""TCP series kept (token and flags, both bounded by config); beyond, lines are dropped."""
FOLDED_HEADROOM = 200
"""Series that folded label sets may still open beyond the cap (response codes and flags
are bounded, so this is rarely reached); beyond it, lines are dropped and counted."""
_PEER_SHAPE = re.compile(r"[A-Za-z0-9._-]{1,63}(;[A-Za-z0-9._-]{1,63}){4}")
"""A peer's ``workload;namespace;canonical service;canonical revision;cluster``: Kubernetes
names and label values. The header is trusted as sent until mTLS binds it to the caller's
certificate (issue 10); checked when a series is created, never per request."""
MAX_PEER_LENGTH = 256
_HOST_SHAPE = re.compile(r"(\[[0-9A-Fa-f:.]{2,45}\]|[0-9.]{7,15}):[0-9]{1,5}")
"""An upstream host as Envoy logs it (``%UPSTREAM_HOST%``): IPv4 or bracketed IPv6, port."""
_PRINCIPAL_SHAPE = re.compile(
    r"spiffe://[A-Za-z0-9._-]{1,253}/ns/[A-Za-z0-9._-]{1,63}/sa/[A-Za-z0-9._-]{1,253}"
)
"""A workload identity as Istio's CA and tsunagi's write it: Kubernetes names only."""
MAX_PRINCIPAL_LENGTH = 256
KNOWN_HOST_TTL = 300.0
"""Seconds a resolved upstream host keeps its workload before it is asked again (an address
can be reused by another workload once the first is gone)."""
UNKNOWN_HOST_TTL = 30.0
"""Seconds before a host the registry did not know (outside the mesh, or not registered
yet) is asked about again."""
MAX_RESOLVE = 256
"""Hosts asked about in one call to the resolver."""

Resolver = Callable[[list[str]], Mapping[str, str]]
"""Upstream hosts → the ``istio.workload`` metadata of those the registry knows."""


class Profile(NamedTuple):
    """A line token parsed: the line's kind and the proxy's metric overrides."""

    kind: str
    disabled: frozenset[str]
    removed: Mapping[str, frozenset[str]]
    grpc: bool = False
    """Lines of gRPC requests (by the request's content type, Istio's rule)."""


_KINDS = (
    pc.METRICS_LINE_SOURCE,
    pc.METRICS_LINE_DESTINATION,
    pc.METRICS_LINE_TCP,
    pc.METRICS_LINE_TCP_SOURCE,
)
_TCP_KINDS = (pc.METRICS_LINE_TCP, pc.METRICS_LINE_TCP_SOURCE)
_TUNNEL_END = "DownstreamEnd"
_END_TYPES = ("TcpConnectionEnd", _TUNNEL_END)
"""A connection's last line: a TCP proxy's, or a CONNECT tunnel's (the request's end)."""
PASSTHROUGH_CLUSTER = "PassthroughCluster"
"""Where ``ALLOW_ANY`` sends unknown hosts (xds/translate/passthrough.py)."""


def _host_of(authority: str) -> str:
    """``example.com`` of ``example.com:443`` (and ``[::1]`` of ``[::1]:443``)."""
    host, sep, port = authority.rpartition(":")
    return host if sep and port.isdigit() and not host.endswith(":") else authority


_GRPC_PART = pc.METRICS_TOKEN_SEP + pc.METRICS_TOKEN_GRPC


def _is_grpc(content_type: str) -> bool:
    """Istio's rule for ``request_protocol="grpc"``: the request's content type is exactly
    ``application/grpc`` or starts with ``application/grpc+`` (``grpc-web`` is not)."""
    return content_type == "application/grpc" or content_type.startswith("application/grpc+")


def parse_token(token: str) -> Profile:
    """``s|REQUEST_SIZE!|REQUEST_COUNT-source_app`` → kind ``s``, REQUEST_SIZE disabled,
    ``source_app`` removed from REQUEST_COUNT (``proxy_contract.METRICS_TOKEN_SEP``)."""
    kind, *parts = token.split(pc.METRICS_TOKEN_SEP)
    if kind not in _KINDS:
        raise ValueError(f"unknown metric line kind {kind!r}")
    disabled = set()
    removed: dict[str, set[str]] = {}
    grpc = False
    for p in parts:
        if p == pc.METRICS_TOKEN_GRPC:
            grpc = True
        elif p.endswith("!"):
            disabled.add(p[:-1])
        elif "-" in p:
            metric, tag = p.split("-", 1)
            removed.setdefault(metric, set()).add(tag)
        else:
            raise ValueError(f"bad metric override {p!r}")
    removed_tags = {m: frozenset(t) for m, t in removed.items()}
    return Profile(kind, frozenset(disabled), removed_tags, grpc)


class Identity(NamedTuple):
    """This proxy, as its own side of every metric."""

    service: str
    namespace: str
    labels: Mapping[str, str]


def valid_peer(metadata: str) -> bool:
    """Whether ``metadata`` has the shape of :func:`proxy_contract.workload_metadata`."""
    return len(metadata) <= MAX_PEER_LENGTH and _PEER_SHAPE.fullmatch(metadata) is not None


UNKNOWN_PEER = (UNKNOWN, UNKNOWN, UNKNOWN, "latest", UNKNOWN)
"""An unidentified peer: Istio's ``unknown`` everywhere but the canonical revision,
``latest``."""


def _principal(uri: str) -> str:
    """``source_principal`` from the caller certificate's URI SANs (Envoy joins several with
    commas): its workload identity, else unknown (no certificate, or not a SPIFFE ID)."""
    for one in uri.split(","):
        if spiffe.parse(one) is not None:
            return one
    return UNKNOWN


def server_principal(uris: str) -> str:
    """``destination_principal`` of a source line from the upstream certificate's URI SANs
    (``%UPSTREAM_PEER_URI_SAN%``, comma-joined; ``-`` over plain text): the first that is a
    workload identity, else ``-`` (unknown). Istio reports the first URI SAN whatever it
    is; only identities count here, so that a server outside the mesh cannot open a series
    per certificate. Called when a series is created, never per request."""
    if uris == "-":
        return uris
    for one in uris.split(","):
        if len(one) <= MAX_PRINCIPAL_LENGTH and _PRINCIPAL_SHAPE.fullmatch(one):
            return one
    return "-"


def _with_server_principal(key: tuple[str, ...], at: int) -> tuple[str, ...]:
    """``key`` with the server principal at ``key[at]`` as :func:`server_principal` reads
    it: ``key`` itself when it is one identity already, else a new key."""
    principal = server_principal(key[at])
    return key if principal == key[at] else (*key[:at], principal, *key[at + 1 :])


def _peer(metadata: str) -> tuple[str, str, str, str, str]:
    """``workload;namespace;canonical service;canonical revision;cluster`` (Istio's
    ``istio.workload`` format) → those five; :data:`UNKNOWN_PEER` when absent or malformed."""
    if not valid_peer(metadata):
        return UNKNOWN_PEER
    return tuple(metadata.split(";"))  # type: ignore[return-value]


def _service(cluster: str) -> tuple[str, str, str]:
    """``destination_service``, ``_name`` and ``_namespace`` from an upstream cluster name
    (``outbound|port|subset|host``; Istio reports BlackHole/Passthrough by name)."""
    parts = cluster.split("|")
    if len(parts) == 4:
        host = parts[3]
        labels = host.split(".")
        if host.endswith(".svc.cluster.local") and len(labels) == 5:
            return host, labels[0], labels[1]
        return host, host, UNKNOWN
    if cluster in ("", "-"):
        return UNKNOWN, UNKNOWN, UNKNOWN
    return cluster, cluster, UNKNOWN


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: tuple[str, ...], values: Mapping[str, str], drop: frozenset[str]) -> str:
    return ",".join(f'{n}="{_escape(values[n])}"' for n in names if n not in drop)


class Aggregator:
    """Counters and histograms of one sidecar; :meth:`feed` from the reader thread,
    :meth:`render` from scrapes (a lock keeps each consistent)."""

    def __init__(self, me: Identity, resolve: Resolver | None = None) -> None:
        own = pc.workload_metadata(me.labels, me.service, me.namespace).split(";")
        self._own = {
            "workload": own[0],
            "workload_namespace": own[1],
            "canonical_service": own[2],
            "canonical_revision": own[3],
            "cluster": own[4],
            "app": me.labels.get("app") or UNKNOWN,
            "version": me.labels.get("version") or UNKNOWN,
            "principal": UNKNOWN,
        }
        self._mtls_principal = UNKNOWN
        self._host = f"{me.service}.{me.namespace}.svc.cluster.local"
        self._service = me.service
        self._namespace = me.namespace
        self._lock = threading.Lock()
        self._profiles: dict[str, Profile | None] = {}
        # HTTP series: raw label fields → [count, 3 x (count per bucket, count above the
        # last bound, sum)].
        self._http: dict[tuple[str, ...], list[float]] = {}
        # TCP series: (token, flags) inbound, (token, flags, cluster, upstream host)
        # outbound → [opened, closed, sent, received].
        self._tcp: dict[tuple[str, ...], list[int]] = {}
        self._conns: dict[str, tuple[int, int]] = {}
        self.bad_lines = 0
        """Lines that could not be parsed (counted, then skipped)."""
        self.folded = 0
        """HTTP lines counted with the peer ``unknown``: the series cap was reached, or the
        peer was malformed when its series would have been created."""
        self.dropped = {"http": 0, "tcp": 0}
        """Lines not counted at all, by protocol: even the folded series were full."""
        self._warned = False
        self._resolve = resolve
        # Upstream host → (its workload's metadata, or "" if unknown; when to ask again).
        self._hosts: dict[str, tuple[str, float]] = {}

    def _profile(self, token: str) -> Profile | None:
        profile = self._profiles.get(token, False)
        if profile is False:
            try:
                profile = parse_token(token)
            except ValueError:
                profile = None
            self._profiles[token] = profile
        return profile  # type: ignore[return-value]

    def feed(self, lines: Iterable[str]) -> None:
        """Account for Envoy's metric ``lines`` (without their newline)."""
        # Identical lines are common (same peer, code and sizes; durations in whole ms), and
        # counting them in C first makes the per-line Python work once per distinct line:
        # measured 2.2 us a line before, a fraction of that on a batch of repeats.
        counted = Counter(lines)
        with self._lock:
            for line, n in counted.items():
                if not line:
                    continue
                try:
                    self._feed_one(line, n)
                except (ValueError, IndexError):
                    self.bad_lines += n

    def _feed_one(self, line: str, n: int) -> None:
        f = line.split("\t")
        profile = self._profile(f[0])
        if profile is None:
            raise ValueError(line)
        if profile.kind in _TCP_KINDS:
            # Each line moves a connection's state. Repeats are processed where the first
            # one was: a TCP line can only repeat before its connection's bytes change.
            for _ in range(n):
                self._feed_tcp(f)
            return
        source = profile.kind == pc.METRICS_LINE_SOURCE
        # source: token, cluster, host, server principal, code, flags, gRPC status, content
        # type, then the three values; destination: token, peer, caller principal, code, ...
        fields = len(f)
        if fields == (11 if source else 10):
            if _is_grpc(f.pop(-4)):
                f[0] += _GRPC_PART  # its series are apart, labelled grpc (_http_labels)
            else:
                f[-4] = "-"  # the status Envoy derived from the HTTP code: not gRPC's
        elif fields != (10 if source else 9):  # an older config's: a logger for gRPC apart
            if fields != (9 if source else 8):
                raise ValueError(line)
            f.insert(3 if source else 2, "-")  # an older config's line: no principal
        key = tuple(f[:-3])
        values = (float(f[-3]), float(f[-2]), float(f[-1]))
        series = self._http.get(key)
        if series is None:
            series = self._new_http_series(key, source, n)
            if series is None:
                return
        series[0] += n
        for i, v in enumerate(values):
            base = 1 + i * _WIDTH
            series[base + bisect_left(BUCKETS, v)] += n  # first bound >= v (Prometheus' le)
            series[base + _WIDTH - 1] += v * n

    def _new_http_series(self, key: tuple[str, ...], source: bool, n: int) -> list[float] | None:
        """The series for a key not seen yet that ``n`` lines count in: a new one, or the
        one with the peer unknown when the peer is malformed or the cap is reached; ``None``
        (the lines are dropped) when even that one would exceed the headroom. The peer is
        the upstream host and the server's principal on a source line (the principal as
        :func:`server_principal` reads it), the caller's metadata on a destination line."""
        valid: Callable[[str], object]
        unknown: tuple[str, ...]
        if source:
            at, valid, unknown = 2, _HOST_SHAPE.fullmatch, ("-", "-")
            named = _with_server_principal(key, 3)
            if named is not key:
                key = named
                series = self._http.get(key)
                if series is not None:
                    return series
        else:
            at, valid, unknown = 1, valid_peer, ("-",)
        peer = key[at]
        full = len(self._http) >= MAX_HTTP_SERIES
        if full or (peer != "-" and not valid(peer)):
            if full and not self._warned:
                self._warned = True
                log.warning(
                    "metrics: %d HTTP series reached; new ones are counted with the peer "
                    "unknown (a caller sending many distinct %s values?)",
                    MAX_HTTP_SERIES,
                    pc.PEER_HEADER,
                )
            self.folded += n
            key = (*key[:at], *unknown, *key[at + len(unknown) :])
            series = self._http.get(key)
            if series is not None:
                return series
            if len(self._http) >= MAX_HTTP_SERIES + FOLDED_HEADROOM:
                self.folded -= n
                self.dropped["http"] += n
                return None
        series = self._http[key] = [0.0] * (1 + 3 * _WIDTH)
        return series

    def _feed_tcp(self, f: list[str]) -> None:
        outbound = f[0][:1] == pc.METRICS_LINE_TCP_SOURCE
        fields = len(f)
        if outbound and (fields == 8 or (fields == 9 and f[1] == _TUNNEL_END)):
            f.insert(8, "-")  # an older config's line: no server principal
            fields += 1
        if fields == 10 and outbound:  # a CONNECT tunnel, from the outbound HTTP listener
            if f[6] in ("", "-") or f[6].startswith(pc.CONNECT_CLUSTER_PREFIX):
                # No tunnel (refused: the access log says why), or one to a TLS port's
                # internal listener, which reports the connection it makes itself.
                return
            target = f.pop()
            if f[6] == PASSTHROUGH_CLUSTER:  # Istio names the host the client asked for
                f.append(_host_of(target))
        elif fields != (9 if outbound else 6):
            raise ValueError("\t".join(f))
        token, kind, conn, rx, tx, flags = f[:6]
        received, sent = int(rx), int(tx)
        # outbound: the cluster, the endpoint and the server's principal, too (and a
        # tunnel's target host)
        key = (token, flags, *f[6:])
        series = self._tcp.get(key)
        if series is None and outbound:
            named = _with_server_principal(key, 4)
            if named is not key:
                key = named
                series = self._tcp.get(key)
        if series is None:
            if len(self._tcp) >= MAX_TCP_SERIES:
                self.dropped["tcp"] += 1
                return
            series = self._tcp[key] = [0, 0, 0, 0]
        last = self._conns.pop(conn, None)
        if last is None:
            series[0] += 1  # first news of this connection: connected, or ended at once
            last = (0, 0)
            if len(self._conns) >= MAX_OPEN_CONNECTIONS:
                self._conns.pop(next(iter(self._conns)))
        series[2] += max(0, sent - last[1])
        series[3] += max(0, received - last[0])
        if kind in _END_TYPES:
            series[1] += 1
        else:
            self._conns[conn] = (received, sent)

    def use_identity(self, spiffe_id: str) -> None:
        """This proxy's own SPIFFE ID, once the CA gave it one: Istio's ``source_principal``
        (client side) and ``destination_principal`` (server side) of requests over mesh
        mTLS, where this proxy's certificate is the one presented."""
        self._mtls_principal = spiffe_id

    def _http_labels(self, profile: Profile, key: tuple[str, ...]) -> dict[str, str]:
        own, own_principal = self._own, self._mtls_principal
        if profile.kind == pc.METRICS_LINE_SOURCE:
            cluster, host, principal, code, flags, grpc = key
            values = self._source_side(cluster, host, principal)
        else:
            _token, peer, principal, code, flags, grpc = key
            known = _peer(peer)
            w, ns, cs, cr, cl = known
            app, version = (cs, cr) if known is not UNKNOWN_PEER else (UNKNOWN, UNKNOWN)
            values = {
                "reporter": "destination",
                "source_workload": w,
                "source_canonical_service": cs,
                "source_canonical_revision": cr,
                "source_workload_namespace": ns,
                "source_principal": _principal(principal),
                "source_app": app,
                "source_version": version,
                "source_cluster": cl,
                **{f"destination_{k}": v for k, v in own.items()},
                "destination_principal": UNKNOWN if principal in ("", "-") else own_principal,
                "destination_service": self._host,
                "destination_service_name": self._service,
                "destination_service_namespace": self._namespace,
                # The caller's certificate (mesh mTLS) says who it is, as Istio reports it.
                "connection_security_policy": "none" if principal in ("", "-") else "mutual_tls",
            }
        # From the request's content type (Istio's rule), so a gRPC call that got no
        # response is still gRPC: the token says which logger's filter matched.
        values["request_protocol"] = "grpc" if profile.grpc else "http"
        values["response_code"] = code if code != "-" else "0"
        values["grpc_response_status"] = "" if grpc == "-" else grpc
        values["response_flags"] = flags
        return values

    def _source_side(self, cluster: str, host: str, principal: str) -> dict[str, str]:
        """This proxy as the caller, the destination named from the upstream ``host`` (what
        the registry said of it), ``cluster`` and the server's ``principal`` (``-``: not
        over mTLS): the labels of ``reporter="source"``."""
        known = _peer(self._hosts.get(host, ("", 0.0))[0])
        w, ns, cs, cr, cl = known
        app, version = (cs, cr) if known is not UNKNOWN_PEER else (UNKNOWN, UNKNOWN)
        service, name, namespace = _service(cluster)
        return {
            "reporter": "source",
            **{f"source_{k}": v for k, v in self._own.items()},
            "source_principal": UNKNOWN if principal == "-" else self._mtls_principal,
            "destination_workload": w,
            "destination_workload_namespace": ns,
            "destination_principal": UNKNOWN if principal == "-" else principal,
            "destination_app": app,
            "destination_version": version,
            "destination_service": service,
            "destination_canonical_service": cs,
            "destination_canonical_revision": cr,
            "destination_service_name": name,
            "destination_service_namespace": namespace,
            "destination_cluster": cl,
            "connection_security_policy": UNKNOWN,
        }

    def _tcp_labels(
        self, flags: str, cluster: str = "", host: str = "", principal: str = "-", target: str = ""
    ) -> dict[str, str]:
        if cluster:  # an outbound connection (an --upstream listener, a tunnel): source
            values = {
                **self._source_side(cluster, host, principal),
                "request_protocol": "tcp",
                "response_flags": flags,
            }
            if target:  # through PassthroughCluster: the host the CONNECT asked for
                values["destination_service"] = target
            return values
        values = {
            "reporter": "destination",
            **{f"source_{k}": UNKNOWN for k in self._own},
            **{f"destination_{k}": v for k, v in self._own.items()},
            "destination_service": self._host,
            "destination_service_name": self._service,
            "destination_service_namespace": self._namespace,
            "request_protocol": "tcp",
            "response_flags": flags,
            "connection_security_policy": "none",
        }
        return values

    def render(self, names: frozenset[str] | None = None) -> str:
        """The metrics in Prometheus' text exposition format; only the families ``names``
        lists, if given (Prometheus names without the histogram suffixes)."""
        with self._lock:
            http = [(k, list(v)) for k, v in self._http.items()]
            tcp = [(k, list(v)) for k, v in self._tcp.items()]
        hosts = {k[2] for k, _ in http if k[0][:1] == pc.METRICS_LINE_SOURCE}
        self._resolve_hosts(hosts | {k[3] for k, _ in tcp if len(k) >= 4})
        # metric name → rendered labels → accumulated values (a removed label merges series)
        out: dict[str, dict[str, list[float]]] = {}
        for key, series in http:
            profile = self._profile(key[0])
            if profile is None:
                continue
            values = self._http_labels(profile, key[1:] if profile.kind == "s" else key)
            for i, (metric, name, _kind) in enumerate(HTTP_METRICS):
                if metric in profile.disabled or (names is not None and name not in names):
                    continue
                labels = _labels(LABELS, values, profile.removed.get(metric, frozenset()))
                part = [series[0]] if i == 0 else series[1 + (i - 1) * _WIDTH : 1 + i * _WIDTH]
                acc = out.setdefault(name, {}).setdefault(labels, [0.0] * len(part))
                for j, v in enumerate(part):
                    acc[j] += v
        for (token, flags, *upstream), counts in tcp:
            profile = self._profile(token)
            if profile is None:
                continue
            values = self._tcp_labels(flags, *upstream)
            for (metric, name), v in zip(TCP_METRICS, counts, strict=True):
                if metric in profile.disabled or (names is not None and name not in names):
                    continue
                labels = _labels(TCP_LABELS, values, profile.removed.get(metric, frozenset()))
                acc = out.setdefault(name, {}).setdefault(labels, [0.0])
                acc[0] += v
        return _exposition(out)

    def _resolve_hosts(self, hosts: set[str]) -> None:
        """Learn the workloads behind upstream hosts not known yet (or due again): source
        lines name the endpoint Envoy picked, and the registry knows whose it is. Asked at
        render time, so only hosts actually called are ever looked up; a failed lookup leaves
        them unknown until the next render."""
        if self._resolve is None:
            return
        now = time.monotonic()
        due = [h for h in hosts if h != "-" and self._hosts.get(h, ("", 0.0))[1] <= now]
        for i in range(0, len(due), MAX_RESOLVE):
            batch = due[i : i + MAX_RESOLVE]
            try:
                found = self._resolve(batch)
            except Exception as e:  # metrics render whatever the lookup does
                log.warning("metrics: could not look up upstream workloads: %s", e)
                return
            for h in batch:
                meta = found.get(h, "")
                ok = valid_peer(meta)
                self._hosts[h] = (
                    meta if ok else "",
                    now + (KNOWN_HOST_TTL if ok else UNKNOWN_HOST_TTL),
                )


def _number(v: float) -> str:
    return str(int(v)) if v == int(v) else repr(v)


def _exposition(out: dict[str, dict[str, list[float]]]) -> str:
    lines = []
    for name, series in out.items():
        histogram = not name.endswith("_total")
        lines.append(f"# TYPE {name} {'histogram' if histogram else 'counter'}")
        for labels, values in series.items():
            sep = "," if labels else ""
            if not histogram:
                lines.append(f"{name}{{{labels}}} {_number(values[0])}")
                continue
            cumulative = 0.0
            for bound, count in zip(BUCKETS, values, strict=False):
                cumulative += count
                le = f'le="{_number(bound)}"'
                lines.append(f"{name}_bucket{{{labels}{sep}{le}}} {_number(cumulative)}")
            total = _number(sum(values[:-1]))
            lines.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {total}')
            lines.append(f"{name}_sum{{{labels}}} {_number(values[-1])}")
            lines.append(f"{name}_count{{{labels}}} {total}")
    return "\n".join(lines) + "\n" if lines else ""

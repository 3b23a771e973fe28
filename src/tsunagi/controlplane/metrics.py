"""The control plane's own metrics, named and labelled as istiod's ``pilot_*`` metrics.

Istio's names are kept wherever the meaning matches (checked in istio/istio
``pilot/pkg/xds/monitoring.go``, ``pkg/xds/monitoring.go`` and the config controller), so
Istio's control-plane dashboard and alerts work unchanged:

- ``pilot_xds{version}``: connected proxies, by the proxy's (Envoy's) build version;
- ``pilot_xds_pushes{type}``: xDS responses sent, by type (``cds``, ``eds``, ``lds``, ``rds``,
  ``ecds``, ``sds``);
- ``pilot_xds_push_time{type}``: seconds to build and write one response (histogram);
- ``pilot_total_xds_rejects{type}``: responses a proxy rejected (NACK);
- ``pilot_xds_expired_nonce{type}``: requests answering a nonce that is no longer the latest;
- ``pilot_debounce_time``: first change of a burst → its push starts (histogram);
- ``pilot_proxy_queue_time``: a proxy's new snapshot set → its first response written;
- ``pilot_proxy_convergence_time``: first change of a burst → the proxy has ACKed all of it;
- ``pilot_k8s_cfg_events{type,event}`` / ``pilot_k8s_reg_events{type,event}``: config applied
  or deleted, workload instances registered or removed (``add``, ``update``, ``delete``);
- ``pilot_services``, ``pilot_virt_services``: what the mesh knows now;
- ``citadel_server_csr_count`` / ``citadel_server_success_cert_issuance_count``: workload
  certificate requests received, and certificates signed (``POST /v1/certificates``);
- ``citadel_server_root_cert_expiry_timestamp``: when the CA's root expires (Unix seconds);
- ``pilot_jwks_resolver_network_fetch_success_total`` / ``..._fail_total``: HTTP GETs of
  RequestAuthentication key sets (and OpenID discovery documents) that got a 2xx body, or
  did not (istiod's ``pilot/pkg/model/jwks_resolver.go``; these keep their ``_total``);
- ``istio_build{component="pilot",tag}`` and the ``process_*`` metrics.

istiod's exporter drops the ``_total`` suffix of counters (``pilot_xds_pushes``, not
``pilot_xds_pushes_total``), which ``prometheus_client`` always adds; so counters are kept
here and written by :func:`_counter_text`, everything else by ``prometheus_client`` from a
registry of this object's own (never the global one, so tests can build several).

Cost on the push path: a dictionary update per response, ACK and NACK and one histogram
observation per response; whether a proxy converged is asked only on an ACK from a proxy
that has a push in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata

from prometheus_client import CollectorRegistry, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from tsunagi.mesh import World
from tsunagi.xds.cache import NodeEntry
from tsunagi.xds.protocol import Ack, Event, Nack, StaleNonce
from tsunagi.xds.resources import SHORT_NAMES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What ``GET /metrics`` answers with: the classic text format that ``generate_latest``
writes, and that every Prometheus reads (the library's own default names a newer version)."""

# istiod's buckets, so its dashboards' heatmaps and quantiles read the same.
_PUSH_BUCKETS = (0.01, 0.1, 1, 3, 5, 10, 20, 30)
_PROXY_BUCKETS = (0.1, 0.5, 1, 3, 5, 10, 20, 30)


def metric_type(type_url: str) -> str:
    """Istio's ``type`` label for an xDS type URL: ``cds``, ``eds``... (else the URL)."""
    short = SHORT_NAMES.get(type_url)
    return short.lower() if short else type_url


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Counter:
    """A counter family written under its exact name, as istiod writes it."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.values: dict[tuple[str, ...], int] = {}

    def inc(self, *values: str) -> None:
        self.values[values] = self.values.get(values, 0) + 1

    def get(self, *values: str) -> int:
        return self.values.get(values, 0)


def _counter_text(c: _Counter) -> str:
    """Text format 0.0.4 of one counter family; nothing until it has a series (as istiod)."""
    if not c.values:
        return ""
    lines = [f"# HELP {c.name} {c.documentation}", f"# TYPE {c.name} counter"]
    for values, n in sorted(c.values.items()):
        labels = ",".join(f'{k}="{_escape(v)}"' for k, v in zip(c.labels, values, strict=True))
        series = f"{c.name}{{{labels}}}" if labels else c.name
        lines.append(f"{series} {n}")
    return "\n".join(lines) + "\n"


@dataclass
class _InFlight:
    """A push a proxy has not converged on yet."""

    changed: float
    """``time.monotonic()`` of the first change the proxy has not caught up with."""
    queued: float
    """When its snapshot was handed to its stream."""
    sent: bool = False
    """Whether a response went out since."""


class _WithoutCreated:
    """The registry's families without ``*_created`` samples (istiod has none)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        for m in self.registry.collect():
            kept = Metric(m.name, m.documentation, m.type, m.unit)
            kept.samples = [s for s in m.samples if not s.name.endswith("_created")]
            yield kept


class _WorldGauges:
    """``pilot_services`` and ``pilot_virt_services``, read from the published World when
    scraped (no work on the push path)."""

    def __init__(self, world: Callable[[], World]) -> None:
        self.world = world

    def collect(self) -> Iterable[Metric]:
        world = self.world()
        yield GaugeMetricFamily(
            "pilot_services", "Total services known to pilot.", value=len(world.services)
        )
        vs = sum(1 for r in world.resources if r.kind == "VirtualService")
        yield GaugeMetricFamily("pilot_virt_services", "Total virtual services known to pilot.", vs)


def _version() -> str:
    try:
        return metadata.version("tsunagi")
    except metadata.PackageNotFoundError:
        return "unknown"


class ControlPlaneMetrics:
    """Everything the control plane counts; an xDS :class:`~tsunagi.xds.observer.StreamObserver`
    and the Pusher's :class:`~tsunagi.controlplane.push.PushHooks` at once."""

    def __init__(
        self, world: Callable[[], World] | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``world`` gives the published World (for the service counts); ``clock`` is
        ``time.monotonic`` unless a test drives time."""
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        ProcessCollector(registry=r)
        Gauge("istio_build", "Istio component build info", ["component", "tag"], registry=r).labels(
            "pilot", _version()
        ).set(1)
        if world is not None:
            r.register(_WorldGauges(world))
        self.xds = Gauge(
            "pilot_xds", "Number of endpoints connected to this pilot using XDS.", ["version"],
            registry=r,
        )  # fmt: skip
        self.push_time = Histogram(
            "pilot_xds_push_time",
            "Total time in seconds Pilot takes to push lds, rds, cds and eds.",
            ["type"],
            buckets=_PUSH_BUCKETS,
            registry=r,
        )
        self.debounce_time = Histogram(
            "pilot_debounce_time",
            "Delay in seconds between the first config enters debouncing and the merged push "
            "request is pushed into the push queue.",
            buckets=_PUSH_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "pilot_proxy_queue_time",
            "Time in seconds, a proxy is in the push queue before being dequeued.",
            buckets=_PROXY_BUCKETS,
            registry=r,
        )
        self.convergence_time = Histogram(
            "pilot_proxy_convergence_time",
            "Delay in seconds between config change and a proxy receiving all required "
            "configuration.",
            buckets=_PROXY_BUCKETS,
            registry=r,
        )
        self.pushes = _Counter(
            "pilot_xds_pushes", "xDS responses sent to proxies, by type.", ("type",)
        )
        self.rejects = _Counter(
            "pilot_total_xds_rejects",
            "Total number of XDS responses from pilot rejected by proxy.",
            ("type",),
        )
        self.expired_nonce = _Counter(
            "pilot_xds_expired_nonce", "Total number of XDS requests with an expired nonce.",
            ("type",),
        )  # fmt: skip
        self.cfg_events = _Counter(
            "pilot_k8s_cfg_events", "Events from k8s config.", ("type", "event")
        )
        self.reg_events = _Counter(
            "pilot_k8s_reg_events", "Events from k8s registry.", ("type", "event")
        )
        self.csrs = _Counter(
            "citadel_server_csr_count", "Workload certificate signing requests received."
        )
        self.issued = _Counter(
            "citadel_server_success_cert_issuance_count",
            "Workload certificates signed.",
        )
        self.jwks_fetch_success = _Counter(
            "pilot_jwks_resolver_network_fetch_success_total",
            "JWK set and OpenID discovery GETs that got a 2xx body.",
        )
        self.jwks_fetch_fail = _Counter(
            "pilot_jwks_resolver_network_fetch_fail_total",
            "JWK set and OpenID discovery GETs that failed (an error or a non-2xx status).",
        )
        self._counters = (
            self.csrs,
            self.issued,
            self.jwks_fetch_success,
            self.jwks_fetch_fail,
            self.pushes,
            self.rejects,
            self.expired_nonce,
            self.cfg_events,
            self.reg_events,
        )
        self._in_flight: dict[str, _InFlight] = {}
        self._versions: dict[int, str] = {}
        """id(NodeEntry) → the version label it was counted under."""
        self._streams: dict[str, int] = {}
        """Node id → its open streams (a reconnecting proxy briefly has two)."""

    # --------------------------------------------------------------- exposition

    def render(self) -> bytes:
        """Every metric in Prometheus' text format (``GET /metrics``)."""
        text = generate_latest(_WithoutCreated(self.registry))
        return text + "".join(_counter_text(c) for c in self._counters).encode()

    # --------------------------------------------------------------- config events

    def config_event(self, kind: str, event: str) -> None:
        """A resource of ``kind`` was ``add``-ed, ``update``-d or ``delete``-d."""
        self.cfg_events.inc(kind, event)

    def registry_event(self, kind: str, event: str) -> None:
        """A workload instance (``kind``) was ``add``-ed, ``update``-d or ``delete``-d."""
        self.reg_events.inc(kind, event)

    def ca_loaded(self, root_expires: float) -> None:
        """The CA is up; its root expires at ``root_expires`` (Unix seconds). Called once."""
        Gauge(
            "citadel_server_root_cert_expiry_timestamp",
            "Unix time the CA's root certificate expires.",
            registry=self.registry,
        ).set(root_expires)

    def csr_received(self) -> None:
        """A workload asked for a certificate."""
        self.csrs.inc()

    def certificate_issued(self) -> None:
        """The CA signed a workload certificate."""
        self.issued.inc()

    def jwks_fetched(self, ok: bool) -> None:
        """The control plane GET a JWK set or OpenID discovery document: a 2xx body
        (``ok``), or an error (:mod:`tsunagi.controlplane.jwks`)."""
        (self.jwks_fetch_success if ok else self.jwks_fetch_fail).inc()

    # --------------------------------------------------------------- PushHooks

    def debounced(self, changed_at: float) -> None:
        self.debounce_time.observe(self.clock() - changed_at)

    def pushed(self, changed_at: float, node_ids: Iterable[str]) -> None:
        now = self.clock()
        in_flight = self._in_flight
        for node_id in node_ids:
            if node_id not in self._streams:
                continue  # gone while the push was computed: nothing will converge
            old = in_flight.get(node_id)
            # A proxy still working on an earlier push converges when it has both: its
            # convergence time counts from the earlier change. One that had nothing to do
            # for the earlier push (no response went out) starts over.
            changed = old.changed if old is not None and old.sent else changed_at
            in_flight[node_id] = _InFlight(changed, now)

    # --------------------------------------------------------------- StreamObserver

    def connected(self, entry: NodeEntry, client_version: str) -> None:
        version = client_version or "unknown"
        self._versions[id(entry)] = version
        self.xds.labels(version).inc()
        self._streams[entry.id] = self._streams.get(entry.id, 0) + 1

    def disconnected(self, entry: NodeEntry) -> None:
        version = self._versions.pop(id(entry), None)
        if version is not None:
            self.xds.labels(version).dec()
        left = self._streams.get(entry.id, 0) - 1
        if left > 0:
            self._streams[entry.id] = left
        else:
            self._streams.pop(entry.id, None)
            self._in_flight.pop(entry.id, None)

    def sent(self, entry: NodeEntry, type_url: str, seconds: float) -> None:
        t = metric_type(type_url)
        self.pushes.inc(t)
        self.push_time.labels(t).observe(seconds)
        flight = self._in_flight.get(entry.id)
        if flight is not None and not flight.sent:
            flight.sent = True
            self.queue_time.observe(self.clock() - flight.queued)

    def received(self, entry: NodeEntry, events: Sequence[Event]) -> None:
        acked = False
        for e in events:
            if isinstance(e, Ack):
                acked = True
            elif isinstance(e, Nack):
                self.rejects.inc(metric_type(e.type_url))
                self._in_flight.pop(entry.id, None)  # settled, but not converged
            elif isinstance(e, StaleNonce):
                self.expired_nonce.inc(metric_type(e.type_url))
        if not acked:
            return
        flight = self._in_flight.get(entry.id)
        if flight is not None and flight.sent and entry.stream.synced(entry.snapshot):
            del self._in_flight[entry.id]
            self.convergence_time.observe(self.clock() - flight.changed)

    def in_flight(self) -> int:
        """Proxies with a push they have not converged on yet (for tests and debugging)."""
        return len(self._in_flight)

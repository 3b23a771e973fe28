"""What each proxy reports: mesh-wide defaults (``tsunagi up`` flags, Istio's MeshConfig)
resolved into one :class:`ProxyTelemetry` per proxy, which translation turns into access
loggers and tracing config on its listeners."""

from __future__ import annotations

from dataclasses import dataclass

ACCESS_LOG_TEXT = "TEXT"
ACCESS_LOG_JSON = "JSON"
ACCESS_LOG_ENCODINGS = (ACCESS_LOG_TEXT, ACCESS_LOG_JSON)
"""Istio's ``meshConfig.accessLogEncoding`` values."""

DEFAULT_TRACE_SAMPLING = 0.0
"""Percent of requests traced when nothing says otherwise. Istio's default is 1 %
(``meshConfig.defaultConfig.tracing.sampling``); here tracing is off until asked for
(``tsunagi up --trace-sampling 1`` is Istio's default), because a tracer costs Envoy ~17 %
more instructions on every request, sampled or not (docs/benchmarks.md), which would break
the data plane's CPU budget for a mesh that never looks at traces. A Telemetry resource
turns it on for a namespace or workload."""


@dataclass(frozen=True)
class MeshTelemetry:
    """Mesh-wide telemetry settings, fixed for the life of a control plane."""

    trace_sampling: float = DEFAULT_TRACE_SAMPLING
    """Percent (0 to 100) of requests that start a trace."""
    access_log: str = ""
    """``TEXT`` or ``JSON`` to log every request on every sidecar; empty: off."""
    collector: tuple[str, int] | None = None
    """Where sidecars send spans (the control plane's Zipkin port); ``None``: no tracing."""

    def __post_init__(self) -> None:
        # Hashable whatever it was given as (a YAML list, say): a gateway's telemetry is
        # part of its scope, a memo key (mesh/world.py, ClientScope.reporting).
        if self.collector is not None and not isinstance(self.collector, tuple):
            object.__setattr__(self, "collector", tuple(self.collector))


@dataclass(frozen=True)
class Tracing:
    """Tracing as one proxy does it."""

    sampling: float
    """Percent (0 to 100) of requests that start a trace."""
    collector: tuple[str, int]
    """The Zipkin collector's address."""
    custom_tags: tuple[tuple[str, str, str, str], ...] = ()
    """``(tag, kind, name, default)``: kind ``literal`` (name is the value), ``header`` or
    ``environment`` (name is the header or variable), as Telemetry ``customTags`` say."""
    use_request_id: bool = True
    """Telemetry ``useRequestIdForTraceSampling``: Envoy keeps its sampling decision in the
    ``x-request-id`` it generates (Istio's default)."""


CLIENT = "CLIENT"
SERVER = "SERVER"
CLIENT_AND_SERVER = "CLIENT_AND_SERVER"
"""Telemetry ``metrics[].overrides[].match.mode``: the ``source`` reporter (outbound, the
client side), the ``destination`` reporter (inbound), or both."""


@dataclass(frozen=True)
class MetricOverride:
    """One Telemetry ``metrics[].overrides[]`` entry, resolved for a proxy."""

    metric: str = "ALL_METRICS"
    """Istio's ``IstioMetric`` name: ``ALL_METRICS``, ``REQUEST_COUNT``,
    ``REQUEST_DURATION``, ``REQUEST_SIZE``, ``RESPONSE_SIZE``, ``TCP_OPENED_CONNECTIONS``,
    ``TCP_CLOSED_CONNECTIONS``, ``TCP_SENT_BYTES``, ``TCP_RECEIVED_BYTES``, ..."""
    mode: str = CLIENT_AND_SERVER
    disabled: bool = False
    removed_tags: tuple[str, ...] = ()
    """Labels left out of the metric (``tagOverrides`` with ``operation: REMOVE``)."""


@dataclass(frozen=True)
class ProxyTelemetry:
    """Everything translation needs to know about one proxy's telemetry."""

    access_log: str = ""
    """``TEXT`` or ``JSON``; empty: no access log."""
    access_log_filter: str = ""
    """A CEL expression (Telemetry ``accessLogging[].filter.expression``): only requests for
    which it is true are logged; empty: all."""
    tracing: Tracing | None = None
    """Tracing on the outbound (client) side; ``None``: its outbound requests report no
    spans."""
    server_tracing: Tracing | None = None
    """Tracing on the inbound (server) side (Telemetry ``match.mode`` may set the two
    sides apart); ``None``: no spans for requests to the workload."""
    metric_overrides: tuple[MetricOverride, ...] = ()
    """In order; a later entry wins for the metrics and mode it matches."""
    access_log_mode: str = CLIENT_AND_SERVER
    """Which side logs (Telemetry ``accessLogging[].match.mode``): ``CLIENT`` (outbound),
    ``SERVER`` (inbound) or both; see :meth:`access_log_for`."""
    server_access_log_filter: str | None = None
    """The inbound side's filter when it differs from :attr:`access_log_filter` (Telemetry
    entries with ``match.mode`` may set the sides apart); ``None``: the same; see
    :meth:`access_log_filter_for`."""

    def tracing_for(self, direction: str) -> Tracing | None:
        """Tracing on the ``"outbound"`` or ``"inbound"`` listeners."""
        return self.server_tracing if direction == "inbound" else self.tracing

    def access_log_for(self, direction: str) -> str:
        """The access log encoding on the ``"outbound"`` or ``"inbound"`` listeners ("": none)."""
        side = SERVER if direction == "inbound" else CLIENT
        return self.access_log if self.access_log_mode in (side, CLIENT_AND_SERVER) else ""

    def access_log_filter_for(self, direction: str) -> str:
        """The CEL filter of the access log on the ``"outbound"`` or ``"inbound"`` listeners
        ("": none)."""
        if direction == "inbound" and self.server_access_log_filter is not None:
            return self.server_access_log_filter
        return self.access_log_filter


@dataclass(frozen=True)
class GatewayReporting:
    """What a gateway's listeners report, and where: a gateway's listeners come with its
    Gateways (one config per :class:`~tsunagi.mesh.ClientScope`), so what the sidecars'
    listeners read from their node travels in the gateway's scope."""

    proxy: str
    """The proxy's id (``NAME-xxxxxx.NAMESPACE``): its access log lines' marker."""
    metrics_log: str
    """The FIFO its agent reads metric lines from; empty: no metric lines."""
    telemetry: ProxyTelemetry
    """Its Telemetry, resolved as for any proxy (namespace, labels); a gateway reports on
    the client side (Istio's ``CLIENT`` workload mode, ``reporter="source"``)."""

"""Typed model for telemetry.istio.io ``Telemetry`` (Istio's ``telemetry/v1/telemetry.proto``;
cross-field rules: checks_telemetry).

Istio wraps the optional scalars in protobuf wrappers (``BoolValue``, ``DoubleValue``): an
unset field inherits from the parent resource, so here they are ``None`` until set."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field

from .common import (
    IstioModel,
    LabelSelector,
    PercentValue,
    PolicyTargetReference,
    Seconds,
    StrictBool,
)

WorkloadMode = Literal["CLIENT_AND_SERVER", "CLIENT", "SERVER"]
IstioMetric = Literal[
    "ALL_METRICS",
    "REQUEST_COUNT",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "TCP_OPENED_CONNECTIONS",
    "TCP_CLOSED_CONNECTIONS",
    "TCP_SENT_BYTES",
    "TCP_RECEIVED_BYTES",
    "GRPC_REQUEST_MESSAGES",
    "GRPC_RESPONSE_MESSAGES",
]


class ProviderRef(IstioModel):
    """A provider by name (MeshConfig ``extensionProviders``; Tsunagi has built-ins)."""

    name: str = ""


class TracingSelector(IstioModel):
    """``tracing[].match``: which traffic direction the entry applies to."""

    mode: WorkloadMode = "CLIENT_AND_SERVER"


class LiteralTag(IstioModel):
    """``customTags.X.literal``: the same value on every span."""

    value: str = ""


class EnvironmentTag(IstioModel):
    """``customTags.X.environment``: a variable of the proxy's environment."""

    name: str = ""
    default_value: str = ""


class RequestHeaderTag(IstioModel):
    """``customTags.X.header``: a request header."""

    name: str = ""
    default_value: str = ""


class FormatterTag(IstioModel):
    """``customTags.X.formatter``: an Envoy format string (Istio 1.29)."""

    value: str = ""


class CustomTag(IstioModel):
    """Exactly one of ``literal``, ``environment``, ``header``, ``formatter``."""

    literal: LiteralTag | None = None
    environment: EnvironmentTag | None = None
    header: RequestHeaderTag | None = None
    formatter: FormatterTag | None = None


class Tracing(IstioModel):
    """One ``tracing[]`` entry; unset fields are inherited from the parent level."""

    match: TracingSelector | None = None
    providers: tuple[ProviderRef, ...] = ()
    random_sampling_percentage: PercentValue | None = None
    disable_span_reporting: StrictBool | None = None
    custom_tags: Mapping[str, CustomTag] | None = None
    use_request_id_for_trace_sampling: StrictBool | None = None
    enable_istio_tags: StrictBool | None = None


class MetricSelector(IstioModel):
    """``overrides[].match``: one of ``metric`` and ``customMetric``, and a mode."""

    metric: IstioMetric | None = None
    custom_metric: str | None = None
    mode: WorkloadMode = "CLIENT_AND_SERVER"


class TagOverride(IstioModel):
    """``overrides[].tagOverrides.X``."""

    operation: Literal["UPSERT", "REMOVE"] = "UPSERT"
    value: str | None = None


class MetricsOverrides(IstioModel):
    """One ``metrics[].overrides[]`` entry."""

    match: MetricSelector | None = None
    disabled: StrictBool | None = None
    tag_overrides: Mapping[str, TagOverride] = Field(default_factory=dict)


class Metrics(IstioModel):
    """One ``metrics[]`` entry."""

    providers: tuple[ProviderRef, ...] = ()
    overrides: tuple[MetricsOverrides, ...] = ()
    reporting_interval: Seconds | None = None


class AccessLogSelector(IstioModel):
    """``accessLogging[].match``."""

    mode: WorkloadMode = "CLIENT_AND_SERVER"


class AccessLogFilter(IstioModel):
    """``accessLogging[].filter``: a CEL expression."""

    expression: str = ""


class AccessLogging(IstioModel):
    """One ``accessLogging[]`` entry."""

    match: AccessLogSelector | None = None
    providers: tuple[ProviderRef, ...] = ()
    disabled: StrictBool | None = None
    filter: AccessLogFilter | None = None


class TelemetrySpec(IstioModel):
    """``Telemetry.spec``."""

    selector: LabelSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: tuple[PolicyTargetReference, ...] = ()
    tracing: tuple[Tracing, ...] = ()
    metrics: tuple[Metrics, ...] = ()
    access_logging: tuple[AccessLogging, ...] = ()

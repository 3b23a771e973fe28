"""The registry of supported kinds: spec model, API group/versions, checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel

from . import checks_networking as cn
from . import checks_security as cs
from .checks_common import Issue
from .checks_envoyfilter import check_envoy_filter
from .checks_request_authentication import check_request_authentication
from .checks_telemetry import check_telemetry
from .envoyfilter import EnvoyFilterSpec
from .networking import (
    DestinationRuleSpec,
    GatewaySpec,
    ServiceEntrySpec,
    SidecarSpec,
    VirtualServiceSpec,
    WorkloadEntrySpec,
)
from .secrets import SECRET_FIELDS, SecretSpec, check_secret
from .security import AuthorizationPolicySpec, PeerAuthenticationSpec, RequestAuthenticationSpec
from .telemetry import TelemetrySpec

NETWORKING_GROUP = "networking.istio.io"
SECURITY_GROUP = "security.istio.io"
NETWORKING_VERSIONS = ("v1alpha3", "v1beta1", "v1")
SECURITY_VERSIONS = ("v1beta1", "v1")
TELEMETRY_GROUP = "telemetry.istio.io"
TELEMETRY_VERSIONS = ("v1alpha1", "v1beta1", "v1")
CORE_GROUP = ""
"""Kubernetes' core group: its kinds' apiVersion is the bare version (``v1``)."""


@dataclass(frozen=True)
class KindInfo:
    """How to parse and check one kind."""

    kind: str
    group: str
    versions: tuple[str, ...]
    spec_model: type[BaseModel]
    check: Callable[[Any], Iterator[Issue]]
    top_level: tuple[str, ...] = ()
    """For kinds without a ``spec`` (Kubernetes' Secret): the top-level fields that make
    up what :attr:`spec_model` parses. Empty: the document's ``spec`` does."""

    @property
    def api_versions(self) -> tuple[str, ...]:
        """All accepted ``apiVersion`` strings, e.g. ``networking.istio.io/v1`` (or ``v1``
        for the core group)."""
        return tuple(f"{self.group}/{v}" if self.group else v for v in self.versions)


def _net(kind: str, model: type[BaseModel], check: Callable[[Any], Iterator[Issue]]) -> KindInfo:
    return KindInfo(kind, NETWORKING_GROUP, NETWORKING_VERSIONS, model, check)


def _sec(kind: str, model: type[BaseModel], check: Callable[[Any], Iterator[Issue]]) -> KindInfo:
    return KindInfo(kind, SECURITY_GROUP, SECURITY_VERSIONS, model, check)


KIND_INFO: Mapping[str, KindInfo] = MappingProxyType(
    {
        info.kind: info
        for info in (
            _net("VirtualService", VirtualServiceSpec, cn.check_virtual_service),
            _net("DestinationRule", DestinationRuleSpec, cn.check_destination_rule),
            _net("ServiceEntry", ServiceEntrySpec, cn.check_service_entry),
            _net("WorkloadEntry", WorkloadEntrySpec, cn.check_workload_entry),
            _net("Gateway", GatewaySpec, cn.check_gateway),
            _net("Sidecar", SidecarSpec, cn.check_sidecar),
            # Istio serves EnvoyFilter at v1alpha3 only
            KindInfo(
                "EnvoyFilter", NETWORKING_GROUP, ("v1alpha3",), EnvoyFilterSpec, check_envoy_filter
            ),
            _sec("PeerAuthentication", PeerAuthenticationSpec, cs.check_peer_authentication),
            _sec("AuthorizationPolicy", AuthorizationPolicySpec, cs.check_authorization_policy),
            _sec(
                "RequestAuthentication",
                RequestAuthenticationSpec,
                check_request_authentication,
            ),
            KindInfo(
                "Telemetry", TELEMETRY_GROUP, TELEMETRY_VERSIONS, TelemetrySpec, check_telemetry
            ),
            # What a Gateway's credentialName names, as kubectl writes it
            KindInfo(
                "Secret", CORE_GROUP, ("v1",), SecretSpec, check_secret, top_level=SECRET_FIELDS
            ),
        )
    }
)

#: kind -> spec model class.
KINDS: Mapping[str, type[BaseModel]] = MappingProxyType(
    {kind: info.spec_model for kind, info in KIND_INFO.items()}
)


def check_spec(kind: str, spec: BaseModel) -> list[Issue]:
    """Run Istio's semantic rules for ``kind`` on an already-parsed spec."""
    return list(KIND_INFO[kind].check(spec))

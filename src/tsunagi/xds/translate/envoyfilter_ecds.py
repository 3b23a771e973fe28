"""EnvoyFilter ``applyTo: EXTENSION_CONFIG``: the extension configs a proxy gets over ECDS.

As in Istio (``InsertedExtensionConfigurations`` in ``pilot/pkg/networking/core/envoyfilter``),
an ADD patch's value is a ``TypedExtensionConfig`` ``{name, typed_config}``, served as is to
proxies the EnvoyFilter selects; other operations make nothing (``apply`` warns), and the
patch's match is not read. Envoy asks for one only when a filter of one of its listeners has
``config_discovery`` naming it (an HTTP_FILTER or NETWORK_FILTER patch adds such a filter),
so a proxy's snapshot may hold configs it never requests. When two ADDs name the same
config, the later one in application order wins (Istio would send both).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.core.v3 import config_source_pb2, extension_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from tsunagi.xds.resources import Resource
from tsunagi.xds.translate.envoyfilter_patch import Prepared
from tsunagi.xds.translate.isolation import ResourceKey, TranslationError

FilterPatches = tuple[ResourceKey, str, Sequence[Prepared]]
"""One EnvoyFilter: its key, ``namespace/name`` and prepared patches, in application order."""


@dataclass(frozen=True)
class ExtensionConfigs:
    """The extension configs some EnvoyFilters add, what failed, and who added any."""

    configs: Mapping[str, Resource] = field(default_factory=dict)
    errors: tuple[TranslationError, ...] = ()
    by: tuple[str, ...] = ()
    """The EnvoyFilters (``namespace/name``) that added one."""


def _problem(value: extension_pb2.TypedExtensionConfig) -> str | None:
    """Why Envoy could not take ``value`` as an ECDS resource, or None."""
    if not value.name:
        return "the extension config has no name (filters load it by name)"
    if not value.HasField("typed_config") or not value.typed_config.type_url:
        return f"extension config {value.name!r} has no typed_config"
    try:
        json_format.MessageToDict(value)  # every Any in it must resolve
    except Exception as e:  # an unknown or broken type: Envoy would reject it
        return f"extension config {value.name!r}: {type(e).__name__}: {e}"
    return None


def extension_configs(filters: Sequence[FilterPatches]) -> ExtensionConfigs:
    """The ``TypedExtensionConfig`` resources the EXTENSION_CONFIG ADD patches of ``filters``
    make, by name. A value Envoy could not take is left out and reported against its filter."""
    configs: dict[str, Resource] = {}
    errors: list[TranslationError] = []
    by: list[str] = []
    for key, name, patches in filters:
        for p in patches:
            if p.apply_to != "EXTENSION_CONFIG" or p.operation != "ADD":
                continue
            problem = _problem(p.value)
            if problem is not None:
                errors.append(
                    TranslationError(
                        (key,),
                        f"EnvoyFilter {name} on ECDS",
                        f"{problem}; this extension config is left out",
                        kept_last_good=False,
                    )
                )
                continue
            configs[p.value.name] = Resource.pack(p.value.name, p.value)
            by.append(name)
    return ExtensionConfigs(MappingProxyType(configs), tuple(errors), tuple(dict.fromkeys(by)))


def _over_ads(source: config_source_pb2.ConfigSource) -> bool:
    return source.WhichOneof("config_source_specifier") in ("ads", "self")


def loaded_names(listener: Resource) -> frozenset[str]:
    """The extension config names a listener's network and HTTP filters load over ADS."""
    lst = listener_pb2.Listener()
    listener.body.Unpack(lst)
    chains = [*lst.filter_chains]
    if lst.HasField("default_filter_chain"):
        chains.append(lst.default_filter_chain)
    names: set[str] = set()
    for chain in chains:
        for f in chain.filters:
            if f.HasField("config_discovery"):
                if _over_ads(f.config_discovery.config_source):
                    names.add(f.name)
            elif f.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                hcm = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(hcm)
                names.update(
                    h.name
                    for h in hcm.http_filters
                    if h.HasField("config_discovery")
                    and _over_ads(h.config_discovery.config_source)
                )
    return frozenset(names)


def missing(
    listeners: Mapping[str, Resource],
    configs: Mapping[str, Resource],
    loads: Callable[[Resource], frozenset[str]] = loaded_names,
) -> list[tuple[str, str]]:
    """(listener, extension config name) for each config a listener loads over ECDS that
    ``configs`` lacks: Envoy keeps such a listener warming until its initial fetch times out,
    and the filter then answers every request with 500."""
    return [
        (name, ext)
        for name, res in sorted(listeners.items())
        for ext in sorted(loads(res) - configs.keys())
    ]

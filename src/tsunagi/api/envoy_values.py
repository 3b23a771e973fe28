"""An EnvoyFilter patch ``value`` as the Envoy message its ``applyTo`` names.

Istio turns the ``Struct`` into the typed message with the proto JSON rules; so do we, with
``@type`` in ``typed_config`` resolved against the Envoy protos installed with Tsunagi. Their
modules are imported on first use (there are hundreds), so only the types a patch names are
loaded.

It lives in ``api`` because validating a patch value *is* building it: ``apply`` refuses a
wrong type or an unknown ``@type`` the way Istio's validation does, by parsing. Translation
builds the same values with the same function (as Istio's validation and its patchers share
one builder); in ``xds.translate`` it would make ``api`` import from ``xds``. The Envoy protos
are a third-party library, which ``api`` may use.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import extension_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message import Message

MESSAGE_FOR: Mapping[str, type[Message]] = {
    "LISTENER": listener_pb2.Listener,
    "FILTER_CHAIN": listener_components_pb2.FilterChain,
    "NETWORK_FILTER": listener_components_pb2.Filter,
    "HTTP_FILTER": hcm_pb2.HttpFilter,
    "ROUTE_CONFIGURATION": route_pb2.RouteConfiguration,
    "VIRTUAL_HOST": route_components_pb2.VirtualHost,
    "HTTP_ROUTE": route_components_pb2.Route,
    "CLUSTER": cluster_pb2.Cluster,
    "EXTENSION_CONFIG": extension_pb2.TypedExtensionConfig,
}
"""``applyTo`` → the Envoy message its patch ``value`` is (as in Istio's ``xds`` package)."""

_PREFIX = "type.googleapis.com/"


class PatchValueError(ValueError):
    """A patch value that is not a valid message of its type; ``str()`` says where and why."""


def _known(full_name: str) -> bool:
    try:
        descriptor_pool.Default().FindMessageTypeByName(full_name)
    except KeyError:
        return False
    return True


@cache
def _load_package(package: str) -> None:
    """Import every ``*_pb2`` module of one proto package (registers its types)."""
    try:
        mod = importlib.import_module(package)
    except ImportError:
        return
    for info in pkgutil.iter_modules(getattr(mod, "__path__", [])):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")


def ensure_type(type_url: str) -> bool:
    """Make ``type_url``'s message known to the protobuf runtime; False if no installed
    proto package declares it."""
    full_name = type_url.rsplit("/", 1)[-1]
    if _known(full_name):
        return True
    parts = full_name.split(".")
    # The package is a prefix of the name: "a.b.v3.Outer.Inner" lives in "a.b.v3".
    for end in range(len(parts) - 1, 0, -1):
        _load_package(".".join(parts[:end]))
        if _known(full_name):
            return True
    return False


def _type_urls(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            if k == "@type" and isinstance(v, str):
                yield v
            elif k == "type_url" and isinstance(v, str) and v.startswith(_PREFIX):
                yield v  # a TypedStruct's inner type: Envoy resolves it, so must exist
            else:
                yield from _type_urls(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _type_urls(v)


def _plain(value: Any) -> Any:
    """Mappings and tuples from the frozen model as the dicts and lists ParseDict wants."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def build_value(apply_to: str, value: Mapping[str, Any] | None, strict: bool = True) -> Message:
    """``value`` as the message ``apply_to`` names. ``strict``: unknown fields are errors
    (Envoy would reject them); otherwise they are dropped, as Istio's parser does.

    Raises :class:`PatchValueError` with the reason (an unknown ``@type``, a field that does
    not exist or has the wrong type).
    """
    message = MESSAGE_FOR[apply_to]()
    if value is None:
        return message
    for url in _type_urls(value):
        if not ensure_type(url):
            raise PatchValueError(
                f"referenced type unknown: {url} (no Envoy extension of that type is installed; "
                "check the spelling and use the v3 API)"
            )
    try:
        json_format.ParseDict(_plain(value), message, ignore_unknown_fields=not strict)
    except json_format.ParseError as e:
        # protobuf appends every field name of the message; the first line says it all
        raise PatchValueError(str(e).splitlines()[0].rstrip(".")) from None
    return message

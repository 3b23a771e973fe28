"""What a proxy's agent and the control plane both rely on, spelled in one place.

The agent writes the node metadata into Envoy's bootstrap and reads Envoy's stats; the
control plane reads that metadata (``mesh.Node``) and names the listeners and stats in the
config it sends (``xds/translate``). The package map forbids either side to import the
other, so what they must agree on lives here, in a module that imports nothing of tsunagi
and that any package may import. A name changed here changes on both sides at once.
"""

from __future__ import annotations

DEFAULT_OUTBOUND_PORT = 15001
"""Istio's outbound port: where the app's ``HTTP_PROXY`` points unless one is allocated."""

DEFAULT_KIND = "sidecar"
"""A proxy beside an app; the other kind is ``gateway``."""

# Keys of the xDS node metadata the agent writes into the bootstrap.
META_NAMESPACE = "namespace"
META_SERVICE = "service"
META_LABELS = "labels"
META_OUTBOUND_PORT = "outbound_port"
META_INBOUND = "inbound"
"""service port → ``{META_INBOUND_LISTEN: inbound listener port, META_INBOUND_APP: app port}``."""
META_INBOUND_LISTEN = "listen"
META_INBOUND_APP = "app"
META_INBOUND_PROTOCOL = "protocol"
"""The service port's protocol (``tsunagi.protocols`` names); absent means HTTP. HTTP/2
protocols make the inbound cluster speak h2c to the app; non-HTTP ones get a TCP proxy."""
META_KIND = "kind"
META_LOCALITY = "locality"
"""``region/zone/subzone`` (also in the node's Envoy ``locality``; the metadata copy is what
the control plane reads, as it reads nothing else of the node)."""


def inbound_stat_prefix(port: int) -> str:
    """The stat prefix of the inbound listener for service ``port``."""
    return f"inbound_{port}"


def inbound_active_requests_stat(port: int) -> str:
    """Requests in flight on the inbound listener of ``port``: what draining waits on."""
    return f"http.{inbound_stat_prefix(port)}.downstream_rq_active"


def locality_fields(locality: str) -> dict[str, str]:
    """``region/zone/sub_zone`` as Envoy's ``Locality`` fields, empty parts left out.

    Proxies (in their bootstrap) and endpoints (in load assignments) must spell a locality
    the same way for locality-aware load balancing to match them.
    """
    keys = ("region", "zone", "sub_zone")
    return {k: v for k, v in zip(keys, locality.split("/"), strict=False) if v}


RE2_MAX_PROGRAM_SIZE = 32768
"""The largest RE2 program (Envoy's regex complexity measure) a proxy accepts. Envoy's
default is 100, which refuses regexes Istio accepts; Istio's bootstrap raises it to this, so
does the agent's (``RE2_MAX_PROGRAM_SIZE_KEY`` in the runtime), and validation refuses what
is larger, so that Envoy never NACKs a regex that ``apply`` accepted."""
RE2_MAX_PROGRAM_SIZE_KEY = "re2.max_program_size.error_level"

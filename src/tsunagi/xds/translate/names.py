"""Names and domains, spelled the way Istio spells them (so tooling and habits carry over)."""

from __future__ import annotations

from typing import NamedTuple

from tsunagi.mesh import Service
from tsunagi.secret_keys import CA_SUFFIX

OUTBOUND_LISTENER = "outbound"
OUTBOUND_ROUTE = "outbound"


def outbound_cluster(host: str, port: int, subset: str = "") -> str:
    """``outbound|9080|v1|reviews.default.svc.cluster.local``."""
    return f"outbound|{port}|{subset}|{host}"


class OutboundCluster(NamedTuple):
    """What an outbound cluster's name (:func:`outbound_cluster`) says."""

    host: str
    port: int
    subset: str


def parse_outbound_cluster(name: str) -> OutboundCluster | None:
    """The host, port and subset in an :func:`outbound_cluster` name; None for any other
    cluster (inbound, PassthroughCluster, a CONNECT's internal one)."""
    parts = name.split("|", 3)
    if len(parts) != 4 or parts[0] != "outbound" or not parts[1].isdigit():
        return None
    return OutboundCluster(parts[3], int(parts[1]), parts[2])


def inbound_cluster(port: int) -> str:
    return f"inbound|{port}||"


def inbound_listener(port: int) -> str:
    return f"inbound|{port}"


def credential_secret(credential_name: str) -> str:
    """The SDS name of a ``credentialName``'s certificate and key: ``kubernetes://NAME``."""
    return f"kubernetes://{credential_name}"


def credential_ca_secret(credential_name: str) -> str:
    """The SDS name of the CA that verifies clients for ``credentialName`` (MUTUAL):
    ``kubernetes://NAME-cacert``, served from the ``NAME-cacert`` secret or from the CA key
    (``ca.crt``/``cacert``) of ``NAME`` itself, as Istio does."""
    return f"kubernetes://{credential_name}{CA_SUFFIX}"


def host_aliases(host: str, node_namespace: str) -> list[str]:
    """Every way a client may write ``host``: FQDN, ``name.ns.svc``, ``name.ns`` and, from the
    same namespace, the short name."""
    parts = host.split(".")
    if len(parts) == 5 and parts[2:] == ["svc", "cluster", "local"]:
        name, ns = parts[0], parts[1]
        aliases = [host, f"{name}.{ns}.svc", f"{name}.{ns}"]
        if ns == node_namespace:
            aliases.append(name)
        return aliases
    return [host]


def service_domains(svc: Service, port: int, node_namespace: str) -> list[str]:
    """Domains of one service port. A Host header without a port means port 80, so the bare
    names go to port 80 when the service has it, else to its lowest port."""
    bare = port == 80 or (80 not in svc.ports and port == svc.ports[0])
    out: list[str] = []
    for alias in [*host_aliases(svc.hostname, node_namespace), *_vips(svc)]:
        if bare:
            out.append(alias)
        out.append(f"{alias}:{port}")
    return out


def _vips(svc: Service) -> list[str]:
    """A ServiceEntry's single ``addresses`` as an authority spells them (IPv6 in
    brackets); ranges are matched by :mod:`.egress`."""
    out = []
    for address in svc.addresses:
        ip, _, length = address.partition("/")
        if length and length not in ("32", "128"):
            continue
        out.append(f"[{ip}]" if ":" in ip else ip)
    return out


def virtual_host_domains(host: str, node_namespace: str) -> list[str]:
    """Domains of a VirtualService host that is not a known service (any port)."""
    out: list[str] = []
    for alias in host_aliases(host, node_namespace):
        out.append(alias)
        if not alias.startswith("*"):
            out.append(f"{alias}:*")
    return out

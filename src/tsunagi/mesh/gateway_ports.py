"""Istio's merge of Gateway servers onto one gateway proxy's ports: what each port serves,
and which servers are left out and why (``apply`` says so: ``gateway_analysis.py``).

Istio's rules (pilot's ``mergeGateways``), in Gateway order:

- a port serves plain-text HTTP servers (HTTP, HTTP2, GRPC, GRPC-WEB: merged into one route
  table), or TLS servers (HTTPS, TLS: one filter chain each, told apart by the client's SNI),
  or one opaque TCP server (TCP, and MONGO, REDIS, MYSQL, whose bytes a gateway forwards
  as they are); the first server on the port decides, a later one of another kind is left out;
- two TLS servers on one port may not share a host name (SNI could not tell them apart), nor
  may two TCP servers share a port: the later one is left out;
- two HTTPS servers of one Gateway on one port may not share a ``port.name`` (their route
  tables would share a name): the later one is left out;
- a server is served only in a form Tsunagi supports (:func:`unsupported`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from tsunagi.api import GatewaySpec, ResourceOf, Server
from tsunagi.mesh.gateways import HTTP_SERVER_PROTOCOLS, server_host, server_protocol

Kind = Literal["http", "tls", "tcp"]

TLS_SERVER_PROTOCOLS = frozenset({"HTTPS", "TLS"})
TERMINATING_MODES = frozenset({"SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL", "ISTIO_MUTUAL"})
"""TLS modes in which the gateway holds the certificate and ends the TLS (ISTIO_MUTUAL:
the gateway's own mesh certificate, peers checked against the mesh's roots)."""


def server_kind(server: Server) -> Kind:
    """How a port serving ``server`` listens: plain HTTP, TLS by SNI, or opaque TCP."""
    proto = server_protocol(server)
    if proto in HTTP_SERVER_PROTOCOLS:
        return "http"
    return "tls" if proto in TLS_SERVER_PROTOCOLS else "tcp"


def tls_mode(server: Server) -> str:
    """The server's TLS mode; Istio's default (the enum's zero value) is PASSTHROUGH."""
    if server.tls is None:
        return ""
    return server.tls.mode or "PASSTHROUGH"


def terminates(server: Server) -> bool:
    """Whether the gateway ends the server's TLS (with its ``credentialName``)."""
    return server_kind(server) == "tls" and tls_mode(server) in TERMINATING_MODES


def credentials(server: Server) -> tuple[str, ...]:
    """The secrets whose certificates a server that ends TLS presents: its
    ``credentialNames`` (Istio: one certificate each, say RSA and ECDSA, the client picking
    by what it supports; the CA for MUTUAL comes from the first), else its
    ``credentialName``; empty when it names none."""
    tls = server.tls
    if tls is None:
        return ()
    if tls.credential_names:
        return tuple(tls.credential_names)
    return (tls.credential_name,) if tls.credential_name else ()


def sni_hosts(server: Server) -> tuple[str, ...]:
    """The names a TLS server answers in the client's SNI: its hosts without their
    namespace part, lower-cased, each once, sorted (Istio's ``GetSNIHostsForServer``)."""
    return tuple(sorted({server_host(h, "")[1] for h in server.hosts}))


CIPHER_SUITES = frozenset(
    {
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-RSA-AES256-SHA",
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
        "AES128-SHA",
        "AES256-SHA",
        "DES-CBC3-SHA",
    }
)
"""The cipher suite names Istio accepts (BoringSSL's, as Envoy takes them)."""


def known_cipher(name: str) -> bool:
    """Whether Istio passes ``name`` on to Envoy (its ``IsValidCipherSuite``): a name of
    :data:`CIPHER_SUITES`, ``ALL``, or an OpenSSL-style expression, which starts with
    neither a letter nor a digit (``[A|B]`` equal preference, ``-X``/``!X`` removal, ``+X``)
    and is left to Envoy to judge."""
    return name == "ALL" or name in CIPHER_SUITES or (name != "" and not name[0].isalnum())


def cipher_suites(server: Server) -> tuple[list[str], list[str]]:
    """``(used, ignored)``: the server's cipher suites that Envoy gets, each once and in the
    given order, and those Istio leaves out (unknown names and repeats; ``apply`` says which)."""
    used: list[str] = []
    ignored: list[str] = []
    for c in server.tls.cipher_suites if server.tls is not None else ():
        (used if known_cipher(c) and c not in used else ignored).append(c)
    return used, ignored


def unsupported(server: Server) -> str | None:
    """Why ``server`` is not served, with what to do instead; None when it is."""
    if server_kind(server) != "tls" or server.tls is None:
        return None
    mode = tls_mode(server)
    if mode == "AUTO_PASSTHROUGH":
        return (
            "tls.mode AUTO_PASSTHROUGH is not supported yet (it routes by the mesh's mTLS "
            "SNI names); no listener serves this server. Use PASSTHROUGH with tls routes"
        )
    if mode in TERMINATING_MODES and mode != "ISTIO_MUTUAL" and not credentials(server):
        return (
            "tls.serverCertificate/privateKey is not supported; no listener serves this "
            "server. Create a secret "
            "(`tsunagi create secret tls NAME --cert FILE --key FILE`) and set "
            "tls.credentialName: NAME"
        )
    return None


@dataclass(frozen=True)
class PortServers:
    """The servers one port of a gateway proxy serves, in Gateway order."""

    port: int
    kind: Kind
    servers: tuple[tuple[ResourceOf[GatewaySpec], Server], ...]


@dataclass(frozen=True)
class LeftOut:
    """A server a gateway proxy does not serve because another one holds its port or name."""

    gateway: ResourceOf[GatewaySpec]
    index: int
    """Its index in the Gateway's ``spec.servers``."""
    reason: str


def merge_ports(
    gateways: Sequence[ResourceOf[GatewaySpec]],
) -> tuple[list[PortServers], list[LeftOut]]:
    """The ports a gateway proxy serving ``gateways`` (in Gateway order) listens on, by
    port number, and the servers left out. Servers :func:`unsupported` are neither."""
    by_port: dict[int, list[tuple[ResourceOf[GatewaySpec], Server]]] = {}
    kinds: dict[int, tuple[Kind, str]] = {}
    names: dict[int, dict[str, str]] = {}  # port -> SNI name -> the server that has it
    tables: dict[tuple[int, str | None, str, str], str] = {}  # HTTPS route table -> server
    left_out: list[LeftOut] = []
    for g in gateways:
        for i, server in enumerate(g.spec.servers):
            if unsupported(server) is not None:
                continue
            port, kind = server.port.number, server_kind(server)
            here = f"servers[{i}] of Gateway {g.namespace}/{g.name}"
            first = kinds.setdefault(port, (kind, here))
            if first[0] != kind or (kind == "tcp" and first[1] != here):
                left_out.append(LeftOut(g, i, _taken(port, kind, *first)))
                continue
            if kind == "tls":
                taken = names.setdefault(port, {})
                clash = sorted(h for h in sni_hosts(server) if h in taken)
                if clash:
                    left_out.append(
                        LeftOut(
                            g,
                            i,
                            f"port {port} already serves {', '.join(clash)} over TLS "
                            f"({taken[clash[0]]}); the client's SNI could not tell the two "
                            "apart, so this server is left out, as Istio does. Give it other "
                            "hosts or another port",
                        )
                    )
                    continue
                if https_table(server):
                    # Istio's merge leaves out an HTTPS server whose route table name
                    # (https.PORT.PORTNAME.GATEWAY.NS) an earlier one has: one table could
                    # not hold both servers' hosts apart.
                    key = (port, server.port.name, g.namespace, g.name)
                    if key in tables:
                        left_out.append(LeftOut(g, i, _same_port_name(server, tables[key])))
                        continue
                    tables[key] = here
                taken.update(dict.fromkeys(sni_hosts(server), here))
            by_port.setdefault(port, []).append((g, server))
    ports = [PortServers(p, kinds[p][0], tuple(s)) for p, s in sorted(by_port.items())]
    return ports, left_out


def https_table(server: Server) -> bool:
    """Whether ``server`` is an HTTPS server that ends the TLS, so has its own route table."""
    return terminates(server) and server_protocol(server) == "HTTPS"


def _same_port_name(server: Server, first: str) -> str:
    return (
        f"{first} is an HTTPS server on port {server.port.number} with the same port name "
        f"{server.port.name!r}, and each HTTPS server's route table is named after its port "
        "name; this server is left out, as Istio does (Istio also requires unique port names "
        "in a Gateway). Give it another port.name"
    )


_KIND_NAMES = {"http": "plain-text HTTP", "tls": "TLS (HTTPS/TLS)", "tcp": "opaque TCP"}


def _taken(port: int, kind: Kind, first_kind: Kind, first: str) -> str:
    if kind == first_kind:  # two TCP servers
        return (
            f"port {port} already serves TCP for {first}, and a TCP port has one server; "
            "this one is left out, as Istio does. Use another port"
        )
    return (
        f"port {port} already serves {_KIND_NAMES[first_kind]} for {first}, and a port "
        f"serves one kind; this {_KIND_NAMES[kind]} server is left out, as Istio does. Use "
        "another port"
    )

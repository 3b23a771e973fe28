"""``GET /v1/proxies/{proxy}/secrets``: the certificates one proxy holds, as ``istioctl
proxy-config secret`` lists them, from what the control plane sent it and what it ACKed.

A row per SDS secret: every secret of the proxy's current snapshot, plus any name its Envoy
asked for that the control plane does not have (a listener names a credential that is
missing). Its status says where the proxy is with it:

* ``ACTIVE``: Envoy ACKed this very version of it;
* ``WARMING``: Envoy asked for it and has not ACKed this version yet (in flight, rejected,
  or not there at all: then ``message`` says so);
* ``PENDING``: Envoy has not asked for it yet (no listener it applied names it so far).

First come the proxy's own workload certificate and trust bundle, under Istio's names
``default`` (Cert Chain, whose SAN is the SPIFFE ID) and ``ROOTCA`` (CA): the last ones the
CA issued to this proxy (:mod:`.issued_certs`), ``ACTIVE`` as istioctl shows them. Its agent
writes them to Envoy's SDS files as soon as they arrive, so ``source`` says ``agent``; the
Secrets pushed over ADS say ``control-plane``.

Only certificates are read out of a secret, never its private key.
"""

from __future__ import annotations

import datetime
from typing import Any

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from tsunagi.ca.summary import summarize
from tsunagi.controlplane.issued_certs import IssuedRecord
from tsunagi.secret_keys import CA_SUFFIX
from tsunagi.xds.cache import NodeEntry
from tsunagi.xds.resources import SECRET, Resource

CONTROL_PLANE, AGENT = "control-plane", "agent"
WORKLOAD_CERT, ROOT_CA = "default", "ROOTCA"  # Istio's SDS names for the proxy's own
CERT_CHAIN, CA = "Cert Chain", "CA"  # istioctl's names for the two kinds of SDS secret
ACTIVE, WARMING, PENDING = "ACTIVE", "WARMING", "PENDING"
_COLUMNS = ("valid", "serial_number", "not_after", "not_before", "subject", "issuer", "sans")


def proxy_secrets(
    entry: NodeEntry, now: datetime.datetime, issued: IssuedRecord | None = None
) -> dict[str, Any]:
    """The proxy's secrets with their certificates' public facts: its own certificate and
    trust bundle (``issued``, the last the CA gave it, when known), then those the control
    plane pushed, sorted by name."""
    held = entry.snapshot.of(SECRET)
    sds = entry.stream.status().get(SECRET)
    asked: frozenset[str] = sds.names if sds is not None else frozenset()
    everything = sds is not None and sds.wildcard
    acked = entry.stream.acked_versions(SECRET)
    meta = entry.metadata or {}
    namespace = str(meta.get("namespace") or "default")
    rows = [] if issued is None else _own(issued, now)
    for name in sorted(held.keys() | asked):
        res = held.get(name)
        if res is None:
            # Keys go to marked gateways and to sidecars a selector DestinationRule picks
            # (whose clusters name only what they get); an unmarked gateway is told why not.
            barred = meta.get("kind") == "gateway" and not entry.verified
            rows.append(_missing(name, namespace, not barred))
            continue
        if acked.get(name) == res.version:
            state = ACTIVE
        elif everything or name in asked:
            state = WARMING
        else:
            state = PENDING
        rows.append(_row(res, state, acked.get(name), now))
    return {
        "proxy": entry.id,
        "kind": meta.get("kind", "sidecar"),
        "namespace": namespace,
        "secrets": rows,
    }


def _blank(name: str, status: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "",
        "status": status,
        "source": CONTROL_PLANE,
        "version": None,
        "acked_version": None,
        "valid": False,
        "serial_number": "",
        "not_after": "",
        "not_before": "",
        "subject": "",
        "issuer": "",
        "sans": [],
        "certificates": [],
        "message": None,
    }


def _missing(name: str, namespace: str, may_hold_keys: bool) -> dict[str, Any]:
    row = _blank(name, WARMING)
    secret = name.removeprefix("kubernetes://")
    if not may_hold_keys:  # its certificate lacks the CA's gateway mark (tsunagi.gateway_mark)
        row["message"] = (
            "this gateway may not receive private keys: its token was not made with "
            f"`tsunagi token create --namespace {namespace} --service-account SA --gateway`; "
            "restart it with such a token (or the admin token)"
        )
    elif secret.endswith(CA_SUFFIX):  # a MUTUAL server's CA
        row["message"] = (
            f"the proxy asked for this CA and there is none: give Secret "
            f"{secret.removesuffix(CA_SUFFIX)} in namespace {namespace} a ca.crt (or cacert), "
            f"or create Secret {secret} there"
        )
    else:
        row["message"] = (
            f"the proxy asked for this secret and there is none: no usable Secret {secret} in "
            f"namespace {namespace} (`tsunagi get secrets -n {namespace}`)"
        )
    return row


def _row(res: Resource, state: str, acked: str | None, now: datetime.datetime) -> dict[str, Any]:
    row = _blank(res.name, state)
    row["version"], row["acked_version"] = res.version, acked
    secret = secret_pb2.Secret()
    if not res.body.Unpack(secret):
        row["message"] = f"not an SDS Secret but {res.body.type_url}"
        return row
    if secret.HasField("tls_certificate"):
        row["type"] = CERT_CHAIN
        pem = _data(secret.tls_certificate.certificate_chain)
    elif secret.HasField("validation_context"):
        row["type"] = CA
        pem = _data(secret.validation_context.trusted_ca)
    else:
        row["message"] = "holds no certificate"
        return row
    _fill(row, pem, now)
    return row


def _own(issued: IssuedRecord, now: datetime.datetime) -> list[dict[str, Any]]:
    """The ``default`` and ``ROOTCA`` rows of the proxy's own certificate."""
    rows = []
    for name, kind, pem in ((WORKLOAD_CERT, CERT_CHAIN, issued.chain), (ROOT_CA, CA, issued.roots)):
        row = _blank(name, ACTIVE)
        row["type"], row["source"] = kind, AGENT
        _fill(row, pem, now)
        rows.append(row)
    return rows


def _fill(row: dict[str, Any], pem: bytes, now: datetime.datetime) -> None:
    certs, problem = summarize(pem, now)
    row["message"] = problem
    row["certificates"] = [c.to_json() for c in certs]
    if certs:  # the row's columns are its first certificate's (a chain's leaf), as istioctl's
        row.update({k: row["certificates"][0][k] for k in _COLUMNS})


def _data(source: Any) -> bytes:
    """The bytes of an inline DataSource (files and env vars are the agent's, not ours)."""
    kind = source.WhichOneof("specifier")
    if kind == "inline_bytes":
        return bytes(source.inline_bytes)
    if kind == "inline_string":
        return str(source.inline_string).encode()
    return b""

"""The proxy's workload identity: a key made here, a certificate from the control plane's
CA, both handed to Envoy as SDS files, renewed at half their lifetime.

The key and CSR come from a short-lived subprocess (:mod:`tsunagi.agent.csr`), so the agent
never imports ``cryptography`` (14 MB of private memory). Only the CSR goes to the control
plane (``POST /v1/certificates``, with the agent's token, which decides which identities it
may obtain); the key stays in this workload: the subprocess's pipe, then the SDS file
(:mod:`tsunagi.agent.sds_files`). Renewal makes a new key each time and Envoy picks the new
files up by itself: no restart, connections already open keep going.

A workload token comes back renewed with each certificate (``token`` in the reply): the
agent's one :class:`~tsunagi.client.Client` switches to it, so heartbeats, renewals and the
deregistration all use the latest, and a running sidecar outlives the token it started with.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from tsunagi.agent.logs import log
from tsunagi.agent.memory import trim_heap
from tsunagi.agent.records import NamedTuple
from tsunagi.agent.sds_files import write_secrets
from tsunagi.client import Client, Rejected, Unreachable
from tsunagi.spiffe import spiffe_id

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the agent's memory)
if TYPE_CHECKING:
    from typing import Any

CSR_TIMEOUT = 30.0
"""Seconds the key/CSR subprocess may take (it takes a fraction of one)."""
RETRY_FIRST, RETRY_MAX = 1.0, 30.0
"""A failed renewal is retried after 1 s, doubling up to 30 s (never past half the time the
current certificate has left, so a short one is retried often enough)."""


class Certificate(NamedTuple):
    """What the agent knows of the certificate its proxy serves (no parsing: the reply of
    ``POST /v1/certificates`` says it)."""

    spiffe_id: str
    serial: str
    not_before: float
    not_after: float
    """Unix seconds."""
    received: float
    """When it arrived (unix seconds): renewal is due half-way from here to ``not_after``
    (a CA may backdate ``not_before`` for clock skew, which would make it due at once)."""

    def renew_at(self) -> float:
        """When to ask for the next one: half its remaining lifetime after it arrived."""
        return self.received + max(0.0, self.not_after - self.received) / 2


class IdentityError(RuntimeError):
    """The key/CSR subprocess failed, or the CA answered with something unexpected."""


class XdsTrust(NamedTuple):
    """Where xDS is and whom to trust there (``GET /v1/bootstrap``)."""

    host: str
    port: int
    server_name: str
    """The DNS SAN the xDS server's certificate must carry (never in a workload's)."""
    trust_domain: str
    replicas: tuple[tuple[str, int], ...] = ()
    """Every live replica's xDS ``(host, port)``, ``(host, port)`` first; empty: one."""


def xds_trust(reply: dict[str, object]) -> XdsTrust:
    """:class:`XdsTrust` from ``GET /v1/bootstrap``'s reply; :class:`IdentityError` when
    the control plane does not say (one older than mutual-TLS xDS)."""
    xds, trust = reply.get("xds"), reply.get("trust")
    if not isinstance(xds, dict) or not isinstance(trust, dict) or not xds.get("serverName"):
        raise IdentityError(
            "the control plane's /v1/bootstrap names no xDS server name or trust domain: "
            "upgrade it (this agent reaches xDS only over mutual TLS)"
        )
    try:
        listed = reply.get("xdsReplicas")
        replicas = tuple(
            (str(r["host"]), int(r["port"])) for r in (listed if isinstance(listed, list) else ())
        )
        return XdsTrust(
            str(xds["host"]),
            int(xds["port"]),
            str(xds["serverName"]),
            str(trust["trustDomain"]),
            replicas,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise IdentityError(f"the control plane's /v1/bootstrap lacks {e}: upgrade it") from None


def obtain_identity(
    client: Client,
    workdir: str,
    trust: XdsTrust,
    namespace: str,
    account: str,
    name: str,
    gateway: bool = False,
) -> WorkloadIdentity:
    """The proxy's identity, its first certificate already in ``workdir``'s SDS files;
    ``gateway``: a gateway's certificate (see :class:`WorkloadIdentity`)."""
    identity = WorkloadIdentity(
        client, workdir, trust.trust_domain, namespace, account, name, gateway=gateway
    )
    cert = identity.obtain()
    log.info(
        "%s: identity %s (certificate serial %s, renewed in %.0fs)",
        name,
        cert.spiffe_id,
        cert.serial,
        cert.renew_at() - time.time(),
    )
    return identity


def new_key_and_csr(identity: str, timeout: float = CSR_TIMEOUT) -> tuple[str, str]:
    """A new private key and a CSR for ``identity`` (both PEM), made in a subprocess."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tsunagi.agent.csr", identity],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise IdentityError(f"could not make a key and CSR: {e}") from None
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise IdentityError(f"could not make a key and CSR (exit {done.returncode}): {why[0]}")
    try:
        out = json.loads(done.stdout)
        return str(out["key"]), str(out["csr"])
    except (ValueError, KeyError, TypeError) as e:
        raise IdentityError(f"the key/CSR subprocess said something unexpected: {e}") from None


class WorkloadIdentity:
    """One proxy's identity ``spiffe://TD/ns/NS/sa/SA``: obtained before Envoy starts
    (:meth:`obtain`), then renewed by :meth:`keep` until ``stop`` is set."""

    def __init__(
        self,
        client: Client,
        workdir: str,
        trust_domain: str,
        namespace: str,
        service_account: str,
        name: str,
        gateway: bool = False,
    ) -> None:
        self.client = client
        self.workdir = workdir
        self.namespace = namespace
        self.service_account = service_account
        self.name = name
        """The proxy's name, for log lines; its node id is ``NAME.NAMESPACE``."""
        self.gateway = gateway
        """Ask for a gateway's certificate, which lets the proxy receive its credentials'
        private keys (the token must allow it: ``tsunagi token create --gateway``)."""
        self.spiffe_id = spiffe_id(trust_domain, namespace, service_account)
        self.current: Certificate | None = None

    def obtain(self) -> Certificate:
        """Make a key, have the CA sign its CSR, and write both SDS files. Raises
        :class:`~tsunagi.client.Rejected` (e.g. 403: the token may not obtain this identity),
        :class:`~tsunagi.client.Unreachable` or :class:`IdentityError`."""
        key, csr = new_key_and_csr(self.spiffe_id)
        try:
            reply = self._signed(csr)
        except Rejected as e:
            if e.status == 401:
                log.error(
                    "%s: the control plane refused this sidecar's token (%s); it cannot renew "
                    "its certificate or stay registered. Make a new token with `tsunagi token "
                    "create --namespace %s --service-account %s` and restart the sidecar with it",
                    self.name,
                    e,
                    self.namespace,
                    self.service_account,
                )
            raise
        try:
            got = str(reply["spiffeId"])
            cert = Certificate(
                got,
                str(reply.get("serial", "")),
                float(reply["notBefore"]),
                float(reply["notAfter"]),
                time.time(),
            )
            chain, roots = str(reply["certificateChain"]), str(reply["rootCertificates"])
            token = reply.get("token")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise IdentityError(f"the CA's reply lacks {e}: is the control plane older?") from None
        if got != self.spiffe_id:
            raise IdentityError(f"asked the CA for {self.spiffe_id} but got {got}")
        write_secrets(self.workdir, chain, key, roots)
        self.current = cert
        if isinstance(token, str) and token:
            # One attribute, read by each request: every thread uses the new one from now.
            self.client.token = token
        return cert

    def _signed(self, csr: str) -> dict[str, Any]:
        """The CA's reply for ``csr``. A gateway whose token may not hold keys (403 for its
        first certificate) goes on with a plain one: plaintext servers work, TLS ones have
        no certificate. A renewal refused so is an error: it had the keys, it keeps asking."""
        try:
            return self.client.request("POST", "/v1/certificates", self._request_body(csr))
        except Rejected as e:
            if not (self.gateway and e.status == 403 and self.current is None):
                raise
            log.warning(
                "%s: %s. Continuing without the gateway's credentials: its TLS servers have "
                "no certificate until it runs with a token made with `tsunagi token create "
                "--gateway` (or the admin token)",
                self.name,
                e,
            )
            self.gateway = False
            return self.client.request("POST", "/v1/certificates", self._request_body(csr))

    def _request_body(self, csr: str) -> dict[str, object]:
        body: dict[str, object] = {
            "csr": csr,
            "namespace": self.namespace,
            "serviceAccount": self.service_account,
            # The node id (as the bootstrap writes it), so `proxy-config secret` shows it.
            "proxy": f"{self.name}.{self.namespace}",
        }
        if self.gateway:
            body["gateway"] = True
        return body

    def keep(self, stop: threading.Event) -> None:
        """Renew at half the lifetime until ``stop`` is set; a failure is retried with
        backoff and logged each time, loudly once the current certificate has expired
        (peers then refuse this proxy until a renewal succeeds)."""
        retry = RETRY_FIRST
        while self.current is not None:
            cert = self.current
            if stop.wait(max(0.0, cert.renew_at() - time.time())):
                return
            while not stop.is_set():
                try:
                    new = self.obtain()
                    log.info(
                        "%s: certificate renewed (serial %s, valid for %.0fs)",
                        self.name,
                        new.serial,
                        new.not_after - time.time(),
                    )
                    retry = RETRY_FIRST
                    trim_heap()  # the reply and the subprocess's pipes are garbage now
                    break
                except (Rejected, Unreachable, IdentityError, OSError, ValueError) as e:
                    left = cert.not_after - time.time()
                    # Before expiry, often enough to renew in time; after, with plain backoff.
                    wait = min(retry, RETRY_MAX, max(RETRY_FIRST, left / 2) if left > 0 else retry)
                    if left > 0:
                        log.warning(
                            "%s: could not renew the certificate (serial %s, expires in "
                            "%.0fs): %s; retrying in %.0fs",
                            self.name,
                            cert.serial,
                            left,
                            e,
                            wait,
                        )
                    else:
                        log.warning(
                            "%s: the certificate (serial %s) EXPIRED %.0fs ago and could not "
                            "be renewed: %s; peers refuse this proxy until it is. Retrying "
                            "in %.0fs",
                            self.name,
                            cert.serial,
                            -left,
                            e,
                            wait,
                        )
                    retry = min(retry * 2, RETRY_MAX)
                    if stop.wait(wait):
                        return

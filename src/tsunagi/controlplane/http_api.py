"""The control plane's JSON HTTP API, used by the CLI and by agents.

Every route needs ``Authorization: Bearer <token>``, ``/healthz`` and ``/v1/openapi.json``
included. Errors are JSON ``{"error": ..., "errors": [...]}`` with 400 for bad input, 401/403
for auth, 404 for missing, 408/413 for a slow or too large body, 503 for too many connections
from one address. The routes, their inputs and answers are declared once, in
:data:`tsunagi.controlplane.openapi.ROUTES`; ``GET /v1/openapi.json`` describes them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from tsunagi.api import KINDS, Resource, ValidationFailed, load_documents
from tsunagi.api.checks_common import quote
from tsunagi.api.durations import parse_duration
from tsunagi.api.secrets import LAST_APPLIED, redact, without_last_applied
from tsunagi.ca.authority import Authority, CsrRejected, Signed
from tsunagi.controlplane import jwks_status, openapi, workload_tokens
from tsunagi.controlplane.callers import Caller
from tsunagi.controlplane.connections import LimitedSite
from tsunagi.controlplane.fanout import proxies_everywhere, secrets_everywhere, wait_everywhere
from tsunagi.controlplane.issued_certs import IssuedCertificates, IssuedRecord
from tsunagi.controlplane.metrics import CONTENT_TYPE, ControlPlaneMetrics
from tsunagi.controlplane.openapi import (
    MIB,
    ROUTES,
    ApplyRequest,
    CertificateRequest,
    DeleteRequest,
    GraphQuery,
    InstanceRequest,
    ProxiesQuery,
    ProxySecretsQuery,
    ResolveRequest,
    ResourcesQuery,
    SeriesQuery,
    TokenRequest,
    WaitQuery,
)
from tsunagi.controlplane.prometheus import host_port
from tsunagi.controlplane.prometheus import targets as prometheus_targets
from tsunagi.controlplane.proxy_secrets import proxy_secrets
from tsunagi.controlplane.status import proxy_statuses, wait_for_acks
from tsunagi.controlplane.xds_tls import xds_server_name
from tsunagi.mesh import Node, World
from tsunagi.mesh.analysis import (
    delegation_problems,
    not_yet_enforced,
    passthrough_without_dns,
    tls_file_problems,
    undefined_subsets,
)
from tsunagi.mesh.authorization_analysis import principal_problems
from tsunagi.mesh.credential_analysis import credential_problems
from tsunagi.mesh.ext_authz import problems as custom_authz_problems
from tsunagi.mesh.gateway_analysis import gateway_problems
from tsunagi.mesh.gateway_bind_analysis import (
    privileged_port_problems,
    running_gateways,
    unprivileged_port_start,
)
from tsunagi.mesh.peer_authentication import mtls_modes
from tsunagi.mesh.peer_authentication import summary as mtls_summary
from tsunagi.mesh.peer_authentication_analysis import mtls_problems
from tsunagi.mesh.request_authentication_analysis import claim_routing_problems
from tsunagi.mesh.rule_credential_analysis import rule_credential_problems
from tsunagi.mesh.telemetry_analysis import telemetry_conflicts
from tsunagi.proxy_contract import workload_metadata
from tsunagi.registry import KIND as INSTANCE_KIND
from tsunagi.registry import Instance, InvalidInstance, Registry
from tsunagi.registry.instances import protocol_disagreement
from tsunagi.spiffe import spiffe_id
from tsunagi.store import Key, Store, StoreError, StoreLimit
from tsunagi.telemetry.graph import graph_view
from tsunagi.telemetry.panels import panel
from tsunagi.telemetry.promviews import PrometheusError
from tsunagi.telemetry.views import MetricsViews

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)

if TYPE_CHECKING:  # loads etcd's stubs: imported by control planes on etcd only
    from tsunagi.controlplane.replicas import Replicas

log = logging.getLogger("tsunagi.api")

CALLER = web.RequestKey("caller", Caller)
"""Who sent the request (set by the auth middleware before any handler runs)."""

MAX_REQUEST_LINE = 64 * 1024
"""Bytes a request line may have (aiohttp's default is 8 KiB)."""


class ApiError(Exception):
    """An answer other than 200, raised from anywhere in a handler; sent as the JSON error
    shape. ``close`` ends the connection afterwards (the rest of the request is unread)."""

    def __init__(
        self, status: int, message: str, errors: list[str] | None = None, close: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or [message]
        self.close = close


def _problems(e: ValidationError, where: str, model: type[BaseModel]) -> list[str]:
    """Pydantic's errors as ``<where> field.path: reason`` lines."""
    out = []
    for err in e.errors(include_url=False):
        path = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            noun = "parameter" if where.startswith("query") else "field"
            reason = f"unknown {noun}; known: " + ", ".join(model.model_fields)
        elif err["type"] == "missing":
            reason = "required field is missing"
        else:
            reason = str(err["msg"]).removeprefix("Value error, ")
        out.append(f"{where} {path}: {reason}" if path else f"{where}: {reason}")
    return out


_ALIASES = {
    "vs": "VirtualService",
    "dr": "DestinationRule",
    "se": "ServiceEntry",
    "we": "WorkloadEntry",
    "gw": "Gateway",
    "pa": "PeerAuthentication",
    "ap": "AuthorizationPolicy",
    "ra": "RequestAuthentication",
    "telemetries": "Telemetry",
    "workload": INSTANCE_KIND,
    "workloads": INSTANCE_KIND,
    "instance": INSTANCE_KIND,
    "instances": INSTANCE_KIND,
}


def resolve_kind(text: str) -> str | None:
    """``vs``, ``virtualservice``, ``VirtualServices`` → ``VirtualService``."""
    low = text.lower()
    if low in _ALIASES:
        return _ALIASES[low]
    for kind in [*KINDS, INSTANCE_KIND]:
        if low in (kind.lower(), kind.lower() + "s"):
            return kind
    return None


def _error(status: int, message: str, errors: list[str] | None = None) -> web.Response:
    return web.json_response({"error": message, "errors": errors or [message]}, status=status)


def _status(errors: tuple[str, ...]) -> dict[str, Any]:
    """Istio's resource ``status`` shape: one validation message per translation failure."""
    return {
        "validationMessages": [
            {
                "type": {"code": "TSU0001", "name": "TranslationFailed"},
                "level": "ERROR",
                "description": e,
            }
            for e in errors
        ]
    }


def _record_json(key: Key, record: Any, errors: tuple[str, ...] = ()) -> dict[str, Any]:
    kind, ns, name = key
    out: dict[str, Any] = {
        "kind": kind,
        "namespace": ns,
        "name": name,
        "revision": record.revision,
        # The API never returns a Secret's private keys (its certificates it does); only
        # gateways whose xDS certificate proves their namespace get keys, over SDS
        "document": redact(record.document) if kind == "Secret" else record.document,
    }
    if errors:
        out["status"] = _status(errors)
    return out


def _add_status(item: dict[str, Any], status: dict[str, Any]) -> None:
    """Merge ``status`` fields computed at GET time (never stored) into ``item``'s."""
    if status:
        item["status"] = {**(item.get("status") or {}), **status}


def certificate_reply(signed: Signed) -> dict[str, Any]:
    """The body of ``POST /v1/certificates`` for ``signed`` (before any renewed token)."""
    return {
        "certificateChain": signed.chain.decode(),
        "rootCertificates": signed.root.decode(),
        "spiffeId": signed.spiffe_id,
        "serial": f"{signed.serial:x}",
        "notBefore": int(signed.not_before.timestamp()),
        "notAfter": int(signed.not_after.timestamp()),
    }


class Api:
    """Handlers bound to the control plane's parts."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        pusher: Any,
        cache: Any,
        token: str,
        xds_address: tuple[str, int],
        *,
        max_body_size: int = 16 * MIB,
        max_connections_per_client: int = 256,
        idle_timeout: float = 30.0,
        body_timeout: float = 30.0,
        max_wait_timeout: float = 300.0,
        metrics: ControlPlaneMetrics | None = None,
        authority: Authority | None = None,
        workload_cert_ttl: datetime.timedelta = datetime.timedelta(hours=24),
        workload_token_key: bytes | None = None,
        xds_identity: str = "",
        jwks: Callable[[], Mapping[str, jwks_status.FetchState]] | None = None,
    ) -> None:
        """The limits: request bodies up to ``max_body_size`` bytes, read within
        ``body_timeout`` seconds; at most ``max_connections_per_client`` concurrent
        connections per client address; connections idle (or sending headers) for
        ``idle_timeout`` seconds are closed; ``/v1/wait`` waits at most ``max_wait_timeout``.
        ``metrics`` is what ``/metrics`` serves (a fresh one when not given)."""
        self.store = store
        self.registry = registry
        self.pusher = pusher
        self.cache = cache
        self.token = token
        self.xds_address = xds_address
        self.xds_identity = xds_identity
        """The SPIFFE ID of the xDS port's serving certificate, which proxies require
        (``/v1/bootstrap``; :mod:`tsunagi.controlplane.xds_tls`). Empty: a plaintext port."""
        self.authority = authority
        """The CA that signs workload certificates (``POST /v1/certificates``); None: this
        control plane signs none."""
        self.workload_cert_ttl = workload_cert_ttl
        """The longest lifetime of a workload certificate (``--workload-cert-ttl``)."""
        self.workload_token_key = workload_token_key
        """Signs and checks workload tokens (:mod:`.workload_tokens`); None: only the admin
        token is accepted."""
        self.issued = IssuedCertificates(lambda node_id: node_id in self.cache.nodes)
        """The last certificate issued to each proxy (``tsunagi proxy-config secret``)."""
        self.max_body_size = max_body_size
        self.max_connections_per_client = max_connections_per_client
        self.idle_timeout = idle_timeout
        self._unprivileged = unprivileged_port_start()  # the host's; gateways bind here
        self.body_timeout = body_timeout
        self.max_wait_timeout = max_wait_timeout
        self.replicas: Replicas | None = None
        """This replica and its peers on an etcd store (set by the control plane); None:
        it is alone, and status and waits are its own proxies'."""
        self.views: MetricsViews | None = None
        """Where ``/v1/graph`` and ``/v1/metrics/series`` get their numbers (set by the
        control plane: its own scraper's store, or Prometheus)."""
        self.metrics = metrics if metrics is not None else ControlPlaneMetrics()
        self.address = ""
        """``host:port`` this API listens on, once :meth:`serve` bound it."""
        self.jwks = jwks
        """What the JWKS fetcher knows of each source (:meth:`.JwksFetcher.states`), read
        when RequestAuthentications are listed or applied; None: nothing is fetched."""
        self.spec = openapi.build_spec(
            openapi.Limits(
                max_body_size=max_body_size,
                max_connections_per_client=max_connections_per_client,
                idle_timeout=idle_timeout,
                body_timeout=body_timeout,
                max_wait_timeout=max_wait_timeout,
            )
        )

    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every error in the JSON shape, aiohttp's own (404, 405, 413…) included."""
        try:
            return await handler(request)
        except ApiError as e:
            response = _error(e.status, e.message, e.errors)
            if e.close:
                response.force_close()
            return response
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return self._http_error(request, e)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except StoreLimit as e:  # the request is larger than the store takes
            return _error(413, str(e))
        except StoreError as e:  # etcd unreachable, or electing a leader
            log.warning("%s %s: %s", request.method, request.path, e)
            message = str(e)
            if "try again" not in message and "tsunagi get" not in message:
                message += (
                    "; the store is unavailable: try again in a moment, and if it lasts, "
                    "check that etcd's members are up and reachable from the control plane"
                )
            return _error(503, message)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return _error(500, "internal error in the control plane; its log has the details")

    def _http_error(self, request: web.Request, e: web.HTTPException) -> web.Response:
        if isinstance(e, web.HTTPNotFound):
            message = (
                f"no such endpoint: {request.method} {request.path} "
                "(GET /v1/openapi.json describes the API)"
            )
        elif isinstance(e, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(e.allowed_methods))
            message = f"{request.method} is not allowed on {request.path}; use {allowed}"
        else:
            message = e.text or e.reason
        response = _error(e.status, message)
        if "Allow" in e.headers:
            response.headers["Allow"] = e.headers["Allow"]
        return response

    def _too_large(self, size: int | None) -> str:
        limit = self.max_body_size
        got = f"of {size} bytes " if size is not None else ""
        return (
            f"request body {got}is over the limit of {limit} bytes ({limit / MIB:g} MiB): "
            "split the YAML into several files and apply them one at a time, or start "
            "`tsunagi up` with a larger --api-max-body-mib"
        )

    @web.middleware
    async def auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            response = _error(
                401,
                "missing token: pass --token, set TSUNAGI_TOKEN, or use the "
                "state directory that `tsunagi up` wrote",
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="tsunagi"'
            return response
        caller = self._caller(given.strip())
        if not isinstance(caller, Caller):
            response = _error(
                401,
                caller
                or "unknown token: it is neither this control plane's admin token nor a "
                "workload token it made; pass the right --token or --state-dir",
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="tsunagi", error="invalid_token"'
            return response
        resource = request.match_info.route.resource
        # An unknown path is left to the router (404), whoever asks.
        if resource is not None and not caller.may_call(request.method, resource.canonical):
            return _error(403, caller.refusal(f"{request.method} {resource.canonical}"))
        request[CALLER] = caller
        return await handler(request)

    def _caller(self, token: str) -> Caller | str | None:
        """Who holds ``token``: a :class:`Caller`, why a workload token of ours is no longer
        good (expired), or None for a token this control plane does not know."""
        if hmac.compare_digest(token.encode(), self.token.encode()):
            return Caller()
        key = self.workload_token_key
        if key is None or not workload_tokens.is_workload_token(token):
            return None
        try:
            return Caller(workload_tokens.verify(key, token, time.time()))
        except workload_tokens.Expired as e:
            claims = e.claims
            return (
                f"{e}: make a new one with `tsunagi token create --namespace "
                f"{claims.namespace} --service-account {claims.service_account}`"
            )
        except workload_tokens.TokenError:
            return None

    def app(self) -> web.Application:
        """The routes of :data:`~tsunagi.controlplane.openapi.ROUTES`, nothing else."""
        app = web.Application(
            middlewares=[self.errors, self.auth], client_max_size=self.max_body_size
        )
        for route in ROUTES:
            app.router.add_route(route.method, route.path, getattr(self, route.handler))
        return app

    async def serve(self, host: str, port: int) -> tuple[web.AppRunner, int]:
        """Listen on ``host:port`` (0: any free port) with the connection limits; return the
        runner (``await runner.cleanup()`` to stop) and the port."""
        # A request line up to 64 KiB reaches the routes, so an over-long query value gets the
        # API's own JSON 400 naming the parameter, not aiohttp's plain-text one for the line.
        runner = web.AppRunner(
            self.app(),
            access_log=None,
            keepalive_timeout=self.idle_timeout,
            max_line_size=MAX_REQUEST_LINE,
        )
        await runner.setup()
        try:
            await LimitedSite(runner, host, port, self.max_connections_per_client).start()
        except BaseException:
            await runner.cleanup()
            raise
        bound = runner.addresses[0][1] if runner.addresses else port
        self.address = host_port(host, bound)
        return runner, bound

    async def _read_body(self, request: web.Request) -> bytes:
        size = request.content_length
        if size is not None and size > self.max_body_size:
            raise ApiError(413, self._too_large(size), close=True)
        try:
            async with asyncio.timeout(self.body_timeout):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, self._too_large(None), close=True) from None
        except TimeoutError:
            raise ApiError(
                408, f"the request body did not arrive within {self.body_timeout:g}s", close=True
            ) from None

    async def _model(self, request: web.Request, model: type[M]) -> M:
        """The JSON body, checked against ``model`` (400 naming every problem)."""
        raw = await self._read_body(request)
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise ApiError(400, "request body must be JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "request body must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as e:
            problems = _problems(e, "body", model)
            raise ApiError(400, f"invalid request body: {problems[0]}", problems) from None

    def _query(self, request: web.Request, model: type[M]) -> M:
        try:
            return model.model_validate(dict(request.query))
        except ValidationError as e:
            problems = _problems(e, "query parameter", model)
            raise ApiError(400, f"invalid query: {problems[0]}", problems) from None

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "revision": self.store.contents().revision})

    async def bootstrap(self, request: web.Request) -> web.Response:
        host, port = self.xds_address
        if host in ("", "0.0.0.0", "::"):
            # Listening everywhere: the xDS port is on the address this agent reached us at.
            sockname = request.transport.get_extra_info("sockname") if request.transport else None
            host = str(sockname[0]) if sockname else "127.0.0.1"
        xds: dict[str, Any] = {"host": host, "port": port}
        reply: dict[str, Any] = {"xds": xds}
        if self.replicas is not None:
            reply["xdsReplicas"] = await self._xds_replicas(host, port)
        if self.xds_identity and self.authority is not None:
            # What a proxy needs to reach xDS over mutual TLS: whom to expect there (the
            # DNS SAN it requires; the SPIFFE ID for information), and the bundle its
            # certificate and the server's chain up to.
            xds["identity"] = self.xds_identity
            xds["serverName"] = xds_server_name(self.authority.trust_domain)
        if self.authority is not None:
            reply["trust"] = {
                "trustDomain": self.authority.trust_domain,
                "rootCertificates": self.authority.root_pem.decode(),
            }
        return web.json_response(reply)

    async def _xds_replicas(self, host: str, port: int) -> list[dict[str, Any]]:
        """Every live replica's xDS address, this one's first. A replica listening on every
        interface is left out (which of its addresses a proxy elsewhere reaches is unknown);
        without etcd, this one's alone."""
        assert self.replicas is not None
        addresses = [{"host": host, "port": port}]
        try:
            peers = await self.replicas.peers()
        except StoreError as e:
            log.warning("bootstrap names this replica's xDS port only: %s", e)
            return addresses
        for peer in peers:
            if peer.xds_host not in ("", "0.0.0.0", "::"):
                addresses.append({"host": peer.xds_host, "port": peer.xds_port})
        return addresses

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.spec)

    async def certificates(self, request: web.Request) -> web.Response:
        """Sign a workload's CSR for the identity its token may obtain."""
        self.metrics.csr_received()
        body = await self._model(request, CertificateRequest)
        caller = request[CALLER]
        if self.authority is None:
            raise ApiError(400, "this control plane has no certificate authority")
        wanted = spiffe_id(self.authority.trust_domain, body.namespace, body.serviceAccount)
        if wanted == self.xds_identity:
            # Proxies trust the xDS server by this identity: whoever held it could serve
            # them any config. Only the control plane itself holds it, admin or not.
            raise ApiError(
                403,
                f"{wanted} is the control plane's own identity (proxies trust xDS by it); "
                "no token may obtain it: run the workload under another service account",
            )
        if not caller.may_be(body.namespace, body.serviceAccount):
            assert caller.workload is not None
            own = spiffe_id(
                self.authority.trust_domain,
                caller.workload.namespace,
                caller.workload.service_account,
            )
            raise ApiError(
                403,
                f"{caller.describe()} may not obtain {wanted}; it may obtain only {own} "
                "(make a token for the other identity with `tsunagi token create`)",
            )
        if body.gateway and not caller.may_run_gateway:
            # A gateway's certificate gets its credentials' private keys over xDS.
            raise ApiError(
                403,
                f"{caller.describe()} may not obtain a gateway's certificate (its proxy "
                "receives private keys): make its token with `tsunagi token create "
                f"--namespace {body.namespace} --service-account {body.serviceAccount} "
                "--gateway`",
            )
        if body.proxy and not _proxy_of(body.proxy, body.namespace):
            raise ApiError(
                400,
                f"body proxy: {body.proxy!r} is not a proxy id of namespace "
                f"{body.namespace!r}: it must be NAME.{body.namespace}",
            )
        ttl = self.workload_cert_ttl
        if body.ttl:
            ttl = min(ttl, datetime.timedelta(seconds=parse_duration(body.ttl)))
        now = datetime.datetime.now(datetime.UTC)
        try:
            # In a thread: checking an RSA CSR and signing take a few milliseconds each.
            signed = await asyncio.to_thread(
                self.authority.sign_csr, body.csr.encode(), wanted, ttl, now, body.gateway
            )
        except CsrRejected as e:
            raise ApiError(400, f"body csr: {e}") from None
        if body.proxy:
            self.issued.record(body.proxy, IssuedRecord(signed.chain, signed.root))
        self.metrics.certificate_issued()
        log.debug("signed %s, serial %x, until %s", wanted, signed.serial, signed.not_after)
        reply = certificate_reply(signed)
        if caller.workload is not None and self.workload_token_key is not None:
            # A fresh token for the same identity, so a running sidecar outlives the token
            # it started with; the admin token is never replaced.
            expires = workload_tokens.renewed_expiry(
                signed.not_after.timestamp(), ttl.total_seconds()
            )
            # The caller's own claims (identity and all), later: never more than it had.
            claims = dataclasses.replace(caller.workload, expires=expires)
            reply["token"] = workload_tokens.create(self.workload_token_key, claims)
            reply["tokenExpires"] = int(expires)
        return web.json_response(reply)

    async def tokens(self, request: web.Request) -> web.Response:
        """A workload token (the admin's alone: a workload token may not call this)."""
        body = await self._model(request, TokenRequest)
        if self.workload_token_key is None:
            raise ApiError(400, "this control plane makes no workload tokens")
        if self.authority is None:
            raise ApiError(400, "this control plane has no certificate authority")
        seconds = parse_duration(body.ttl) if body.ttl else workload_tokens.DEFAULT_TTL
        if seconds > workload_tokens.MAX_TTL:
            raise ApiError(
                400,
                f"body ttl: {body.ttl} is longer than the longest token lifetime, "
                f"{workload_tokens.MAX_TTL / 86400:.0f} days: ask for less (a running "
                "sidecar renews its token by itself)",
            )
        claims = workload_tokens.WorkloadClaims(
            body.namespace, body.serviceAccount, time.time() + seconds, gateway=body.gateway
        )
        trust_domain = self.authority.trust_domain
        return web.json_response(
            {
                "token": workload_tokens.create(self.workload_token_key, claims),
                "namespace": claims.namespace,
                "serviceAccount": claims.service_account,
                "spiffeId": spiffe_id(trust_domain, claims.namespace, claims.service_account),
                "expires": int(claims.expires),
                "gateway": claims.gateway,
            }
        )

    async def apply(self, request: web.Request) -> web.Response:
        body = await self._model(request, ApplyRequest)
        filename = body.filename or "<stdin>"
        resources = await _load(body.text, filename, "applied")
        contents = self.store.contents()
        results = []
        puts = []
        dropped: list[str] = []
        for r in resources:
            current = contents.records.get(r.key)
            doc = dict(r.document)
            if r.kind == "Secret" and LAST_APPLIED in r.annotations:
                doc = without_last_applied(doc)  # it holds the whole Secret, keys and all
                dropped.append(
                    f"Secret {r.namespace}/{r.name}: metadata.annotations[{LAST_APPLIED}] "
                    "was dropped: kubectl keeps a copy of the whole Secret there, private "
                    "key included, and Tsunagi stores no such copy"
                )
            if current is None:
                action = "created"
            elif current.document == doc:
                action = "unchanged"
            else:
                action = "configured"
            results.append(
                {"kind": r.kind, "namespace": r.namespace, "name": r.name, "action": action}
            )
            if action != "unchanged":
                puts.append((r.key, doc))
        warnings = dropped + self._warnings(resources)
        # Only what the fetcher knows already: apply never waits for the network.
        fetching, notes = jwks_status.apply_messages(resources, self.jwks() if self.jwks else {})
        warnings += fetching
        revision = contents.revision
        if puts and not body.dry_run:
            revision = await self.store.commit(puts)
            for item in results:
                if item["action"] != "unchanged":
                    event = "add" if item["action"] == "created" else "update"
                    self.metrics.config_event(item["kind"], event)
        return web.json_response(
            {
                "revision": revision,
                "results": results,
                "warnings": warnings,
                "notes": notes,
                "dry_run": body.dry_run,
            }
        )

    def _warnings(self, applied: list[Resource]) -> list[str]:
        world: World = self.pusher.world
        keys = {r.key for r in applied}
        others = [r for r in world.resources if r.key not in keys]
        candidate = World.build(
            world.revision,
            [*others, *applied],
            self.registry.service_instances(),
            mesh_security=world.mesh_security,
        )
        return self._problems(candidate, applied, self.registry.gateways())

    def _workloads(self) -> Iterator[tuple[str, Mapping[str, str]]]:
        """Registered workloads as ``(namespace, labels)``, read from the registry only when
        walked (the CUSTOM check walks them only for an applied CUSTOM policy)."""
        for inst in self.registry.instances():
            yield inst.namespace, inst.labels

    def _problems(
        self, world: World, resources: list[Resource], gateways: list[Instance]
    ) -> list[str]:
        """What ``apply`` warns of in ``resources``, judged against ``world`` and the
        registered ``gateways`` (``tsunagi gateway``: the labels Gateways select, the ports
        they bind, the namespaces whose Secrets they read)."""
        return (
            undefined_subsets(world, resources)
            + delegation_problems(world, resources)
            + passthrough_without_dns(world, resources)
            + telemetry_conflicts(world, resources)
            + gateway_problems(world, resources, [g.labels for g in gateways])
            + privileged_port_problems(resources, running_gateways(gateways), self._unprivileged)
            + credential_problems(world, resources, [(g.namespace, g.labels) for g in gateways])
            + rule_credential_problems(world, resources, [g.namespace for g in gateways])
            + claim_routing_problems(world, resources, [(g.namespace, g.labels) for g in gateways])
            + tls_file_problems(resources)
            + principal_problems(
                world,
                resources,
                self.registry.instances(),
                [Node.from_metadata(e.id, e.metadata or {}) for e in self.cache.nodes.values()],
            )
            + mtls_problems(world, resources)
            + custom_authz_problems(world, resources, self._workloads())
            + not_yet_enforced(resources)
        )

    async def delete(self, request: web.Request) -> web.Response:
        body = await self._model(request, DeleteRequest)
        keys: list[Key] = []
        if body.text is not None:
            filename = body.filename or "<stdin>"
            keys = [r.key for r in await _load(body.text, filename, "deleted")]
        else:
            assert body.kind is not None and body.name is not None  # the model checks
            kind = resolve_kind(body.kind)
            if kind is None:
                return _error(400, f"unknown kind {body.kind!r}; try one of: " + ", ".join(KINDS))
            keys = [(kind, body.namespace or "default", body.name)]
        contents = self.store.contents()
        missing = [k for k in keys if k not in contents.records]
        if missing:
            return _error(
                404,
                "not found; nothing was deleted",
                [f"{k[0]} {k[1]}/{k[2]} not found" for k in missing],
            )
        revision = await self.store.commit([], keys)
        for key in keys:
            self.metrics.config_event(key[0], "delete")
        return web.json_response(
            {
                "revision": revision,
                "results": [
                    {"kind": k[0], "namespace": k[1], "name": k[2], "action": "deleted"}
                    for k in keys
                ],
            }
        )

    async def list_resources(self, request: web.Request) -> web.Response:
        q = self._query(request, ResourcesQuery)
        kind = None
        if q.kind:
            kind = resolve_kind(q.kind)
            if kind is None:
                return _error(
                    400,
                    f"unknown kind {q.kind!r}; try one of: " + ", ".join([*KINDS, "workloads"]),
                )
        ns, name = q.namespace, q.name
        items = [
            _record_json(key, rec, self.pusher.errors.by_resource.get(key, ()))
            for key, rec in sorted(self.store.contents().records.items())
            if (kind is None or key[0] == kind)
            and (not ns or key[1] == ns)
            and (not name or key[2] == name)
        ]
        if name and not items:
            return _error(404, f"{kind or 'resource'} {ns or '*'}/{name} not found")
        if self.jwks is not None:
            states = self.jwks()
            for item in items:
                if item["kind"] == "RequestAuthentication":
                    _add_status(item, jwks_status.document_status(item["document"], states))
        return web.json_response({"revision": self.store.contents().revision, "items": items})

    async def register(self, request: web.Request) -> web.Response:
        body = await self._model(request, InstanceRequest)
        try:
            inst = Instance.from_document(body.model_dump())
        except InvalidInstance as e:
            return _error(400, f"invalid instance: {e}")
        caller = request[CALLER]
        if not caller.may_be(inst.namespace, inst.account):
            raise ApiError(
                403,
                caller.refusal(
                    f"registering instance {inst.namespace}/{inst.name} (service account "
                    f"{inst.account!r})"
                ),
            )
        # Nor may it take over a name another identity registered.
        self._check_own_instance(caller, inst.namespace, inst.name, "replacing")
        known = self.store.contents().records.get(inst.key)
        revision = await self.registry.register(inst)
        if known is None:
            self.metrics.registry_event(INSTANCE_KIND, "add")
        elif known.document != inst.to_document():
            self.metrics.registry_event(INSTANCE_KIND, "update")
        reply: dict[str, Any] = {"revision": revision, "ttl": self.registry.ttl}
        disagreement = protocol_disagreement(inst, self.registry.peer_protocols(inst))
        if disagreement is not None:
            log.warning("%s", disagreement)
            reply["warnings"] = [disagreement]
        return web.json_response(reply)

    async def resolve(self, request: web.Request) -> web.Response:
        """The workload metadata of registered instances at the addresses asked about: a
        sidecar's agent names its requests' destinations from the endpoint Envoy picked."""
        body = await self._model(request, ResolveRequest)
        wanted = set(body.addresses)
        found = {}
        for inst in self.registry.instances():
            address = host_port(inst.address, inst.target_port)
            if address in wanted:
                found[address] = workload_metadata(inst.labels, inst.service, inst.namespace)
        return web.json_response({"workloads": found})

    def _check_own_instance(self, caller: Caller, ns: str, name: str, verb: str) -> None:
        """403 unless ``caller`` may act on instance ``ns/name``: a workload token only on
        instances of its namespace and service account (or on none registered yet)."""
        w = caller.workload
        if w is None:
            return
        record = self.store.contents().records.get((INSTANCE_KIND, ns, name))
        account = w.service_account
        if record is not None:
            try:
                account = Instance.from_document(record.document).account
            except InvalidInstance:
                account = ""
        if ns != w.namespace or account != w.service_account:
            raise ApiError(403, caller.refusal(f"{verb} instance {ns}/{name}"))

    async def heartbeat(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        self._check_own_instance(request[CALLER], ns, name, "heartbeating")
        if not await self.registry.heartbeat(ns, name):
            return _error(404, f"instance {ns}/{name} is not registered; register again")
        return web.json_response({"ok": True})

    async def deregister(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        self._check_own_instance(request[CALLER], ns, name, "deregistering")
        if not await self.registry.deregister(ns, name):
            message = f"instance {ns}/{name} is not registered"
            # With the revision: an agent whose first DELETE went unanswered (and may have
            # landed) gets this from the next replica, and waits for proxies to catch up.
            return web.json_response(
                {"error": message, "errors": [message], "revision": self.store.contents().revision},
                status=404,
            )
        self.metrics.registry_event(INSTANCE_KIND, "delete")
        return web.json_response({"revision": self.store.contents().revision})

    async def proxies(self, request: web.Request) -> web.Response:
        q = self._query(request, ProxiesQuery)
        statuses, reports = await self.proxy_list(local=q.local)
        if reports is None:
            return web.json_response({"proxies": statuses})
        return web.json_response({"proxies": statuses, "replicas": reports})

    async def proxy_list(
        self, local: bool = False
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """Every connected proxy's sync state and mTLS modes, as ``tsunagi proxy-status``
        and the dashboard list them: this replica's, and unless ``local``, every live
        peer's too (with each peer's report, ``None`` without replicas)."""
        statuses = proxy_statuses(self.cache, self.pusher)
        world: World = self.pusher.world
        for status in statuses:  # each inbound port's PeerAuthentication mode
            entry = self.cache.nodes.get(status["id"])
            try:
                node = Node.from_metadata(entry.id, entry.metadata or {}) if entry else None
            except (ValueError, TypeError, KeyError, AttributeError):
                node = None  # metadata push could not read either: its status says so
            if node is not None:
                status["mtls"] = mtls_summary(mtls_modes(world, node))
        if self.replicas is None or local:
            return statuses, None
        return await proxies_everywhere(self.replicas, statuses)

    async def proxy_secrets(self, request: web.Request) -> web.Response:
        """The certificates one proxy holds (``tsunagi proxy-config secret``)."""
        q = self._query(request, ProxySecretsQuery)
        name = request.match_info["proxy"]
        nodes = self.cache.nodes
        # As proxy-status names it (NAME.NAMESPACE), or NAME with its namespace apart
        entry = nodes.get(name) or nodes.get(f"{name}.{q.namespace or 'default'}")
        if entry is None and self.replicas is not None and not q.local:
            # Connected to another replica, maybe: that one holds what it sent and ACKed.
            found, doubts = await secrets_everywhere(self.replicas, name, q.namespace)
            if found is not None:
                return web.json_response(found)
            where = f"{name}.{q.namespace}" if q.namespace else name
            message = (
                f"no proxy {quote(where)} is connected to this replica or any other; give a "
                "NAME that `tsunagi proxy-status` lists"
            )
            raise ApiError(404, message, [message, *doubts])
        if entry is None:
            raise ApiError(404, _unknown_proxy(name, q.namespace, sorted(nodes)))
        now = datetime.datetime.now(datetime.UTC)
        reply = proxy_secrets(entry, now, self.issued.get(entry.id))
        if self.replicas is not None:
            reply["replica"] = self.replicas.me.name  # as proxy-status names it
        return web.json_response(reply)

    async def metrics_text(self, request: web.Request) -> web.Response:
        """istiod-style ``pilot_*`` metrics, in Prometheus' text format."""
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def prometheus_targets(self, request: web.Request) -> web.Response:
        """Prometheus HTTP service discovery: this control plane and every sidecar that
        serves metrics."""
        return web.json_response(prometheus_targets(self.registry.instances(), self.address))

    async def wait(self, request: web.Request) -> web.Response:
        q = self._query(request, WaitQuery)
        if q.timeout > self.max_wait_timeout:
            raise ApiError(
                400,
                f"query parameter timeout: at most {self.max_wait_timeout:g} seconds; "
                "wait again if you need longer",
            )
        since = q.since or time.time()
        if self.replicas is not None and not q.local:
            waiting = self._wait_everywhere(self.replicas, q.revision, q.timeout)
        else:
            waiting = self._wait_here_only(q.revision, q.timeout)
        task = asyncio.ensure_future(waiting)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            task.cancel()  # when the client went first
        if not task.done() or task.cancelled():
            raise ApiError(499, "the client went away")
        reply = task.result()
        # Never negative nor infinite, whatever ``since`` the caller sent.
        reply["elapsed_ms"] = max(0.0, time.time() - since) * 1000
        return web.json_response(reply, status=200 if reply["complete"] else 504)

    async def _wait_here(self, revision: int, timeout: float) -> tuple[bool, list[dict[str, Any]]]:
        """This replica's part of a wait: ``(complete, its proxies' statuses)``."""
        try:
            async with asyncio.timeout(timeout):
                result = await wait_for_acks(self.cache, self.pusher, revision)
            return True, list(result["proxies"])
        except TimeoutError:
            return False, proxy_statuses(self.cache, self.pusher)

    async def _wait_here_only(self, revision: int, timeout: float) -> dict[str, Any]:
        """``/v1/wait``'s answer for this replica's proxies alone."""
        complete, proxies = await self._wait_here(revision, timeout)
        return {"complete": complete, "proxies": proxies}

    async def _wait_everywhere(
        self, replicas: Replicas, revision: int, timeout: float
    ) -> dict[str, Any]:
        """``/v1/wait``'s answer for the proxies of every live replica (:mod:`.fanout`)."""
        complete, proxies, reports = await wait_everywhere(
            replicas, lambda t: self._wait_here(revision, t), revision, timeout
        )
        return {"complete": complete, "proxies": proxies, "replicas": reports}

    def _metrics(self) -> MetricsViews:
        if self.views is None:
            raise ApiError(502, "this control plane keeps no metrics")
        return self.views

    async def graph(self, request: web.Request) -> web.Response:
        q = self._query(request, GraphQuery)
        try:
            return web.json_response(await graph_view(self._metrics(), q.window))
        except PrometheusError as e:
            raise ApiError(502, str(e)) from None

    async def metrics_series(self, request: web.Request) -> web.Response:
        q = self._query(request, SeriesQuery)
        try:
            doc = await panel(self._metrics(), q.kind, q.namespace, q.name, q.window, q.step)
        except PrometheusError as e:
            raise ApiError(502, str(e)) from None
        return web.json_response(doc)

    def config_view(self) -> list[dict[str, Any]]:
        """Every stored resource with its warnings (as ``apply`` gives them, against the
        current config) and translation errors: the dashboard's config view."""
        world: World = self.pusher.world
        errors = self.pusher.errors.by_resource
        gateways = self.registry.gateways()
        records = self.store.contents().records
        out = []
        for r in sorted(world.resources, key=lambda r: r.key):
            warnings = self._problems(world, [r], gateways)
            record = records.get(r.key)
            out.append(
                {
                    "kind": r.kind,
                    "namespace": r.namespace,
                    "name": r.name,
                    "revision": record.revision if record is not None else 0,
                    "warnings": warnings,
                    "errors": list(errors.get(r.key, ())),
                }
            )
        return out


def _proxy_of(node_id: str, namespace: str) -> bool:
    """Whether ``node_id`` is a proxy id of ``namespace`` (``NAME.NAMESPACE``)."""
    name, dot, ns = node_id.rpartition(".")
    return bool(name) and dot == "." and ns == namespace


def _unknown_proxy(name: str, namespace: str, connected: list[str], shown: int = 10) -> str:
    """Says which proxies there are, as ``tsunagi proxy-status`` names them."""
    where = f"{name}.{namespace}" if namespace else name
    if not connected:
        return f"no proxy {quote(where)} is connected: no proxy is connected at all"
    names = ", ".join(connected[:shown])
    more = f" and {len(connected) - shown} more" if len(connected) > shown else ""
    return (
        f"no proxy {quote(where)} is connected; give a NAME that `tsunagi proxy-status` "
        f"lists: {names}{more}"
    )


async def _load(text: str, filename: str, verb: str) -> list[Resource]:
    """Parse and validate YAML documents (in a thread: a big file must not stall the loop);
    400 naming every problem, or when there is nothing in it."""
    filename = _shown_filename(filename)
    try:
        resources = await asyncio.to_thread(load_documents, text, filename)
    except ValidationFailed as e:
        raise ApiError(
            400,
            f"{len(e.errors)} error(s) in {filename}; nothing was {verb}",
            [str(x) for x in e.errors],
        ) from None
    if not resources:
        raise ApiError(400, f"{filename}: no resources found; nothing was {verb}")
    return resources


def _shown_filename(filename: str) -> str:
    """The client's ``filename`` as error messages name it: as sent when it is short and
    printable, else quoted (escaped and cut), so that each message stays one short line."""
    quoted = quote(filename)
    return filename if quoted == f'"{filename}"' else quoted


async def _disconnected(request: web.Request, every: float = 0.5) -> None:
    """Return once the client has hung up, so a long wait it abandoned does not linger."""
    while request.transport is not None and not request.transport.is_closing():
        await asyncio.sleep(every)

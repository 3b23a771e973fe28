"""``tsunagi up``: wires store, registry, push path, xDS server and HTTP API into one process."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization

from tsunagi.api.mesh_config import MeshConfig
from tsunagi.ca.authority import Authority
from tsunagi.ca.keystore import plugged_in, self_signed
from tsunagi.controlplane import workload_tokens
from tsunagi.controlplane.auth import TOKEN_FILE, ensure_token, read_token_file, use_token
from tsunagi.controlplane.dashboard import start as start_dashboard
from tsunagi.controlplane.heap import raise_malloc_thresholds
from tsunagi.controlplane.http_api import Api
from tsunagi.controlplane.http_logs import quiet_malformed_requests
from tsunagi.controlplane.jwks import JwksFetcher, retry_from_env
from tsunagi.controlplane.lock import StateDirLock
from tsunagi.controlplane.metrics import ControlPlaneMetrics
from tsunagi.controlplane.prometheus import host_port, write_config
from tsunagi.controlplane.push import Debounce, Pusher
from tsunagi.controlplane.xds_tls import (
    ServingCertificate,
    control_plane_identity,
    serving_hosts,
)
from tsunagi.mesh.ext_authz import undefined_providers
from tsunagi.mesh.outbound_policy import ALLOW_ANY, Mode
from tsunagi.mesh.security import DEFAULT_ROOT_NAMESPACE, MeshSecurity
from tsunagi.mesh.telemetry import DEFAULT_TRACE_SAMPLING, MeshTelemetry
from tsunagi.registry import Registry
from tsunagi.spiffe import DEFAULT_TRUST_DOMAIN
from tsunagi.store import Store, open_store
from tsunagi.telemetry.collector import CollectorSettings, TraceCollector
from tsunagi.xds.cache import SnapshotCache
from tsunagi.xds.server import start_server

if TYPE_CHECKING:  # loads etcd's stubs: imported only with an etcd store
    from tsunagi.controlplane.replicas import Replicas
    from tsunagi.store.etcd.tls import EtcdTls

log = logging.getLogger("tsunagi")

DEFAULT_WORKLOAD_CERT_TTL = datetime.timedelta(hours=24)
"""Istio's default workload certificate lifetime."""


@dataclass(frozen=True)
class Settings:
    """Everything ``tsunagi up`` can be told."""

    state_dir: Path
    store: str = ""
    host: str = "127.0.0.1"
    xds_port: int = 15012
    """Istio's port for xDS over mutual TLS (15010 is its plaintext one; there is none here)."""
    api_port: int = 15014
    instance_ttl: float = 15.0
    debounce: Debounce = field(default_factory=Debounce)
    """How long a push waits for a burst of changes to settle."""
    api_max_body: int = 16 * 1024 * 1024
    """Largest API request body, in bytes (an apply's YAML)."""
    api_connections_per_client: int = 256
    """Concurrent API connections one client address may hold."""
    trace_sampling: float = DEFAULT_TRACE_SAMPLING
    """Percent of requests sidecars trace, unless a Telemetry resource says otherwise."""
    access_log: str = ""
    """``TEXT`` or ``JSON``: every sidecar logs every request; empty: off."""
    zipkin_port: int = 9411
    """The trace collector's Zipkin v2 API (0: the OS chooses)."""
    otlp_port: int = 4317
    """The trace collector's OTLP/gRPC ingest (0: the OS chooses)."""
    trace_max_spans: int = 10_000
    """How many of the newest spans the collector keeps."""
    trace_export: str = ""
    """Forward every span to this Zipkin URL or ``otlp://HOST:PORT`` ("" : nowhere)."""
    dashboard_port: int = 20001
    """The dashboard's web server (0: the OS chooses)."""
    scrape_interval: float = 5.0
    """Seconds between two scrapes of every sidecar's metrics, for the dashboard."""
    scrape_max_series: int = 20_000
    """Most series the dashboard's store keeps (4 bytes per series per tick kept)."""
    prometheus: str = ""
    """Compute the dashboard's views with PromQL against this Prometheus instead."""
    outbound_policy: Mode = ALLOW_ANY
    """What sidecars do with requests for hosts the mesh does not know: ``ALLOW_ANY`` (pass
    them through) or ``REGISTRY_ONLY`` (answer 502); a Sidecar resource overrides it."""
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    """The first part of every workload's SPIFFE ID."""
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    """Where mesh-wide PeerAuthentication and AuthorizationPolicy live."""
    ca_cert: Path | None = None
    """The operator's CA certificate (with ``ca_key``); None: the state directory's root."""
    ca_key: Path | None = None
    ca_chain: Path | None = None
    """The chain from ``ca_cert`` up to the root, when ``ca_cert`` is an intermediate."""
    workload_cert_ttl: datetime.timedelta = DEFAULT_WORKLOAD_CERT_TTL
    """The longest lifetime of a workload certificate (a CSR may ask for less)."""
    mesh_config: MeshConfig = field(default_factory=MeshConfig)
    """``--mesh-config``: the external authorizers CUSTOM AuthorizationPolicies name."""
    token_file: Path | None = None
    """``--token-file``: the admin token (replicas share one); None: the state directory's."""
    workload_token_key: Path | None = None
    """``--workload-token-key``: the key of workload tokens (replicas share one); None: the
    state directory's."""
    etcd_tls: EtcdTls | None = None
    """``--etcd-ca/--etcd-cert/--etcd-key``: TLS to an etcd ``store``; None: plaintext."""


def load_authority(settings: Settings) -> Authority:
    """The CA ``settings`` name: the operator's (``--ca-cert``/``--ca-key``), else the state
    directory's own root, made on first start. Raises
    :class:`~tsunagi.ca.keystore.CaFileError` (a ValueError) naming the file at fault."""
    now = datetime.datetime.now(datetime.UTC)
    if settings.ca_cert is not None and settings.ca_key is not None:
        authority = plugged_in(
            settings.ca_cert, settings.ca_key, settings.ca_chain, settings.trust_domain, now
        )
        where = str(settings.ca_cert)
    else:
        authority = self_signed(settings.state_dir, settings.trust_domain, now)
        where = str(settings.state_dir / "ca")
    log.info(
        "CA: %s (%s), expires %s; workload certificates spiffe://%s/..., %s each",
        authority.cert.subject.rfc4514_string(),
        where,
        authority.expires.strftime("%Y-%m-%d"),
        settings.trust_domain,
        settings.workload_cert_ttl,
    )
    return authority


async def _replicas(
    settings: Settings, store: Store, authority: Authority, token_key: bytes, token: str
) -> Replicas | None:
    """This replica's line to its peers when the store is etcd (None otherwise), checked:
    :class:`~tsunagi.controlplane.replicas.Mismatch` when a live peer's CA, workload-token
    key or admin token differs."""
    if not settings.store.startswith("etcd://"):
        return None
    from tsunagi.controlplane.replicas import Replicas
    from tsunagi.store.etcd import EtcdStore, parse_url

    assert isinstance(store, EtcdStore)
    _, prefix = parse_url(settings.store)
    root = authority.roots[-1].public_bytes(serialization.Encoding.DER)
    replicas = Replicas(store.client, prefix, root, token_key, token)
    await replicas.check()
    return replicas


async def _proxy_list(api: Api) -> list[dict[str, Any]]:
    """The dashboard's proxy list: every replica's, as ``tsunagi proxy-status`` has it."""
    statuses, _ = await api.proxy_list()
    return statuses


def dashboard_host(host: str) -> str:
    """Where the dashboard listens when the control plane listens on ``host``: there if it
    is loopback or every interface, else on 127.0.0.1 (it answers loopback clients only, so
    on a host's own address nobody could use it)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    return host if ip.is_loopback or ip.is_unspecified else "127.0.0.1"


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or cancellation).

    Raises :class:`~tsunagi.controlplane.lock.StateDirBusy` when another ``tsunagi up`` is
    using the state directory: one writer per database.
    """
    with StateDirLock(settings.state_dir):
        await _serve(settings, ready)


async def _serve(settings: Settings, ready: asyncio.Event | None) -> None:
    quiet_malformed_requests()
    raise_malloc_thresholds()  # before the first push allocates (see heap.py)
    if settings.token_file is not None:
        token = use_token(settings.state_dir, read_token_file(settings.token_file))
    else:
        token = ensure_token(settings.state_dir)
    # Before any port opens: a CA file that does not fit stops the start with its reason.
    authority = load_authority(settings)
    # Signs workload tokens (tsunagi token create); kept, so tokens outlive a restart. A
    # damaged key file stops the start here too (KeyFileError names it).
    if settings.workload_token_key is not None:
        token_key = workload_tokens.load_key(settings.workload_token_key)
    else:
        token_key = workload_tokens.ensure_key(settings.state_dir)
    token_file = settings.state_dir / TOKEN_FILE
    store = open_store(settings.store, settings.state_dir, settings.etcd_tls)
    await store.open()
    # Several replicas on one etcd: refuse to start, before any port opens, when a live
    # one signs with another CA or key (replicas.py).
    try:
        replicas = await _replicas(settings, store, authority, token_key, token)
    except BaseException:
        await store.close()
        raise
    registry = Registry(store, ttl=settings.instance_ttl)
    await registry.restore_leases()
    cache = SnapshotCache()
    # The trace collector starts first: sidecars are told its bound Zipkin port
    # (``traces.zipkin_port``); the dashboard reads ``traces.store``.
    traces = TraceCollector(
        CollectorSettings(
            host=settings.host,
            zipkin_port=settings.zipkin_port,
            otlp_port=settings.otlp_port,
            max_spans=settings.trace_max_spans,
            export=settings.trace_export,
        )
    )
    await traces.start()
    # Sidecars send spans to the collector's bound Zipkin port (a wildcard host is reached
    # on loopback).
    zipkin_host = "127.0.0.1" if settings.host in ("", "0.0.0.0", "::") else settings.host
    mesh_telemetry = MeshTelemetry(
        trace_sampling=settings.trace_sampling,
        access_log=settings.access_log,
        collector=(zipkin_host, traces.zipkin_port) if traces.zipkin_port else None,
    )
    mesh_security = MeshSecurity(
        settings.trust_domain, settings.root_namespace, settings.mesh_config
    )
    pusher = Pusher(
        store,
        cache,
        settings.debounce,
        mesh_telemetry,
        settings.outbound_policy,
        mesh_security=mesh_security,
    )
    # A restart with another --mesh-config may drop a provider stored policies still name:
    # their rules now deny (as istiod's do), so say which, once, where the operator looks.
    for line in undefined_providers(pusher.world):
        log.warning("%s", line)
    metrics = ControlPlaneMetrics(lambda: pusher.world)
    pusher.hooks = metrics
    metrics.ca_loaded(authority.roots[-1].not_valid_after_utc.timestamp())
    # The xDS port takes only mutual TLS: a proxy proves with its workload certificate who
    # it is, and only then gets config (gateways: Secrets). There is no plaintext port.
    xds_identity = control_plane_identity(settings.trust_domain, settings.root_namespace)
    serving = ServingCertificate(authority, xds_identity, serving_hosts(settings.host))
    grpc_server, xds_port = await start_server(
        cache,
        settings.host,
        settings.xds_port,
        observer=metrics,
        credentials=serving.credentials(),
        trust_domain=settings.trust_domain,
    )
    # RequestAuthentications' jwksUri: fetched here, pushed inline (proxies never reach them)
    jwks = JwksFetcher(store, pusher.use_jwks, retry=retry_from_env(), counted=metrics.jwks_fetched)
    api = Api(
        store,
        registry,
        pusher,
        cache,
        token,
        (settings.host, xds_port),
        max_body_size=settings.api_max_body,
        max_connections_per_client=settings.api_connections_per_client,
        metrics=metrics,
        xds_identity=xds_identity,
        authority=authority,
        workload_cert_ttl=settings.workload_cert_ttl,
        workload_token_key=token_key,
        jwks=jwks.states,
    )
    runner, api_port = await api.serve(settings.host, settings.api_port)
    if replicas is not None:
        await replicas.start(settings.host, api_port, xds_port)
        api.replicas = replicas
    (settings.state_dir / "server").write_text(f"http://{settings.host}:{api_port}\n")
    # Written once the API port is bound (it may have been 0): Prometheus needs the real one.
    prometheus_yml = write_config(
        settings.state_dir, f"http://{host_port(settings.host, api_port)}", token_file
    )
    log.info("Prometheus: prometheus --config.file %s", prometheus_yml)
    dashboard = await start_dashboard(
        state_dir=settings.state_dir,
        host=dashboard_host(settings.host),
        port=settings.dashboard_port,
        scrape_interval=settings.scrape_interval,
        max_series=settings.scrape_max_series,
        prometheus=settings.prometheus,
        token=token,
        api=api,
        registry=registry,
        proxies=lambda: _proxy_list(api),
        spans=traces.store,
    )
    contents = store.contents()
    log.info(
        "control plane up: API http://%s:%d, xDS %s:%d, %d resources at revision %d, state in %s",
        settings.host,
        api_port,
        settings.host,
        xds_port,
        len(contents.records),
        contents.revision,
        settings.state_dir,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    async def expire() -> None:
        while True:
            await asyncio.sleep(min(1.0, settings.instance_ttl / 3))
            # On etcd, the store removed them; each is reported by the replica its agent
            # heartbeated, once (Registry.expire says why).
            for key in await registry.expire():
                log.info("instance %s/%s missed its heartbeats; removed", key[1], key[2])
                metrics.registry_event(key[0], "delete")

    tasks = [asyncio.create_task(pusher.run()), asyncio.create_task(expire())]
    if replicas is not None:
        tasks.append(asyncio.create_task(replicas.run()))
    tasks.append(asyncio.create_task(jwks.run()))
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
        log.info("shutting down; proxies keep their last config until we are back")
    finally:
        for t in tasks:
            t.cancel()
        if replicas is not None:
            await replicas.stop()  # peers stop listing (and asking) this replica at once
        await dashboard.stop()
        await runner.cleanup()
        await grpc_server.stop(grace=0.5)
        await traces.stop()
        await store.close()

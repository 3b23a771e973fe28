"""``tsunagi up``: wires store, registry, push path, xDS server and HTTP API into one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

from tsunagi.controlplane.auth import TOKEN_FILE, ensure_ticket_key, ensure_token
from tsunagi.controlplane.dashboard import start as start_dashboard
from tsunagi.controlplane.http_api import Api
from tsunagi.controlplane.http_logs import quiet_malformed_requests
from tsunagi.controlplane.lock import StateDirLock
from tsunagi.controlplane.metrics import ControlPlaneMetrics
from tsunagi.controlplane.prometheus import host_port, write_config
from tsunagi.controlplane.push import Debounce, Pusher
from tsunagi.controlplane.status import proxy_statuses
from tsunagi.mesh.outbound_policy import ALLOW_ANY, Mode
from tsunagi.mesh.telemetry import DEFAULT_TRACE_SAMPLING, MeshTelemetry
from tsunagi.registry import Registry
from tsunagi.store import open_store
from tsunagi.telemetry.collector import CollectorSettings, TraceCollector
from tsunagi.xds.cache import SnapshotCache
from tsunagi.xds.server import start_server

log = logging.getLogger("tsunagi")


@dataclass(frozen=True)
class Settings:
    """Everything ``tsunagi up`` can be told."""

    state_dir: Path
    store: str = ""
    host: str = "127.0.0.1"
    xds_port: int = 15010
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


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or cancellation).

    Raises :class:`~tsunagi.controlplane.lock.StateDirBusy` when another ``tsunagi up`` is
    using the state directory: one writer per database.
    """
    with StateDirLock(settings.state_dir):
        await _serve(settings, ready)


async def _serve(settings: Settings, ready: asyncio.Event | None) -> None:
    quiet_malformed_requests()
    token = ensure_token(settings.state_dir)
    token_file = settings.state_dir / TOKEN_FILE
    store = open_store(settings.store, settings.state_dir)
    await store.open()
    registry = Registry(store, ttl=settings.instance_ttl)
    registry.restore_leases()
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
    pusher = Pusher(store, cache, settings.debounce, mesh_telemetry, settings.outbound_policy)
    metrics = ControlPlaneMetrics(lambda: pusher.world)
    pusher.hooks = metrics
    # Signs the tickets that let gateways receive Secrets (xds/tickets.py); kept in the state
    # directory, so tickets stay valid across a restart.
    ticket_key = ensure_ticket_key(settings.state_dir)
    grpc_server, xds_port = await start_server(
        cache, settings.host, settings.xds_port, observer=metrics, ticket_key=ticket_key
    )
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
        ticket_key=ticket_key,
    )
    runner, api_port = await api.serve(settings.host, settings.api_port)
    (settings.state_dir / "server").write_text(f"http://{settings.host}:{api_port}\n")
    # Written once the API port is bound (it may have been 0): Prometheus needs the real one.
    prometheus_yml = write_config(
        settings.state_dir, f"http://{host_port(settings.host, api_port)}", token_file
    )
    log.info("Prometheus: prometheus --config.file %s", prometheus_yml)
    dashboard = await start_dashboard(
        state_dir=settings.state_dir,
        host=settings.host,
        port=settings.dashboard_port,
        scrape_interval=settings.scrape_interval,
        max_series=settings.scrape_max_series,
        prometheus=settings.prometheus,
        token=token,
        api=api,
        registry=registry,
        proxies=lambda: proxy_statuses(cache, pusher),
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
            for key in await registry.expire():
                log.info("instance %s/%s missed its heartbeats; removed", key[1], key[2])
                metrics.registry_event(key[0], "delete")

    tasks = [asyncio.create_task(pusher.run()), asyncio.create_task(expire())]
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
        log.info("shutting down; proxies keep their last config until we are back")
    finally:
        for t in tasks:
            t.cancel()
        await dashboard.stop()
        await runner.cleanup()
        await grpc_server.stop(grace=0.5)
        await traces.stop()
        await store.close()

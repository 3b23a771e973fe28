"""``tsunagi up``: wires store, registry, push path, xDS server and HTTP API into one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

from tsunagi.controlplane.auth import ensure_token
from tsunagi.controlplane.http_api import Api
from tsunagi.controlplane.lock import StateDirLock
from tsunagi.controlplane.push import Debounce, Pusher
from tsunagi.registry import Registry
from tsunagi.store import open_store
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


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or cancellation).

    Raises :class:`~tsunagi.controlplane.lock.StateDirBusy` when another ``tsunagi up`` is
    using the state directory: one writer per database.
    """
    with StateDirLock(settings.state_dir):
        await _serve(settings, ready)


async def _serve(settings: Settings, ready: asyncio.Event | None) -> None:
    token = ensure_token(settings.state_dir)
    store = open_store(settings.store, settings.state_dir)
    await store.open()
    registry = Registry(store, ttl=settings.instance_ttl)
    registry.restore_leases()
    cache = SnapshotCache()
    pusher = Pusher(store, cache, settings.debounce)
    grpc_server, xds_port = await start_server(cache, settings.host, settings.xds_port)
    api = Api(
        store,
        registry,
        pusher,
        cache,
        token,
        (settings.host, xds_port),
        max_body_size=settings.api_max_body,
        max_connections_per_client=settings.api_connections_per_client,
    )
    runner, api_port = await api.serve(settings.host, settings.api_port)
    (settings.state_dir / "server").write_text(f"http://{settings.host}:{api_port}\n")
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

    tasks = [asyncio.create_task(pusher.run()), asyncio.create_task(expire())]
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
        log.info("shutting down; proxies keep their last config until we are back")
    finally:
        for t in tasks:
            t.cancel()
        await runner.cleanup()
        await grpc_server.stop(grace=0.5)
        await store.close()

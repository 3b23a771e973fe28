"""``tsunagi up``: wires store, registry, push path, xDS server and HTTP API into one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from tsunagi.controlplane.auth import ensure_token
from tsunagi.controlplane.http_api import Api
from tsunagi.controlplane.push import Pusher
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


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or cancellation)."""
    token = ensure_token(settings.state_dir)
    store = open_store(settings.store, settings.state_dir)
    await store.open()
    registry = Registry(store, ttl=settings.instance_ttl)
    registry.restore_leases()
    cache = SnapshotCache()
    pusher = Pusher(store, cache)
    grpc_server, xds_port = await start_server(cache, settings.host, settings.xds_port)
    api = Api(store, registry, pusher, cache, token, (settings.host, xds_port))
    runner = web.AppRunner(api.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.api_port)
    await site.start()
    api_port = runner.addresses[0][1] if runner.addresses else settings.api_port
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

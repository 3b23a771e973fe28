"""Wires the dashboard into ``tsunagi up``: the metrics source (the built-in scraper and
store, or ``--prometheus``), the dashboard server, and the ``dashboard`` file in the state
directory that ``tsunagi dashboard`` reads."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from tsunagi.controlplane.http_api import Api
from tsunagi.controlplane.prometheus import host_port, scraped
from tsunagi.proxy_contract import ISTIO_METRICS_PATH
from tsunagi.registry import Registry
from tsunagi.telemetry.promviews import PrometheusViews
from tsunagi.telemetry.scrape import Scraper, ScrapeThread, Target
from tsunagi.telemetry.series import SeriesStore
from tsunagi.telemetry.views import StoreViews
from tsunagi.ui.server import Dashboard, Sources

log = logging.getLogger("tsunagi.dashboard")

URL_FILE = "dashboard"
"""In the state directory: the dashboard's base URL (``tsunagi dashboard`` adds the token)."""

HOUR = 3600.0


def scrape_targets(registry: Registry) -> Iterator[Target]:
    """Every registered proxy that serves metrics, once per URL (:func:`scraped`)."""
    for inst, target in scraped(registry.instances()):
        yield Target(f"{inst.namespace}/{inst.name}", f"http://{target}{ISTIO_METRICS_PATH}")


@dataclass
class Running:
    """The dashboard's parts while ``tsunagi up`` runs."""

    port: int
    runner: web.AppRunner
    scraping: ScrapeThread | None
    store: SeriesStore | None

    async def stop(self) -> None:
        """Stop scraping and serving."""
        if self.scraping is not None:
            await self.scraping.stop()
        await self.runner.cleanup()
        if self.store is not None:
            self.store.close()


async def start(
    *,
    state_dir: Path,
    host: str,
    port: int,
    scrape_interval: float,
    prometheus: str,
    max_series: int = 20_000,
    token: str,
    api: Api,
    registry: Registry,
    proxies: Any,
    spans: Any,
) -> Running:
    """Start the metrics source and the dashboard server on ``host:port`` (0: any)."""
    scraping = None
    store = None
    if prometheus:
        views: Any = PrometheusViews(prometheus)
        log.info("dashboard metrics: queried from Prometheus at %s", prometheus)
    else:
        # One hour at the scrape resolution (at least two ticks).
        store = SeriesStore(capacity=max(2, int(HOUR / scrape_interval) + 1), max_series=max_series)
        views = StoreViews(store)
        # Off the loop that serves xDS: see tsunagi.telemetry.scrape.
        scraping = ScrapeThread(
            Scraper(store), lambda: list(scrape_targets(registry)), scrape_interval
        )
    api.views = views
    dashboard = Dashboard(
        token,
        Sources(views=views, config=api.config_view, proxies=proxies, spans=spans),
    )
    try:
        runner, bound = await dashboard.serve(host, port)
    except BaseException:
        if store is not None:
            store.close()
        raise
    if scraping is not None:
        scraping.start()
    url = f"http://{host_port(host, bound)}/"
    (state_dir / URL_FILE).write_text(url + "\n")
    log.info("dashboard on %s (open it with `tsunagi dashboard`)", url)
    return Running(bound, runner, scraping, store)

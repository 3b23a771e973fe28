"""The scraper off the control plane's loop: on its own thread, pages of any size read whole,
queries answered on the store's thread and reused until the store changes."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web
from benchmarks.scrape import page

from tsunagi.telemetry.scrape import Scraper, ScrapeThread, Target
from tsunagi.telemetry.series import SeriesStore
from tsunagi.telemetry.views import StoreViews

KEPT_LINES = 252
"""Of one benchmark page: 12 request counters and 12 x 20 duration buckets."""


async def _serve(scale: dict[str, int]) -> tuple[web.AppRunner, str]:
    async def metrics(request: web.Request) -> web.Response:
        scale["n"] += 1  # traffic between any two scrapes
        return web.Response(text=page(0, scale["n"]))

    app = web.Application()
    app.router.add_get("/stats/istio", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/stats/istio"


def test_a_page_larger_than_one_read_is_kept_whole() -> None:
    async def main() -> int:
        runner, url = await _serve({"n": 5})
        store = SeriesStore()
        scraper = Scraper(store)
        try:
            result = await scraper.scrape_once([Target("ns/a", url)])
        finally:
            await scraper.close()
            await runner.cleanup()
            store.close()
        assert result.failed == 0
        return result.samples

    assert len(page(0, 5)) > 200_000  # many socket reads
    assert asyncio.run(main()) == KEPT_LINES


def test_scraping_on_its_own_thread_and_cached_answers() -> None:
    scale = {"n": 1}
    seen: dict[str, Any] = {}

    async def main() -> None:
        runner, url = await _serve(scale)
        store = SeriesStore()
        home = threading.get_ident()
        listed_on: list[int] = []

        def targets() -> list[Target]:
            listed_on.append(threading.get_ident())
            return [Target("ns/a", url)]

        scraping = ScrapeThread(Scraper(store), targets, 0.05)
        views = StoreViews(store)
        try:
            scraping.start()
            for _ in range(400):  # a baseline scrape, then increases
                rows = await views.requests(60)
                if rows and sum(v for _, v in rows) > 0:
                    break
                await asyncio.sleep(0.05)
            await scraping.stop()
            seen["rows"] = len(rows)
            seen["targets listed on the home loop"] = set(listed_on) == {home}
            again = await views.requests(60)
            seen["reused while unchanged"] = again is await views.requests(60)
            await store.call(lambda: store.tick(store.now + 5))
            seen["recomputed after a change"] = await views.requests(60) is not again
        finally:
            await scraping.stop()
            await runner.cleanup()
            store.close()

    asyncio.run(main())
    assert seen == {
        "rows": 12,  # 2 reporters x 3 peers x 2 response codes
        "targets listed on the home loop": True,
        "reused while unchanged": True,
        "recomputed after a change": True,
    }

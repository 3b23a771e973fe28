"""The control plane's own scraper: every sidecar's ``/stats/istio``, the ``istio_*``
families the dashboard needs, into a :class:`~tsunagi.telemetry.series.SeriesStore`.

Cheap per sidecar: lines of other families are skipped by a prefix test before any parsing;
a line's series (name and labels) is parsed with ``prometheus_client.parser`` once and then
remembered by its text, so a steady sidecar costs one dict lookup and one ``float()`` per
kept line per scrape. Fetches run concurrently, at most ``concurrency`` at a time, each
within ``timeout`` seconds; a sidecar that fails is skipped until the next round.

Nothing runs on the control plane's event loop (which also serves xDS pushes):
:class:`ScrapeThread` gives the fetches their own thread and loop, and each page is parsed
and added on the store's own thread (:meth:`SeriesStore.call`, which also serializes the
dashboard's queries). A fetch keeps its concurrency slot until its page is stored, so at most
``concurrency`` pages are held in memory however slow the parsing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import parse_labels

from tsunagi.telemetry.ingest import CounterDeltas, Sample
from tsunagi.telemetry.schema import KEPT
from tsunagi.telemetry.series import Labels, SeriesStore

log = logging.getLogger("tsunagi.scrape")

METRICS_PATH = "/stats/prometheus"
"""Where Istio's agent (and ours) serves a sidecar's merged metrics."""

_PREFIXES = tuple(f"{name}{{" for name in KEPT)


@dataclass(frozen=True)
class Target:
    """One sidecar to scrape: ``key`` identifies it across scrapes (``namespace/name``)."""

    key: str
    url: str


@dataclass
class RoundResult:
    """What one :meth:`Scraper.scrape_once` did."""

    scraped: int = 0
    failed: int = 0
    samples: int = 0


def _labels(text: str) -> dict[str, str]:
    """``k="v",k2="v2"`` as a dict. Without a backslash no value can hold a quote, so
    splitting on ``",`` is exact and much faster; anything escaped or unusual goes to
    ``prometheus_client``'s parser."""
    if "\\" in text:
        return parse_labels(text)
    body = text.rstrip(",")
    if not body:
        return {}
    if not body.endswith('"'):
        return parse_labels(text)  # unusual spacing: let the full parser judge it
    out = {}
    for part in body[:-1].split('",'):
        key, sep, value = part.partition('="')
        if not sep:
            return parse_labels(text)
        out[key.strip()] = value
    return out


class SeriesCache:
    """Series text (``name{labels}``) → ``(metric, stored label values)``, bounded.

    Keyed by the text's hash and length, not the text: a sidecar's label sets are long
    (~0.7 kB a line) and the cache must fit a thousand sidecars' lines. Python's string hash
    is 64-bit and seeded per process, so two live series sharing hash and length (which
    would mislabel one) is about as likely as n² / 2⁶⁵: ~2e-9 for 280,000 lines. Label
    values are interned, so the many lines that repeat them share one string."""

    def __init__(self, limit: int = 400_000) -> None:
        self.limit = limit
        self._known: dict[tuple[int, int], tuple[str, Labels]] = {}

    def __len__(self) -> int:
        return len(self._known)

    def lookup(self, series: str) -> tuple[str, Labels]:
        """Parse ``series`` (once) and keep only the labels :data:`KEPT` names."""
        key = (hash(series), len(series))
        hit = self._known.get(key)
        if hit is not None:
            return hit
        brace = series.index("{")
        name = sys.intern(series[:brace])
        labels = _labels(series[brace + 1 : -1])
        parsed = (name, tuple(sys.intern(labels.get(n, "")) for n in KEPT[name]))
        if len(self._known) >= self.limit:
            self._known.clear()  # label churn: start over rather than grow without bound
        self._known[key] = parsed
        return parsed


def parse(text: str, cache: SeriesCache) -> list[Sample]:
    """The kept samples of one Prometheus text exposition; malformed kept lines are skipped."""
    out: list[Sample] = []
    for line in text.splitlines():
        if not line.startswith(_PREFIXES):
            continue
        end = line.rfind("} ")
        if end < 0:
            continue
        try:
            metric, labels = cache.lookup(line[: end + 1])
            value = float(line[end + 2 :].split(None, 1)[0])
        except (ValueError, IndexError, KeyError):
            continue
        out.append((metric, labels, value))
    return out


class Scraper:
    """Scrapes targets into ``store``. Usable on its own: ``await scrape_once(targets)``."""

    def __init__(
        self,
        store: SeriesStore,
        *,
        concurrency: int = 64,
        timeout: float = 2.0,
        max_body: int = 8 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.deltas = CounterDeltas(store)
        self.cache = SeriesCache()
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_body = max_body
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._warned_full = False

    async def close(self) -> None:
        """Close the HTTP connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency, force_close=False),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                trust_env=False,  # sidecars are local: never through an HTTP proxy
            )
        return self._session

    async def _fetch(self, target: Target) -> str:
        async with self._client().get(target.url) as response:
            if response.status != 200:
                raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)
            # Chunk by chunk: one read() returns only what has arrived, not the whole body.
            chunks, size = [], 0
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if size > self.max_body:
                    raise ValueError(f"metrics over {self.max_body} bytes")
                chunks.append(chunk)
            return b"".join(chunks).decode("utf-8", "replace")

    async def scrape_once(self, targets: Sequence[Target]) -> RoundResult:
        """One round: a new tick in the store, then every target's increases since its
        previous scrape. Sidecars no longer listed lose their baselines."""
        result = RoundResult()
        gate = asyncio.Semaphore(self.concurrency)

        async def one(target: Target) -> None:
            async with gate:
                try:
                    text = await self._fetch(target)
                except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
                    result.failed += 1
                    log.debug("scrape of %s (%s) failed: %s", target.key, target.url, e)
                    return
                kept = await self.store.call(lambda: self._ingest(target.key, text))
            result.scraped += 1
            result.samples += kept

        await self.store.call(lambda: self.store.tick(self.clock()))
        await asyncio.gather(*(one(t) for t in targets))
        keys = [t.key for t in targets]
        await self.store.call(lambda: self.deltas.forget(keys))
        if self.store.dropped and not self._warned_full:
            self._warned_full = True
            log.warning(
                "the dashboard's metrics store is full (%d series): new label sets are not "
                "kept; use --prometheus for a mesh this large",
                self.store.max_series,
            )
        return result

    def _ingest(self, key: str, text: str) -> int:
        """On the store's thread: parse one page and add its increases; samples kept."""
        samples = parse(text, self.cache)
        self.deltas.ingest(key, samples)
        return len(samples)

    async def run(self, targets: Callable[[], Iterable[Target]], interval: float) -> None:
        """Scrape ``targets()`` every ``interval`` seconds until cancelled."""
        while True:
            started = time.monotonic()
            try:
                await self.scrape_once(list(targets()))
            except Exception:
                log.exception("scrape round failed")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


class ScrapeThread:
    """Runs a :class:`Scraper` on a thread with its own event loop, so that the fetches'
    own work (hundreds of responses a second, each read in chunks) never queues behind or
    ahead of the control plane's loop; that loop then only shares the GIL, which a busy
    thread hands over within the interpreter's switch interval (5 ms). ``targets`` is
    called on the loop that called :meth:`start` (the registry belongs to that loop)."""

    def __init__(
        self, scraper: Scraper, targets: Callable[[], Iterable[Target]], interval: float
    ) -> None:
        self.scraper = scraper
        self.targets = targets
        self.interval = interval
        self._home: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    def start(self) -> None:
        """Start scraping every ``interval`` seconds; call from the control plane's loop."""
        self._home = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._main, name="tsunagi-scrape", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # how stop() ends it
            asyncio.run(self._body())

    async def _body(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._started.set()
        try:
            await self.scraper.run(self._listed, self.interval)
        finally:
            await self.scraper.close()

    def _listed(self) -> list[Target]:
        """``targets()``, run on the home loop and waited for here (a moment per round)."""
        assert self._home is not None

        async def collect() -> list[Target]:
            return list(self.targets())

        return asyncio.run_coroutine_threadsafe(collect(), self._home).result(timeout=30)

    async def stop(self) -> None:
        """Cancel the scraping and wait for the thread (without blocking this loop)."""
        if self._thread is None:
            return
        await asyncio.to_thread(self._started.wait, 10)
        if self._loop is not None and self._task is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended
                self._loop.call_soon_threadsafe(self._task.cancel)
        await asyncio.to_thread(self._thread.join, 10)
        self._thread = None

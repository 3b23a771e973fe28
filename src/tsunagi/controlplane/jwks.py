"""Fetching the JWK sets RequestAuthentications name, so that proxies never reach the
issuer themselves (as istiod does): the documents go inline into their JWT filters.

What to fetch is read from the store: each rule's ``jwksUri``, or, with neither ``jwks``
nor ``jwksUri``, its issuer's OpenID discovery document (whose ``jwks_uri`` is then
fetched). Istio's schedule: a new source at once, each refreshed every 20 minutes; a
failed fetch keeps the last good set, logs a warning and retries after a minute, then
after twice as long each time, up to an hour. Until a first fetch succeeds, translation
stands in a set that fails every token (:func:`tsunagi.xds.translate.jwt_authn.key_set`).
Each change of the documents starts a push (:meth:`Pusher.use_jwks`).

Where a user looks: each source's :class:`~.jwks_status.FetchState` (:meth:`JwksFetcher.states`,
shown by ``tsunagi get requestauthentication``), and istiod's counters of network fetches
(``pilot_jwks_resolver_network_fetch_{success,fail}_total``: one per HTTP GET).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import aiohttp

from tsunagi.api.checks_request_authentication import jwks_error
from tsunagi.controlplane.jwks_status import FetchState, key_count, stored_rules
from tsunagi.mesh import request_authentication as ra
from tsunagi.store import Contents, Key, Store

log = logging.getLogger("tsunagi.jwks")

REFRESH = 20 * 60.0
"""Seconds between refreshes of a good set (Istio's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL)."""
RETRY = 60.0
"""Seconds before the first retry of a failed fetch; doubled each further failure..."""
MAX_RETRY = 60 * 60.0
"""...up to this."""
TIMEOUT = 5.0
"""Seconds a fetch may take, where its rule sets no ``timeout`` (Istio's)."""
MAX_BYTES = 1 << 20
"""A JWK set larger than this is refused: it goes into every selected proxy's config."""
RETRY_ENV = "TSUNAGI_JWKS_RETRY"
"""Internal, for tests only: seconds before the first retry instead of :data:`RETRY`."""

Counted = Callable[[bool], None]
"""Told of each HTTP GET: whether it got a body (2xx) or failed (istiod's counters)."""


def retry_from_env(environ: Mapping[str, str] = os.environ) -> float:
    """:data:`RETRY`, unless the tests set :data:`RETRY_ENV` to a positive number."""
    try:
        value = float(environ.get(RETRY_ENV, ""))
    except ValueError:
        return RETRY
    return value if value > 0 else RETRY


class FetchFailed(Exception):
    """A source could not be fetched or is not a JWK set Envoy can use."""


@dataclass
class _Source:
    """What is known of one source (a :func:`~tsunagi.mesh.request_authentication.jwks_key`)."""

    timeout: float
    due: float = 0.0
    """``time.monotonic()`` of the next fetch."""
    failures: int = 0
    state: FetchState = field(default_factory=FetchState)
    """What ``tsunagi get requestauthentication`` shows of it."""


def sources_of(document: Mapping[str, Any]) -> dict[str, float]:
    """The sources one stored RequestAuthentication needs fetched, with the fetch timeout
    (the shortest ``timeout`` of its rules naming each); none if it no longer parses (the
    push reports that)."""
    out: dict[str, float] = {}
    for rule in stored_rules(document):
        source = ra.jwks_key(rule)
        if source is not None:
            timeout = rule.timeout or TIMEOUT
            out[source] = min(out.get(source, timeout), timeout)
    return out


class JwksFetcher:
    """Keeps :attr:`documents` (source → JWK set) fetched for what the store names, and
    hands every change to ``on_change``."""

    def __init__(
        self,
        store: Store,
        on_change: Callable[[Mapping[str, str]], None],
        refresh: float = REFRESH,
        retry: float = RETRY,
        counted: Counted | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``counted`` is told of each HTTP GET (the control plane's metrics); ``clock``
        gives the Unix time :meth:`states` are stamped with."""
        self.store = store
        self.on_change = on_change
        self.refresh = refresh
        self.retry = retry
        self.counted = counted
        self.clock = clock
        self.documents: Mapping[str, str] = MappingProxyType({})
        self._sources: dict[str, _Source] = {}
        self._read: dict[Key, tuple[int, dict[str, float]]] = {}
        """Each stored RequestAuthentication's sources, by the revision they were read at."""

    def states(self) -> Mapping[str, FetchState]:
        """Every source followed now, and what is known of fetching it (a copy: sources
        come and go as RequestAuthentications do)."""
        return {source: known.state for source, known in self._sources.items()}

    async def run(self) -> None:
        """Fetch forever; cancel to stop."""
        seen = -1
        async with aiohttp.ClientSession(trust_env=True) as session:
            while True:
                contents = self.store.contents()
                try:
                    if contents.revision != seen:
                        self._follow(self._wanted(contents))
                        seen = contents.revision
                    await self._fetch_due(session)
                except Exception:  # a bug here must not stop fetching for good
                    log.exception("JWKS fetching failed; trying again in %.0f s", self.retry)
                    await asyncio.sleep(self.retry)
                    continue
                await self._sleep(seen)

    def _wanted(self, contents: Contents) -> dict[str, float]:
        """Every source the stored RequestAuthentications name (a document is read again
        only when its revision changed)."""
        read: dict[Key, tuple[int, dict[str, float]]] = {}
        out: dict[str, float] = {}
        for key, record in contents.records.items():
            if key[0] != "RequestAuthentication":
                continue
            known = self._read.get(key)
            if known is None or known[0] != record.revision:
                known = (record.revision, sources_of(record.document))
            read[key] = known
            for source, timeout in known[1].items():
                out[source] = min(out.get(source, timeout), timeout)
        self._read = read
        return out

    def _follow(self, sources: dict[str, float]) -> None:
        """Start following new sources (due at once), forget gone ones."""
        for source, timeout in sources.items():
            known = self._sources.setdefault(source, _Source(timeout))
            known.timeout = timeout
        gone = self._sources.keys() - sources.keys()
        for source in gone:
            del self._sources[source]
        if gone & self.documents.keys():
            self._publish({k: v for k, v in self.documents.items() if k not in gone})

    async def _fetch_due(self, session: aiohttp.ClientSession) -> None:
        now = time.monotonic()
        due = [s for s, known in self._sources.items() if known.due <= now]
        if not due:
            return
        results = await asyncio.gather(
            *(fetch(session, s, self._sources[s].timeout, self.counted) for s in due),
            return_exceptions=True,
        )
        documents = dict(self.documents)
        wall = self.clock()
        for source, result in zip(due, results, strict=True):
            known = self._sources.get(source)
            if known is None:
                continue
            if isinstance(result, BaseException):
                known.failures += 1
                wait = min(self.retry * 2 ** (known.failures - 1), MAX_RETRY)
                kept = "keeping the last good set" if source in documents else "tokens fail"
                log.warning("JWKS %s: %s; %s, retrying in %.0f s", source, result, kept, wait)
                known.due = time.monotonic() + wait
                known.state = known.state.failed(wall, str(result), wall + wait)
                continue
            if known.failures or source not in documents:
                log.info("JWKS %s: fetched", source)
            known.failures = 0
            known.due = time.monotonic() + self.refresh
            known.state = known.state.succeeded(wall, key_count(result), wall + self.refresh)
            documents[source] = result
        if documents != self.documents:
            self._publish(documents)

    def _publish(self, documents: dict[str, str]) -> None:
        self.documents = MappingProxyType(documents)
        self.on_change(self.documents)

    async def _sleep(self, revision: int) -> None:
        """Until the next fetch is due or the store changes."""
        now = time.monotonic()
        wait = min((s.due for s in self._sources.values()), default=now + self.refresh) - now
        if wait <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.store.wait_for_change(revision), timeout=wait)


async def fetch(
    session: aiohttp.ClientSession, source: str, timeout: float, counted: Counted | None = None
) -> str:
    """The JWK set at ``source``: a ``jwksUri``, or an issuer's OpenID discovery URL (its
    ``jwks_uri`` is fetched then). Raises :class:`FetchFailed`. ``counted`` is told of
    each GET, as istiod counts them."""
    uri = source
    if source.endswith(ra.OPENID_DISCOVERY):
        discovery = await _get(session, source, timeout, counted)
        try:
            uri = _jwks_uri(discovery)
        except ValueError as e:
            raise FetchFailed(f"OpenID discovery: {e}") from None
    document = await _get(session, uri, timeout, counted)
    err = jwks_error(document, every_key=False)
    if err:
        raise FetchFailed(f"not a JWK set Envoy can verify with: {err}")
    return document


def _jwks_uri(discovery: str) -> str:
    doc = json.loads(discovery)
    uri = doc.get("jwks_uri") if isinstance(doc, dict) else None
    if not isinstance(uri, str) or not uri:
        raise ValueError("the document has no jwks_uri")
    return uri


async def _get(
    session: aiohttp.ClientSession, uri: str, timeout: float, counted: Counted | None
) -> str:
    ok: bool | None = False
    try:
        async with session.get(uri, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            body = await resp.content.read(MAX_BYTES + 1)
            if len(body) > MAX_BYTES:
                raise FetchFailed(f"GET {uri}: larger than {MAX_BYTES} bytes")
            if not 200 <= resp.status < 300:
                text = body[:100].decode(errors="replace")
                raise FetchFailed(f"GET {uri}: status {resp.status} {text!r}")
            ok = True  # as istiod: a 2xx body is a successful network fetch, whatever it holds
            return body.decode()
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError) as e:
        raise FetchFailed(f"GET {uri}: {e or type(e).__name__}") from None
    except asyncio.CancelledError:
        ok = None  # shutting down: neither
        raise
    finally:
        if counted is not None and ok is not None:
            counted(ok)

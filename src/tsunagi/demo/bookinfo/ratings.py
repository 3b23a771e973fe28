"""ratings: the star ratings each reviewer gave a product.

A leaf service - it calls no one - so it is the natural target for fault injection and
for checking that context headers arrive two hops deep. It can be made slow or failing,
to show circuit breaking and outlier ejection on it:

* per instance, from the environment: ``RATINGS_DELAY`` (seconds) for
  ``RATINGS_DELAY_PERCENT`` % of requests (default 100), and ``RATINGS_FAIL_PERCENT`` % of
  requests answered ``503 {"error": "Service unavailable"}``. Istio's ratings versions
  ``v-faulty`` (half the requests fail) and ``v-delayed`` (half wait 7 s) set the same
  knobs: ``tsunagi run --service ratings --version v-faulty ...``;
* per request: ``GET /ratings/0?delay=0.2`` answers 0.2 s late, ``?fail=503`` with that
  status.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from .common import ServiceConfig, base_app, parse_id

#: Same ratings for every product: the demo catalogue has a single book.
RATINGS: dict[str, int] = {"Reviewer1": 5, "Reviewer2": 4}

#: Longest delay a knob may ask for: long enough for any task, short enough to never wedge.
MAX_DELAY_S = 60.0

#: Istio's fault-demonstrating ratings versions and what they do.
VERSION_FAULTS: dict[str, dict[str, float]] = {
    "v-faulty": {"fail_percent": 50.0},
    "v-delayed": {"delay_s": 7.0, "delay_percent": 50.0},
}


@dataclass(frozen=True)
class Faults:
    """How this instance misbehaves (by default: not at all)."""

    delay_s: float = 0.0
    delay_percent: float = 100.0
    fail_percent: float = 0.0

    @classmethod
    def from_env(cls, version: str, env: Mapping[str, str] | None = None) -> Faults:
        """The faults of Istio's ``version`` (if it names one), overridden by
        ``RATINGS_DELAY``, ``RATINGS_DELAY_PERCENT`` and ``RATINGS_FAIL_PERCENT``.

        Raises ``ValueError`` naming the variable when a value is not a number in range.
        """
        env = os.environ if env is None else env
        values = dict(VERSION_FAULTS.get(version, {}))
        for name, key, top in [
            ("RATINGS_DELAY", "delay_s", MAX_DELAY_S),
            ("RATINGS_DELAY_PERCENT", "delay_percent", 100.0),
            ("RATINGS_FAIL_PERCENT", "fail_percent", 100.0),
        ]:
            raw = env.get(name, "").strip()
            if raw:
                values[key] = _number(name, raw, top)
        return cls(**values)

    def delay(self) -> float:
        """Seconds to wait before this request's answer."""
        return self.delay_s if _chance(self.delay_percent) else 0.0

    def fails(self) -> bool:
        """Whether this request gets a 503."""
        return _chance(self.fail_percent)


def _number(name: str, raw: str, top: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if not 0 <= value <= top:
        raise ValueError(f"{name} must be between 0 and {top:g}, got {raw!r}")
    return value


def _chance(percent: float) -> bool:
    # 0 and 100 are exact, so a test or a user gets the same answer every time.
    return percent >= 100 or (percent > 0 and random.random() * 100 < percent)


FAULTS_KEY = web.AppKey("faults", Faults)


def _query_faults(request: web.Request) -> tuple[float, int | None]:
    """The per-request knobs ``delay`` (seconds) and ``fail`` (a status), or a 400."""
    try:
        delay = float(request.query.get("delay", "0"))
        fail = int(request.query["fail"]) if "fail" in request.query else None
    except ValueError:
        raise _bad("delay must be a number of seconds and fail an HTTP status") from None
    if not 0 <= delay <= MAX_DELAY_S:
        raise _bad(f"delay must be between 0 and {MAX_DELAY_S:g} seconds")
    if fail is not None and not 400 <= fail <= 599:
        raise _bad("fail must be an HTTP error status (400-599)")
    return delay, fail


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=f'{{"error": "{message}"}}', content_type="application/json")


async def get_ratings(request: web.Request) -> web.Response:
    """``GET /ratings/{id}``."""
    product_id = parse_id(request)
    faults = request.app[FAULTS_KEY]
    delay, fail = _query_faults(request)
    delay = max(delay, faults.delay())
    if delay:
        await asyncio.sleep(delay)
    if fail is None and faults.fails():
        fail = 503
    if fail is not None:
        return web.json_response({"error": "Service unavailable"}, status=fail)
    return web.json_response({"id": product_id, "ratings": RATINGS})


def make_app(config: ServiceConfig) -> web.Application:
    """The ratings application; ``ValueError`` if a fault knob in the environment is bad."""
    app = base_app(config)
    app[FAULTS_KEY] = Faults.from_env(config.version)
    app.router.add_get("/ratings/{id}", get_ratings)
    return app

"""Tsunagi's Bookinfo-style sample application.

Four tiny aiohttp services - productpage, details, reviews (v1/v2/v3) and
ratings - each started as ``python -m tsunagi.demo.bookinfo SERVICE``. They
reach each other by plain names (``http://reviews:9080/...``) through the
sidecar given in ``HTTP_PROXY``, and forward tracing, ``end-user`` and session
headers so the mesh can trace, route and hash on them.

Where Istio's traffic tasks depend on it they behave as Istio's Bookinfo does: the
same timeouts and retry, the same messages when a dependency fails, and ratings that
can be slowed or made to fail (see :mod:`.ratings`). Every service answers
``GET /stats`` with what it received.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from . import details, productpage, ratings, reviews
from .common import FORWARDED_HEADERS, ServiceConfig

#: Service name -> application factory.
SERVICES: dict[str, Callable[[ServiceConfig], web.Application]] = {
    "productpage": productpage.make_app,
    "details": details.make_app,
    "reviews": reviews.make_app,
    "ratings": ratings.make_app,
}

__all__ = ["FORWARDED_HEADERS", "SERVICES", "ServiceConfig"]

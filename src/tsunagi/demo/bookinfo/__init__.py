"""Tsunagi's Bookinfo-style sample application.

Four tiny aiohttp services - productpage, details, reviews (v1/v2/v3) and
ratings - each started as ``python -m tsunagi.demo.bookinfo SERVICE``. They
reach each other by plain names (``http://reviews:9080/...``) through the
sidecar given in ``HTTP_PROXY``, and forward tracing and ``end-user`` headers
so the mesh can trace and route them.
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

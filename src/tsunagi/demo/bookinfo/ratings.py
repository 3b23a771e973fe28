"""ratings: the star ratings each reviewer gave a product.

A leaf service - it calls no one - so it is the natural target for fault
injection and for checking that context headers arrive two hops deep.
"""

from __future__ import annotations

from aiohttp import web

from .common import ServiceConfig, base_app, parse_id

#: Same ratings for every product: the demo catalogue has a single book.
RATINGS: dict[str, int] = {"Reviewer1": 5, "Reviewer2": 4}


async def get_ratings(request: web.Request) -> web.Response:
    """``GET /ratings/{id}``."""
    product_id = parse_id(request)
    return web.json_response({"id": product_id, "ratings": RATINGS})


def make_app(config: ServiceConfig) -> web.Application:
    """The ratings application."""
    app = base_app(config)
    app.router.add_get("/ratings/{id}", get_ratings)
    return app

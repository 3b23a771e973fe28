"""details: bibliographic facts about a product (a book)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .common import ServiceConfig, base_app, parse_id

#: The demo catalogue. ISBNs are made up (with valid check digits).
BOOKS: dict[int, dict[str, Any]] = {
    0: {
        "author": "Natsume Soseki",
        "year": 1906,
        "type": "paperback",
        "pages": 176,
        "publisher": "Tsunagi Demo Press",
        "language": "English (translated from Japanese)",
        "ISBN-10": "4901234560",
        "ISBN-13": "978-4901234566",
    },
}


async def get_details(request: web.Request) -> web.Response:
    """``GET /details/{id}``: the book's facts, or 404 for an unknown id."""
    product_id = parse_id(request)
    book = BOOKS.get(product_id)
    if book is None:
        return web.json_response({"error": f"no product with id {product_id}"}, status=404)
    return web.json_response({"id": product_id, **book})


def make_app(config: ServiceConfig) -> web.Application:
    """The details application."""
    app = base_app(config)
    app.router.add_get("/details/{id}", get_details)
    return app

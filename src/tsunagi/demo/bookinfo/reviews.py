"""reviews: what readers wrote about a product, in three versions.

* v1 calls no one and shows no stars;
* v2 calls ratings and shows black stars;
* v3 calls ratings and shows red stars.

The versions differ only in behaviour visible on the product page, which is
what makes them useful for demonstrating traffic shifting.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .common import CONFIG_KEY, ServiceConfig, base_app, get_json, parse_id, service_url

#: (reviewer, text) pairs; the same for every product in this demo.
REVIEWS: tuple[tuple[str, str], ...] = (
    (
        "Reviewer1",
        "A sharp, funny portrait of a hot-headed young teacher who cannot stop "
        "telling the truth. Short enough for one long train ride.",
    ),
    (
        "Reviewer2",
        "The narrator is exasperating and that is the point. The small-town "
        "politics feel surprisingly modern.",
    ),
)

#: Star colour per version; versions not listed do not call ratings at all.
STAR_COLOR: dict[str, str] = {"v2": "black", "v3": "red"}


async def get_reviews(request: web.Request) -> web.Response:
    """``GET /reviews/{id}``."""
    product_id = parse_id(request)
    config = request.app[CONFIG_KEY]
    color = STAR_COLOR.get(config.version)

    rating_for: dict[str, Any] = {}
    if color is not None:
        ratings = await get_json(
            request, service_url("ratings", f"/ratings/{product_id}"), "Ratings"
        )
        stars = ratings.data.get("ratings") if isinstance(ratings.data, dict) else None
        if isinstance(stars, dict):
            rating_for = {
                name: {"stars": stars[name], "color": color} for name, _ in REVIEWS if name in stars
            }
        else:
            # Keep the reviews; only the stars are missing.
            err = ratings.error or "Ratings unavailable (malformed response)"
            rating_for = {name: {"error": err} for name, _ in REVIEWS}

    reviews: list[dict[str, Any]] = []
    for name, text in REVIEWS:
        review: dict[str, Any] = {"reviewer": name, "text": text}
        if name in rating_for:
            review["rating"] = rating_for[name]
        reviews.append(review)

    return web.json_response(
        {
            "id": product_id,
            "podname": config.hostname,
            "clustername": "null",
            "reviews": reviews,
            "version": config.version,
        }
    )


def make_app(config: ServiceConfig) -> web.Application:
    """The reviews application (behaviour depends on ``config.version``)."""
    app = base_app(config)
    app.router.add_get("/reviews/{id}", get_reviews)
    return app

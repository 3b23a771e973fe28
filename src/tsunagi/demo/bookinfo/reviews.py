"""reviews: what readers wrote about a product, in three versions.

* v1 calls no one and shows no stars;
* v2 calls ratings and shows black stars;
* v3 calls ratings and shows red stars.

The versions differ only in behaviour visible on the product page, which is
what makes them useful for demonstrating traffic shifting.
"""

from __future__ import annotations

import logging
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

#: Istio's reviews waits 10 s for ratings when its stars are black (v2) and 2.5 s otherwise
#: (v3). The fault-injection task turns on it: a 7 s delay fits in v2's 10 s but not in
#: productpage's two 3 s attempts at reviews.
RATINGS_TIMEOUT_S: dict[str, float] = {"black": 10.0, "red": 2.5}

#: What a review shows instead of stars when ratings failed (Istio's words).
RATINGS_UNAVAILABLE = "Ratings service is currently unavailable"

log = logging.getLogger("tsunagi.demo.bookinfo")


async def get_reviews(request: web.Request) -> web.Response:
    """``GET /reviews/{id}``."""
    product_id = parse_id(request)
    config = request.app[CONFIG_KEY]
    color = STAR_COLOR.get(config.version)

    rating_for: dict[str, Any] = {}
    if color is not None:
        ratings = await get_json(
            request,
            service_url("ratings", f"/ratings/{product_id}"),
            timeout_s=RATINGS_TIMEOUT_S[color],
        )
        stars = ratings.data.get("ratings") if isinstance(ratings.data, dict) else None
        if not isinstance(stars, dict):
            log.warning("ratings unavailable: %s", ratings.error or "malformed response")
            stars = {}
        # Keep the reviews; a reviewer without a rating shows Istio's message instead.
        rating_for = {
            name: {"stars": stars[name], "color": color}
            if isinstance(stars.get(name), int)
            else {"error": RATINGS_UNAVAILABLE}
            for name, _ in REVIEWS
        }

    reviews: list[dict[str, Any]] = []
    for name, text in REVIEWS:
        review: dict[str, Any] = {"reviewer": name, "text": text}
        if name in rating_for:
            review["rating"] = rating_for[name]
        reviews.append(review)

    return web.json_response(
        {
            "id": product_id,
            "podname": config.pod,
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

"""productpage: the HTML front end that fans out to details and reviews.

It is the only service users talk to directly; it turns the ``user`` cookie
into an ``end-user`` header so that mesh routing rules can match on identity.
"""

from __future__ import annotations

import asyncio
import re
from html import escape
from typing import Any

from aiohttp import web

from .common import CONFIG_KEY, Downstream, ServiceConfig, base_app, get_json, parse_id, service_url

PRODUCT_ID = 0
PRODUCT_TITLE = "Botchan"
PRODUCT_SUMMARY = (
    "A young man from Tokyo takes a job teaching mathematics in a provincial "
    "town and finds the staff room more treacherous than the classroom. "
    "A brisk comic novel about honesty, stubbornness and small-town cliques."
)

USER_COOKIE = "user"
#: Usernames end up in a cookie and an HTTP header, so keep them to a
#: conservative character set rather than escaping them twice.
_USERNAME_RE = re.compile(r"[A-Za-z0-9._@-]{1,64}")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;
background:#f6f7f9;color:#222}
header{background:#1f3a5f;color:#fff;padding:.8rem 1.5rem;display:flex;align-items:center;gap:1rem}
header h1{font-size:1.2rem;margin:0;flex:1}
header a{color:#fff}
header form{display:flex;gap:.4rem;align-items:center;margin:0}
input,button{font:inherit;padding:.25rem .5rem}
main{max-width:60rem;margin:1.5rem auto;padding:0 1rem}
.card{background:#fff;border-radius:8px;padding:1rem 1.25rem;margin-bottom:1rem;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
table{border-collapse:collapse}td,th{text-align:left;padding:.2rem .8rem .2rem 0}
blockquote{margin:.5rem 0 1rem;padding-left:.8rem;border-left:3px solid #cdd5df}
.who{color:#666;font-size:.9rem}.stars{font-size:1.2rem;letter-spacing:.1rem}
.unavailable{color:#9a3412;background:#fff7ed;border:1px solid #fed7aa;border-radius:6px;
padding:.5rem .8rem}
.tag{display:inline-block;background:#e8eef6;border-radius:4px;padding:0 .4rem;
font-family:monospace}
footer{color:#777;font-size:.85rem;text-align:center;margin:2rem 0}
@media(max-width:40rem){.grid{grid-template-columns:1fr}}
"""


def _page(title: str, body: str, header_extra: str = "") -> str:
    """Wrap ``body`` in the shared HTML skeleton."""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1><a href='/'>Tsunagi Bookinfo</a></h1>{header_extra}</header>"
        f"<main>{body}</main></body></html>"
    )


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html")


def signed_in_user(request: web.Request) -> str | None:
    """The signed-in username from the ``user`` cookie, if it is valid."""
    user = request.cookies.get(USER_COOKIE)
    return user if user and _USERNAME_RE.fullmatch(user) else None


def _identity_headers(request: web.Request) -> dict[str, str]:
    """``end-user`` for downstream calls when someone is signed in."""
    user = signed_in_user(request)
    return {"end-user": user} if user else {}


#: Istio's Bookinfo productpage: 3 s per call, and reviews tried twice (its source calls
#: this retry a bug kept on purpose for the fault-injection task: 7 s of delay outlasts two
#: 3 s attempts, so the page gives up before reviews v2's own 10 s timeout on ratings).
CALL_TIMEOUT_S = 3.0
REVIEWS_ATTEMPTS = 2

#: What the page says when a section is missing: Istio's words, which its tasks quote.
DETAILS_UNAVAILABLE = "Sorry, product details are currently unavailable for this book."
REVIEWS_UNAVAILABLE = "Sorry, product reviews are currently unavailable for this book."


async def _fetch_details(request: web.Request, product_id: int) -> Downstream:
    url = service_url("details", f"/details/{product_id}")
    return await get_json(request, url, _identity_headers(request), timeout_s=CALL_TIMEOUT_S)


async def _fetch_reviews(request: web.Request, product_id: int) -> Downstream:
    url = service_url("reviews", f"/reviews/{product_id}")
    return await get_json(
        request,
        url,
        _identity_headers(request),
        timeout_s=CALL_TIMEOUT_S,
        attempts=REVIEWS_ATTEMPTS,
    )


def _unavailable_html(message: str, result: Downstream) -> str:
    """Istio's message, and below it why (which Istio's page does not say)."""
    cause = f"<div class='who'>({escape(result.error)})</div>" if result.error else ""
    return f"<div class='unavailable'><p>{escape(message)}</p>{cause}</div>"


# --- HTML pages --------------------------------------------------------------


async def landing(request: web.Request) -> web.Response:
    """``GET /``: a short introduction with a link to the product page."""
    body = (
        "<div class='card'><h2>Welcome</h2>"
        "<p>This is the Tsunagi sample application: four small services "
        "(<span class='tag'>productpage</span>, <span class='tag'>details</span>, "
        "<span class='tag'>reviews</span> v1/v2/v3, <span class='tag'>ratings</span>) "
        "talking to each other through the mesh.</p>"
        "<p><a href='/productpage'>Open the product page &rarr;</a></p>"
        "<p class='who'>Reload it a few times: which reviews version answers "
        "depends on the routing rules you apply.</p></div>"
    )
    return _html(_page("Tsunagi Bookinfo", body))


def _user_box(user: str | None) -> str:
    if user:
        return (
            f"<span>Signed in as <b>{escape(user)}</b></span>"
            "<form method='post' action='/logout'><button type='submit'>Sign out</button></form>"
        )
    return (
        "<form method='post' action='/login'>"
        "<input name='username' placeholder='username' aria-label='username' required>"
        "<button type='submit'>Sign in</button></form>"
    )


def _details_html(details: Downstream) -> str:
    if not details.ok or not isinstance(details.data, dict):
        return _unavailable_html(DETAILS_UNAVAILABLE, details)
    fields = [
        ("Author", "author"),
        ("Year", "year"),
        ("Type", "type"),
        ("Pages", "pages"),
        ("Publisher", "publisher"),
        ("Language", "language"),
        ("ISBN-10", "ISBN-10"),
        ("ISBN-13", "ISBN-13"),
    ]
    rows = "".join(
        f"<tr><th>{label}</th><td>{escape(str(details.data[key]))}</td></tr>"
        for label, key in fields
        if key in details.data
    )
    return f"<table>{rows}</table>"


def _rating_html(rating: Any) -> str:
    if not isinstance(rating, dict):
        return ""  # reviews v1: no ratings at all
    if "error" in rating:
        return f"<p class='unavailable'>{escape(str(rating['error']))}</p>"
    raw = rating.get("stars")
    stars = max(0, min(5, raw)) if isinstance(raw, int) else 0
    color = "red" if rating.get("color") == "red" else "black"
    return (
        f"<div class='stars' style='color:{color}' title='{stars} of 5'>"
        f"{'&#9733;' * stars}{'&#9734;' * (5 - stars)}</div>"
    )


def _reviews_html(reviews: Downstream) -> str:
    if not reviews.ok or not isinstance(reviews.data, dict):
        return _unavailable_html(REVIEWS_UNAVAILABLE, reviews)
    data = reviews.data
    version = str(data.get("version") or reviews.served_by or "unknown")
    parts = [
        f"<p class='who'>Answered by <span class='tag'>reviews-{escape(version)}</span>"
        f" on <span class='tag'>{escape(str(data.get('podname', '?')))}</span></p>"
    ]
    for review in data.get("reviews", []):
        parts.append(
            f"<blockquote>{escape(str(review.get('text', '')))}"
            f"<div class='who'>&mdash; {escape(str(review.get('reviewer', '')))}</div>"
            f"{_rating_html(review.get('rating'))}</blockquote>"
        )
    return "".join(parts)


async def productpage(request: web.Request) -> web.Response:
    """``GET /productpage``: the book, its details and its reviews."""
    config = request.app[CONFIG_KEY]
    user = signed_in_user(request)
    details, reviews = await asyncio.gather(
        _fetch_details(request, PRODUCT_ID), _fetch_reviews(request, PRODUCT_ID)
    )
    body = (
        f"<div class='card'><h2>{escape(PRODUCT_TITLE)}</h2>"
        f"<p>{escape(PRODUCT_SUMMARY)}</p></div>"
        "<div class='grid'>"
        f"<div class='card'><h3>Book details</h3>{_details_html(details)}</div>"
        f"<div class='card'><h3>Book reviews</h3>{_reviews_html(reviews)}</div>"
        "</div>"
        f"<footer>Served by <span class='tag'>{escape(config.served_by)}</span> "
        f"instance <span class='tag'>{escape(config.instance)}</span></footer>"
    )
    return _html(_page(f"{PRODUCT_TITLE} - Tsunagi Bookinfo", body, _user_box(user)))


async def login(request: web.Request) -> web.Response:
    """``POST /login`` with form field ``username``: remember the user in a
    cookie and go back to the product page."""
    form = await request.post()
    username = str(form.get("username", "")).strip()
    if not _USERNAME_RE.fullmatch(username):
        body = (
            "<div class='card'><p class='unavailable'>Usernames are 1-64 letters, digits "
            "or <code>. _ @ -</code>.</p><p><a href='/productpage'>Back</a></p></div>"
        )
        return _html(_page("Sign-in failed", body), status=400)
    response = web.HTTPSeeOther("/productpage")
    response.set_cookie(USER_COOKIE, username, httponly=True, samesite="Lax", path="/")
    return response


async def logout(request: web.Request) -> web.Response:
    """``POST /logout``: forget the user."""
    response = web.HTTPSeeOther("/productpage")
    response.del_cookie(USER_COOKIE, path="/")
    return response


# --- JSON API ----------------------------------------------------------------


def _json_passthrough(result: Downstream, message: str) -> web.Response:
    if result.ok:
        return web.json_response(result.data)
    # Mirror the downstream status when there is one (503 from the sidecar, 404 for unknown
    # ids); a transport failure or timeout is a 500, as in Istio's productpage.
    status = result.status if result.status and result.status >= 400 else 500
    return web.json_response({"error": message, "cause": result.error}, status=status)


async def api_product(request: web.Request) -> web.Response:
    """``GET /api/v1/products/{id}``: the details service's answer."""
    result = await _fetch_details(request, parse_id(request))
    return _json_passthrough(result, DETAILS_UNAVAILABLE)


async def api_reviews(request: web.Request) -> web.Response:
    """``GET /api/v1/products/{id}/reviews``: the reviews service's answer."""
    result = await _fetch_reviews(request, parse_id(request))
    return _json_passthrough(result, REVIEWS_UNAVAILABLE)


def make_app(config: ServiceConfig) -> web.Application:
    """The productpage application."""
    app = base_app(config)
    app.router.add_get("/", landing)
    app.router.add_get("/productpage", productpage)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/api/v1/products/{id}", api_product)
    app.router.add_get("/api/v1/products/{id}/reviews", api_reviews)
    return app

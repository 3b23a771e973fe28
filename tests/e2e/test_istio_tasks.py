"""Istio's traffic-management tasks on Bookinfo, end to end: the demo's own apps behind real
sidecars, the task YAMLs shipped with the demo applied unchanged with ``tsunagi apply``, and
what a client of productpage (or of the service under test) then receives.

One mesh for the module; every test applies the rules it needs and leaves none behind.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import tsunagi.demo

from .mesh import Mesh, Workload, concurrent_gets, request, stop, wait_until

pytestmark = pytest.mark.e2e

RULES = Path(tsunagi.demo.__file__).parent / "rules"
MESH_CONFIG = Path(tsunagi.demo.__file__).parent / "mesh-config.yaml"
"""The demo's MeshConfig, as ``tsunagi demo`` starts the control plane with it."""

BOOKINFO = [
    ("details", "v1"),
    ("ratings", "v1"),
    ("reviews", "v1"),
    ("reviews", "v2"),
    ("reviews", "v3"),
    ("productpage", "v1"),
]

# What Istio's tasks tell the reader to look for on the page.
REVIEWS_SORRY = "Sorry, product reviews are currently unavailable for this book."
RATINGS_SORRY = "Ratings service is currently unavailable"
ANSWERED_BY = re.compile(
    r"Answered by <span class='tag'>reviews-(v\d)</span> on <span class='tag'>([^<]*)</span>"
)


def start(mesh: Mesh, service: str, version: str, env: dict[str, str] | None = None) -> Workload:
    """``tsunagi run`` one Bookinfo service, as the demo does (not waiting for it)."""
    name = f"{service}-{version}-{len(mesh.workloads)}"
    log = (mesh.state_dir / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "tsunagi.cli.main", "run"),
            *("--service", service, "--port", "9080", "--version", version, "--name", name),
            *("--service-account", f"bookinfo-{service}"),
            *("--concurrency", "1", "--xds-protocol", mesh.xds_protocol),
            *("--", sys.executable, "-m", "tsunagi.demo.bookinfo", service),
        ],
        env={**mesh.env, **(env or {})},
        stdout=log,
        stderr=log,
    )
    workload = Workload(proc, name, 0)
    mesh.workloads.append(workload)
    return workload


def start_authorizer(mesh: Mesh) -> Workload:
    """``tsunagi run`` the demo's external authorizer as the service ext-authz, port 8000,
    as the demo does (not waiting for it)."""
    name = f"ext-authz-v1-{len(mesh.workloads)}"
    log = (mesh.state_dir / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "tsunagi.cli.main", "run"),
            *("--service", "ext-authz", "--port", "8000", "--version", "v1", "--name", name),
            *("--concurrency", "1", "--xds-protocol", mesh.xds_protocol),
            *("--", sys.executable, "-m", "tsunagi.demo.ext_authz"),
        ],
        env=mesh.env,
        stdout=log,
        stderr=log,
    )
    workload = Workload(proc, name, 0)
    mesh.workloads.append(workload)
    return workload


def wait_serving(mesh: Mesh, workloads: list[Workload]) -> None:
    """Until each workload's proxy has its config and its app is registered."""

    def ready() -> bool:
        for w in workloads:
            assert w.proc.poll() is None, (mesh.state_dir / f"{w.name}.log").read_text()
        registered = set(mesh.workload_names())
        synced = {p["id"] for p in mesh.api("GET", "/v1/proxies")["proxies"] if p["synced"]}
        return all(w.name in registered and f"{w.name}.default" in synced for w in workloads)

    wait_until(ready, timeout=90, what="the Bookinfo sidecars")


@dataclass
class Bookinfo:
    mesh: Mesh
    apps: dict[str, Workload]  # "reviews-v2" -> its workload
    client: Workload  # a sidecar with no app: calls services as an app in the mesh would
    changed_destination_rules: bool = False

    def inbound_port(self, workload: Workload) -> int:
        """Where ``workload``'s sidecar takes requests for its app (as a browser reaches
        the demo's productpage)."""
        items = self.mesh.api("GET", "/v1/resources?kind=workloads")["items"]
        return int(next(i["document"]["target_port"] for i in items if i["name"] == workload.name))

    def page(self, user: str | None = None) -> str:
        """``GET /productpage`` as a browser (signed in as ``user``) sees it."""
        headers = {"Cookie": f"user={user}"} if user else {}
        port = self.inbound_port(self.apps["productpage-v1"])
        status, body = request(port, "productpage:9080", "/productpage", headers, timeout=30)
        assert status == 200 and isinstance(body, str), (status, body)
        return body

    def reviews_version(self, page: str) -> str:
        """Which reviews version the page shows ("" when reviews are unavailable)."""
        found = ANSWERED_BY.search(page)
        return found.group(1) if found else ""

    def stats(self, key: str) -> dict[str, Any]:
        """``GET /stats`` of one app: what it received."""
        port = self.inbound_port(self.apps[key])
        status, body = request(port, key.split("-")[0] + ":9080", "/stats")
        assert status == 200 and isinstance(body, dict), body
        return body

    def apply(self, *names: str) -> None:
        """``tsunagi apply -f FILE --wait`` for the demo's rule files, in order."""
        for name in names:
            done = self.mesh.cli("apply", "-f", str(RULES / name), "--wait")
            assert done.returncode == 0, done.stderr
            assert "in sync after" in done.stdout, done.stdout
            assert "not applied yet" not in done.stderr, done.stderr  # all of it is enforced
            self.changed_destination_rules |= name.startswith("destination-rule-")

    def clean(self) -> None:
        """Delete every VirtualService; put back destination-rule-all.yaml's rules."""
        items = self.mesh.api("GET", "/v1/resources?kind=VirtualService")["items"]
        if items:
            text = yaml.safe_dump_all([i["document"] for i in items])
            done = self.mesh.cli("delete", "-f", "-", "--wait", stdin=text)
            assert done.returncode == 0, done.stderr
        if self.changed_destination_rules:
            self.apply("destination-rule-all.yaml")
            self.changed_destination_rules = False


@pytest.fixture(scope="module")
def bookinfo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bookinfo]:
    mesh = Mesh(
        tmp_path_factory.mktemp("istio-tasks") / "state",
        up_args=("--mesh-config", str(MESH_CONFIG)),
    )
    mesh.state_dir.mkdir(parents=True)
    try:
        mesh.up()
        applied = mesh.cli("apply", "-f", str(RULES / "destination-rule-all.yaml"))
        assert applied.returncode == 0, applied.stderr
        apps = {f"{s}-{v}": start(mesh, s, v) for s, v in BOOKINFO}
        apps["ext-authz-v1"] = start_authorizer(mesh)
        client = mesh.client()
        wait_serving(mesh, list(apps.values()))
        yield Bookinfo(mesh, apps, client)
    finally:
        mesh.close()


@pytest.fixture
def tasks(bookinfo: Bookinfo) -> Iterator[Bookinfo]:
    yield bookinfo
    bookinfo.clean()


def test_request_routing(tasks: Bookinfo) -> None:
    tasks.apply("virtual-service-all-v1.yaml")
    for _ in range(5):
        page = tasks.page()
        assert tasks.reviews_version(page) == "v1" and "&#9733;" not in page  # no stars

    tasks.apply("virtual-service-reviews-test-v2.yaml")
    for _ in range(3):
        page = tasks.page("jason")
        assert "Signed in as <b>jason</b>" in page
        assert tasks.reviews_version(page) == "v2" and "color:black" in page
        assert tasks.reviews_version(tasks.page()) == "v1"
        assert tasks.reviews_version(tasks.page("mary")) == "v1"


def test_fault_injection_delay(tasks: Bookinfo) -> None:
    tasks.apply(
        "virtual-service-all-v1.yaml",
        "virtual-service-reviews-test-v2.yaml",
        "virtual-service-ratings-test-delay.yaml",
    )
    # 7 s on ratings fits in reviews v2's 10 s, not in productpage's two tries of 3 s.
    page = tasks.page("jason")
    assert REVIEWS_SORRY in page and "timed out after 3 s" in page
    assert "Natsume Soseki" in page  # details are fine
    # Everyone else is not delayed (and gets v1 anyway).
    page = tasks.page()
    assert tasks.reviews_version(page) == "v1" and REVIEWS_SORRY not in page


def test_fault_injection_abort(tasks: Bookinfo) -> None:
    tasks.apply(
        "virtual-service-all-v1.yaml",
        "virtual-service-reviews-test-v2.yaml",
        "virtual-service-ratings-test-abort.yaml",
    )
    page = tasks.page("jason")
    assert tasks.reviews_version(page) == "v2"
    assert page.count(RATINGS_SORRY) == 2 and "&#9733;" not in page  # no stars, both reviews
    page = tasks.page()
    assert tasks.reviews_version(page) == "v1" and RATINGS_SORRY not in page


def test_traffic_shifting(tasks: Bookinfo) -> None:
    tasks.apply("virtual-service-all-v1.yaml", "virtual-service-reviews-50-v3.yaml")
    seen = Counter(tasks.reviews_version(tasks.page()) for _ in range(40))
    assert set(seen) == {"v1", "v3"}, seen
    assert min(seen.values()) >= 8, seen  # about half each; generous for 40 draws

    tasks.apply("virtual-service-reviews-v3.yaml")
    for _ in range(10):
        page = tasks.page()
        assert tasks.reviews_version(page) == "v3" and "color:red" in page


def test_request_timeouts(tasks: Bookinfo) -> None:
    tasks.apply("virtual-service-reviews-v2.yaml", "virtual-service-ratings-delay-2s.yaml")
    page = tasks.page()  # 2 s late, but complete
    assert tasks.reviews_version(page) == "v2" and "color:black" in page

    tasks.apply("virtual-service-reviews-v2-timeout.yaml")
    page = tasks.page()
    # Envoy gives up on reviews after 0.5 s (504), well before productpage's own 3 s.
    assert REVIEWS_SORRY in page and "HTTP 504" in page, page


def test_circuit_breaking(tasks: Bookinfo) -> None:
    slow = "/ratings/0?delay=0.2"  # ratings' own knob: keeps each request in flight
    results = concurrent_gets(tasks.client, "ratings:9080", slow, threads=10, each=4)
    assert {status for status, _ in results} == {200}, results  # no limits: all get through

    tasks.apply("destination-rule-ratings-circuit-breaking.yaml")
    marked = slow + "&from=circuit-breaking"  # tells these apart in what ratings received
    results = concurrent_gets(tasks.client, "ratings:9080", marked, threads=10, each=4)
    assert len(results) == 40
    tripped = [r for r in results if r[0] == 503]
    assert tripped and all(overloaded == "true" for _, overloaded in tripped), results
    assert any(status == 200 for status, _ in results), results
    # Refused by the caller's sidecar: ratings itself received only the ones that got through.
    received = [r for r in tasks.stats("ratings-v1")["recent"] if r["path"] == marked]
    assert len(received) == len(results) - len(tripped)


def test_mirroring(tasks: Bookinfo) -> None:
    tasks.apply("virtual-service-reviews-mirror-v2.yaml")
    v2_before = tasks.stats("reviews-v2")["by_path"].get("/reviews/0", 0)
    v3_before = tasks.stats("reviews-v3")["by_path"].get("/reviews/0", 0)
    for _ in range(5):
        page = tasks.page()
        assert tasks.reviews_version(page) == "v1" and "&#9733;" not in page  # v1 answers

    def v2_got_copies() -> bool:
        return tasks.stats("reviews-v2")["by_path"].get("/reviews/0", 0) >= v2_before + 5

    wait_until(v2_got_copies, timeout=20, what="reviews v2 to receive the mirrored copies")
    recent = tasks.stats("reviews-v2")["recent"]
    assert any("-shadow" in r["headers"].get("host", "") for r in recent), recent
    assert tasks.stats("reviews-v3")["by_path"].get("/reviews/0", 0) == v3_before


def ejected(client: Workload) -> bool:
    """Whether the client's Envoy has ejected a ratings endpoint."""
    prefix = "outbound|9080||ratings.default.svc.cluster.local::"
    return any(
        line.startswith(prefix) and "health_flags::/failed_outlier_check" in line
        for line in client.envoy_admin("/clusters").splitlines()
    )


def test_outlier_detection(tasks: Bookinfo) -> None:
    faulty = start(tasks.mesh, "ratings", "v-faulty", {"RATINGS_FAIL_PERCENT": "100"})
    try:
        wait_serving(tasks.mesh, [faulty])

        def failure_seen() -> bool:
            return tasks.client.get("ratings:9080", "/ratings/0")[0] == 503

        # Both instances get requests; the faulty one's answers reach the client.
        wait_until(failure_seen, timeout=30, what="a 503 from the failing ratings instance")

        tasks.apply("destination-rule-ratings-outlier-detection.yaml")

        def one_more_then_ejected() -> bool:
            tasks.client.get("ratings:9080", "/ratings/0")
            return ejected(tasks.client)

        wait_until(one_more_then_ejected, timeout=30, what="the failing instance to be ejected")
        answers = [tasks.client.get("ratings:9080", "/ratings/0") for _ in range(30)]
        assert all(status == 200 and isinstance(body, dict) for status, body in answers), answers
        assert {body["ratings"]["Reviewer1"] for _, body in answers if isinstance(body, dict)} == {
            5
        }
    finally:
        stop(faulty.proc)
        tasks.mesh.workloads.remove(faulty)


def test_consistent_hash_keeps_a_user_on_one_instance(tasks: Bookinfo) -> None:
    # No reviews VirtualService: the hash spreads users over all three reviews instances.
    tasks.apply("destination-rule-reviews-consistent-hash.yaml")
    placed: dict[str, set[str]] = {}
    for n in range(12):
        user = f"reader{n}"
        placed[user] = {tasks.reviews_version(tasks.page(user)) for _ in range(3)}
    assert all(len(where) == 1 for where in placed.values()), placed  # each user sticks
    assert len(set().union(*placed.values())) >= 2, placed  # users are spread out


def raw(
    client: Workload, method: str, path: str, headers: dict[str, str]
) -> http.client.HTTPResponse:
    """One request to ratings through the client's sidecar; the response, body read."""
    conn = http.client.HTTPConnection("127.0.0.1", client.outbound_port, timeout=10)
    try:
        conn.request(method, path, headers={"Host": "ratings:9080", **headers})
        resp = conn.getresponse()
        resp.read()
        return resp
    finally:
        conn.close()


def test_cors_preflight_answered_by_the_policy(tasks: Bookinfo) -> None:
    tasks.apply("virtual-service-ratings-cors.yaml")
    asked = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "x-foo-bar"}
    ok = raw(tasks.client, "OPTIONS", "/ratings/0", {"Origin": "https://example.com", **asked})
    assert ok.status == 200
    assert ok.headers["access-control-allow-origin"] == "https://example.com"
    assert set(ok.headers["access-control-allow-methods"].split(",")) == {"POST", "GET"}
    assert ok.headers["access-control-allow-headers"].lower() == "x-foo-bar"
    assert ok.headers["access-control-max-age"] == "86400"
    assert "x-served-by" not in ok.headers  # the sidecar answered; ratings never saw it

    other = raw(tasks.client, "OPTIONS", "/ratings/0", {"Origin": "https://evil.example", **asked})
    assert "access-control-allow-origin" not in other.headers

    simple = raw(tasks.client, "GET", "/ratings/0", {"Origin": "https://example.com"})
    assert simple.status == 200
    assert simple.headers["access-control-allow-origin"] == "https://example.com"


def test_header_edits_and_rewrites(tasks: Bookinfo) -> None:
    tasks.apply("virtual-service-ratings-headers.yaml")
    resp = raw(tasks.client, "GET", "/ratings/0", {"x-debug": "1"})
    assert resp.status == 200
    assert resp.headers["x-ratings-route"] == "edited"
    assert "x-served-by" not in resp.headers
    received = tasks.stats("ratings-v1")["recent"][-1]
    assert received["path"] == "/ratings/0"
    assert received["headers"]["x-bookinfo-route"] == "edited"
    assert "x-debug" not in received["headers"]

    tasks.apply("virtual-service-ratings-rewrite.yaml")
    status, body = tasks.client.get("ratings:9080", "/v1/bookRatings/0")
    assert status == 200 and isinstance(body, dict), body
    assert body["ratings"] == {"Reviewer1": 5, "Reviewer2": 4}
    assert tasks.stats("ratings-v1")["recent"][-1]["path"] == "/ratings/0"
    assert tasks.client.get("ratings:9080", "/ratings/0")[0] == 200  # the old path still works


# ------------------------------------------------------------------------------- security

DETAILS_SORRY = "Sorry, product details are currently unavailable for this book."


def _delete(tasks: Bookinfo, *names: str) -> None:
    for name in names:
        done = tasks.mesh.cli("delete", "-f", str(RULES / name), "--wait")
        assert done.returncode == 0, done.stderr


def _direct(tasks: Bookinfo) -> tuple[int, str] | None:
    """``GET /productpage`` from a client without a sidecar (a browser on the demo's direct
    link): status and body, or None when the connection is refused or closed unanswered."""
    port = tasks.inbound_port(tasks.apps["productpage-v1"])
    try:
        status, body = request(port, "productpage:9080", "/productpage", timeout=30)
    except (OSError, http.client.HTTPException):
        return None
    return status, str(body)


def test_mutual_tls_migration(tasks: Bookinfo) -> None:
    """PERMISSIVE by default: a client without a sidecar and sidecar clients both reach
    productpage. STRICT: only sidecar clients, which never notice the change (the page,
    fetched through a sidecar, still has productpage's mTLS calls to reviews in it)."""
    assert _direct(tasks) is not None and ANSWERED_BY.search(tasks.page())
    tasks.apply("peer-authentication-strict.yaml")
    try:
        wait_until(lambda: _direct(tasks) is None, timeout=30, what="plain text refused")
        status, body = tasks.client.get("productpage:9080", "/productpage", timeout=30)
        assert status == 200 and ANSWERED_BY.search(str(body)), (status, body)
    finally:
        _delete(tasks, "peer-authentication-strict.yaml")
    wait_until(lambda: _direct(tasks) is not None, timeout=30, what="plain text accepted again")


def _page_shows(tasks: Bookinfo, check: Any) -> bool:
    got = _direct(tasks)
    return got is not None and got[0] == 200 and bool(check(got[1]))


def test_authorization_for_http_traffic(tasks: Bookinfo) -> None:
    """Istio's task: allow nothing, then let anyone GET productpage, then productpage's
    identity GET details and reviews, then reviews' identity GET ratings."""
    files = (
        "authorization-allow-nothing.yaml",
        "authorization-productpage-viewer.yaml",
        "authorization-details-reviews-viewer.yaml",
        "authorization-ratings-viewer.yaml",
    )

    def with_stars(page: str) -> bool:  # v2 or v3 answered, and ratings too
        found = ANSWERED_BY.search(page)
        return bool(found) and found.group(1) != "v1" and RATINGS_SORRY not in page

    try:
        tasks.apply(files[0])
        wait_until(
            lambda: _direct(tasks) == (403, "RBAC: access denied"),
            timeout=30,
            what="productpage denied",
        )
        tasks.apply(files[1])
        wait_until(
            lambda: _page_shows(tasks, lambda p: DETAILS_SORRY in p and REVIEWS_SORRY in p),
            timeout=30,
            what="the page without details and reviews",
        )
        tasks.apply(files[2])
        wait_until(
            lambda: _page_shows(
                tasks,
                lambda p: (
                    DETAILS_SORRY not in p
                    and (found := ANSWERED_BY.search(p)) is not None
                    and found.group(1) != "v1"
                    and RATINGS_SORRY in p
                ),
            ),
            timeout=30,
            what="details and reviews, but no ratings",
        )
        tasks.apply(files[3])
        wait_until(lambda: _page_shows(tasks, with_stars), timeout=30, what="the stars")
    finally:
        _delete(tasks, *reversed(files))


# What the demo's authorizer answers a denied check, word for word Istio's sample's.
EXT_AUTHZ_DENIED = "denied by ext_authz for not found header `x-ext-authz: allow` in the request"


def _direct_with(
    tasks: Bookinfo, path: str, headers: dict[str, str]
) -> tuple[int, str, http.client.HTTPMessage]:
    """``GET path`` of productpage from a client without a sidecar (curl on the demo's direct
    link), with ``headers``: status, body and response headers."""
    port = tasks.inbound_port(tasks.apps["productpage-v1"])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": "productpage:9080", **headers})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace"), resp.headers
    finally:
        conn.close()


def test_external_authorization(tasks: Bookinfo) -> None:
    """Istio's External Authorization task on the demo: a CUSTOM policy sends productpage's
    /productpage requests to the demo's authorizer (sample-ext-authz-http, from the demo's
    mesh-config.yaml), which allows ``x-ext-authz: allow`` and denies anything else."""
    deny, allow = {"x-ext-authz": "deny"}, {"x-ext-authz": "allow"}
    status, page, _ = _direct_with(tasks, "/productpage", deny)
    assert status == 200 and ANSWERED_BY.search(page), (status, page[:300])  # no policy yet
    tasks.apply("authorization-ext-authz.yaml")
    try:
        wait_until(
            lambda: _direct_with(tasks, "/productpage", deny)[0] == 403,
            timeout=30,
            what="the authorizer asked",
        )
        # Denied: the authorizer's own status, body and headers reach the client.
        status, body, headers = _direct_with(tasks, "/productpage", {**deny, "Cookie": "user=x"})
        assert (status, body) == (403, EXT_AUTHZ_DENIED)
        assert headers["x-ext-authz-check-result"] == "denied"
        # What it was sent: the path, and of the headers the one includeRequestHeadersInCheck
        # lists, not the cookie.
        check = json.loads(headers["x-ext-authz-check-received"])
        assert check["path"] == "/productpage", check
        assert check["headers"]["x-ext-authz"] == "deny" and "cookie" not in check["headers"]
        assert _direct_with(tasks, "/productpage", {})[:2] == (403, EXT_AUTHZ_DENIED)

        # Allowed: the whole page, productpage's own calls (to details, reviews) untouched.
        status, page, _ = _direct_with(tasks, "/productpage", allow)
        assert status == 200 and ANSWERED_BY.search(page) and DETAILS_SORRY not in page, page
        # A path the rules do not match is not checked (the authorizer would deny it).
        status, body, _ = _direct_with(tasks, "/api/v1/products/0", deny)
        assert status == 200 and "Natsume Soseki" in body, body
    finally:
        _delete(tasks, "authorization-ext-authz.yaml")

"""AuthorizationPolicy ``action: CUSTOM`` end to end, in the shape of Istio's "External
Authorization" task: ``tsunagi up --mesh-config`` defines the providers, the demo's HTTP
authorizer (recording its checks: ``apps/ext_authz.py``) runs in the mesh under ``tsunagi
run``, and real Envoy sidecars ask it about the requests a CUSTOM policy's rules match.

What the client receives is asserted: the authorizer's own 403 and body on deny, the app's
answer (with the header the authorizer added) on allow; which requests reached the
authorizer, at which path (``pathPrefix`` in front) and with which headers
(``includeRequestHeadersInCheck``), is read from the authorizer itself.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .mesh import Mesh, Workload, apply_recorded, delete_recorded, free_port, request, wait_until

pytestmark = pytest.mark.e2e

DENIED_BODY = "denied by ext_authz for not found header `x-ext-authz: allow` in the request"
RBAC_DENIED = (403, "RBAC: access denied")
UNLISTED = "x-not-in-check"
"""Sent with every request; not in includeRequestHeadersInCheck, so never to the authorizer."""
RECEIVED = "x-ext-authz-check-received"
"""The authorizer's summary header, on every answer: in no headersTo* list, so never passed on."""
DOWN_PORT = free_port()  # nothing listens here: the "down" providers' endpoint

MESH_CONFIG = f"""
extensionProviders:
- name: sample-ext-authz-http
  envoyExtAuthzHttp:
    service: ext-authz.default.svc.cluster.local
    port: 8000
    pathPrefix: /check
    includeRequestHeadersInCheck: [x-ext-authz]
    headersToUpstreamOnAllow: [x-ext-authz-check-result]
    headersToDownstreamOnDeny: [x-ext-authz-check-result, content-type]
- name: down-closed
  envoyExtAuthzHttp: {{service: default/down-authz.example, port: {DOWN_PORT}}}
- name: down-open
  envoyExtAuthzHttp: {{service: down-authz.example, port: {DOWN_PORT}, failOpen: true}}
"""

DOWN_ENTRY = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: down-authz}}
spec:
  hosts: [down-authz.example]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
  ports: [{{number: {DOWN_PORT}, name: http, protocol: HTTP}}]
"""


def custom_policy(
    provider: str = "sample-ext-authz-http", name: str = "ext-authz", selector: str = "app: web"
) -> str:
    """Istio's task policy: requests to /headers of the workloads with labels ``selector``
    (``web``) go to ``provider``."""
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}}}
spec:
  selector: {{matchLabels: {{{selector}}}}}
  action: CUSTOM
  provider: {{name: {provider}}}
  rules:
  - to: [{{operation: {{paths: ["/headers"]}}}}]
"""


DENY_HEADERS = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-headers}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/headers"]}}]
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Workload]]:
    base = Path(tmp_path_factory.mktemp("ext-authz"))
    (base / "mesh.yaml").write_text(MESH_CONFIG)
    mesh = Mesh(base / "state", up_args=("--mesh-config", str(base / "mesh.yaml")))
    mesh.state_dir.mkdir(parents=True)
    mesh.up()
    try:
        mesh.run("ext-authz", "v1", 8000, "ext_authz.py")
        mesh.run("web", "v1")
        client = mesh.client()
        assert mesh.apply(DOWN_ENTRY, "--wait").returncode == 0
        yield mesh, client
    finally:
        mesh.close()


@pytest.fixture
def policies(live: tuple[Mesh, Workload]) -> Iterator[list[str]]:
    """Policies a test applies; deleted afterwards."""
    applied: list[str] = []
    yield applied
    delete_recorded(live[0], applied)


def send(client: Workload, path: str, verdict: str = "") -> tuple[int, Any, dict[str, str]]:
    """GET ``web`` + ``path`` through the client's sidecar, with ``x-ext-authz: verdict``
    when given: (status, JSON body or text, response headers)."""
    c = http.client.HTTPConnection("127.0.0.1", client.outbound_port, timeout=10)
    headers = {"Host": "web:9080", UNLISTED: "1"} | ({"x-ext-authz": verdict} if verdict else {})
    try:
        c.request("GET", path, headers=headers)
        resp = c.getresponse()
        raw = resp.read().decode(errors="replace")
        answer = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        c.close()
    try:
        return resp.status, json.loads(raw), answer
    except ValueError:
        return resp.status, raw, answer


def seen(client: Workload) -> list[dict[str, Any]]:
    """The checks the authorizer got so far: ``{"path", "headers"}`` each."""
    status, body = client.get("ext-authz:8000", "/_checks")
    assert status == 200 and isinstance(body, dict), body
    return list(body["checks"])


def checks(client: Workload) -> list[str]:
    """The paths the authorizer has been asked about so far (``pathPrefix`` included)."""
    return [c["path"] for c in seen(client)]


def by_web(answer: tuple[int, Any, dict[str, str]]) -> bool:
    status, body, _ = answer
    return status == 200 and isinstance(body, dict) and body["service"] == "web"


def test_istio_task_matched_requests_ask_the_authorizer(
    live: tuple[Mesh, Workload], policies: list[str]
) -> None:
    mesh, client = live
    assert by_web(send(client, "/headers", "deny"))  # no policy yet
    out = apply_recorded(mesh, policies, custom_policy())
    assert "warning" not in out.lower(), out
    wait_until(lambda: send(client, "/headers", "deny")[0] == 403, what="CUSTOM in force")
    before = len(checks(client))

    # Denied: the authorizer's own status, body and header reach the client.
    status, body, headers = send(client, "/headers", "deny")
    assert (status, body) == (403, DENIED_BODY)
    assert headers["x-ext-authz-check-result"] == "denied"
    assert RECEIVED not in headers  # headersToDownstreamOnDeny lists what the client gets

    # Allowed: the app answers and sees the header the authorizer added.
    answer = send(client, "/headers", "allow")
    assert by_web(answer), answer
    assert answer[1]["headers"]["x-ext-authz-check-result"] == "allowed"
    assert answer[1]["path"] == "/headers"
    assert answer[1]["headers"][UNLISTED] == "1"  # the app gets every header
    assert RECEIVED not in answer[1]["headers"]  # headersToUpstreamOnAllow lists what it adds

    # A path the rules do not match never reaches the authorizer, whatever it carries.
    assert by_web(send(client, "/ip", "deny"))
    assert by_web(send(client, "/ip"))
    got = seen(client)[before:]
    assert [c["path"] for c in got] == ["/check/headers", "/check/headers"], got
    # What it was asked: the listed header, not the others (Envoy always adds its own few).
    assert [c["headers"].get("x-ext-authz") for c in got] == ["deny", "allow"], got
    assert all(UNLISTED not in c["headers"] for c in got), got
    assert not any(p.endswith("/ip") for p in checks(client))


def test_custom_runs_before_deny(live: tuple[Mesh, Workload], policies: list[str]) -> None:
    mesh, client = live
    apply_recorded(mesh, policies, custom_policy())
    apply_recorded(mesh, policies, DENY_HEADERS)
    wait_until(lambda: send(client, "/headers", "allow")[:2] == RBAC_DENIED, what="DENY in force")
    before = len(checks(client))
    # The authorizer denies first: its answer, not the RBAC one.
    assert send(client, "/headers", "deny")[:2] == (403, DENIED_BODY)
    # It allows, then the DENY policy denies: both filters ran, CUSTOM first.
    assert send(client, "/headers", "allow")[:2] == RBAC_DENIED
    assert checks(client)[before:] == ["/check/headers", "/check/headers"]


def test_authorizer_down_fails_closed_unless_fail_open(
    live: tuple[Mesh, Workload], policies: list[str]
) -> None:
    mesh, client = live
    apply_recorded(mesh, policies, custom_policy("down-closed"))
    # failOpen false: Envoy's default statusOnError, 403, without the RBAC body. (Waited
    # for: a connection the last test's DENY policy accepted may still be draining.)
    wait_until(
        lambda: send(client, "/headers", "allow")[:2] == (403, ""), what="down-closed in force"
    )
    status, body, _ = send(client, "/headers", "allow")
    assert (status, body) == (403, ""), body
    assert by_web(send(client, "/ip"))  # unmatched paths do not need the authorizer

    apply_recorded(mesh, policies, custom_policy("down-open"))
    # failOpen true: the request goes on to the app.
    wait_until(lambda: by_web(send(client, "/headers")), what="down-open lets requests pass")


def test_undefined_provider_warns_and_denies_what_the_rules_match(
    live: tuple[Mesh, Workload], policies: list[str]
) -> None:
    mesh, client = live
    out = apply_recorded(mesh, policies, custom_policy("nobody"))
    assert "spec.provider: provider 'nobody' is not defined" in out, out
    assert "sample-ext-authz-http" in out, out  # the providers one could use instead
    wait_until(lambda: send(client, "/headers", "allow")[:2] == RBAC_DENIED, what="fail closed")
    assert by_web(send(client, "/ip", "allow"))


def test_ingress_gateway_asks_the_authorizer(
    live: tuple[Mesh, Workload], policies: list[str]
) -> None:
    """A CUSTOM policy selecting a gateway's labels: the gateway asks the authorizer (through
    its own outbound cluster) before routing to the app."""
    mesh, client = live
    port = free_port()
    mesh.gateway("edge", {"istio": "edge"})
    gateway = f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  selector: {{istio: edge}}
  servers: [{{port: {{number: {port}, name: http, protocol: HTTP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge}}
spec:
  hosts: ["*"]
  gateways: [edge]
  http: [{{route: [{{destination: {{host: web, port: {{number: 9080}}}}}}]}}]
"""
    apply_recorded(mesh, policies, gateway)
    apply_recorded(mesh, policies, custom_policy(name="edge", selector="istio: edge"))

    def via_edge(path: str, verdict: str) -> tuple[int, Any]:
        return request(port, "shop.example", path, {"x-ext-authz": verdict})

    wait_until(lambda: via_edge("/headers", "deny") == (403, DENIED_BODY), what="CUSTOM at edge")
    before = len(checks(client))
    status, body = via_edge("/headers", "allow")
    assert status == 200 and isinstance(body, dict) and body["service"] == "web", body
    assert body["headers"]["x-ext-authz-check-result"] == "allowed"
    assert via_edge("/ip", "deny")[0] == 200
    assert checks(client)[before:] == ["/check/headers"]

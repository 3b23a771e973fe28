"""AuthorizationPolicy end to end, in the shape of Istio's "Authorization for HTTP traffic"
task: real sidecars, real Envoy RBAC filters, and what a client then receives.

One mesh for the module (a ``web`` echo server and an idle client, both with sidecars);
every test applies the policies it needs with ``--wait`` and deletes them afterwards.

A policy change reaches new connections at once; a connection the client's sidecar already
holds keeps the listener config it was accepted with until Envoy drains it (``tsunagi run``
gives Envoy ``--drain-time-s 2``; Istio's sidecars drain the same way). So after each change
the tests wait (a generous bound, not a measurement) until the client sees the new answer,
then assert everything else.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .mesh import (
    Mesh,
    Workload,
    apply_recorded,
    delete_recorded,
    free_port,
    request,
    stop,
    wait_until,
)

pytestmark = pytest.mark.e2e

DENIED = (403, "RBAC: access denied")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Workload]]:
    mesh = Mesh(Path(tmp_path_factory.mktemp("authz")) / "state")
    mesh.state_dir.mkdir(parents=True)
    mesh.up()
    try:
        mesh.run("web", "v1")
        yield mesh, mesh.client()
    finally:
        mesh.close()


@pytest.fixture
def policies(live: tuple[Mesh, Workload]) -> Iterator[list[str]]:
    """Policies a test applies (YAML texts); deleted afterwards, so the next test starts
    from a mesh without any."""
    applied: list[str] = []
    yield applied
    delete_recorded(live[0], applied)


def send(
    client: Workload, method: str = "GET", path: str = "/", headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """One request to ``web`` through the client's sidecar: (status, JSON body or text)."""
    if method == "GET":
        return request(client.outbound_port, "web:9080", path, headers)
    c = http.client.HTTPConnection("127.0.0.1", client.outbound_port, timeout=10)
    try:
        c.request(method, path, body=b"", headers={"Host": "web:9080", **(headers or {})})
        resp = c.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        c.close()


def answered_by_web(answer: tuple[int, Any]) -> bool:
    status, body = answer
    return status == 200 and isinstance(body, dict) and body["service"] == "web"


ALLOW_NOTHING = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: default}
spec: {}
"""

ALLOW_GET_ON_PATHS = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - to:
    - operation:
        methods: [GET]
        paths: [/api/*, /health, "*.json", "/books/{*}/reviews"]
"""

DENY_BY_HEADER = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-blocked, namespace: istio-system}
spec:
  action: DENY
  rules:
  - when:
    - key: request.headers[x-block]
      values: ["yes"]
"""


def test_allow_nothing_then_allow_get_by_path_then_deny_by_header(
    live: tuple[Mesh, Workload], policies: list[str]
) -> None:
    mesh, client = live
    assert answered_by_web(send(client, path="/api/books"))

    # Istio's allow-nothing: an ALLOW policy without rules selects web and allows nothing.
    apply_recorded(mesh, policies, ALLOW_NOTHING)
    wait_until(lambda: send(client, path="/api/books") == DENIED, what="allow-nothing in force")
    for method, path in (("GET", "/"), ("GET", "/api/books"), ("POST", "/api/books")):
        assert send(client, method, path) == DENIED, (method, path)

    # Then GET on some paths (exact, prefix, suffix, template) is allowed; nothing else.
    apply_recorded(mesh, policies, ALLOW_GET_ON_PATHS)
    wait_until(lambda: answered_by_web(send(client, path="/health")), what="the ALLOW policy")
    for path in ("/api/books", "/health", "/data/list.json", "/books/7/reviews"):
        answer = send(client, path=path)
        assert answered_by_web(answer), (path, answer)
        assert answer[1]["path"] == path
    for method, path in (
        ("GET", "/"),
        ("GET", "/healthz"),
        ("GET", "/books/7/8/reviews"),
        ("POST", "/api/books"),
        ("DELETE", "/health"),
    ):
        assert send(client, method, path) == DENIED, (method, path)

    # A mesh-wide DENY (root namespace) wins over the ALLOW: by header.
    apply_recorded(mesh, policies, DENY_BY_HEADER)
    blocked = {"x-block": "yes"}
    wait_until(lambda: send(client, path="/api/books", headers=blocked) == DENIED, what="DENY")
    assert answered_by_web(send(client, path="/api/books", headers={"x-block": "no"}))
    assert answered_by_web(send(client, path="/api/books"))


def test_no_policy_again_allows_everything(
    live: tuple[Mesh, Workload], policies: list[str]
) -> None:
    """Deleting the policies removes the filters: all is allowed again. This test makes
    its own allow-nothing first, so it holds when run alone too."""
    mesh, client = live
    apply_recorded(mesh, policies, ALLOW_NOTHING)
    wait_until(lambda: send(client, "POST", "/x") == DENIED, what="allow-nothing in force")
    deleted = mesh.cli("delete", "-f", "-", "--wait", stdin=policies.pop())
    assert deleted.returncode == 0, deleted.stderr
    wait_until(lambda: send(client, "POST", "/x")[0] == 200, what="the policy to be gone")
    for method in ("GET", "POST", "DELETE"):
        status, _ = send(client, method, "/anything")
        assert status == 200, method


def no_admin(selector: str) -> str:
    """A DENY on ``/admin*`` for the workloads (or gateways) with label ``selector``."""
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin, namespace: default}}
spec:
  selector: {{matchLabels: {{{selector}}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/admin*"]}}}}]
"""


def edge(name: str, port: int, protocol: str, route: str) -> str:
    """A Gateway ``name`` (selecting ``istio: NAME``) with one server on ``port`` for any
    host, and a VirtualService bound to it with one ``route`` (``http:`` or ``tcp:``)."""
    return f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: default}}
spec:
  selector: {{istio: {name}}}
  servers:
  - port: {{number: {port}, name: {protocol.lower()}, protocol: {protocol}}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [{name}]
  {route}
"""


# Paths that mean /admin once normalized as Istio's default (BASE) does; http.client sends
# a path exactly as given, unlike requests/httpx.
ADMIN_IN_DISGUISE = ("/x/../admin", "/%61dmin", "/public/./../admin/users", "/%2e%2e/admin")


def test_deny_on_a_path_holds_for_every_spelling_of_it(
    live: tuple[Mesh, Workload], policies: list[str]
) -> None:
    """Istio normalizes paths on every connection manager before RBAC looks at them: a DENY
    on ``/admin*`` refuses ``/x/../admin`` and ``/%61dmin`` too, through the client's
    sidecar and straight at web's inbound listener; the app sees the normalized path."""
    mesh, client = live
    apply_recorded(mesh, policies, no_admin("app: web"))
    wait_until(lambda: send(client, path="/admin") == DENIED, what="the DENY policy")
    port = _web_inbound_port(mesh)
    for path in ADMIN_IN_DISGUISE:
        assert send(client, path=path) == DENIED, path
        assert _from("127.0.0.1", port, path) == DENIED, path
    answer = send(client, path="/admin/../public/%61")
    assert answered_by_web(answer), answer
    assert answer[1]["path"] == "/public/a"


def _web_inbound_port(mesh: Mesh) -> int:
    items = mesh.api("GET", "/v1/resources?kind=workloads")["items"]
    return int(next(i["document"]["target_port"] for i in items if i["name"].startswith("web-")))


def _from(source: str, port: int, path: str = "/", host: str = "web:9080") -> tuple[int, Any]:
    """A GET to 127.0.0.1:``port`` (by default web's inbound listener) from loopback
    address ``source``: (status, body text)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        c.request("GET", path, headers={"Host": host})
        resp = c.getresponse()
        raw = resp.read().decode(errors="replace")
        return resp.status, raw
    finally:
        c.close()


IP_ALLOWLIST = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-lab, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - from:
    - source: {ipBlocks: [127.0.0.16/28], notIpBlocks: [127.0.0.20]}
"""


def test_ip_blocks_judge_the_address_the_connection_comes_from(
    live: tuple[Mesh, Workload], policies: list[str]
) -> None:
    mesh, client = live
    port = _web_inbound_port(mesh)
    assert _from("127.0.0.17", port)[0] == 200
    apply_recorded(mesh, policies, IP_ALLOWLIST)
    # In the block: allowed; the client's sidecar connects from 127.0.0.1: denied; a
    # notIpBlocks address inside the block: denied.
    status, body = _from("127.0.0.17", port)
    assert status == 200 and '"service": "web"' in body
    assert _from("127.0.0.30", port)[0] == 200
    wait_until(lambda: send(client) == DENIED, what="the client's connection to be drained")
    assert _from("127.0.0.20", port) == DENIED
    assert _from("127.0.0.40", port) == DENIED


PRINCIPALS = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-callers, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]
    to: [{operation: {methods: [GET]}}]
  - from: [{source: {namespaces: [ops]}}]
"""


def test_principals_are_the_callers_certificate_identity(
    live: tuple[Mesh, Workload], policies: list[str]
) -> None:
    """Istio's "allow by principal": the client sidecar's mTLS certificate names
    ``cluster.local/ns/default/sa/client`` (its service account defaults to the service
    name), which the rule allows for GET; a plaintext caller has no principal at all."""
    mesh, client = live
    port = _web_inbound_port(mesh)
    out = apply_recorded(mesh, policies, PRINCIPALS)
    assert "no workload has" not in out, out
    # Both at once: the states before (another test's policy, or none) give one answer to both.
    wait_until(
        lambda: send(client, "POST") == DENIED and answered_by_web(send(client)),
        what="the principals policy",
    )
    answer = send(client, path="/by-principal")
    assert answered_by_web(answer), answer
    # What the app is told of its caller (XFCC) is the identity the rule matched.
    assert "URI=spiffe://cluster.local/ns/default/sa/client" in answer[1]["headers"].get(
        "x-forwarded-client-cert", ""
    )
    # Straight to the inbound listener in plain text (PERMISSIVE takes it): no certificate,
    # no principal, no namespace: denied.
    assert _from("127.0.0.1", port) == DENIED
    # Over mTLS too, another identity of the same namespace is not the principal: denied.
    intruder = mesh.run("intruder", "v1", 80, "idle.py", False)
    try:
        assert send(intruder) == DENIED
        assert answered_by_web(send(client))  # the same moment, the principal still is
    finally:
        stop(intruder.proc)


def _via_gateway(source: str, port: int, path: str = "/") -> tuple[int, Any]:
    """A request to the gateway's server ``port`` from loopback address ``source``."""
    return _from(source, port, path, "shop.example.com")


def test_ingress_gateway_allowlist_by_client_address(
    live: tuple[Mesh, Workload], policies: list[str]
) -> None:
    """Istio's ingress allowlist: an ALLOW policy selecting the gateway by its labels lets
    only some client addresses in; a DENY on a path applies there too."""
    mesh, _ = live
    port = free_port()
    mesh.gateway("edge", {"istio": "edge"})
    to_web = "http: [{route: [{destination: {host: web, port: {number: 9080}}}]}]"
    apply_recorded(mesh, policies, edge("edge", port, "HTTP", to_web))
    wait_until(lambda: _via_gateway("127.0.0.40", port)[0] == 200, what="the gateway route")
    apply_recorded(
        mesh,
        policies,
        f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ingress-allowlist, namespace: default}}
spec:
  selector: {{matchLabels: {{istio: edge}}}}
  rules:
  - from: [{{source: {{ipBlocks: [127.0.0.16/28]}}}}]
    to: [{{operation: {{ports: ["{port}"]}}}}]
---
{no_admin("istio: edge")}""",
    )
    wait_until(lambda: _via_gateway("127.0.0.40", port) == DENIED, what="the allowlist")
    status, body = _via_gateway("127.0.0.17", port, "/shop")
    assert status == 200 and '"service": "web"' in body
    assert _via_gateway("127.0.0.17", port, "/admin/users") == DENIED
    for path in ADMIN_IN_DISGUISE:  # the gateway normalizes the path as sidecars do
        assert _via_gateway("127.0.0.17", port, path) == DENIED, path
    assert _via_gateway("127.0.0.1", port) == DENIED


def _preflight(port: int) -> tuple[int, str, str]:
    """A CORS preflight for a GET from ``https://shop.example`` to the gateway's server
    ``port``: (status, its Access-Control-Allow-Origin, body)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {
            "Host": "shop.example.com",
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "GET",
        }
        c.request("OPTIONS", "/shop", headers=headers)
        resp = c.getresponse()
        body = resp.read().decode(errors="replace")
        return resp.status, resp.getheader("access-control-allow-origin") or "", body
    finally:
        c.close()


def _edge_allows(method: str) -> str:
    """An ALLOW policy for requests with ``method`` at the ``istio: cors`` gateway."""
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: edge-allows-{method.lower()}, namespace: default}}
spec:
  selector: {{matchLabels: {{istio: cors}}}}
  rules:
  - to: [{{operation: {{methods: [{method}]}}}}]
"""


def test_a_cors_preflight_at_the_gateway_is_judged_by_its_policies(
    live: tuple[Mesh, Workload], policies: list[str]
) -> None:
    """Istio's filter order on a gateway: RBAC runs before CORS, so a preflight (OPTIONS)
    is a request like any other: a policy allowing GET only denies it, with no CORS
    answer; once the policy allows OPTIONS too, the route's corsPolicy answers it."""
    mesh, _ = live
    port = free_port()
    gateway = mesh.gateway("cors", {"istio": "cors"})
    try:
        route = (
            "http: [{corsPolicy: {allowOrigins: [{exact: 'https://shop.example'}], "
            "allowMethods: [GET]}, route: [{destination: {host: web, port: {number: 9080}}}]}]"
        )
        apply_recorded(mesh, policies, edge("cors", port, "HTTP", route))
        allowed = (200, "https://shop.example")
        wait_until(lambda: _preflight(port)[:2] == allowed, what="the CORS route")
        apply_recorded(mesh, policies, _edge_allows("GET"))
        wait_until(lambda: _preflight(port) == (403, "", DENIED[1]), what="the GET policy")
        status, body = _via_gateway("127.0.0.1", port, "/shop")
        assert status == 200 and '"service": "web"' in body
        apply_recorded(mesh, policies, _edge_allows("OPTIONS"))  # ALLOW policies add up
        wait_until(lambda: _preflight(port)[:2] == allowed, what="OPTIONS allowed")
    finally:
        stop(gateway.proc)


@pytest.fixture(scope="module")
def tcp_echo(live: tuple[Mesh, Workload]) -> None:
    """A ``tcp-echo`` service (TCP port 9000) for the module's TCP tests."""
    mesh, _ = live
    mesh.run("tcp-echo", "v1", "9000/tcp", "tcp_echo.py")  # type: ignore[arg-type]


def _echoes(port: int, source: str = "127.0.0.1") -> bool:
    """Whether a new connection to ``port`` from ``source`` gets its line echoed
    (tcp_echo.py prefixes it with its version); a connection RBAC refuses is closed with
    nothing echoed."""
    try:
        with socket.create_connection(("127.0.0.1", port), 5, (source, 0)) as s:
            s.sendall(b"hello\n")
            return s.makefile("rb").readline() == b"v1 hello\n"
    except OSError:
        return False


def test_tcp_port_principals_and_istios_rules_for_http_fields(
    live: tuple[Mesh, Workload], policies: list[str], tcp_echo: None
) -> None:
    """Istio's "Authorization for TCP traffic": a TCP port is judged by who connects (the
    client sidecar's certificate); a DENY rule naming an HTTP method cannot be judged on
    TCP, so it refuses every connection (Istio's rule: a DENY denies more, never less)."""
    mesh, _ = live
    local = free_port()
    mesh.run("tcp-client", "v1", 80, "idle.py", False, "--upstream", f"tcp-echo:9000@{local}")
    wait_until(lambda: _echoes(local), what="tcp-echo through the client's sidecar")

    allow = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tcp-echo-callers, namespace: default}
spec:
  selector: {matchLabels: {app: tcp-echo}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/SA]}}]
    to: [{operation: {ports: ["9000"]}}]
"""
    apply_recorded(mesh, policies, allow.replace("SA", "somebody-else"))
    wait_until(lambda: not _echoes(local), what="the ALLOW policy naming another caller")
    policies.pop()  # the next one replaces it (same name): one to delete afterwards
    apply_recorded(mesh, policies, allow.replace("SA", "tcp-client"))
    wait_until(lambda: _echoes(local), what="the ALLOW policy naming the client")
    assert all(_echoes(local) for _ in range(5))

    apply_recorded(
        mesh,
        policies,
        """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-posts, namespace: default}
spec:
  selector: {matchLabels: {app: tcp-echo}}
  action: DENY
  rules:
  - to: [{operation: {methods: [POST], ports: ["9000"]}}]
""",
    )
    wait_until(lambda: not _echoes(local), what="the DENY rule to refuse every connection")
    assert not any(_echoes(local) for _ in range(3))


def test_a_gateway_tcp_server_is_judged_by_the_policies_selecting_the_gateway(
    live: tuple[Mesh, Workload], policies: list[str], tcp_echo: None
) -> None:
    """As in Istio, a gateway's TCP server runs the network RBAC filters before its TCP
    proxy: a DENY by ipBlocks selecting the gateway closes connections from that address
    and leaves the others alone."""
    mesh, _ = live
    port = free_port()
    mesh.gateway("edge-tcp", {"istio": "edge-tcp"})
    to_echo = "tcp: [{route: [{destination: {host: tcp-echo, port: {number: 9000}}}]}]"
    apply_recorded(mesh, policies, edge("edge-tcp", port, "TCP", to_echo))
    wait_until(lambda: _echoes(port, "127.0.0.40"), what="the gateway's TCP server")
    apply_recorded(
        mesh,
        policies,
        """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: edge-tcp-blocklist, namespace: default}
spec:
  selector: {matchLabels: {istio: edge-tcp}}
  action: DENY
  rules:
  - from: [{source: {ipBlocks: [127.0.0.40]}}]
""",
    )
    wait_until(lambda: not _echoes(port, "127.0.0.40"), what="the DENY policy on the gateway")
    assert not any(_echoes(port, "127.0.0.40") for _ in range(3))
    assert all(_echoes(port, "127.0.0.17") for _ in range(3))

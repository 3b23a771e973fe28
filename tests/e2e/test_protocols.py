"""Service port protocols through real sidecars: gRPC end to end (a unary call, a fault
abort's gRPC status, retries on UNAVAILABLE), an HTTP/2 port served by an app that speaks
nothing but h2c, and a TCP port that is registered without an HTTP route pretending to
serve it.

A gRPC client in the mesh dials its own sidecar's outbound listener (``TSUNAGI_OUTBOUND``)
with the service as ``:authority``, as the README says; here the test is that client.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from .apps import h2c
from .mesh import Mesh, Workload, request, wait_until

pytestmark = pytest.mark.e2e

METHOD = "/tsunagi.test.Echo/Call"


def greeter_rule(http: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: greeter}}
spec:
  hosts: [greeter]
  http:
{http.strip(chr(10))}
"""


def call(client: Workload, body: dict[str, Any], authority: str = "greeter:9090") -> Any:
    """One unary call through ``client``'s sidecar, as an app in the mesh makes it."""
    options = [("grpc.default_authority", authority), ("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(f"127.0.0.1:{client.outbound_port}", options=options) as ch:
        reply = ch.unary_unary(METHOD)(json.dumps(body).encode(), timeout=10)
    return json.loads(reply)


def status_of(client: Workload, body: dict[str, Any]) -> grpc.StatusCode:
    """The status a call ends with (OK, or the error the client saw)."""
    try:
        call(client, body)
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def apply(mesh: Mesh, text: str) -> None:
    result = mesh.apply(text, "--wait")
    assert result.returncode == 0, result.stderr


def test_unary_grpc_call_goes_through_both_sidecars(mesh: Mesh) -> None:
    greeter = mesh.run("greeter", "v1", "9090/grpc", "grpc_echo.py")  # type: ignore[arg-type]
    client = mesh.client()

    reply = call(client, {"key": "hello"})
    assert (reply["service"], reply["name"], reply["attempt"]) == ("greeter", greeter.name, 1)
    # The request came through Envoy (it adds a request id), not straight to the app.
    assert reply["metadata"].get("x-request-id")

    # That it answered at all shows both hops spoke HTTP/2: see the next test.


def test_a_grpc_app_in_the_mesh_dials_tsunagi_outbound(mesh: Mesh) -> None:
    greeter = mesh.run("greeter", "v1", "9090/grpc", "grpc_echo.py")  # type: ignore[arg-type]
    app = mesh.run("caller", "v1", 80, "grpc_client.py", False)
    log = mesh.state_dir / f"{app.name}.log"

    def results() -> dict[str, dict[str, str]]:
        lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
        return {r["how"]: r for r in map(json.loads, lines)}

    wait_until(lambda: len(results()) == 2, 30, "the app's two calls")
    got = results()
    assert got["outbound"] == {"how": "outbound", "status": "OK", "name": greeter.name}
    # By name, gRPC did not tunnel into the sidecar with CONNECT (grpc_proxy is empty): it
    # resolved the name itself, which fails here, saying so.
    by_name = got["by-name"]
    assert by_name["status"] == "UNAVAILABLE", by_name
    assert "resolv" in by_name["details"].lower() and "proxy" not in by_name["details"].lower()


def test_grpc_needs_its_port_declared(mesh: Mesh) -> None:
    """The same app registered as plain HTTP gets HTTP/1.1 from its sidecar, which a gRPC
    server cannot read: declaring the protocol is what makes the call work."""
    mesh.run("greeter", "v1", 9090, "grpc_echo.py")
    client = mesh.client()
    assert status_of(client, {"key": "plain"}) != grpc.StatusCode.OK


def test_fault_abort_grpc_status_reaches_the_client(mesh: Mesh) -> None:
    mesh.run("greeter", "v1", "9090/grpc", "grpc_echo.py")  # type: ignore[arg-type]
    client = mesh.client()
    assert status_of(client, {"key": "before"}) == grpc.StatusCode.OK

    apply(
        mesh,
        greeter_rule("""
  - fault:
      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}
    route:
    - destination: {host: greeter}
"""),
    )
    try:
        call(client, {"key": "aborted"})
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE
    else:
        pytest.fail("the call succeeded despite a 100% abort")
    # The sidecar answered: the server never saw the call (its first attempt is still 1).
    mesh.cli("delete", "virtualservice", "greeter", "--wait")
    assert call(client, {"key": "aborted"})["attempt"] == 1


def test_grpc_retries_on_unavailable(mesh: Mesh) -> None:
    greeter = mesh.run("greeter", "v1", "9090/grpc", "grpc_echo.py")  # type: ignore[arg-type]
    client = mesh.client()

    apply(
        mesh,
        greeter_rule("""
  - retries: {attempts: 3, retryOn: unavailable}
    route:
    - destination: {host: greeter}
"""),
    )
    # The server fails the first two attempts; the sidecar retries and the third answers.
    reply = call(client, {"key": "flaky", "fail_first": 2})
    assert (reply["name"], reply["attempt"]) == (greeter.name, 3)

    apply(
        mesh,
        greeter_rule("""
  - retries: {attempts: 0}
    route:
    - destination: {host: greeter}
"""),
    )
    # Without retries the client sees the server's UNAVAILABLE, after exactly one attempt.
    assert status_of(client, {"key": "once", "fail_first": 1}) == grpc.StatusCode.UNAVAILABLE
    assert call(client, {"key": "once", "fail_first": 1})["attempt"] == 2


def test_http2_port_serves_h2c_and_http1_clients(mesh: Mesh) -> None:
    streams = mesh.run("streams", "v1", "8080/http2", "h2c.py")  # type: ignore[arg-type]
    client = mesh.client()

    # A plain h2c request (prior knowledge) to the client's sidecar.
    status, body = h2c.request(client.outbound_port, "streams:8080")
    assert status == 200
    answer = json.loads(body)
    assert (answer["name"], answer["protocol"]) == (streams.name, "HTTP/2")

    # An HTTP/1.1 client too: its sidecar speaks HTTP/2 upstream, the only thing the app reads.
    status, answer = client.get("streams:8080")
    assert status == 200, answer
    assert isinstance(answer, dict) and answer["name"] == streams.name


def test_tcp_port_is_registered_without_an_http_route(mesh: Mesh) -> None:
    db = mesh.run("db", "v1", "5432/tcp", "echo.py")  # type: ignore[arg-type]
    client = mesh.client()
    items = mesh.api("GET", "/v1/resources?kind=workloads")["items"]
    registered = next(i["document"] for i in items if i["name"] == db.name)
    assert (registered["port"], registered["protocol"]) == (5432, "TCP")

    # No HTTP route for a TCP port: the client's sidecar answers 404 itself.
    status, _ = client.get("db:5432")
    assert status == 404

    # The inbound listener passes bytes through untouched: the app (an HTTP echo, handy
    # here) receives exactly the request sent, without the headers an HTTP proxy adds.
    sent = {"Host": "db", "X-Probe": "raw"}
    status, answer = request(registered["target_port"], "db", headers=sent)
    assert status == 200 and isinstance(answer, dict), answer
    assert answer["name"] == db.name
    assert set(answer["headers"]) == {"host", "x-probe", "accept-encoding"}, answer["headers"]

    log = (mesh.state_dir / f"{db.name}.log").read_text()
    assert "other workloads reach it with tsunagi run --upstream db:5432" in log

"""Istio's JWT tasks end to end: RequestAuthentication on a sidecar (a JWKS served on
loopback, fetched by the control plane only), and JWT claim based routing at an ingress
gateway. Tokens are signed here with keys made here; what is asserted is what the client
receives and what the app sees."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from .mesh import Mesh, free_port, request, started_mesh, wait_until

pytestmark = pytest.mark.e2e

ISSUER = "testing@secure.tsunagi.example"


class Signer:
    """An issuer's RSA key: signs tokens, and publishes its public half as a JWK set."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> str:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return json.dumps({"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]})

    def token(self, issuer: str = ISSUER, expires_in: float = 3600, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": issuer, "sub": "alice", "iat": now, "exp": now + int(expires_in)}
        payload.update(claims)
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": self.kid})


class JwksServer:
    """A JWK set served over HTTP on loopback, remembering who asked (the User-Agent)."""

    def __init__(self, document: str, port: int = 0) -> None:
        """Serves ``document`` on ``port`` (0: a free one)."""
        self.document = document
        self.agents: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.agents.append(self.headers.get("user-agent", ""))
                body = outer.document.encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port or free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def signer() -> Signer:
    return Signer("key-1")


@pytest.fixture
def jwks_server(signer: Signer) -> Iterator[JwksServer]:
    server = JwksServer(signer.jwks())
    yield server
    server.close()


def applied(mesh: Mesh, text: str) -> None:
    result = mesh.apply(text, "--wait")
    assert result.returncode == 0, result.stderr + mesh.log()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def httpbin_jwks_uri(url: str, extra: str = "") -> str:
    """A RequestAuthentication of ``httpbin``'s sidecar whose keys the control plane
    fetches from ``url``; ``extra``: more fields of its rule (YAML lines indented by 4)."""
    return f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: httpbin, namespace: default}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  jwtRules:
  - issuer: "{ISSUER}"
    jwksUri: "{url}"
{extra}"""


def test_request_authentication_with_a_jwks_uri_the_control_plane_fetches(
    mesh: Mesh, signer: Signer, jwks_server: JwksServer
) -> None:
    mesh.run("httpbin", "v1")
    client = mesh.client()
    claims = (
        "    outputClaimToHeaders:\n"
        "    - {header: x-jwt-sub, claim: sub}\n"
        "    - {header: x-jwt-group, claim: group}\n"
    )
    applied(mesh, httpbin_jwks_uri(jwks_server.url, claims))

    def ask(headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return request(client.outbound_port, "httpbin", "/headers", headers)

    good = signer.token(group="dev")
    # The control plane fetches the set and pushes it; until then a token is refused.
    wait_until(lambda: ask(bearer(good))[0] == 200, 30, "a valid token to be accepted")
    status, body = ask(bearer(good))
    assert status == 200
    assert body["headers"]["x-jwt-sub"] == "alice"  # outputClaimToHeaders reached the app
    assert body["headers"]["x-jwt-group"] == "dev"

    forged = Signer("key-1").token()  # same kid, another key
    assert ask(bearer(forged))[0] == 401
    assert ask(bearer(signer.token(expires_in=-600)))[0] == 401  # past Envoy's 60 s skew
    assert ask(bearer(signer.token(issuer="someone-else")))[0] == 401
    assert ask(bearer("not-a-jwt"))[0] == 401
    # No token: passes (only an AuthorizationPolicy can ask for one)
    status, body = ask()
    assert status == 200 and "x-jwt-sub" not in body["headers"]

    # Only the control plane fetched it (aiohttp), never a proxy; proxies need it no more.
    assert jwks_server.agents and all("aiohttp" in a for a in jwks_server.agents)
    jwks_server.close()
    assert ask(bearer(signer.token()))[0] == 200


def test_claim_based_routing_at_the_ingress_gateway(mesh: Mesh, signer: Signer) -> None:
    mesh.run("httpbin", "v1")
    mesh.run("httpbin", "v2")
    mesh.gateway("ingress", {"istio": "ingressgateway"})
    port = free_port()
    applied(
        mesh,
        f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: ingress-jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
  - issuer: "{ISSUER}"
    jwks: '{signer.jwks()}'
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: httpbin-gateway}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin}}
spec:
  hosts: ["*"]
  gateways: [httpbin-gateway]
  http:
  - match:
    - uri: {{prefix: /headers}}
      headers:
        "@request.auth.claims.group": {{exact: dev}}
    route: [{{destination: {{host: httpbin, port: {{number: 9080}}, subset: v2}}}}]
  - match:
    - uri: {{prefix: /headers}}
      headers:
        "@request.auth.claims.groups": {{exact: beta}}
    route: [{{destination: {{host: httpbin, port: {{number: 9080}}, subset: v2}}}}]
  - route: [{{destination: {{host: httpbin, port: {{number: 9080}}, subset: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: httpbin}}
spec:
  host: httpbin
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
""",
    )

    def version(headers: dict[str, str] | None = None) -> str:
        status, body = request(port, "httpbin.example.com", "/headers", headers)
        return body["version"] if status == 200 and isinstance(body, dict) else str(status)

    wait_until(lambda: version() == "v1", 30, "the gateway to route")
    for _ in range(5):  # each answer, not a share of them
        assert version(bearer(signer.token(group="dev"))) == "v2"
        assert version(bearer(signer.token(groups=["ops", "beta"]))) == "v2"  # a list claim
        assert version(bearer(signer.token(group="ops"))) == "v1"
        assert version() == "v1"
    assert version(bearer(Signer("key-1").token(group="dev"))) == "401"


def test_an_authorization_policy_requires_a_token_and_reads_its_claims(
    mesh: Mesh, signer: Signer
) -> None:
    """Istio's task "Authorization with JWT": the RBAC filter reads what the JWT filter
    verified (``requestPrincipals`` is ``ISS/SUB``; ``request.auth.claims[...]``)."""
    mesh.run("httpbin", "v1")
    client = mesh.client()
    applied(
        mesh,
        f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt-example, namespace: default}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  jwtRules:
  - issuer: "{ISSUER}"
    jwks: '{signer.jwks()}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/alice"]}}}}]
    when:
    - key: request.auth.claims[groups]
      values: ["group1"]
""",
    )

    def status(headers: dict[str, str] | None = None) -> int:
        return request(client.outbound_port, "httpbin", "/headers", headers)[0]

    wait_until(lambda: status() == 403, 30, "the policy to be in force")
    assert status(bearer(signer.token(groups=["group1", "group2"]))) == 200
    assert status(bearer(signer.token(groups=["group2"]))) == 403  # the claim is not there
    assert status(bearer(signer.token(sub="bob", groups=["group1"]))) == 403  # another principal
    assert status(bearer(Signer("key-1").token(groups=["group1"]))) == 401  # not verified


@pytest.fixture
def quick_retry_mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mesh]:
    """A mesh whose control plane retries a failed JWKS fetch after 1 s, then 2 s, 4 s...
    (internal TSUNAGI_JWKS_RETRY, for tests only) instead of Istio's minute."""
    monkeypatch.setenv("TSUNAGI_JWKS_RETRY", "1")
    yield from started_mesh(tmp_path)


def _jwks_status(mesh: Mesh, name: str) -> dict[str, Any]:
    """``tsunagi get requestauthentication NAME -o yaml``'s ``status``, as a user reads it."""
    out = mesh.cli("get", "requestauthentication", name, "-o", "yaml")
    assert out.returncode == 0, out.stderr
    return dict(yaml.safe_load(out.stdout).get("status") or {})


def _metrics(mesh: Mesh) -> str:
    c = http.client.HTTPConnection("127.0.0.1", mesh.api_port, timeout=5)
    try:
        c.request("GET", "/metrics", headers={"Authorization": f"Bearer {mesh.token()}"})
        return c.getresponse().read().decode()
    finally:
        c.close()


def _counter(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_an_unreachable_jwks_uri_shows_failing_until_it_is_served(
    quick_retry_mesh: Mesh, signer: Signer
) -> None:
    mesh = quick_retry_mesh
    mesh.run("httpbin", "v1")
    client = mesh.client()
    port = free_port()  # nothing listens here yet
    url = f"http://127.0.0.1:{port}/jwks.json"
    result = mesh.apply(httpbin_jwks_uri(url), "--wait")
    assert result.returncode == 0, result.stderr + mesh.log()
    # apply did not wait for the network; it says where to look
    note = f"note: RequestAuthentication default/httpbin: the control plane fetches {url} in"
    assert note in result.stderr
    assert "tsunagi get requestauthentication httpbin -n default" in result.stderr

    def state() -> str:
        jwks = _jwks_status(mesh, "httpbin").get("jwks") or [{}]
        return str(jwks[0].get("state"))

    wait_until(lambda: state() == "FAILING", 30, "the fetch to fail")
    table = mesh.cli("get", "ra")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[-1] == "JWKS" and row.split()[-1] == "FAILING"
    assert "JWKS failing or not fetched yet" in table.stdout
    status = _jwks_status(mesh, "httpbin")
    [entry] = status["jwks"]
    assert entry["uri"] == url and entry["issuer"] == ISSUER
    assert entry["error"].startswith(f"GET {url}: ")
    assert {"failingSince", "nextFetch"} <= entry.keys() and "keys" not in entry
    [condition] = status["conditions"]
    assert (condition["type"], condition["status"]) == ("JwksFetched", "False")
    assert _counter(_metrics(mesh), "pilot_jwks_resolver_network_fetch_fail_total") >= 1
    assert _counter(_metrics(mesh), "pilot_jwks_resolver_network_fetch_success_total") == 0

    good = signer.token()

    def ask(headers: dict[str, str] | None = None) -> int:
        return request(client.outbound_port, "httpbin", "/headers", headers)[0]

    # Fail closed: a valid token is refused while the keys cannot be fetched
    wait_until(lambda: ask(bearer(good)) == 401, 30, "the rule to reach the sidecar")
    assert ask() == 200  # no token: passes, as in Istio

    server = JwksServer(signer.jwks(), port=port)
    try:
        wait_until(lambda: state() == "OK", 60, "a retry to fetch the served set")
        [entry] = _jwks_status(mesh, "httpbin")["jwks"]
        assert entry["keys"] == 1 and "lastFetched" in entry and "error" not in entry
        assert _jwks_status(mesh, "httpbin")["conditions"][0]["status"] == "True"
        row = mesh.cli("get", "ra").stdout.splitlines()[1]
        assert row.split()[-1] == "OK"
        wait_until(lambda: ask(bearer(good)) == 200, 30, "the fetched set to be pushed")
        assert ask(bearer(Signer("key-1").token())) == 401  # same kid, another key
        assert _counter(_metrics(mesh), "pilot_jwks_resolver_network_fetch_success_total") >= 1
    finally:
        server.close()

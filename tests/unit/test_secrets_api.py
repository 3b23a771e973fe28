"""Secrets through the control plane's HTTP API (in process): stored whole, never shown
whole. No answer, warning or error carries a private key."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.certs import leaks
from tsunagi.api.secrets import LAST_APPLIED, REDACTED
from tsunagi.cli import output
from tsunagi.store import MemoryStore

from . import test_http_api as http
from .test_api_secrets import CA, OTHER, SERVER, b64, tls_secret
from .test_http_api import AUTH, Factory, Plane

make_api = http.make_api  # the fixture, under its own name


@pytest.fixture
async def plane(make_api: Factory) -> AsyncIterator[Plane]:
    api = await make_api()
    async with TestClient(TestServer(api.app())) as client:
        assert isinstance(api.store, MemoryStore)
        yield Plane(api, api.store, client)


GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: cred}
"""


async def _raw(plane: Plane, method: str, path: str, body: object = None) -> tuple[int, str]:
    kwargs = {"headers": AUTH, **({"json": body} if body is not None else {})}
    async with plane.client.request(method, path, **kwargs) as r:
        return r.status, await r.text()


async def test_stored_whole_but_listed_without_the_key(plane: Plane) -> None:
    secret = tls_secret(pem=SERVER, ca=CA.cert)
    for dry_run in (True, False):
        status, text = await _raw(plane, "POST", "/v1/apply", {"text": secret, "dry_run": dry_run})
        assert status == 200 and not leaks(text, SERVER.key)
    stored = plane.store.contents().records["Secret", "istio-system", "cred"].document
    assert stored["data"]["tls.key"] == b64(SERVER.key)  # the gateway needs it

    for path in ("/v1/resources?kind=secrets", "/v1/resources", "/v1/resources?kind=Secret"
                 "&namespace=istio-system&name=cred"):  # fmt: skip
        status, text = await _raw(plane, "GET", path)
        assert status == 200
        assert not leaks(text, SERVER.key)
        [item] = [i for i in json.loads(text)["items"] if i["kind"] == "Secret"]
        assert item["document"]["data"] == {
            "tls.crt": b64(SERVER.cert),
            "tls.key": REDACTED,
            "ca.crt": b64(CA.cert),
        }
    view = json.dumps(plane.api.config_view())
    assert not leaks(view, SERVER.key)


async def test_a_key_that_does_not_match_is_refused_without_quoting_it(plane: Plane) -> None:
    status, text = await _raw(
        plane, "POST", "/v1/apply", {"text": tls_secret(key=OTHER.key), "filename": "s.yaml"}
    )
    assert status == 400
    body = json.loads(text)
    assert "nothing was applied" in body["error"]
    assert any('data["tls.key"]: the private key does not match' in e for e in body["errors"])
    assert not leaks(text, OTHER.key)
    assert plane.store.contents().records == {}


async def test_a_redacted_document_cannot_be_applied_back(plane: Plane) -> None:
    await _raw(plane, "POST", "/v1/apply", {"text": tls_secret()})
    status, text = await _raw(plane, "GET", "/v1/resources?kind=secret")
    [item] = json.loads(text)["items"]
    status, text = await _raw(plane, "POST", "/v1/apply", {"text": json.dumps(item["document"])})
    assert status == 400 and "give the key itself" in text
    stored = plane.store.contents().records["Secret", "istio-system", "cred"].document
    assert stored["data"]["tls.key"] == b64(SERVER.key)  # unchanged


async def test_apply_warns_about_a_missing_credential(plane: Plane) -> None:
    status, body = await plane.call("POST", "/v1/apply", {"text": GATEWAY})
    assert status == 200
    assert any(
        "[IST0101] Referenced credentialName not found" in w and '"cred"' in w
        for w in body["warnings"]
    ), body["warnings"]
    text = GATEWAY + "---\n" + tls_secret()
    status, body = await plane.call("POST", "/v1/apply", {"text": text})
    assert not any("credentialName" in w for w in body["warnings"]), body["warnings"]


async def test_kubectls_copy_of_the_whole_secret_is_dropped_before_storing(
    plane: Plane,
) -> None:
    # what `kubectl get secret cred -o yaml` prints for a Secret made with `kubectl apply`
    doc = json.loads(tls_secret(pem=SERVER))
    doc["metadata"]["annotations"] = {LAST_APPLIED: json.dumps(doc), "team": "edge"}
    assert leaks(json.dumps(doc), SERVER.key)  # the annotation holds the key
    status, body = await plane.call("POST", "/v1/apply", {"text": json.dumps(doc)})
    assert status == 200
    assert any(
        "Secret istio-system/cred" in w and LAST_APPLIED in w and "dropped" in w
        for w in body["warnings"]
    ), body["warnings"]
    stored = plane.store.contents().records["Secret", "istio-system", "cred"].document
    assert stored["metadata"]["annotations"] == {"team": "edge"}
    assert stored["data"]["tls.key"] == b64(SERVER.key)  # the key itself stays, for gateways
    status, text = await _raw(plane, "GET", "/v1/resources?kind=secrets")
    assert status == 200 and not leaks(text, SERVER.key)
    # what `tsunagi get secrets -o yaml` and `-o json` print
    items = json.loads(text)["items"]
    for fmt in ("yaml", "json"):
        printed = output.resources(items, fmt)
        assert "tls.crt" in printed and not leaks(printed, SERVER.key)


async def test_a_copy_stored_before_is_not_shown_either(plane: Plane) -> None:
    doc = json.loads(tls_secret(pem=SERVER))
    doc["metadata"]["annotations"] = {LAST_APPLIED: json.dumps(doc)}
    await plane.store.commit([(("Secret", "istio-system", "cred"), doc)])
    status, text = await _raw(plane, "GET", "/v1/resources")
    assert status == 200 and "cred" in text and not leaks(text, SERVER.key)

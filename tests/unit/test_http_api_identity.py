"""The API's identity routes in process: ``POST /v1/certificates`` and ``POST /v1/tokens``,
and what a workload token may and may not do, against the real Api over a memory store
with a real CA (aiohttp's test client)."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tsunagi.ca.keystore import self_signed
from tsunagi.controlplane import workload_tokens as wt
from tsunagi.controlplane.http_api import Api
from tsunagi.controlplane.push import Pusher
from tsunagi.registry import Registry
from tsunagi.store import MemoryStore
from tsunagi.xds.cache import SnapshotCache

from .examples import instance_document

ADMIN = "admin-token"
WEB = "spiffe://cluster.local/ns/default/sa/web"
CONTROL_PLANE = "spiffe://cluster.local/ns/istio-system/sa/tsunagi"


def _csr(spiffe_id: str | None = None) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if spiffe_id:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=False,
        )
    key = ec.generate_private_key(ec.SECP256R1())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class Plane:
    api: Api
    key: bytes
    client: TestClient[web.Request, web.Application]

    def workload_token(self, ns: str = "default", sa: str = "web", ttl: float = 3600) -> str:
        return wt.create(self.key, wt.WorkloadClaims(ns, sa, time.time() + ttl))

    async def call(
        self, method: str, path: str, token: str = ADMIN, body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.client.request(method, path, headers=headers, json=body) as r:
            return r.status, await r.json()

    async def certificate(
        self, token: str = ADMIN, ns: str = "default", sa: str = "web", **more: Any
    ) -> tuple[int, dict[str, Any]]:
        body = {"csr": _csr(), "namespace": ns, "serviceAccount": sa, **more}
        return await self.call("POST", "/v1/certificates", token, body)


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    store = MemoryStore()
    await store.open()
    cache = SnapshotCache()
    pusher = Pusher(store, cache)
    task = asyncio.create_task(pusher.run())
    key = wt.ensure_key(tmp_path)
    now = datetime.datetime.now(datetime.UTC)
    api = Api(
        store,
        Registry(store, ttl=15.0),
        pusher,
        cache,
        ADMIN,
        ("127.0.0.1", 15010),
        authority=self_signed(tmp_path, "cluster.local", now),
        workload_cert_ttl=datetime.timedelta(hours=2),
        workload_token_key=key,
        xds_identity=CONTROL_PLANE,
    )
    async with TestClient(TestServer(api.app())) as client:
        yield Plane(api, key, client)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _leaf(body: dict[str, Any]) -> x509.Certificate:
    return x509.load_pem_x509_certificates(body["certificateChain"].encode())[0]


async def test_the_admin_obtains_any_identity(plane: Plane) -> None:
    for ns, sa in (("default", "web"), ("prod", "db")):
        status, body = await plane.certificate(ns=ns, sa=sa)
        assert status == 200, body
        wanted = f"spiffe://cluster.local/ns/{ns}/sa/{sa}"
        assert body["spiffeId"] == wanted
        leaf = _leaf(body)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [wanted]
        assert body["serial"] == f"{leaf.serial_number:x}"
        assert body["notAfter"] == int(leaf.not_valid_after_utc.timestamp())
        assert body["notBefore"] == int(leaf.not_valid_before_utc.timestamp())
        assert body["rootCertificates"].encode() == plane.api.authority.root_pem  # type: ignore[union-attr]
        leaf.verify_directly_issued_by(
            x509.load_pem_x509_certificate(body["rootCertificates"].encode())
        )
    text = plane.api.metrics.render().decode()
    assert "citadel_server_csr_count 2" in text
    assert "citadel_server_success_cert_issuance_count 2" in text


async def test_nobody_obtains_the_control_planes_identity(plane: Plane) -> None:
    # Proxies trust the xDS server by it: a workload holding it could serve them config.
    token = plane.workload_token("istio-system", "tsunagi")
    for caller in (ADMIN, token):
        status, body = await plane.certificate(caller, ns="istio-system", sa="tsunagi")
        assert status == 403, body
        assert "control plane's own identity" in body["error"]
    status, body = await plane.certificate(ns="istio-system", sa="other")
    assert status == 200, body


async def test_the_lifetime_is_what_was_asked_within_the_cap(plane: Plane) -> None:
    for asked, hours in (("30m", 0.5), ("", 2), ("100h", 2)):
        status, body = await plane.certificate(**({"ttl": asked} if asked else {}))
        assert status == 200, body
        leaf = _leaf(body)
        # notBefore is back-dated five minutes; notAfter is "now" + the lifetime.
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert lifetime == datetime.timedelta(hours=hours, minutes=5), asked


async def test_a_workload_token_obtains_its_own_identity_only(plane: Plane) -> None:
    token = plane.workload_token()
    status, body = await plane.certificate(token)
    assert status == 200 and body["spiffeId"] == WEB
    for ns, sa in (("default", "db"), ("prod", "web")):
        status, body = await plane.certificate(token, ns=ns, sa=sa)
        assert status == 403, body
        assert f"may not obtain spiffe://cluster.local/ns/{ns}/sa/{sa}" in body["error"]
        assert f"it may obtain only {WEB}" in body["error"]
    text = plane.api.metrics.render().decode()
    assert "citadel_server_success_cert_issuance_count 1" in text


async def test_a_bad_csr_is_400_naming_the_problem(plane: Plane) -> None:
    status, body = await plane.certificate(csr="nope")
    assert status == 400 and "not a PEM certificate signing request" in body["error"]
    other = "spiffe://cluster.local/ns/default/sa/db"
    body = {"csr": _csr(other), "namespace": "default", "serviceAccount": "web"}
    status, got = await plane.call("POST", "/v1/certificates", body=body)
    assert status == 400 and f"URI:{other}" in got["error"]
    status, got = await plane.certificate(ttl="soon")
    assert status == 400 and "ttl" in got["error"]
    status, got = await plane.certificate(sa="Not_A_Name")
    assert status == 400 and "serviceAccount" in got["error"]


async def test_a_workload_token_may_not_do_admin_things(plane: Plane) -> None:
    token = plane.workload_token()
    forbidden = [
        ("POST", "/v1/apply", {"text": "x"}),
        ("GET", "/v1/resources", None),
        ("GET", "/v1/proxies", None),
        ("POST", "/v1/tokens", {"namespace": "default", "serviceAccount": "admin"}),
        ("GET", "/metrics", None),
    ]
    for method, path, body in forbidden:
        status, got = await plane.call(method, path, token, body)
        assert status == 403, (path, got)
        assert "workload token for namespace 'default', service account 'web'" in got["error"]
    assert (await plane.call("GET", "/healthz", token))[0] == 200
    assert (await plane.call("GET", "/v1/bootstrap", token))[0] == 200


async def test_a_workload_token_registers_only_its_own_instances(plane: Plane) -> None:
    token = plane.workload_token()
    mine = instance_document("web-1", service="web", service_account="web")
    assert (await plane.call("POST", "/v1/instances", token, mine))[0] == 200
    # Without service_account the service name is the account: "web" again.
    same = instance_document("web-2", service="web")
    assert (await plane.call("POST", "/v1/instances", token, same))[0] == 200
    for other in (
        instance_document("db-1", service="db"),
        instance_document("web-3", service="web", service_account="db"),
        instance_document("web-4", service="web", namespace="prod"),
    ):
        status, got = await plane.call("POST", "/v1/instances", token, other)
        assert status == 403, other
        assert "registering instance" in got["error"]
    # Someone else's instance (registered by the admin): no heartbeat, no deregistration.
    theirs = instance_document("db-1", service="db")
    assert (await plane.call("POST", "/v1/instances", ADMIN, theirs))[0] == 200
    assert (await plane.call("POST", "/v1/instances/default/db-1/heartbeat", token))[0] == 403
    assert (await plane.call("DELETE", "/v1/instances/default/db-1", token))[0] == 403
    assert (await plane.call("DELETE", "/v1/instances/prod/web-1", token))[0] == 403
    # Nor may it take that name over by registering its own instance under it.
    hijack = instance_document("db-1", service="web", service_account="web")
    status, got = await plane.call("POST", "/v1/instances", token, hijack)
    assert status == 403 and "replacing instance default/db-1" in got["error"]
    # Its own: yes.
    assert (await plane.call("POST", "/v1/instances/default/web-1/heartbeat", token))[0] == 200
    assert (await plane.call("DELETE", "/v1/instances/default/web-1", token))[0] == 200


async def test_unknown_forged_and_expired_tokens_are_401(plane: Plane) -> None:
    other_key = wt.create(b"k" * 32, wt.WorkloadClaims("default", "web", time.time() + 60))
    for token in ("wrong", other_key, plane.workload_token()[:-2]):
        status, got = await plane.call("GET", "/healthz", token)
        assert status == 401 and "unknown token" in got["error"], token
    status, got = await plane.call("GET", "/healthz", plane.workload_token(ttl=-1))
    assert status == 401 and "expired" in got["error"]
    assert "tsunagi token create --namespace default --service-account web" in got["error"]


async def test_the_admin_makes_workload_tokens(plane: Plane) -> None:
    body = {"namespace": "default", "serviceAccount": "web", "ttl": "1h"}
    status, got = await plane.call("POST", "/v1/tokens", body=body)
    assert status == 200 and got["spiffeId"] == WEB
    assert abs(got["expires"] - (time.time() + 3600)) < 60
    status, cert = await plane.certificate(got["token"])
    assert status == 200 and cert["spiffeId"] == WEB
    status, cert = await plane.certificate(got["token"], sa="db")
    assert status == 403


async def test_a_workload_token_asking_for_the_control_planes_identity_is_403(
    plane: Plane,
) -> None:
    # Even a token for that very identity, or for another one (the admin case is above).
    for ns, sa in (("default", "web"), ("istio-system", "tsunagi")):
        token = plane.workload_token(ns, sa)
        status, body = await plane.certificate(token, ns="istio-system", sa="tsunagi")
        assert status == 403 and "control plane's own identity" in body["error"], body
        assert "token" not in body


async def test_a_workload_token_gets_a_fresh_one_with_each_certificate(plane: Plane) -> None:
    # Its own identity only, living one certificate lifetime past the certificate.
    start = plane.workload_token(ttl=30)
    status, body = await plane.certificate(start, ttl="1h")
    assert status == 200, body
    fresh = body["token"]
    assert fresh != start and body["tokenExpires"] == body["notAfter"] + 3600
    claims = wt.verify(plane.key, fresh, time.time())
    assert (claims.namespace, claims.service_account) == ("default", "web")
    assert claims.expires == body["tokenExpires"]
    # The fresh token works after the first has expired, for that identity alone.
    status, again = await plane.certificate(fresh)
    assert status == 200 and again["spiffeId"] == WEB and "token" in again
    status, other = await plane.certificate(fresh, sa="db")
    assert status == 403 and "token" not in other
    # The admin token is never replaced.
    status, admin = await plane.certificate()
    assert status == 200 and "token" not in admin and "tokenExpires" not in admin


async def test_token_lifetimes_are_capped(plane: Plane) -> None:
    body = {"namespace": "default", "serviceAccount": "web", "ttl": "9000h"}
    status, got = await plane.call("POST", "/v1/tokens", body=body)
    assert status == 400 and "longer than the longest token lifetime, 366 days" in got["error"]
    body["ttl"] = "8760h"
    status, got = await plane.call("POST", "/v1/tokens", body=body)
    assert status == 200 and got["spiffeId"] == WEB

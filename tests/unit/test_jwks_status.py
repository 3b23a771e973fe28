"""What the control plane tells of fetching RequestAuthentications' key sets: each source's
state (PENDING, OK, FAILING) as the fetcher tracks it against real loopback servers, the
``status`` the API computes from it, ``apply``'s messages, the CLI's table, and istiod's
``pilot_jwks_resolver_network_fetch_*`` counters."""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from tsunagi.api import RequestAuthenticationSpec, Resource, load_documents
from tsunagi.cli import output
from tsunagi.controlplane import jwks_status as js
from tsunagi.controlplane.http_api import Api
from tsunagi.controlplane.jwks import RETRY, JwksFetcher, retry_from_env
from tsunagi.controlplane.metrics import ControlPlaneMetrics
from tsunagi.controlplane.push import Pusher
from tsunagi.registry import Registry
from tsunagi.store import MemoryStore
from tsunagi.xds.cache import SnapshotCache

from .test_jwks_fetch import Issuer, _until, issuer  # noqa: F401 (the fixture)
from .test_request_authentication import public_jwks


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ra(rules: str, name: str = "ra") -> Resource:
    [res] = load_documents(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
        f"metadata: {{name: {name}, namespace: foo}}\nspec:\n  jwtRules: {rules}\n"
    )
    return res


def _rules(res: Resource) -> Any:
    assert isinstance(res.spec, RequestAuthenticationSpec)
    return res.spec.jwt_rules


# ----------------------------------------------------------------------------- the states


def test_a_source_goes_pending_failing_ok_and_failing_with_its_last_good_set() -> None:
    st = js.FetchState()
    assert st.state == js.PENDING
    st = st.failed(100.0, "GET u: refused", 160.0)
    assert (st.state, st.error, st.failing_since, st.next_fetch) == (
        js.FAILING,
        "GET u: refused",
        100.0,
        160.0,
    )
    assert st.fetched_at is None
    st = st.failed(160.0, "GET u: status 503", 280.0)
    assert st.failing_since == 100.0 and st.error == "GET u: status 503"  # since the first
    st = st.succeeded(280.0, 2, 1480.0)
    assert (st.state, st.fetched_at, st.keys, st.error, st.failing_since) == (
        js.OK,
        280.0,
        2,
        "",
        None,
    )
    st = st.failed(1480.0, "timeout", 1540.0)
    assert st.state == js.FAILING and st.failing_since == 1480.0
    assert (st.fetched_at, st.keys) == (280.0, 2)  # the last good set is still served


def test_key_count_and_timestamps() -> None:
    assert js.key_count(public_jwks("a")) == 1
    assert js.key_count('{"keys": [{}, {}]}') == 2
    assert js.key_count("not json") == 0
    assert js.timestamp(0) == "1970-01-01T00:00:00Z"


def test_status_lists_each_fetched_source_once_with_a_condition() -> None:
    res = _ra(
        "[{issuer: a, jwksUri: 'http://h/a'}, {issuer: b, jwksUri: 'http://h/a'},"
        " {issuer: 'https://c.example'}, {issuer: d, jwks: '" + public_jwks() + "'}]"
    )
    discovery = "https://c.example/.well-known/openid-configuration"
    states = {
        "http://h/a": js.FetchState().succeeded(0, 1, 1200),
        discovery: js.FetchState().failed(60, "GET x: refused", 120),
    }
    status = js.status(_rules(res), states)
    assert status["jwks"] == [
        {
            "uri": "http://h/a",
            "issuer": "a",
            "state": "OK",
            "keys": 1,
            "lastFetched": "1970-01-01T00:00:00Z",
            "nextFetch": "1970-01-01T00:20:00Z",
        },
        {
            "uri": discovery,
            "issuer": "https://c.example",
            "state": "FAILING",
            "error": "GET x: refused",
            "failingSince": "1970-01-01T00:01:00Z",
            "nextFetch": "1970-01-01T00:02:00Z",
        },
    ]
    [cond] = status["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == (
        "JwksFetched",
        "False",
        "FetchFailing",
    )
    assert "GET x: refused" in cond["message"] and "401" in cond["message"]
    # Not yet seen by the fetcher: PENDING
    [cond] = js.status(_rules(res), {discovery: states["http://h/a"]})["conditions"]
    assert (cond["status"], cond["reason"]) == ("Unknown", "Pending")
    assert "http://h/a" in cond["message"]
    ok = js.status(
        _rules(res), {"http://h/a": states["http://h/a"], discovery: states["http://h/a"]}
    )
    assert ok["conditions"][0]["status"] == "True"
    # Inline keys only: nothing to tell
    assert js.status(_rules(_ra("[{issuer: d, jwks: '" + public_jwks() + "'}]")), {}) == {}


def test_apply_warns_of_a_failing_fetch_and_notes_a_pending_one() -> None:
    res = _ra("[{issuer: a, jwksUri: 'http://h/a'}, {issuer: b, jwksUri: 'http://h/b'}]")
    ok = js.FetchState().succeeded(0, 1, 1200)
    warnings, notes = js.apply_messages([res], {"http://h/a": ok})
    assert warnings == []
    [note] = notes
    assert "http://h/b in the background" in note
    assert "`tsunagi get requestauthentication ra -n foo`" in note
    failing = js.FetchState().failed(0, "GET http://h/b: refused", 60)
    warnings, notes = js.apply_messages([res], {"http://h/a": ok, "http://h/b": failing})
    [warning] = warnings
    assert notes == []
    assert "fetching http://h/b fails: GET http://h/b: refused" in warning
    assert "tokens of 'b' get 401" in warning and "1970-01-01T00:01:00Z" in warning
    assert js.apply_messages([res], {"http://h/a": ok, "http://h/b": ok}) == ([], [])


def test_the_retry_delay_comes_from_the_tests_variable_only_when_sane() -> None:
    assert retry_from_env({}) == RETRY
    assert retry_from_env({"TSUNAGI_JWKS_RETRY": "0.5"}) == 0.5
    assert retry_from_env({"TSUNAGI_JWKS_RETRY": "soon"}) == RETRY
    assert retry_from_env({"TSUNAGI_JWKS_RETRY": "-1"}) == RETRY


# ----------------------------------------------------------------------------- the fetcher


async def test_the_fetcher_tracks_each_source_and_counts_each_get(
    issuer: Issuer,  # noqa: F811 (the fixture imported above)
) -> None:
    store = MemoryStore()
    metrics = ControlPlaneMetrics()
    assert b"pilot_jwks_resolver" not in metrics.render()  # no series until a fetch
    good, down = f"{issuer.base}/keys", f"http://127.0.0.1:{_closed_port()}/keys"
    fetcher = JwksFetcher(
        store, lambda docs: None, refresh=0.2, retry=0.05, counted=metrics.jwks_fetched
    )
    task = asyncio.create_task(fetcher.run())
    try:
        res = _ra(f"[{{issuer: a, jwksUri: '{good}'}}, {{issuer: b, jwksUri: '{down}'}}]")
        await store.commit([(res.key, dict(res.document))])
        await _until(lambda: len(fetcher.states()) == 2, "both sources to be followed")
        await _until(lambda: fetcher.states()[down].state == js.FAILING, "the failure")
        await _until(lambda: fetcher.states()[good].state == js.OK, "the fetch")
        up = fetcher.states()[good]
        assert up.keys == 1 and up.fetched_at is not None and up.next_fetch is not None
        assert up.next_fetch - up.fetched_at == pytest.approx(0.2)
        failing = fetcher.states()[down]
        assert failing.error.startswith(f"GET {down}: ") and failing.fetched_at is None
        first = failing.failing_since
        await _until(lambda: metrics.jwks_fetch_fail.get() >= 3, "retries")
        assert fetcher.states()[down].failing_since == first  # since the first failure
        assert metrics.jwks_fetch_success.get() >= 1
        text = metrics.render().decode()
        assert re.search(r"^pilot_jwks_resolver_network_fetch_success_total [1-9]", text, re.M)
        assert "# TYPE pilot_jwks_resolver_network_fetch_fail_total counter" in text

        # The good one breaks at a refresh: FAILING, its last good set kept; then it recovers.
        issuer.status = 503
        await _until(lambda: fetcher.states()[good].state == js.FAILING, "the refresh to fail")
        broken = fetcher.states()[good]
        assert "status 503" in broken.error and broken.keys == 1
        assert fetcher.documents[good] == issuer.jwks
        issuer.status = 200
        await _until(lambda: fetcher.states()[good].state == js.OK, "the recovery")
        assert fetcher.states()[good].failing_since is None

        await store.commit([], [res.key])
        await _until(lambda: fetcher.states() == {}, "its sources to be dropped")
    finally:
        task.cancel()


# ----------------------------------------------------------------------------- API and CLI


async def test_the_api_computes_the_status_and_apply_says_what_is_not_fetched() -> None:
    store = MemoryStore()
    await store.open()
    cache = SnapshotCache()
    pusher = Pusher(store, cache)
    states: dict[str, js.FetchState] = {}
    api = Api(
        store, Registry(store, ttl=15.0), pusher, cache, "t", ("127.0.0.1", 1), jwks=lambda: states
    )
    auth = {"Authorization": "Bearer t"}
    text = (
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
        "metadata: {name: ra, namespace: foo}\n"
        "spec:\n  jwtRules: [{issuer: a, jwksUri: 'http://127.0.0.1:1/keys'}]\n"
    )
    async with TestClient(TestServer(api.app())) as client:
        r = await client.post("/v1/apply", json={"text": text}, headers=auth)
        reply = await r.json()
        assert r.status == 200 and reply["warnings"] == []
        [note] = reply["notes"]
        assert "fetches http://127.0.0.1:1/keys in the background" in note

        async def listed() -> dict[str, Any]:
            r = await client.get("/v1/resources", params={"kind": "ra"}, headers=auth)
            [item] = (await r.json())["items"]
            return dict(item)

        assert (await listed())["status"]["jwks"][0]["state"] == "PENDING"
        states["http://127.0.0.1:1/keys"] = js.FetchState().failed(0, "GET …: refused", 60)
        item = await listed()
        assert item["status"]["jwks"][0]["error"] == "GET …: refused"
        assert "status" not in item["document"]  # computed when asked, never stored
        assert (
            "status"
            not in store.contents().records[("RequestAuthentication", "foo", "ra")].document
        )
        r = await client.post("/v1/apply", json={"text": text}, headers=auth)
        [warning] = (await r.json())["warnings"]
        assert "fails: GET …: refused" in warning


def _item(name: str, jwks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "kind": "RequestAuthentication",
        "namespace": "foo",
        "name": name,
        "revision": 1,
        "document": {"kind": "RequestAuthentication", "spec": {}},
        "status": {"conditions": [], "jwks": jwks} if jwks else None,
    }


def test_the_cli_shows_a_jwks_column_and_says_which_fail() -> None:
    ok = {"uri": "u1", "state": "OK", "keys": 1}
    failing = {"uri": "u2", "state": "FAILING", "error": "GET u2: refused"}
    items = [_item("both", [ok, failing]), _item("fine", [ok]), _item("inline", [])]
    table = output.resources(items, "")
    lines = table.splitlines()
    assert lines[0].split() == ["KIND", "NAMESPACE", "NAME", "HOSTS", "JWKS"]
    assert "FAILING (1 of 2)" in lines[1]
    assert lines[2].split()[-1] == "OK" and lines[3].split()[-1] == "-"
    assert (
        "JWKS failing or not fetched yet (see `-o yaml` for why): requestauthentication/both"
        in (table)
    )
    assert "Not fully in effect" not in table
    shown = yaml.safe_load(output.resources([items[0]], "yaml"))
    assert shown["status"]["jwks"][1]["error"] == "GET u2: refused"
    assert "JWKS" not in output.resources([items[2]], "")

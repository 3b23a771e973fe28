"""The HTTP API against its own OpenAPI description, on a live ``tsunagi up``.

Schemathesis generates requests from ``GET /v1/openapi.json`` (valid ones and invalid ones:
wrong types, missing or unknown fields, out-of-range numbers, odd strings) and checks every
answer: never a 5xx (but ``/v1/wait``'s documented 504), the status, headers and body are
ones the description lists, invalid input is refused, and a request that succeeds with the
token fails without it and with a wrong one. At the end the control plane must still be
running, with no traceback in its log.

It uses schemathesis' Python API (``as_strategy`` under Hypothesis' ``@given``), one test per
route and mode: its pytest plugin's lazy loader does not work with this pytest (9.2).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tsunagi.controlplane.openapi import ROUTES, Route

from .mesh import Mesh

pytestmark = pytest.mark.e2e


@schemathesis.check
def no_server_error_but_a_wait_timeout(ctx: Any, response: Any, case: Any) -> bool | None:
    """Schemathesis' ``not_a_server_error``, except for the one documented 5xx: ``/v1/wait``
    answers 504 (as the CLI and agents expect) when proxies did not catch up in time."""
    if response.status_code == 504 and case.path == "/v1/wait":
        assert response.json()["complete"] is False
        return True
    return not_a_server_error(ctx, response, case)


CHECKS = [
    no_server_error_but_a_wait_timeout,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
    unsupported_method,
]

EXAMPLES = 50
"""Generated requests per operation and mode (valid, invalid)."""

WAIT_CAP = 0.2
"""Seconds: generated ``/v1/wait`` timeouts (and a missing one: the default is 30) are cut to
this (the API allows 300) so the run stays short; other values, valid or not, are sent as
generated."""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(Path(tmp_path_factory.mktemp("api-schema")) / "state")
    mesh.state_dir.mkdir(parents=True)
    mesh.up()
    try:
        yield mesh
        assert mesh.control_plane is not None
        assert mesh.control_plane.poll() is None, "the control plane died:\n" + mesh.log()
        assert mesh.api("GET", "/healthz")["ok"] is True
        # Nothing it was sent made anything fail inside it either (the push loop included).
        assert "Traceback" not in mesh.log(), mesh.log()
    finally:
        mesh.down()


@pytest.fixture(scope="module")
def session(live: Mesh) -> Iterator[requests.Session]:
    s = requests.Session()
    s.trust_env = False  # loopback only, whatever *_proxy the environment sets
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def api_schema(live: Mesh) -> Any:
    spec = live.api("GET", "/v1/openapi.json")
    assert spec["openapi"].startswith("3."), spec
    return schemathesis.openapi.from_dict(spec)


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Adjust a generated request before it is sent. Edits made here are re-validated, so a
    case stays labelled valid or invalid by what is actually sent."""
    if not isinstance(case.query, dict):
        return
    # ``requests`` sends nothing for a parameter whose value is None or an empty list, so
    # such a generated "unknown parameter" never reaches the server: drop it.
    for name in [k for k, v in case.query.items() if v is None or v == []]:
        del case.query[name]
    if case.path == "/v1/wait":
        _short_wait(case.query)


def _short_wait(query: dict[str, Any]) -> None:
    if "timeout" not in query:  # the server's default is 30 s
        query["timeout"] = WAIT_CAP
        return
    value = query["timeout"]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return
    try:
        seconds = float(value)
    except ValueError:
        return
    if WAIT_CAP < seconds <= 300:
        query["timeout"] = WAIT_CAP


MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


@pytest.mark.parametrize("mode", MODES, ids=[m.value for m in MODES])
@pytest.mark.parametrize("route", ROUTES, ids=[f"{r.method} {r.path}" for r in ROUTES])
def test_every_operation_conforms_and_never_fails(
    route: Route, mode: GenerationMode, api_schema: Any, live: Mesh, session: requests.Session
) -> None:
    if mode is GenerationMode.NEGATIVE and route.body is None and route.query is None:
        pytest.skip("nothing to make invalid but the token, which the positive run checks")
    operation = api_schema[route.path][route.method]
    # The token is part of every generated request (schemathesis would otherwise count a
    # request without it as the invalid part of a case); ``ignored_auth`` re-sends requests
    # without it and with a wrong one.
    auth = {"Authorization": f"Bearer {live.token()}"}

    @given(case=operation.as_strategy(mode, headers=auth))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        case.call_and_validate(
            base_url=f"http://127.0.0.1:{live.api_port}",
            session=session,
            timeout=30,
            checks=CHECKS,
        )

    check()

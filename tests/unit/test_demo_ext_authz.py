"""The demo's external authorizer and the MeshConfig that names it: the decision and the
check summary of ``tsunagi.demo.ext_authz``, and that ``mesh-config.yaml``'s provider is the
service and port the demo runs the authorizer as (end to end: tests/e2e/test_istio_tasks.py
and tests/e2e/test_demo.py)."""

from __future__ import annotations

import json

import yaml

from tsunagi.api.mesh_config import EnvoyExtAuthzHttp, load_mesh_config
from tsunagi.demo import ext_authz
from tsunagi.demo.runner import AUTHORIZER
from tsunagi.demo.tasks import MESH_CONFIG, RULES


def test_only_x_ext_authz_allow_is_allowed() -> None:
    assert ext_authz.allowed({"x-ext-authz": "allow"})
    for headers in ({}, {"x-ext-authz": "deny"}, {"x-ext-authz": "Allow"}, {"x-other": "allow"}):
        assert not ext_authz.allowed(headers), headers


def test_the_check_summary_is_one_ascii_line_and_bounded() -> None:
    line = ext_authz.received("GET", "/productpage", {"x-ext-authz": "deny", "x-name": "é"})
    assert "\n" not in line and line.isascii()
    assert json.loads(line) == {
        "method": "GET",
        "path": "/productpage",
        "headers": {"x-ext-authz": "deny", "x-name": "é"},
    }
    long = ext_authz.received("GET", "/", {"x-big": "a" * 10_000})
    assert len(long) == ext_authz.MAX_RECEIVED and long.endswith("...")


def test_the_demo_mesh_config_names_the_authorizer_the_demo_runs() -> None:
    config = load_mesh_config(MESH_CONFIG.read_text(), str(MESH_CONFIG))
    provider = config.provider("sample-ext-authz-http")
    assert provider is not None
    http = provider.envoy_ext_authz_http
    assert isinstance(http, EnvoyExtAuthzHttp)
    service, port = AUTHORIZER
    assert (http.service, http.port) == (f"{service}.default.svc.cluster.local", port)
    assert http.include_request_headers_in_check == ("x-ext-authz",)
    # The task's policy names that provider.
    policy = yaml.safe_load((RULES / "authorization-ext-authz.yaml").read_text())
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"]["name"] == "sample-ext-authz-http"

"""AuthorizationPolicy ``action: CUSTOM``: the MeshConfig file (``tsunagi up --mesh-config``),
which provider a workload's CUSTOM policies resolve to, the filters they become, and what
``apply`` warns of."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tsunagi.api import Resource, ValidationFailed, load_documents
from tsunagi.api.mesh_config import ExtensionProvider, MeshConfig, load_mesh_config
from tsunagi.mesh import Node, World
from tsunagi.mesh import ext_authz as mesh_ext_authz
from tsunagi.mesh.security import MeshSecurity
from tsunagi.registry import Instance
from tsunagi.xds.translate import authz, ext_authz

HTTP_PROVIDER = """
extensionProviders:
- name: http-authz
  envoyExtAuthzHttp: {service: ext-authz.foo.svc.cluster.local, port: 8000}
- name: grpc-authz
  envoyExtAuthzGrpc: {service: foo/ext-authz.foo.svc.cluster.local, port: 9000, failOpen: true}
"""


def _mesh_errors(text: str) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as info:
        load_mesh_config(textwrap.dedent(text), "mesh.yaml")
    for e in info.value.errors:
        assert e.file == "mesh.yaml" and e.kind == "MeshConfig"
    return {e.path: e.reason for e in info.value.errors}


def _policy(name: str, provider: str, *, selector: str = "app: web", extra: str = "") -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: default{extra}}}
spec:
  selector: {{matchLabels: {{{selector}}}}}
  action: CUSTOM
  provider: {{name: {provider}}}
  rules:
  - to: [{{operation: {{paths: ["/headers"]}}}}]
"""


def _deny() -> str:
    """A DENY policy ``d`` with the same selector and rules as :func:`_policy`'s."""
    return (
        _policy("d", "x")
        .replace("action: CUSTOM", "action: DENY")
        .replace("  provider: {name: x}\n", "")
    )


def _world(*docs: str, mesh: str = HTTP_PROVIDER, ports: tuple[int, ...] = (8000, 9000)) -> World:
    """The World of ``docs``, with the authorizer ``ext-authz.foo`` registered on ``ports``."""
    resources: list[Resource] = load_documents("---".join(docs), "p.yaml") if docs else []
    instances = [
        Instance.from_document(
            {
                "name": f"ext-authz-{port}",
                "service": "ext-authz",
                "namespace": "foo",
                "port": port,
                "address": "127.0.0.1",
                "target_port": 20000 + i,
            }
        )
        for i, port in enumerate(ports)
    ]
    security = MeshSecurity(mesh_config=load_mesh_config(mesh, "mesh.yaml"))
    return World.build(1, resources, instances, mesh_security=security)


WEB = Node.from_metadata(
    "web-a.default",
    {"namespace": "default", "service": "web", "labels": {"app": "web"}, "inbound": {}},
)


def _names(filters: tuple[dict[str, Any], ...]) -> list[str]:
    return [f["name"] for f in filters]


# --------------------------------------------------------------------------- MeshConfig


def test_mesh_config_reads_both_provider_kinds() -> None:
    config = load_mesh_config(HTTP_PROVIDER, "mesh.yaml")
    assert [p.name for p in config.extension_providers] == ["http-authz", "grpc-authz"]
    grpc = config.provider("grpc-authz")
    assert grpc is not None and grpc.envoy_ext_authz_grpc is not None
    assert grpc.config.fail_open and grpc.config.port == 9000
    assert config.provider("nobody") is None
    assert load_mesh_config("", "mesh.yaml") == MeshConfig()


def test_mesh_config_refuses_what_it_does_not_honor() -> None:
    errs = _mesh_errors(
        """
        defaultConfig: {holdApplicationUntilProxyStarts: true}
        extensionProviders:
        - name: tracing
          zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
        """
    )
    assert "not supported yet" in errs["defaultConfig"]
    assert "provider kind zipkin is not supported yet" in errs["extensionProviders[0].zipkin"]


HTTP = "{name: a, envoyExtAuthzHttp: {service: s, port: 80, %s}}"
GRPC = "{name: a, envoyExtAuthzGrpc: {service: s, port: 80, %s}}"
SERVICE = "{name: a, envoyExtAuthzHttp: {port: 80, service: %s}}"


@pytest.mark.parametrize(
    ("provider", "path", "why"),
    [
        ("{name: a, envoyExtAuthzHttp: {service: s, port: 0}}", "envoyExtAuthzHttp.port", "65535"),
        (HTTP % 'statusOnError: "999"', "envoyExtAuthzHttp.statusOnError", "not an HTTP status"),
        (HTTP % "pathPrefix: check", "envoyExtAuthzHttp.pathPrefix", "must begin with '/'"),
        (
            HTTP % 'headersToUpstreamOnAllow: ["*"]',
            "envoyExtAuthzHttp.headersToUpstreamOnAllow[0]",
            "lone",
        ),
        (
            "{name: a, envoyExtAuthzGrpc: {service: a/b/c, port: 80}}",
            "envoyExtAuthzGrpc.service",
            "NAMESPACE/HOSTNAME",
        ),
        (SERVICE % "'foo/*.example'", "envoyExtAuthzHttp.service", "wildcard"),
        (SERVICE % "''", "envoyExtAuthzHttp.service", "must not be empty"),
        (SERVICE % "Foo/x.example", "envoyExtAuthzHttp.service", "namespace 'Foo'"),
        ("{name: a}", "", "exactly one of"),
        (GRPC % "pathPrefix: /x", "envoyExtAuthzGrpc.pathPrefix", "unknown field"),
    ],
)
def test_mesh_config_provider_checks(provider: str, path: str, why: str) -> None:
    errs = _mesh_errors(f"extensionProviders: [{provider}]")
    where = "extensionProviders[0]" + ("." + path if path else "")
    assert why in errs[where], errs


def test_mesh_config_names_must_be_unique() -> None:
    errs = _mesh_errors(
        "extensionProviders:\n"
        "- {name: a, envoyExtAuthzHttp: {service: s, port: 80}}\n"
        "- {name: a, envoyExtAuthzGrpc: {service: s, port: 81}}\n"
    )
    assert "duplicate provider name" in errs["extensionProviders[1].name"]


def test_up_refuses_a_bad_mesh_config_before_starting(tmp_path: Path) -> None:
    bad = tmp_path / "mesh.yaml"
    bad.write_text("enableTracing: true\n")
    state = tmp_path / "state"
    up = [sys.executable, "-m", "tsunagi.cli.main", "up"]
    done = subprocess.run(
        [*up, "--mesh-config", str(bad), "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"{bad} (MeshConfig): enableTracing: not supported yet" in done.stderr
    assert "remove this field from the file" in done.stderr  # what to do next
    assert not state.exists()  # nothing was started or written


# --------------------------------------------------------------------------- resolution


def test_resolves_the_provider_and_its_service() -> None:
    world = _world(_policy("p", "http-authz"))
    custom = world.security_for(WEB).custom
    assert custom is not None and custom.error == ""
    assert custom.provider is not None and custom.provider.name == "http-authz"
    [_, ext] = ext_authz.http_filters(custom, 9080)
    # Through its outbound cluster for that host and port.
    cluster = ext["typed_config"]["http_service"]["server_uri"]["cluster"]
    assert cluster == "outbound|8000||ext-authz.foo.svc.cluster.local"


@pytest.mark.parametrize(
    ("docs", "ports", "why"),
    [
        ((_policy("p", "nobody"),), (8000,), "provider 'nobody' is not defined"),
        ((_policy("p", "http-authz"),), (), "could not find hostname"),
        ((_policy("p", "grpc-authz"),), (8000,), "has no port 9000"),
        ((_policy("p", "http-authz"), _policy("q", "grpc-authz")), (8000,), "only 1 provider"),
    ],
)
def test_unusable_providers_deny_what_the_rules_match(
    docs: tuple[str, ...], ports: tuple[int, ...], why: str
) -> None:
    world = _world(*docs, ports=ports)
    custom = world.security_for(WEB).custom
    assert custom is not None and custom.provider is None and why in custom.error
    [rbac] = ext_authz.http_filters(custom, 9080)
    rules = rbac["typed_config"]["rules"]
    assert rules["action"] == "DENY"
    assert all(name.endswith(ext_authz.BAD_SUFFIX) for name in rules["policies"])


def _provider(service: str, port: int = 8000) -> ExtensionProvider:
    http = f"{{service: {service}, port: {port}}}"
    mesh = f"extensionProviders: [{{name: p, envoyExtAuthzHttp: {http}}}]"
    provider = load_mesh_config(mesh, "mesh.yaml").provider("p")
    assert provider is not None
    return provider


def test_service_lookup_follows_istiod() -> None:
    """istiod's rule: the exact hostname, or NAMESPACE/HOSTNAME with the service's own
    namespace; a short name is not expanded."""
    world = _world()
    assert mesh_ext_authz.service_problem(world, _provider("ext-authz.foo.svc.cluster.local")) == ""
    assert (
        mesh_ext_authz.service_problem(world, _provider("foo/ext-authz.foo.svc.cluster.local"))
        == ""
    )
    assert "in namespace 'bar'" in mesh_ext_authz.service_problem(
        world, _provider("bar/ext-authz.foo.svc.cluster.local")
    )
    assert "give the full hostname" in mesh_ext_authz.service_problem(world, _provider("ext-authz"))


def test_workloads_without_custom_policies_cost_one_look() -> None:
    deny = _deny()
    world = _world(deny)
    security = world.security_for(WEB)
    assert security.custom is None
    assert "ext_authz" not in str(authz.http_filters(security, WEB, 9080))
    # Policies come in evaluation order, CUSTOM first: the first non-CUSTOM one ends the
    # look (the object after it would fail any inspection).
    assert mesh_ext_authz.resolve(world, (*security.authorization, object())) is None  # type: ignore[arg-type]

    def never() -> Iterator[tuple[str, dict[str, str]]]:
        raise AssertionError("apply without CUSTOM policies walked the workloads")
        yield  # pragma: no cover

    assert mesh_ext_authz.problems(world, load_documents(deny, "d.yaml"), never()) == []


# --------------------------------------------------------------------------- translation


def test_custom_filters_come_before_deny_and_allow() -> None:
    deny = _deny()
    world = _world(_policy("p", "http-authz"), deny)
    filters = authz.http_filters(world.security_for(WEB), WEB, 9080)
    assert _names(filters) == [
        "envoy.filters.http.rbac",  # CUSTOM's shadow rules
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.rbac",  # DENY
    ]
    shadow = filters[0]["typed_config"]
    assert "rules" not in shadow  # never enforced: it only marks requests
    assert list(shadow["shadow_rules"]["policies"]) == [
        "istio-ext-authz-ns[default]-policy[p]-rule[0]"
    ]
    matcher = filters[1]["typed_config"]["filter_enabled_metadata"]
    assert matcher["path"] == [{"key": "istio_ext_authz_shadow_effective_policy_id"}]
    assert filters[2]["typed_config"]["rules"]["action"] == "DENY"


def test_dry_run_custom_policies_are_left_out() -> None:
    dry = _policy("p", "http-authz", extra=", annotations: {istio.io/dry-run: 'true'}")
    world = _world(dry)
    assert authz.http_filters(world.security_for(WEB), WEB, 9080) == ()
    [warning] = mesh_ext_authz.problems(world, load_documents(dry, "p.yaml"), [])
    assert "istio.io/dry-run on a CUSTOM policy: the policy is left out" in warning


def test_tcp_ports_get_ext_authz_only_from_grpc_providers() -> None:
    http_world = _world(_policy("p", "http-authz"))
    assert ext_authz.network_filters(http_world.security_for(WEB).custom, 5432) == ()
    grpc_world = _world(_policy("p", "grpc-authz"))
    filters = ext_authz.network_filters(grpc_world.security_for(WEB).custom, 5432)
    assert _names(filters) == ["envoy.filters.network.rbac", "envoy.filters.network.ext_authz"]
    ext = filters[1]["typed_config"]
    assert ext["failure_mode_allow"] is True
    assert ext["grpc_service"]["envoy_grpc"] == {
        "cluster_name": "outbound|9000||ext-authz.foo.svc.cluster.local",
        # istiod's: the host (a cluster name's '|' is not valid in an authority)
        "authority": "ext-authz.foo.svc.cluster.local",
    }


def test_http_provider_header_settings() -> None:
    mesh = """
extensionProviders:
- name: http-authz
  envoyExtAuthzHttp:
    service: ext-authz.foo.svc.cluster.local
    port: 8000
    includeRequestHeadersInCheck: [X-Ext-Authz, "x-prefix-*", "*-suffix"]
    includeHeadersInCheck: [ignored-when-the-above-is-set]
    headersToUpstreamOnAllow: [x-result]
"""
    world = _world(_policy("p", "http-authz"), mesh=mesh)
    [_, ext] = ext_authz.http_filters(world.security_for(WEB).custom, 9080)
    config = ext["typed_config"]
    # The filter's own allowed_headers (authorization_request's is deprecated in Envoy).
    assert config["allowed_headers"]["patterns"] == [
        {"exact": "X-Ext-Authz", "ignore_case": True},
        {"prefix": "x-prefix-", "ignore_case": True},
        {"suffix": "-suffix", "ignore_case": True},
    ]
    assert "authorization_request" not in config["http_service"]
    assert config["http_service"]["server_uri"]["timeout"] == "600s"  # istiod's default
    assert "status_on_error" not in config  # Envoy's default: 403
    assert config["http_service"]["authorization_response"] == {
        "allowed_upstream_headers": {"patterns": [{"exact": "x-result", "ignore_case": True}]}
    }


# --------------------------------------------------------------------------- apply


def test_apply_warns_of_unusable_providers_only() -> None:
    good = load_documents(_policy("p", "http-authz"), "p.yaml")
    world = _world(_policy("p", "http-authz"))
    assert mesh_ext_authz.problems(world, good, [("default", {"app": "web"})]) == []

    bad = load_documents(_policy("p", "nobody"), "p.yaml")
    [warning] = mesh_ext_authz.problems(_world(_policy("p", "nobody")), bad, [])
    assert warning.startswith("AuthorizationPolicy default/p: spec.provider: provider 'nobody'")
    assert "denied (403)" in warning


def test_apply_warns_when_one_workload_gets_two_providers() -> None:
    docs = (_policy("p", "http-authz"), _policy("q", "grpc-authz", selector="tier: front"))
    world = _world(*docs)
    applied = load_documents(docs[1], "q.yaml")
    both = [("default", {"app": "web", "tier": "front"})]
    [warning] = mesh_ext_authz.problems(world, applied, both)
    assert "default/p, default/q" in warning and "only 1 provider" in warning
    # Workloads only one of them selects are fine.
    assert mesh_ext_authz.problems(world, applied, [("default", {"app": "web"})]) == []


def test_startup_names_stored_policies_whose_provider_is_gone() -> None:
    """A restart with another --mesh-config: the policies naming a provider it lacks are
    logged, and their rules deny what they match."""
    world = _world(_policy("p", "http-authz"), _policy("q", "gone", selector="app: other"))
    [line] = mesh_ext_authz.undefined_providers(world)
    assert line.startswith("AuthorizationPolicy default/q: spec.provider: provider 'gone'")
    assert "restart with a mesh config that defines it" in line

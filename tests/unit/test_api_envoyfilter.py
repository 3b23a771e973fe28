"""EnvoyFilter validation: what Istio refuses (and patches that would do nothing) is refused
with a field path; what Tsunagi cannot apply is accepted with a warning."""

# ruff: noqa: E501 (Envoy type URLs in patch values are long)
from __future__ import annotations

import textwrap

import pytest

from tsunagi.api import EnvoyFilterSpec, ValidationFailed, load_documents
from tsunagi.mesh.analysis import not_yet_enforced


def doc(patches: str, extra: str = "") -> str:
    body = textwrap.indent(textwrap.dedent(patches).strip(), "    ")
    return (
        "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\n"
        f"metadata: {{name: ef, namespace: default}}\nspec:\n{extra}  configPatches:\n{body}\n"
    )


def errors(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ValidationFailed) as info:
        load_documents(text, "ef.yaml")
    return [(e.path, e.reason) for e in info.value.errors]


def test_a_valid_filter_parses_to_typed_patches() -> None:
    [r] = load_documents(
        doc(
            """
        - applyTo: HTTP_FILTER
          match:
            context: SIDECAR_INBOUND
            proxy: {proxyVersion: '^1\\.2.*'}
            listener:
              portNumber: 8000
              filterChain:
                filter:
                  name: envoy.filters.network.http_connection_manager
                  subFilter: {name: envoy.filters.http.router}
          patch:
            operation: INSERT_BEFORE
            value: {name: envoy.filters.http.cors, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}}
        """,
            "  priority: -3\n",
        ),
        "ef.yaml",
    )
    spec = r.spec
    assert isinstance(spec, EnvoyFilterSpec)
    assert spec.priority == -3
    cp = spec.config_patches[0]
    assert cp.apply_to == "HTTP_FILTER"
    assert cp.match is not None and cp.match.listener is not None
    assert cp.match.listener.port_number == 8000
    assert cp.patch is not None and cp.patch.operation == "INSERT_BEFORE"


@pytest.mark.parametrize(
    ("patch", "path", "reason"),
    [
        ("- patch: {operation: REMOVE}", "spec.configPatches[0].applyTo", "missing applyTo"),
        ("- applyTo: CLUSTER", "spec.configPatches[0].patch", "missing patch"),
        ("- {applyTo: CLUSTER, patch: {}}", "spec.configPatches[0].patch.operation", "missing"),
        (
            "- {applyTo: CLUSTER, patch: {operation: MERGE}}",
            "spec.configPatches[0].patch.value",
            "missing patch value for operation MERGE",
        ),
        (
            "- {applyTo: HTTP_ROUTE, patch: {operation: ADD}}",
            "spec.configPatches[0].patch.value",
            "missing patch value for operation ADD",
        ),
        (
            "- {applyTo: CLUSTER, match: {listener: {portNumber: 80}}, patch: {operation: REMOVE}}",
            "spec.configPatches[0].match.listener",
            "applyTo CLUSTER needs a cluster match",
        ),
        (
            "- {applyTo: HTTP_ROUTE, match: {cluster: {}}, patch: {operation: REMOVE}}",
            "spec.configPatches[0].match.cluster",
            "needs a routeConfiguration match",
        ),
        (
            "- {applyTo: NETWORK_FILTER, match: {listener: {filterChain: {filter: {name: x, "
            "subFilter: {name: y}}}}}, patch: {operation: REMOVE}}",
            "spec.configPatches[0].match.listener.filterChain.filter.subFilter",
            "applyTo HTTP_FILTER only",
        ),
        (
            "- {applyTo: HTTP_FILTER, match: {listener: {filterChain: {filter: {name: x, "
            "subFilter: {name: y}}}}}, patch: {operation: REMOVE}}",
            "spec.configPatches[0].match.listener.filterChain.filter.subFilter",
            "requires filter name envoy.filters.network.http_connection_manager",
        ),
        (
            "- {applyTo: HTTP_FILTER, match: {listener: {filterChain: {filter: {}}}}, "
            "patch: {operation: REMOVE}}",
            "spec.configPatches[0].match.listener.filterChain.filter.name",
            "no name to match on",
        ),
        (
            "- {applyTo: CLUSTER, patch: {operation: MERGE, value: {connect_timeout: soon}}}",
            "spec.configPatches[0].patch.value",
            "connect_timeout",
        ),
        (
            "- {applyTo: HTTP_FILTER, patch: {operation: ADD, value: {name: x, typed_config: "
            '{"@type": type.googleapis.com/envoy.nothing.v3.Nope}}}}',
            "spec.configPatches[0].patch.value",
            "referenced type unknown: type.googleapis.com/envoy.nothing.v3.Nope",
        ),
        (
            "- {applyTo: CLUSTER, match: {proxy: {proxyVersion: '('}}, patch: {operation: REMOVE}}",
            "spec.configPatches[0].match.proxy.proxyVersion",
            "invalid RE2",
        ),
        (
            "- {applyTo: CLUSTERS, patch: {operation: REMOVE}}",
            "spec.configPatches[0].applyTo",
            "LISTENER",
        ),
        (
            "- {applyTo: EXTENSION_CONFIG, patch: {operation: ADD, value: {typed_config: "
            '{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}',
            "spec.configPatches[0].patch.value.name",
            "config_discovery loads it by name",
        ),
        (
            "- {applyTo: EXTENSION_CONFIG, patch: {operation: ADD, value: {name: rl}}}",
            "spec.configPatches[0].patch.value.typed_config",
            "needs a typed_config with an @type",
        ),
    ],
)
def test_istio_refusals_name_the_field(patch: str, path: str, reason: str) -> None:
    [(got_path, got_reason)] = errors(doc(patch))
    assert got_path == path
    assert reason in got_reason


def test_selector_and_target_refs_are_exclusive() -> None:
    extra = "  workloadSelector: {labels: {app: a}}\n  targetRefs: [{kind: Gateway, name: g}]\n"
    [(path, reason)] = errors(doc("- {applyTo: CLUSTER, patch: {operation: REMOVE}}", extra))
    assert path == "spec.targetRefs"
    assert "only one of targetRefs or workloadSelector" in reason


def test_insert_on_unordered_kinds_is_accepted_as_istio_does() -> None:
    [r] = load_documents(
        doc("- {applyTo: CLUSTER, patch: {operation: INSERT_FIRST, value: {name: x}}}"), "f"
    )
    assert r.kind == "EnvoyFilter"


def test_warnings_for_what_does_not_apply_to_tsunagi_proxies() -> None:
    text = doc(
        """
        - applyTo: HTTP_ROUTE
          patch: {operation: MERGE, value: {response_headers_to_add: [{header: {key: a, value: b}, bogus: 1}]}}
        - applyTo: EXTENSION_CONFIG
          patch: {operation: MERGE, value: {name: x}}
        - applyTo: VIRTUAL_HOST
          match: {context: GATEWAY, routeConfiguration: {gateway: default/g}}
          patch: {operation: REMOVE}
        - applyTo: CLUSTER
          match: {proxy: {proxyVersion: '^1\\..*'}}
          patch: {operation: REMOVE}
        """,
        "  targetRefs: [{kind: Gateway, name: g}]\n",
    )
    warnings = not_yet_enforced(load_documents(text, "ef.yaml"))
    assert len(warnings) == 5, warnings
    joined = "\n".join(warnings)
    assert "EnvoyFilter default/ef: spec.targetRefs is not applied yet" in joined
    assert "spec.configPatches[0].patch.value: Failed to parse response_headers_to_add" in joined
    assert 'no field named "bogus" at "Route.response_headers_to_add[0]"; ignored' in joined
    assert "[1].patch.operation MERGE does nothing with applyTo EXTENSION_CONFIG" in joined
    assert "spec.configPatches[2].match.routeConfiguration.gateway is not applied yet" in joined
    assert "spec.configPatches[3].match.proxy" in joined


def test_a_clean_filter_has_no_warnings() -> None:
    text = doc("- {applyTo: CLUSTER, patch: {operation: MERGE, value: {connect_timeout: 2s}}}")
    assert not_yet_enforced(load_documents(text, "ef.yaml")) == []


def test_an_extension_config_add_is_applied_so_not_warned_about() -> None:
    text = doc(
        "- {applyTo: EXTENSION_CONFIG, patch: {operation: ADD, value: {name: rl, typedConfig: "
        '{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}'
    )
    assert not_yet_enforced(load_documents(text, "ef.yaml")) == []


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        (
            "- {applyTo: CLUSTER, patch: {operation: REPLACE, value: {name: x}}}",
            "operation REPLACE does nothing with applyTo CLUSTER",
        ),
        (
            "- {applyTo: ROUTE_CONFIGURATION, patch: {operation: ADD, value: {name: x}}}",
            "use one of MERGE",
        ),
    ],
)
def test_operations_istio_ignores_load_with_a_warning(patch: str, reason: str) -> None:
    # Istio's API server accepts them (only `istioctl analyze` objects), so existing YAML
    # must load; the patch is ignored and apply says so.
    resources = load_documents(doc(patch), "f")
    [warning] = not_yet_enforced(resources)
    assert "spec.configPatches[0].patch.operation" in warning and reason in warning
    assert "ignored" in warning

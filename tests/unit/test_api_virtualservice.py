"""VirtualService model and Istio's VirtualService validation rules."""

from __future__ import annotations

import textwrap

import pytest

from tsunagi.api import FieldError, ValidationFailed, VirtualServiceSpec, load_documents

from .examples import VS_ALL_FIELDS, VS_BOOKINFO_REVIEWS

BOOKINFO_REVIEWS = (
    "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: reviews\n"
    "spec:\n" + textwrap.indent(VS_BOOKINFO_REVIEWS.strip(), "  ")
)


def _vs(spec: str) -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        f"metadata:\n  name: vs\nspec:\n{body}\n"
    )


def _load(spec: str) -> VirtualServiceSpec:
    [res] = load_documents(_vs(spec))
    assert isinstance(res.spec, VirtualServiceSpec)
    return res.spec


def _errors(spec: str) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as info:
        load_documents(_vs(spec), "vs.yaml")
    errs: list[FieldError] = info.value.errors
    assert all(e.kind == "VirtualService" and e.name == "default/vs" for e in errs)
    return {e.path: e.reason for e in errs}


ROUTE = "route:\n  - destination: {host: reviews}"


def test_bookinfo_reviews_jason() -> None:
    [res] = load_documents(BOOKINFO_REVIEWS, "reviews.yaml")
    spec = res.spec
    assert isinstance(spec, VirtualServiceSpec)
    assert spec.hosts == ("reviews",)
    first, second = spec.http
    assert first.match[0].headers["end-user"].exact == "jason"
    assert first.route[0].destination.host == "reviews"
    assert first.route[0].destination.subset == "v2"
    assert first.route[0].weight is None
    assert second.route[0].destination.subset == "v3"
    assert res.api_version == "networking.istio.io/v1beta1"


def test_full_http_route_fields_parse() -> None:
    spec = _load(VS_ALL_FIELDS)
    r = spec.http[0]
    assert r.match[0].uri is not None and r.match[0].uri.prefix == "/api"
    assert r.match[0].headers["x-present"].is_empty
    assert r.route[0].destination.port is not None
    assert r.route[0].destination.port.number == 9080
    assert [d.weight for d in r.route] == [75, 25]
    assert r.timeout == 1.5
    assert r.retries is not None and r.retries.per_try_timeout == pytest.approx(0.5)
    assert r.fault is not None and r.fault.delay is not None
    assert r.fault.delay.fixed_delay == 5.0
    assert r.fault.delay.percentage is not None and r.fault.delay.percentage.value == 10
    assert r.cors_policy is not None and r.cors_policy.max_age == 86400.0
    assert r.mirror_percentage is not None and r.mirror_percentage.value == 50.0
    assert spec.http[1].redirect is not None and spec.http[1].redirect.redirect_code == 308
    dr = spec.http[2].direct_response
    assert dr is not None and dr.body is not None and dr.body.string == "ok"
    assert spec.tcp[0].route[0].destination.host == "mysql"
    assert spec.tls[0].match[0].sni_hosts == ("reviews.prod.svc.cluster.local",)


def test_a_virtual_service_without_hosts_is_a_delegate() -> None:
    (vs,) = load_documents(_vs("http:\n- " + ROUTE), "vs.yaml")  # valid, as in Istio
    assert isinstance(vs.spec, VirtualServiceSpec) and vs.spec.hosts == ()
    errs = _errors("gateways: [gw]\nhttp:\n- delegate: {name: other}")
    assert "must not name gateways" in errs["spec.gateways"]
    assert "only one level" in errs["spec.http[0].delegate"]


def test_some_route_kind_required() -> None:
    errs = _errors("hosts: [a]")
    assert "at least one of http, tcp or tls" in errs["spec"]


def test_unknown_field_suggestion() -> None:
    errs = _errors("hosts: [a]\nhttp:\n- rout:\n  - destination: {host: a}")
    assert errs["spec.http[0].rout"] == 'unknown field "rout"; did you mean "route"?'


def test_unknown_field_deep_suggestion() -> None:
    errs = _errors("hosts: [a]\nhttp:\n- route:\n  - destination: {host: a, subnet: v1}")
    assert errs["spec.http[0].route[0].destination.subnet"] == (
        'unknown field "subnet"; did you mean "subset"?'
    )


def test_negative_weight() -> None:
    errs = _errors(
        """
        hosts: [a]
        http:
        - route:
          - destination: {host: a, subset: v1}
            weight: 110
          - destination: {host: a, subset: v2}
            weight: -10
        """
    )
    assert errs == {"spec.http[0].route[1].weight": "must be >= 0, got -10"}


def test_all_zero_weights() -> None:
    errs = _errors(
        """
        hosts: [a]
        http:
        - route:
          - destination: {host: a, subset: v1}
            weight: 0
          - destination: {host: a, subset: v2}
        """
    )
    assert "total weight" in errs["spec.http[0].route"]


def test_single_destination_may_omit_or_zero_weight() -> None:
    _load("hosts: [a]\nhttp:\n- route:\n  - destination: {host: a}\n    weight: 0")


def test_empty_route() -> None:
    errs = _errors("hosts: [a]\nhttp:\n- route: []")
    assert errs == {"spec.http[0].route": "must not be empty; list at least one destination"}


def test_route_action_required() -> None:
    errs = _errors("hosts: [a]\nhttp:\n- match: [{uri: {prefix: /}}]")
    assert "one of route, redirect, directResponse or delegate" in errs["spec.http[0]"]


def test_redirect_and_direct_response_conflict() -> None:
    errs = _errors(
        """
        hosts: [a]
        http:
        - redirect: {uri: /x}
          directResponse: {status: 404}
        """
    )
    assert "redirect and directResponse" in errs["spec.http[0]"]


def test_route_and_redirect_conflict() -> None:
    errs = _errors("hosts: [a]\nhttp:\n- redirect: {uri: /x}\n  " + ROUTE)
    assert "route and redirect" in errs["spec.http[0]"]


def test_delegate_alone_is_accepted() -> None:
    spec = _load("hosts: [a]\nhttp:\n- delegate: {name: reviews-routes, namespace: other}")
    assert spec.http[0].delegate is not None
    assert spec.http[0].delegate.name == "reviews-routes"


def test_destination_host_required() -> None:
    errs = _errors("hosts: [a]\nhttp:\n- route:\n  - destination: {subset: v1}")
    assert errs["spec.http[0].route[0].destination.host"] == "required field is missing"


def test_bad_regex() -> None:
    errs = _errors("hosts: [a]\nhttp:\n- match: [{uri: {regex: 'a(b'}}]\n  " + ROUTE)
    reason = errs["spec.http[0].match[0].uri.regex"]
    assert reason.startswith("invalid RE2 regular expression 'a(b'")


def test_regex_valid_in_python_but_not_re2() -> None:
    errs = _errors("hosts: [a]\nhttp:\n- match: [{uri: {regex: '(?=x)'}}]\n  " + ROUTE)
    assert "RE2" in errs["spec.http[0].match[0].uri.regex"]


def test_bad_duration() -> None:
    errs = _errors("hosts: [a]\nhttp:\n- timeout: 10\n  " + ROUTE)
    assert "duration" in errs["spec.http[0].timeout"]
    errs = _errors("hosts: [a]\nhttp:\n- timeout: 5sec\n  " + ROUTE)
    assert "invalid duration" in errs["spec.http[0].timeout"]


def test_duration_minimums() -> None:
    errs = _errors(
        "hosts: [a]\nhttp:\n- timeout: 0s\n  retries: {attempts: 2, perTryTimeout: 100us}\n  "
        + ROUTE
    )
    assert "at least 1ms" in errs["spec.http[0].timeout"]
    assert "at least 1ms" in errs["spec.http[0].retries.perTryTimeout"]


def test_negative_retry_attempts() -> None:
    errs = _errors("hosts: [a]\nhttp:\n- retries: {attempts: -1}\n  " + ROUTE)
    assert errs["spec.http[0].retries.attempts"] == "must be >= 0, got -1"


def test_bad_retry_on() -> None:
    errs = _errors("hosts: [a]\nhttp:\n- retries: {attempts: 1, retryOn: '5xx,oops'}\n  " + ROUTE)
    assert "'oops' is not a valid retryOn policy" in errs["spec.http[0].retries.retryOn"]


def test_fault_ranges() -> None:
    errs = _errors(
        """
        hosts: [a]
        http:
        - route: [{destination: {host: a}}]
          fault:
            delay: {fixedDelay: 1s, percentage: {value: 120}}
            abort: {httpStatus: 700, percentage: {value: -1}}
        """
    )
    assert "between 0 and 100" in errs["spec.http[0].fault.delay.percentage.value"]
    assert "between 0 and 100" in errs["spec.http[0].fault.abort.percentage.value"]


def test_abort_status_range() -> None:
    errs = _errors("hosts: [a]\nhttp:\n- fault: {abort: {httpStatus: 99}}\n  " + ROUTE)
    assert errs["spec.http[0].fault.abort.httpStatus"] == "must be between 200 and 599, got 99"


def test_fault_needs_delay_or_abort() -> None:
    errs = _errors("hosts: [a]\nhttp:\n- fault: {}\n  " + ROUTE)
    assert "delay and/or an abort" in errs["spec.http[0].fault"]


def test_mirror_percentage_range() -> None:
    errs = _errors(
        "hosts: [a]\nhttp:\n- mirror: {host: b}\n  mirrorPercentage: {value: 101}\n  " + ROUTE
    )
    assert "between 0 and 100" in errs["spec.http[0].mirrorPercentage.value"]


def test_rewrite_uri_and_regex_conflict() -> None:
    errs = _errors(
        "hosts: [a]\nhttp:\n- rewrite: {uri: /x, uriRegexRewrite: {match: '^/y', rewrite: /z}}\n  "
        + ROUTE
    )
    assert "only one of uri and uriRegexRewrite" in errs["spec.http[0].rewrite"]


def test_header_match_names_must_be_lowercase() -> None:
    errs = _errors(
        "hosts: [a]\nhttp:\n- match: [{headers: {End-User: {exact: jason}}}]\n  " + ROUTE
    )
    assert "must be lowercase" in errs["spec.http[0].match[0].headers.End-User"]


def test_empty_string_match_only_allowed_for_presence() -> None:
    errs = _errors("hosts: [a]\nhttp:\n- match: [{uri: {}}]\n  " + ROUTE)
    assert errs["spec.http[0].match[0].uri"] == "must set one of exact, prefix, regex"
    _load(
        "hosts: [a]\nhttp:\n- match: [{queryParams: {debug: {}}, withoutHeaders: {x: {}}}]\n  "
        + ROUTE
    )


def test_string_match_two_kinds() -> None:
    errs = _errors("hosts: [a]\nhttp:\n- match: [{uri: {exact: /a, prefix: /b}}]\n  " + ROUTE)
    assert "only one of exact, prefix, regex" in errs["spec.http[0].match[0].uri"]


def test_direct_response_status_and_redirect_code() -> None:
    errs = _errors(
        """
        hosts: [a]
        http:
        - directResponse: {status: 700}
        - redirect: {uri: /x, redirectCode: 200}
        """
    )
    assert errs["spec.http[0].directResponse.status"] == "must be between 200 and 599, got 700"
    assert "3xx" in errs["spec.http[1].redirect.redirectCode"]


def test_port_number_range() -> None:
    errs = _errors("hosts: [a]\nhttp:\n- route:\n  - destination: {host: a, port: {number: 70000}}")
    assert "between 1 and 65535" in errs["spec.http[0].route[0].destination.port.number"]


def test_enum_values_listed() -> None:
    errs = _errors("hosts: [a]\nhttp:\n- redirect: {uri: /x, derivePort: SOMETIMES}")
    reason = errs["spec.http[0].redirect.derivePort"]
    assert "FROM_PROTOCOL_DEFAULT" in reason and "FROM_REQUEST_PORT" in reason


def test_wildcard_host_with_mesh_rejected() -> None:
    errs = _errors("hosts: ['*']\nhttp:\n- " + ROUTE)
    assert "mesh" in errs["spec.hosts[0]"]
    _load("hosts: ['*']\ngateways: [ingress]\nhttp:\n- " + ROUTE)


def test_tcp_and_tls_rules() -> None:
    errs = _errors(
        """
        hosts: [a.example.com]
        tcp:
        - route: []
        tls:
        - match: [{sniHosts: []}]
          route: [{destination: {host: a}}]
        """
    )
    assert "at least one destination" in errs["spec.tcp[0].route"]
    assert "at least one SNI host" in errs["spec.tls[0].match[0].sniHosts"]


def test_all_errors_in_one_document_are_reported() -> None:
    errs = _errors(
        """
        hosts: [a]
        http:
        - route: [{destination: {host: a}}]
          timeout: 0s
        - route: []
        - directResponse: {status: 42}
        """
    )
    assert set(errs) == {
        "spec.http[0].timeout",
        "spec.http[1].route",
        "spec.http[2].directResponse.status",
    }


# Envoy measures a regex by its RE2 program size; the sidecar's bootstrap raises the limit
# to Istio's, and validation refuses what is larger, so Envoy never NACKs an accepted regex.
ABOVE_ENVOY_DEFAULT = "(abcdefgh){1000}"  # program size 10004: above 100, under 32768
ABOVE_LIMIT = "(abcdefghijklmnopqrstuvwxyz0123456789){1000}"  # program size 38004


def test_regex_within_the_proxy_program_size_limit_is_accepted() -> None:
    spec = _load(
        f"hosts: [a]\nhttp:\n- match: [{{uri: {{regex: '{ABOVE_ENVOY_DEFAULT}'}}}}]\n  " + ROUTE
    )
    uri = spec.http[0].match[0].uri
    assert uri is not None and uri.regex == ABOVE_ENVOY_DEFAULT


def test_regex_above_the_proxy_program_size_limit_is_refused() -> None:
    errs = _errors(f"hosts: [a]\nhttp:\n- match: [{{uri: {{regex: '{ABOVE_LIMIT}'}}}}]\n  " + ROUTE)
    reason = errs["spec.http[0].match[0].uri.regex"]
    assert "too complex for Envoy: program size 38004, at most 32768" in reason


def test_sidecar_bootstrap_carries_the_validated_program_size_limit() -> None:
    from tsunagi import proxy_contract as pc
    from tsunagi.agent.bootstrap import ProxyIdentity, bootstrap

    doc = bootstrap(ProxyIdentity("n", "s", "default"), "127.0.0.1", 1, 2)
    [layer] = doc["layered_runtime"]["layers"]
    assert layer["static_layer"] == {"re2.max_program_size.error_level": 32768}
    assert pc.RE2_MAX_PROGRAM_SIZE == 32768


def test_header_value_with_a_single_percent_is_refused() -> None:
    # Envoy would NACK the route: a lone % starts a variable that never ends.
    errs = _errors(
        "hosts: [a]\nhttp:\n- headers: {response: {set: {x-off: 50%}}}\n"
        "  route: [{destination: {host: a, subset: v1}, headers: {request: {add: {x-b: '%%%'}}}}]\n"
    )
    assert "single %" in errs["spec.http[0].headers.response.set.x-off"]
    assert "%%" in errs["spec.http[0].route[0].headers.request.add.x-b"]
    _load(
        "hosts: [a]\nhttp:\n- headers: {response: {set: {x-off: 50%%, x-host: '%HOSTNAME%'}}}\n  "
        + ROUTE
    )

"""EnvoyFilter, end to end: Istio's local rate limit sample, a patch a client can see (also
with a field Envoy's API lacks, dropped as Istio drops it), and a patch Envoy rejects, named
in proxy-status while traffic keeps flowing.

Requests go app → client sidecar → server sidecar → echo app, all real, on loopback.
"""

# ruff: noqa: E501 (Envoy type URLs in patch values are long)
from __future__ import annotations

import http.client
import json

import pytest
import yaml

from .mesh import Mesh, Workload

pytestmark = pytest.mark.e2e

# Istio's samples/ratelimit/local-rate-limit-service.yaml in its structure (the sample's
# server port is 8000): a local rate limit filter first in the inbound connection manager;
# its per-route config gives /productpage a bucket of 10 per minute, everything 100.
LOCAL_RATE_LIMIT = """
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: filter-local-ratelimit-svc
  namespace: istio-system
spec:
  workloadSelector:
    labels:
      app: productpage
  configPatches:
    - applyTo: HTTP_FILTER
      match:
        context: SIDECAR_INBOUND
        listener:
          filterChain:
            filter:
              name: "envoy.filters.network.http_connection_manager"
      patch:
        operation: INSERT_BEFORE
        value:
          name: envoy.filters.http.local_ratelimit
          typed_config:
            "@type": type.googleapis.com/udpa.type.v1.TypedStruct
            type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            value:
              stat_prefix: http_local_rate_limiter
    - applyTo: HTTP_ROUTE
      match:
        context: SIDECAR_INBOUND
        routeConfiguration:
          vhost:
            name: "inbound|http|8000"
            route:
              action: ANY
      patch:
        operation: MERGE
        value:
          route:
            rate_limits:
              - actions:
                  - remote_address: {}
              - actions:
                  - header_value_match:
                      descriptor_value: "productpage"
                      expect_match: true
                      headers:
                        - name: :path
                          string_match:
                            prefix: /productpage
                            ignore_case: true
          typed_per_filter_config:
            envoy.filters.http.local_ratelimit:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: test_enabled
              token_bucket:
                max_tokens: 100
                tokens_per_fill: 100
                fill_interval: 60s
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              filter_enabled:
                runtime_key: test_enabled
                default_value:
                  numerator: 100
                  denominator: HUNDRED
              filter_enforced:
                runtime_key: test_enabled
                default_value:
                  numerator: 100
                  denominator: HUNDRED
              response_headers_to_add:
                - append: false
                  header:
                    key: x-local-rate-limit
                    value: "true"
              descriptors:
                - entries:
                    - key: header_match
                      value: productpage
                  token_bucket:
                    max_tokens: 10
                    tokens_per_fill: 10
                    fill_interval: 60s
"""


def route_header_filter(value: str = "by-envoyfilter", extra: str = "") -> str:
    """A response header ``x-patched: value`` on the client side's routes to reviews:9080
    (``extra`` goes into the header option)."""
    return f"""
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: reviews-header, namespace: default}}
spec:
  configPatches:
    - applyTo: HTTP_ROUTE
      match:
        context: SIDECAR_OUTBOUND
        routeConfiguration:
          vhost: {{name: "reviews.default.svc.cluster.local:9080"}}
      patch:
        operation: MERGE
        value:
          response_headers_to_add:
            - header: {{key: x-patched, value: {value}}}
              {extra}
"""


def fetch(client: Workload, host: str, path: str = "/") -> tuple[int, dict[str, str], str]:
    """One GET through the client's sidecar: status, headers (lower-case), body."""
    c = http.client.HTTPConnection("127.0.0.1", client.outbound_port, timeout=10)
    try:
        c.request("GET", path, headers={"Host": host})
        resp = c.getresponse()
        body = resp.read().decode(errors="replace")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        c.close()


def test_istio_local_rate_limit_sample_gives_429_past_the_bucket(mesh: Mesh) -> None:
    mesh.run("productpage", "v1", 8000)
    applied = mesh.apply(LOCAL_RATE_LIMIT, "--wait")
    assert applied.returncode == 0, applied.stderr
    # A client started after the change, so its connections reach the patched listener
    client = mesh.client()
    answers = [fetch(client, "productpage:8000", "/productpage") for _ in range(12)]
    statuses = [status for status, _, _ in answers]
    assert statuses[:10] == [200] * 10, answers
    assert statuses[10:] == [429, 429], answers
    status, headers, _ = answers[10]
    assert headers.get("x-local-rate-limit") == "true"
    served = json.loads(answers[0][2])
    assert served["service"] == "productpage"
    # Other paths have their own, larger bucket
    status, _, body = fetch(client, "productpage:8000", "/details")
    assert status == 200, body


def test_route_patch_is_seen_and_an_unknown_field_is_dropped_as_istio_does(mesh: Mesh) -> None:
    mesh.run("reviews", "v1", 9080)
    client = mesh.client()
    status, headers, _ = fetch(client, "reviews:9080")
    assert status == 200 and "x-patched" not in headers

    applied = mesh.apply(route_header_filter(), "--wait")
    assert applied.returncode == 0, applied.stderr
    status, headers, body = fetch(client, "reviews:9080")
    assert status == 200, body
    assert headers.get("x-patched") == "by-envoyfilter"
    assert json.loads(body)["service"] == "reviews"

    # A field Envoy's API does not have: accepted with a warning naming it, and, as in Istio,
    # the rest of the patch applies (the new header value reaches the client)
    applied = mesh.apply(route_header_filter("still-applied", "bogus_option: true"), "--wait")
    assert applied.returncode == 0, applied.stderr
    assert "bogus_option" in applied.stderr and "ignored" in applied.stderr, applied.stderr
    status, headers, body = fetch(client, "reviews:9080")
    assert status == 200, body
    assert headers.get("x-patched") == "still-applied"
    shown = mesh.cli("get", "envoyfilter", "reviews-header", "-o", "yaml")
    assert shown.returncode == 0, shown.stderr
    assert not yaml.safe_load(shown.stdout).get("status", {}).get("validationMessages")
    listed = mesh.cli("get", "envoyfilters")
    assert "reviews-header" in listed.stdout, listed.stdout + listed.stderr


ZERO_CONNECT_TIMEOUT = """
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: zero-timeout, namespace: default}
spec:
  configPatches:
    - applyTo: CLUSTER
      match:
        context: SIDECAR_OUTBOUND
        cluster: {service: reviews.default.svc.cluster.local}
      patch:
        operation: MERGE
        value: {connect_timeout: 0s}
"""


def test_a_patch_envoy_rejects_is_named_in_proxy_status(mesh: Mesh) -> None:
    mesh.run("reviews", "v1", 9080)
    client = mesh.client()
    # Well-formed, so it translates; but Envoy requires a positive connect timeout
    applied = mesh.apply(ZERO_CONNECT_TIMEOUT, "--wait")
    assert "zero-timeout" in applied.stdout, applied.stdout + applied.stderr
    proxies = mesh.cli("proxy-status")
    assert "Rejected by Envoy:" in proxies.stdout, proxies.stdout
    rejected = proxies.stdout.split("Rejected by Envoy:")[1]
    assert f"{client.name}.default CDS:" in rejected, proxies.stdout
    assert "(patched by EnvoyFilter default/zero-timeout)" in rejected, proxies.stdout
    # Envoy keeps its last good clusters, so traffic still flows
    status, _, body = fetch(client, "reviews:9080")
    assert status == 200, body


def ecds_rate_limit(tokens: int, marker: str) -> str:
    """A local rate limit of ``tokens`` per minute on productpage's inbound side, its config
    served over ECDS (EXTENSION_CONFIG) and loaded by name by the filter the second patch
    inserts; rate-limited answers carry ``x-limited: marker``."""
    return f"""
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: ratelimit-ecds, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: productpage}}}}
  configPatches:
    - applyTo: EXTENSION_CONFIG
      patch:
        operation: ADD
        value:
          name: local-ratelimit
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            stat_prefix: ecds_rate_limiter
            token_bucket: {{max_tokens: {tokens}, tokens_per_fill: {tokens}, fill_interval: 3600s}}
            filter_enabled: {{default_value: {{numerator: 100, denominator: HUNDRED}}}}
            filter_enforced: {{default_value: {{numerator: 100, denominator: HUNDRED}}}}
            response_headers_to_add:
              - header: {{key: x-limited, value: {marker}}}
    - applyTo: HTTP_FILTER
      match:
        context: SIDECAR_INBOUND
        listener:
          filterChain:
            filter: {{name: envoy.filters.network.http_connection_manager}}
      patch:
        operation: INSERT_FIRST
        value:
          name: local-ratelimit
          config_discovery:
            config_source: {{ads: {{}}}}
            type_urls: [type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit]
"""


def listener_changes(w: Workload) -> dict[str, str]:
    """The Envoy's counters of listener updates (LDS responses taken, listeners added or
    modified): unchanged when only an extension config changed."""
    stats = w.envoy_admin("/stats?filter=listener_manager")
    wanted = ("listener_manager.lds.update_success", "listener_manager.listener_added")
    wanted += ("listener_manager.listener_modified",)
    lines = (line.split(": ", 1) for line in stats.splitlines() if ": " in line)
    return {k: v for k, v in lines if k in wanted}


@pytest.mark.parametrize("protocol", ["delta", "sotw"])
def test_an_extension_config_over_ecds_limits_and_a_new_one_applies_without_a_listener_change(
    mesh: Mesh, protocol: str
) -> None:
    mesh.xds_protocol = protocol
    server = mesh.run("productpage", "v1", 8000)
    applied = mesh.apply(ecds_rate_limit(3, "first"), "--wait")
    assert applied.returncode == 0, applied.stderr
    assert "not applied" not in applied.stderr, applied.stderr
    client = mesh.client()
    answers = [fetch(client, "productpage:8000", "/productpage") for _ in range(5)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 429, 429], answers
    assert json.loads(answers[0][2])["service"] == "productpage"
    assert answers[3][1].get("x-limited") == "first", answers[3]
    shown = mesh.cli("proxy-status")
    header = shown.stdout.splitlines()[0].split()
    assert "ECDS" in header, shown.stdout
    row = next(line.split() for line in shown.stdout.splitlines() if server.name in line)
    assert row[header.index("ECDS")] == "SYNCED", shown.stdout

    # A new bucket and marker: only the extension config changes, the listener stays
    before = listener_changes(server)
    assert len(before) == 3, before
    applied = mesh.apply(ecds_rate_limit(6, "second"), "--wait")
    assert applied.returncode == 0, applied.stderr
    answers = [fetch(client, "productpage:8000", "/productpage") for _ in range(7)]
    assert [status for status, _, _ in answers] == [200] * 6 + [429], answers
    assert answers[6][1].get("x-limited") == "second", answers[6]
    assert listener_changes(server) == before

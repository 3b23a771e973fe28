"""Route retries (Istio's ConvertPolicy) and redirects; full routes are in the golden case
``retries-and-redirects``, which real Envoy validates."""

from __future__ import annotations

from tsunagi.api import HTTPRetry, load_documents
from tsunagi.mesh.analysis import not_yet_enforced
from tsunagi.xds.translate.routes import retry_policy

from ..e2e.rules import virtual_service

PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"


def predicates(policy: dict | None) -> list[str]:
    assert policy is not None
    return [p["name"] for p in policy.get("retry_host_predicate", [])]


def test_default_policy_avoids_previous_hosts_unless_the_destination_hashes() -> None:
    assert predicates(retry_policy(None)) == [PREVIOUS_HOSTS]
    assert predicates(retry_policy(None, hashing=True)) == []
    assert predicates(retry_policy(HTTPRetry(attempts=3), hashing=True)) == []


def test_retry_ignore_previous_hosts_decides_the_predicate() -> None:
    off = HTTPRetry(attempts=3, retry_ignore_previous_hosts=False)
    on = HTTPRetry(attempts=3, retry_ignore_previous_hosts=True)
    assert predicates(retry_policy(off)) == []
    assert predicates(retry_policy(on, hashing=True)) == [PREVIOUS_HOSTS]


def test_remote_localities_and_backoff() -> None:
    policy = retry_policy(
        HTTPRetry.model_validate({"attempts": 2, "retryRemoteLocalities": True, "backoff": "25ms"})
    )
    assert policy is not None
    assert policy["retry_priority"]["name"] == "envoy.retry_priorities.previous_priorities"
    assert policy["retry_priority"]["typed_config"]["update_frequency"] == 2
    assert policy["retry_back_off"] == {"base_interval": "0.025s"}
    plain = retry_policy(HTTPRetry(attempts=2, retry_remote_localities=False))
    assert plain is not None and "retry_priority" not in plain and "retry_back_off" not in plain


def test_retries_and_redirects_raise_no_pending_warning_but_odd_codes_do() -> None:
    docs = load_documents(
        virtual_service("""
  - match: [{uri: {prefix: /a}}]
    redirect: {uri: /b, derivePort: FROM_REQUEST_PORT, redirectCode: 307}
  - match: [{uri: {prefix: /c}}]
    redirect: {uri: /d, redirectCode: 305}
  - retries: {attempts: 2, retryRemoteLocalities: true, retryIgnorePreviousHosts: false,
              backoff: 10ms}
    route: [{destination: {host: reviews}}]
"""),
        "vs.yaml",
    )
    assert not_yet_enforced(docs) == [
        "VirtualService default/reviews: spec.http[1].redirect.redirectCode 305 is not "
        "supported by Envoy (301, 302, 303, 307, 308); this route is left out, as Istio does"
    ]

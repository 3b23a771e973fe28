"""EnvoyFilter EXTENSION_CONFIG: the extension configs (ECDS) a proxy's filters add, as
Istio makes them (ADD only, last of a name wins), shared across proxies, and a value Envoy
could not take reported against its filter."""

# ruff: noqa: E501 (Envoy type URLs in patch values are long)
from __future__ import annotations

from dataclasses import replace

from tsunagi.api import load_documents
from tsunagi.mesh import Node, World
from tsunagi.xds import resources as rs
from tsunagi.xds.translate import Memo, assemble_patched, translate_local, translate_outbound

from .examples import instance
from .test_translate_envoyfilter import HCM, dicts, ef, hcm, node, run, world

RL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"


def add_config(name: str = "rl", tokens: int = 5) -> str:
    return (
        "  - applyTo: EXTENSION_CONFIG\n"
        f"    patch: {{operation: ADD, value: {{name: {name}, typed_config: {{'@type': {RL}, "
        f"stat_prefix: {name}, token_bucket: {{max_tokens: {tokens}, fill_interval: 60s}}}}}}}}\n"
    )


def use_config(name: str = "rl") -> str:
    return (
        "  - applyTo: HTTP_FILTER\n"
        f"    match: {{context: SIDECAR_INBOUND, listener: {{filterChain: {{filter: {{name: {HCM}}}}}}}}}\n"
        f"    patch: {{operation: INSERT_FIRST, value: {{name: {name}, config_discovery: "
        f"{{config_source: {{ads: {{}}}}, type_urls: ['{RL}']}}}}}}\n"
    )


def test_an_added_extension_config_is_served_with_the_filter_that_loads_it() -> None:
    snap, patched = run(ef(add_config() + use_config()))
    configs = dicts(snap, rs.EXTENSION_CONFIG)
    assert configs == {
        "rl": {
            "@type": rs.EXTENSION_CONFIG,
            "name": "rl",
            "typed_config": {
                "@type": RL,
                "stat_prefix": "rl",
                "token_bucket": {"max_tokens": 5, "fill_interval": "60s"},
            },
        }
    }
    [first, *_] = hcm(dicts(snap, rs.LISTENER)["inbound|8000"])["http_filters"]
    assert first == {
        "name": "rl",
        "config_discovery": {"config_source": {"ads": {}}, "type_urls": [RL]},
    }
    assert patched.errors == ()
    assert patched.touched[rs.EXTENSION_CONFIG] == ("default/ef",)


def test_only_selected_proxies_get_them_and_they_are_made_once() -> None:
    config = ef(add_config(), spec="  workloadSelector: {labels: {app: productpage}}\n")
    w, memo = world(config), Memo()

    def snapshot(n: Node) -> rs.Snapshot:
        out = translate_outbound(w, w.scope_of(n), memo)
        return assemble_patched(w, n, out, translate_local(n), 1, memo)[0]

    other = Node.from_metadata("o.default", {"namespace": "default", "labels": {"app": "x"}})
    assert rs.EXTENSION_CONFIG not in snapshot(other).resources
    a, b = snapshot(node("a")), snapshot(node("b"))
    assert a.of(rs.EXTENSION_CONFIG) is b.of(rs.EXTENSION_CONFIG)
    assert list(a.of(rs.EXTENSION_CONFIG)) == ["rl"]


def test_a_later_add_of_the_same_name_wins_and_other_operations_make_nothing() -> None:
    merge = "  - {applyTo: EXTENSION_CONFIG, patch: {operation: MERGE, value: {name: other}}}\n"
    config = ef(add_config(tokens=5), "a") + ef(add_config(tokens=9) + merge, "b")
    snap, patched = run(config)
    configs = dicts(snap, rs.EXTENSION_CONFIG)
    assert list(configs) == ["rl"]
    assert configs["rl"]["typed_config"]["token_bucket"]["max_tokens"] == 9
    assert patched.touched[rs.EXTENSION_CONFIG] == ("default/a", "default/b")


def test_changing_the_config_changes_only_the_extension_config() -> None:
    before, _ = run(ef(add_config(tokens=5) + use_config()))
    after, _ = run(ef(add_config(tokens=1) + use_config()))
    assert before.version(rs.EXTENSION_CONFIG) != after.version(rs.EXTENSION_CONFIG)
    assert before.version(rs.LISTENER) == after.version(rs.LISTENER)


def test_a_config_envoy_could_not_take_is_reported_against_its_filter() -> None:
    # Validation refuses a nameless one; one stored by another version still gets here
    [bad] = load_documents(ef(add_config(), "bad"), "ef.yaml")
    [cp] = bad.spec.config_patches
    patch = cp.patch.model_copy(update={"value": {"typed_config": {"@type": RL}}})
    spec = bad.spec.model_copy(update={"config_patches": (cp.model_copy(update={"patch": patch}),)})
    good = load_documents(ef(add_config("ok"), "good"), "ef.yaml")
    w = World.build(1, [replace(bad, spec=spec), *good], [instance("reviews-1")])
    n, memo = node(), Memo()
    out = translate_outbound(w, w.scope_of(n), memo)
    snap, patched = assemble_patched(w, n, out, translate_local(n), 1, memo)
    assert list(snap.of(rs.EXTENSION_CONFIG)) == ["ok"]
    [error] = patched.errors
    assert error.resources == (("EnvoyFilter", "default", "bad"),)
    assert error.part == "EnvoyFilter default/bad on ECDS"
    assert "has no name" in error.message and "left out" in error.message


def test_a_filter_loading_a_config_no_filter_adds_is_reported() -> None:
    # Envoy would keep the listener warming, then answer 500 from that filter
    snap, patched = run(ef(use_config("nowhere"), "user") + ef(add_config("rl"), "adder"))
    assert hcm(dicts(snap, rs.LISTENER)["inbound|8000"])["http_filters"][0]["name"] == "nowhere"
    [error] = patched.errors
    assert error.resources == (("EnvoyFilter", "default", "user"),)
    assert error.part == "extension config 'nowhere' that LDS inbound|8000 loads over ECDS"
    assert "no EnvoyFilter selecting this proxy adds it" in error.message

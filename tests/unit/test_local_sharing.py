"""Proxies whose own config is equal share it: :func:`translate_local` with a memo packs
each distinct listener and cluster once, and keeps apart what names the proxy."""

from __future__ import annotations

from typing import Any

from tsunagi import proxy_contract as pc
from tsunagi.mesh import Node
from tsunagi.mesh.security import WorkloadSecurity
from tsunagi.mesh.telemetry import ProxyTelemetry
from tsunagi.xds.translate import Local, Memo, translate_local
from tsunagi.xds.translate.inbound_tls import with_mode
from tsunagi.xds.translate.listeners import build_listener, inbound_listeners
from tsunagi.xds.translate.protos import Listener, build


def _node(node_id: str, listen: int = 15006) -> Node:
    meta = {"service": "web", "inbound": {"8080": {"listen": listen, "app": 9080}}}
    return Node.from_metadata(node_id, meta)


def _bodies(local: Local) -> dict[str, Any]:
    parts = {**local.listeners, **local.clusters}
    return {name: r.body.value for name, r in parts.items()}


def _inbound(local: Local) -> Any:
    (name,) = (n for n in local.listeners if n != "outbound")
    return local.listeners[name]


def test_equal_proxies_share_their_packed_listeners_and_clusters() -> None:
    memo = Memo()
    one = translate_local(_node("web-1.default"), memo=memo)
    two = translate_local(_node("web-2.default"), memo=memo)
    assert _inbound(one) is _inbound(two)
    assert one.clusters["inbound|8080||"] is two.clusters["inbound|8080||"]
    # The same config as without a memo: sharing only saves work.
    assert _bodies(one) == _bodies(translate_local(_node("web-1.default")))
    # PERMISSIVE (the default): the mTLS chain and the plain one, with the same filters.
    listener = Listener()
    assert _inbound(one).body.Unpack(listener)
    mtls, plain = listener.filter_chains
    assert [mtls.name, plain.name] == ["inbound|8080|mtls", "inbound|8080|plaintext"]
    assert mtls.HasField("transport_socket") and not plain.HasField("transport_socket")
    assert mtls.filters == plain.filters


def test_what_differs_or_names_the_proxy_is_not_shared() -> None:
    memo = Memo()
    other_port = translate_local(_node("web-3.default", listen=15007), memo=memo)
    assert _inbound(other_port) is not _inbound(translate_local(_node("web-1.default"), memo=memo))
    # A JSON access log names the proxy in every line: each proxy gets its own listeners.
    logged = ProxyTelemetry(access_log="JSON")
    one = translate_local(_node("web-1.default"), logged, memo=memo)
    two = translate_local(_node("web-2.default"), logged, memo=memo)
    assert _inbound(one) is not _inbound(two)
    assert b"web-1.default" in _inbound(one).body.value
    assert b"web-2.default" in _inbound(two).body.value
    # Security is part of the content too: STRICT gets a listener of its own.
    strict = WorkloadSecurity(mtls=((8080, "STRICT"),))
    alike = translate_local(_node("web-4.default"), memo=memo)
    guarded = translate_local(_node("web-5.default"), security=strict, memo=memo)
    assert _inbound(guarded) is not _inbound(alike)
    assert b"raw_buffer" not in _inbound(guarded).body.value


def test_a_listener_built_with_shared_filters_is_the_listener() -> None:
    """Each chain of a PERMISSIVE TCP listener (mTLS, a client's TLS, plain text) shares
    one filters list, parsed once: the result is what parsing it all gives."""
    tcp = Node.from_metadata(
        "db-1.default",
        {
            "service": "db",
            "inbound": {"5432": {"listen": 15006, "app": 5432, pc.META_INBOUND_PROTOCOL: "tcp"}},
        },
    )
    (doc,) = inbound_listeners(tcp)
    assert len(doc["filter_chains"]) == 3
    assert build_listener(doc) == build(Listener, doc)
    plain = {**doc, "filter_chains": [dict(doc["filter_chains"][-1])]}
    strict = with_mode(plain, "STRICT", tcp=True)
    assert build_listener(strict) == build(Listener, strict)

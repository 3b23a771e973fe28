"""An intercepting sidecar's capture and DNS listeners, as pushed: made once per routing
change (a push that changes no routing looks them up), and a failure to make them costs the
proxy only them, reported as its own error."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from tsunagi.api import load_documents
from tsunagi.mesh import Intercept, Node, World
from tsunagi.xds import resources as rs
from tsunagi.xds.translate import (
    Memo,
    assemble_patched,
    capture,
    translate_local,
    translate_outbound,
)
from tsunagi.xds.translate.dns_table import DNS_LISTENER
from tsunagi.xds.translate.isolation import TranslationError
from tsunagi.xds.translate.protos import Listener

CONFIG = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.test]
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
"""

ANOTHER = """
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example.test]
  resolution: DNS
  ports: [{number: 5432, name: tcp, protocol: TCP}]
"""

NODE = Node(
    id="web.default",
    namespace="default",
    labels={"app": "web"},
    intercept=Intercept(capture_port=15001, dns_port=15053),
)
OWN = (capture.CAPTURE_LISTENER, DNS_LISTENER)


def _world(config: str, revision: int = 1) -> World:
    return World.build(revision, load_documents(config, "config.yaml"), [])


def _push(w: World, memo: Memo) -> tuple[dict[str, Any], tuple[TranslationError, ...]]:
    """The node's listeners as pushed, and its translation errors."""
    outbound = translate_outbound(w, w.scope_of(NODE), memo)
    local = translate_local(NODE, w.telemetry_for(NODE))
    snapshot, patched = assemble_patched(w, NODE, outbound, local, w.revision, memo)
    return dict(snapshot.of(rs.LISTENER)), patched.errors


def _dns_names(resource: Any) -> list[str]:
    msg = Listener()
    resource.body.Unpack(msg)
    doc = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    table = doc["listener_filters"][0]["typed_config"]["server_config"]["inline_dns_table"]
    return [d["name"] for d in table["virtual_domains"]]


def test_a_push_without_a_routing_change_reuses_them_and_one_with_rebuilds_them() -> None:
    memo = Memo()
    first = _world(CONFIG)
    before, errors = _push(first, memo)
    assert not errors
    assert "api.example.test" in _dns_names(before[DNS_LISTENER])
    memo.rotate()
    again, _ = _push(_world(CONFIG, revision=2), memo)
    assert all(again[name] is before[name] for name in OWN)  # looked up, not made again
    memo.rotate()
    grown, _ = _push(_world(CONFIG + ANOTHER, revision=3), memo)
    assert "db.example.test" in _dns_names(grown[DNS_LISTENER])
    assert all(grown[name] is not before[name] for name in OWN)


def test_a_failure_leaves_them_out_and_is_reported_as_the_proxys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(world: World, node: Node) -> dict[str, Any]:
        raise ValueError("boom")

    monkeypatch.setattr(capture, "capture_listener", broken)
    listeners, errors = _push(_world(CONFIG), Memo())
    assert not set(OWN) & set(listeners)
    assert listeners  # its other listeners are still pushed
    assert [e.part for e in errors] == ["capture listeners of proxy web.default"]
    assert "ValueError: boom" in errors[0].message

"""Extension configs (ECDS) on the xDS state machine, both variants: sent only once Envoy
asks for their names, ACK/NACK tracked like any type, ordered after clusters and before
listeners, and SotW responses holding every subscribed config."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from google.protobuf import any_pb2

from tsunagi.cli import output
from tsunagi.controlplane.status import node_status
from tsunagi.xds.cache import NodeEntry
from tsunagi.xds.protocol import DeltaStream, SotwStream
from tsunagi.xds.resources import (
    CLUSTER,
    EXTENSION_CONFIG,
    LISTENER,
    PUSH_ORDER,
    Resource,
    Snapshot,
)

from .test_xds_protocol import MODES, connected, types_sent, world


def extension(name: str, tokens: int = 10) -> Resource:
    limit = local_rate_limit_pb2.LocalRateLimit(stat_prefix=name)
    limit.token_bucket.max_tokens = tokens
    limit.token_bucket.fill_interval.seconds = 60
    typed = any_pb2.Any()
    typed.Pack(limit)
    return Resource.pack(name, extension_pb2.TypedExtensionConfig(name=name, typed_config=typed))


def with_extensions(base: Snapshot, configs: Iterable[Resource], revision: int = 1) -> Snapshot:
    by_type = {t: list(base.of(t).values()) for t in base.resources}
    return Snapshot.build({**by_type, EXTENSION_CONFIG: configs}, revision)


Mode = type[SotwStream | DeltaStream]


@pytest.mark.parametrize("mode", MODES)
def test_extension_configs_go_once_asked_for_and_a_change_sends_only_them(mode: Mode) -> None:
    snap = with_extensions(world(), [extension("rl")])
    envoy = connected(mode, snap)
    assert "ECDS" not in types_sent(envoy.log)  # Envoy has not asked for any yet
    envoy.subscribe(EXTENSION_CONFIG, {"rl"})
    assert types_sent(envoy.run()) == ["ECDS"]
    assert envoy.stream.synced(snap)
    changed = with_extensions(world(revision=2), [extension("rl", tokens=1)], revision=2)
    envoy.stream.set_snapshot(changed)
    assert not envoy.stream.synced(changed)
    assert types_sent(envoy.run()) == ["ECDS"]
    assert envoy.stream.synced(changed)
    status = envoy.stream.status()[EXTENSION_CONFIG]
    assert status.acked_version == changed.version(EXTENSION_CONFIG, ["rl"])
    held = extension_pb2.TypedExtensionConfig()
    envoy.held[EXTENSION_CONFIG]["rl"].body.Unpack(held)
    limit = local_rate_limit_pb2.LocalRateLimit()
    held.typed_config.Unpack(limit)
    assert limit.token_bucket.max_tokens == 1


@pytest.mark.parametrize("mode", MODES)
def test_a_rejected_extension_config_is_recorded_shown_and_not_retried(mode: Mode) -> None:
    snap = with_extensions(world(), [extension("rl")])
    envoy = connected(mode, snap)
    envoy.subscribe(EXTENSION_CONFIG, {"rl"})
    envoy.run()
    envoy.reject[EXTENSION_CONFIG] = "bad rate limit"
    bad = with_extensions(world(revision=2), [extension("rl", tokens=0)], revision=2)
    entry = NodeEntry("n1", {"namespace": "default"}, bad, envoy.stream)
    envoy.stream.set_snapshot(bad)
    assert types_sent(envoy.run()) == ["ECDS"]
    assert envoy.run() == []  # never blindly re-sent
    status = node_status(entry)
    assert status["types"]["ECDS"]["state"] == "NACKED"
    assert status["message"] == "ECDS: bad rate limit"
    assert "ECDS" in output.proxy_status([status]).splitlines()[0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("warming", [False, True])
def test_extension_configs_go_after_clusters_and_before_listeners(
    mode: Mode, warming: bool
) -> None:
    snap = with_extensions(world(), [extension("rl")])
    envoy = connected(mode, snap, warming=warming)
    envoy.subscribe(EXTENSION_CONFIG, {"rl"})
    envoy.run()
    # Clusters, the extension config and listeners all change at once
    changed = with_extensions(
        world(timeout=2, lport=15002, revision=2), [extension("rl", tokens=3)], revision=2
    )
    envoy.stream.set_snapshot(changed)
    sent = types_sent(envoy.run())
    assert sent.index("CDS") < sent.index("ECDS") < sent.index("LDS"), sent
    assert envoy.stream.synced(changed)
    assert PUSH_ORDER.index(CLUSTER) < PUSH_ORDER.index(EXTENSION_CONFIG)
    assert PUSH_ORDER.index(EXTENSION_CONFIG) < PUSH_ORDER.index(LISTENER)


@pytest.mark.parametrize("mode", MODES)
def test_sotw_responses_hold_every_subscribed_config_and_delta_only_the_changed(
    mode: Mode,
) -> None:
    # Envoy gives each ECDS name a watch that wants exactly one resource per SotW update
    snap = with_extensions(world(), [extension("a"), extension("b")])
    envoy = connected(mode, snap)
    envoy.subscribe(EXTENSION_CONFIG, {"a", "b"})
    envoy.run()
    changed = with_extensions(world(revision=2), [extension("a", 1), extension("b")], 2)
    envoy.stream.set_snapshot(changed)
    [response] = envoy.run()
    expected = ("a", "b") if mode is SotwStream else ("a",)
    assert sorted(response[1]) == list(expected)
    assert envoy.stream.synced(changed)

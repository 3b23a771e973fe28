"""The bytes a response goes out as (``protocol.Outgoing``): made from each resource's cached
entry and the response's own fields, they must say exactly what the message would say."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tsunagi.xds.protocol import DeltaStream, SotwStream
from tsunagi.xds.protocol._wire import delta_response, sotw_response
from tsunagi.xds.resources import CLUSTER, Resource, Snapshot
from tsunagi.xds.translate import _Overlay

CDS = CLUSTER


def _clusters(*names: str) -> dict[str, Resource]:
    return {
        n: Resource.pack(n, cluster_pb2.Cluster(name=n, type=cluster_pb2.Cluster.EDS))
        for n in names
    }


def test_a_sotw_response_is_the_message_it_names() -> None:
    target = _clusters("a", "b")
    out = sotw_response(CDS, target, ["b", "a"], "v-7", "nonce-3")
    assert (out.type_url, out.nonce) == (CDS, "nonce-3")
    expected = discovery_pb2.DiscoveryResponse(
        version_info="v-7",
        resources=[target["b"].body, target["a"].body],
        type_url=CDS,
        nonce="nonce-3",
    )
    assert discovery_pb2.DiscoveryResponse.FromString(out.data) == expected
    # The same resources again (another stream): the cached entries, the same bytes.
    assert sotw_response(CDS, target, ["b", "a"], "v-7", "nonce-3").data == out.data


def test_a_delta_response_carries_its_resources_removals_and_version() -> None:
    target = _clusters("a")
    out = delta_response(CDS, target, ["a"], ["gone-1", "gone-2"], "sys-1", "n-1")
    expected = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info="sys-1",
        resources=[
            discovery_pb2.Resource(name="a", version=target["a"].version, resource=target["a"].body)
        ],
        removed_resources=["gone-1", "gone-2"],
        type_url=CDS,
        nonce="n-1",
    )
    assert discovery_pb2.DeltaDiscoveryResponse.FromString(out.data) == expected


def test_what_a_stream_sends_is_what_it_reports() -> None:
    """``next_wire`` (what the server writes) and ``next_response`` (what tests read) are
    one response: the nonce the server logs is the one Envoy must answer."""
    snapshot = Snapshot.build({CLUSTER: list(_clusters("a", "b").values())}, 1)
    for stream in (SotwStream(nonce_prefix="s-"), DeltaStream(nonce_prefix="d-")):
        stream.set_snapshot(snapshot)
        request_type = (
            discovery_pb2.DiscoveryRequest
            if isinstance(stream, SotwStream)
            else discovery_pb2.DeltaDiscoveryRequest
        )
        stream.receive(request_type(type_url=CLUSTER, node={"id": "n"}))
        out = stream.next_wire()
        assert out is not None and out.type_url == CLUSTER
        message_type = (
            discovery_pb2.DiscoveryResponse
            if isinstance(stream, SotwStream)
            else discovery_pb2.DeltaDiscoveryResponse
        )
        message = message_type.FromString(out.data)
        assert message.nonce == out.nonce and message.type_url == CLUSTER
        assert len(message.resources) == 2
        assert stream.next_wire() is None  # sent: nothing more until Envoy answers


def _bodies(data: bytes, delta: bool) -> list[bytes]:
    """The packed resources a response carries, as bytes (in the order sent)."""
    if delta:
        message = discovery_pb2.DeltaDiscoveryResponse.FromString(data)
        return [r.resource.value for r in message.resources]
    return [r.value for r in discovery_pb2.DiscoveryResponse.FromString(data).resources]


def test_a_response_of_a_whole_shared_mapping_holds_each_resource_once() -> None:
    """Every resource (``names`` None): a large frozen mapping goes as one block joined once,
    a node's overlay as that block plus its own, and an own resource that replaces a shared
    one is sent instead of it, not beside it."""
    shared = MappingProxyType(_clusters(*(f"outbound|{i:03}" for i in range(100))))
    own = _clusters("inbound|9080")
    mine = Resource.pack("outbound|007", cluster_pb2.Cluster(name="mine"))

    def bodies(target: Mapping[str, Resource]) -> list[bytes]:
        return sorted(r.body.value for r in target.values())

    for delta in (False, True):

        def send(target: Mapping[str, Resource], delta: bool = delta) -> bytes:
            if delta:
                return delta_response(CDS, target, None, (), "v", "n").data
            return sotw_response(CDS, target, None, "v", "n").data

        first = send(shared)
        assert sorted(_bodies(first, delta)) == bodies(shared)
        assert send(shared) == first  # the block, joined once
        assert sorted(_bodies(send(_Overlay(shared, own)), delta)) == bodies({**shared, **own})
        replaced = {**shared, "outbound|007": mine}
        sent = _bodies(send(_Overlay(shared, {"outbound|007": mine})), delta)
        assert sorted(sent) == bodies(replaced)

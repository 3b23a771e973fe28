"""The bytes a response goes out as (``protocol.serialized``): those it was made from, which
must say exactly what the message says."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tsunagi.xds.protocol import serialized
from tsunagi.xds.protocol._wire import delta_response, sotw_response
from tsunagi.xds.resources import Resource

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def _clusters(*names: str) -> dict[str, Resource]:
    return {
        n: Resource.pack(n, cluster_pb2.Cluster(name=n, type=cluster_pb2.Cluster.EDS))
        for n in names
    }


def test_a_sotw_response_goes_out_as_the_bytes_it_was_made_from() -> None:
    target = _clusters("a", "b")
    response = sotw_response(CDS, target, ["b", "a"], "v-7", "nonce-3")
    assert response.version_info == "v-7" and response.type_url == CDS
    assert response.nonce == "nonce-3"
    assert [r.value for r in response.resources] == [
        target["b"].body.value,
        target["a"].body.value,
    ]
    sent = serialized(response)
    assert discovery_pb2.DiscoveryResponse.FromString(sent) == response
    # Once sent, the bytes are forgotten; serializing again gives the same message.
    again = serialized(response)
    assert discovery_pb2.DiscoveryResponse.FromString(again) == response


def test_a_delta_response_carries_its_removals_and_versions() -> None:
    target = _clusters("a")
    response = delta_response(CDS, target, ["a"], ["gone-1", "gone-2"], "sys-1", "n-1")
    assert response.system_version_info == "sys-1" and response.nonce == "n-1"
    assert list(response.removed_resources) == ["gone-1", "gone-2"]
    assert [(r.name, r.version) for r in response.resources] == [("a", target["a"].version)]
    parsed = discovery_pb2.DeltaDiscoveryResponse.FromString(serialized(response))
    assert parsed == response


def test_a_message_made_elsewhere_is_serialized_as_usual() -> None:
    response = discovery_pb2.DiscoveryResponse(version_info="x", nonce="y", type_url=CDS)
    assert serialized(response) == response.SerializeToString()

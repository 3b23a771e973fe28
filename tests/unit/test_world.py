"""The World's indexes, the apply-time analysis built on them, and the Node a proxy's
agent describes."""

from __future__ import annotations

from google.protobuf import json_format, struct_pb2

from tsunagi.agent.bootstrap import ProxyIdentity, bootstrap
from tsunagi.api import load_documents
from tsunagi.mesh import Endpoint, Node, World
from tsunagi.mesh.analysis import not_yet_enforced, undefined_subsets
from tsunagi.proxy_contract import inbound_active_requests_stat
from tsunagi.registry import Instance
from tsunagi.xds.translate import translate_local

REVIEWS = Instance.from_document(
    {"name": "reviews-a", "service": "reviews", "port": 9080, "target_port": 20001}
)


def test_destination_rule_in_the_services_namespace_wins() -> None:
    docs = load_documents("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: elsewhere, namespace: aaa}
spec:
  host: reviews.default.svc.cluster.local
  subsets: [{name: other, labels: {version: x}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
""")
    world = World.build(1, docs, [REVIEWS])
    host = "reviews.default.svc.cluster.local"
    assert world.destination_rules[host].qualified_name == "default/reviews"
    assert world.subset_definitions(host) == (("v1", (("version", "v1"),)),)


def test_indexes_hold_only_their_kind_in_name_order() -> None:
    docs = load_documents("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: default}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: default}
spec: {hosts: [reviews, "*.example.com"], http: [{route: [{destination: {host: reviews}}]}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews-extra}
spec: {hosts: [reviews.example.com], ports: [{number: 80, name: http, protocol: HTTP}]}
""")
    world = World.build(1, docs, [REVIEWS])
    by_host = {h: [vs.name for vs in rules] for h, rules in world.virtual_services.items()}
    assert by_host == {"reviews.default.svc.cluster.local": ["a", "b"], "*.example.com": ["a"]}
    assert world.destination_rules == {}
    assert {h: [se.name for se in ses] for h, ses in world.service_entries.items()} == {
        "reviews.example.com": ["reviews-extra"]
    }


def test_service_entry_endpoints_use_the_named_port_mapping() -> None:
    docs = load_documents("""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.example.com]
  resolution: STATIC
  ports:
  - {number: 5432, name: pg, protocol: TCP, targetPort: 6000}
  - {number: 9000, name: admin, protocol: HTTP}
  endpoints:
  - {address: 10.0.0.1, ports: {pg: 7000}, labels: {v: "1"}, locality: r/z}
  - {address: 10.0.0.2}
""")
    world = World.build(1, docs, [])
    assert world.services["db.example.com"].ports == (5432, 9000)
    assert world.endpoints[("db.example.com", 5432)] == (
        Endpoint("10.0.0.1", 7000, {"v": "1"}, "r/z", namespace="default"),
        Endpoint("10.0.0.2", 6000, {}, namespace="default"),
    )
    assert [e.port for e in world.endpoints[("db.example.com", 9000)]] == [9000, 9000]


def test_node_reads_what_the_agent_writes_into_its_bootstrap() -> None:
    ident = ProxyIdentity(
        node_id="reviews-1",
        service="reviews",
        namespace="shop",
        labels={"app": "reviews", "version": "v2"},
        outbound_port=16001,
        inbound={9080: (16006, 16080)},
    )
    doc = bootstrap(ident, "127.0.0.1", 15010, 15000)["node"]
    # Envoy sends the metadata back as a protobuf Struct (numbers become floats), and the
    # xDS server turns it into a dict.
    metadata = struct_pb2.Struct()
    metadata.update(doc["metadata"])
    node = Node.from_metadata(doc["id"], json_format.MessageToDict(metadata))
    assert node == Node(
        id="reviews-1",
        namespace="shop",
        service="reviews",
        labels={"app": "reviews", "version": "v2"},
        outbound_port=16001,
        inbound={9080: (16006, 16080)},
        kind="sidecar",
    )


def test_inbound_listener_stats_are_where_the_agent_drains() -> None:
    node = Node(id="reviews-1", inbound={9080: (16006, 16080)})
    (listener,) = (r for n, r in translate_local(node).listeners.items() if n != "outbound")
    as_dict = json_format.MessageToDict(listener.body, preserving_proto_field_name=True)
    hcm = as_dict["filter_chains"][0]["filters"][0]["typed_config"]
    stat = inbound_active_requests_stat(9080)
    assert stat == f"http.{hcm['stat_prefix']}.downstream_rq_active"


def test_apply_warnings_name_what_is_not_in_force() -> None:
    docs = load_documents("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{sourceLabels: {app: web}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 10}}}
    route: [{destination: {host: reviews, subset: v9}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
""")
    world = World.build(1, docs, [REVIEWS])
    subsets = undefined_subsets(world, docs)
    assert len(subsets) == 1 and "spec.http[0].route[0].destination.subset" in subsets[0]
    pending = not_yet_enforced(docs)
    assert not any(".fault is" in w for w in pending)  # enforced by Envoy now
    assert not any("sourceLabels" in w for w in pending)  # enforced per client scope now
    assert not any("PeerAuthentication" in w for w in pending)  # mesh mTLS enforces it now


def test_a_destination_rule_workload_selector_is_enforced_so_not_reported() -> None:
    docs = load_documents("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  workloadSelector: {labels: {app: web}}
  trafficPolicy:
    tls: {mode: SIMPLE, credentialName: reviews-ca}
  subsets: [{name: v1, labels: {version: v1}}]
""")
    pending = not_yet_enforced(docs)
    # enforced (tests/unit/test_dr_selector.py); with a selector credentialName applies too
    assert [w for w in pending if "workloadSelector" in w or "credentialName" in w] == []

"""PeerAuthentication: Istio's precedence table, its validation, the ``apply`` warnings, and
what the modes become in translation (which endpoints clients send mTLS, which chains an
inbound listener has)."""

from __future__ import annotations

import textwrap
from functools import partial
from typing import Any

import pytest
from google.protobuf import json_format

from tsunagi.api import ValidationFailed, load_documents
from tsunagi.mesh import Node, World
from tsunagi.mesh.peer_authentication import PeerAuthentications, summary
from tsunagi.mesh.peer_authentication_analysis import mtls_problems
from tsunagi.mesh.security import MeshSecurity
from tsunagi.registry import Instance
from tsunagi.xds.translate import Memo, translate_shared
from tsunagi.xds.translate.inbound_tls import with_mode
from tsunagi.xds.translate.listeners import inbound_listeners


def _pa(name: str, namespace: str, spec: str, version: str = "v1") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return (
        f"apiVersion: security.istio.io/{version}\nkind: PeerAuthentication\n"
        f"metadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{body}\n"
    )


def _policies(*docs: str, root: str = "istio-system") -> PeerAuthentications:
    return PeerAuthentications.of(load_documents("---\n".join(docs)), root)


FIN_8080_DISABLE = (
    "{selector: {matchLabels: {app: finance}}, portLevelMtls: {8080: {mode: DISABLE}}}"
)
MESH_STRICT = _pa("default", "istio-system", "mtls: {mode: STRICT}")
NS_PERMISSIVE = _pa("default", "foo", "mtls: {mode: PERMISSIVE}")
NS_UNSET = _pa("default", "foo", "mtls: {mode: UNSET}")
APP = {"app": "finance"}


@pytest.mark.parametrize(
    ("docs", "labels", "port", "mode"),
    [
        # No policy: Istio's default.
        ((), APP, 80, "PERMISSIVE"),
        # Mesh-wide, then the namespace overrides it, then UNSET inherits it.
        ((MESH_STRICT,), APP, 80, "STRICT"),
        ((MESH_STRICT, NS_PERMISSIVE), APP, 80, "PERMISSIVE"),
        ((MESH_STRICT, NS_UNSET), APP, 80, "STRICT"),
        # A policy without mtls at all is UNSET too.
        ((MESH_STRICT, _pa("default", "foo", "{}")), APP, 80, "STRICT"),
        # The workload's policy over the namespace's, for the labels it selects only.
        (
            (
                NS_PERMISSIVE,
                _pa(
                    "fin", "foo", "{selector: {matchLabels: {app: finance}}, mtls: {mode: STRICT}}"
                ),
            ),
            APP,
            80,
            "STRICT",
        ),
        (
            (
                NS_PERMISSIVE,
                _pa(
                    "fin", "foo", "{selector: {matchLabels: {app: finance}}, mtls: {mode: STRICT}}"
                ),
            ),
            {"app": "other"},
            80,
            "PERMISSIVE",
        ),
        # portLevelMtls overrides the workload's mode on its port; UNSET there inherits it.
        (
            (
                MESH_STRICT,
                _pa(
                    "fin",
                    "foo",
                    """
                    selector: {matchLabels: {app: finance}}
                    mtls: {mode: UNSET}
                    portLevelMtls: {8080: {mode: DISABLE}, 9090: {mode: UNSET}}
                    """,
                ),
            ),
            APP,
            8080,
            "DISABLE",
        ),
        (
            (
                MESH_STRICT,
                _pa(
                    "fin",
                    "foo",
                    """
                    selector: {matchLabels: {app: finance}}
                    portLevelMtls: {8080: {mode: DISABLE}, 9090: {mode: UNSET}}
                    """,
                ),
            ),
            APP,
            9090,
            "STRICT",
        ),
        # A selector in the root namespace is ignored (Istio), as is another namespace's.
        (
            (
                MESH_STRICT,
                _pa(
                    "fin",
                    "istio-system",
                    "{selector: {matchLabels: {app: finance}}, mtls: {mode: DISABLE}}",
                ),
            ),
            APP,
            80,
            "STRICT",
        ),
        (
            (
                _pa(
                    "fin", "bar", "{selector: {matchLabels: {app: finance}}, mtls: {mode: DISABLE}}"
                ),
            ),
            APP,
            80,
            "PERMISSIVE",
        ),
        # Two at one level: the first by name (Istio: the oldest) wins; v1beta1 alike.
        (
            (
                _pa("b", "foo", "mtls: {mode: DISABLE}"),
                _pa("a", "foo", "mtls: {mode: STRICT}", "v1beta1"),
            ),
            APP,
            80,
            "STRICT",
        ),
        (
            (
                _pa("a", "foo", "{selector: {matchLabels: {app: finance}}, mtls: {mode: DISABLE}}"),
                _pa("b", "foo", "{selector: {matchLabels: {app: finance}}, mtls: {mode: STRICT}}"),
            ),
            APP,
            80,
            "DISABLE",
        ),
    ],
)
def test_precedence(docs: tuple[str, ...], labels: dict[str, str], port: int, mode: str) -> None:
    assert _policies(*docs).policy_for("foo", labels).mode_for(port) == mode


def test_root_namespace_is_a_setting() -> None:
    """``tsunagi up --root-namespace``: mesh-wide policies live there, not in istio-system."""
    docs = (_pa("default", "mesh", "mtls: {mode: STRICT}"), MESH_STRICT)
    assert _policies(*docs, root="mesh").policy_for("foo", APP).mode == "STRICT"
    # istio-system is then an ordinary namespace: its policy covers its own workloads only.
    assert (
        _policies(_pa("default", "istio-system", "mtls: {mode: STRICT}"), root="mesh")
        .policy_for("foo", APP)
        .mode
        == "PERMISSIVE"
    )


def test_empty_port_level_mtls_is_refused() -> None:
    doc = _pa("p", "foo", "{selector: {matchLabels: {app: a}}, portLevelMtls: {}}")
    with pytest.raises(ValidationFailed) as info:
        load_documents(doc)
    assert {e.path: e.reason for e in info.value.errors} == {
        "spec.portLevelMtls": "portLevelMtls, if set, must have at least one port; omit it"
    }


def _instance(
    name: str, namespace: str, labels: dict[str, str], port: int, target: int
) -> Instance:
    return Instance.from_document(
        {
            "name": name,
            "service": labels["app"],
            "namespace": namespace,
            "port": port,
            "target_port": target,
            "address": "127.0.0.1",
            "labels": labels,
        }
    )


def test_endpoints_of_disabled_workloads_are_plain() -> None:
    """Clients originate mTLS only to sidecars whose mode for the port is not DISABLE."""
    resources = load_documents(
        _pa(
            "fin",
            "foo",
            FIN_8080_DISABLE,
        )
    )
    instances = [
        _instance("f1", "foo", APP, 8080, 20001),
        _instance("f2", "foo", APP, 9090, 20002),
    ]
    world = World.build(1, resources, instances)
    modes = {
        port: [e.tls_mode for e in world.endpoints[("finance.foo.svc.cluster.local", port)]]
        for port in (8080, 9090)
    }
    assert modes == {8080: [""], 9090: ["istio"]}


def _node(labels: dict[str, str], namespace: str = "foo") -> Node:
    return Node.from_metadata(
        "n",
        {
            "namespace": namespace,
            "labels": labels,
            "inbound": {"8080": {"listen": 15006, "app": 1}, "9090": {"listen": 15007, "app": 2}},
        },
    )


def test_inbound_listeners_follow_the_modes() -> None:
    resources = load_documents(
        "---\n".join(
            [
                MESH_STRICT,
                _pa(
                    "fin",
                    "foo",
                    FIN_8080_DISABLE,
                ),
            ]
        )
    )
    world = World.build(1, resources, [])
    node = _node(APP)
    security = world.security_for(node)
    assert security.mtls == ((8080, "DISABLE"), (9090, "STRICT"))
    by_name = {lst["name"]: lst for lst in inbound_listeners(node, None, security)}
    plain, strict = by_name["inbound|8080"], by_name["inbound|9090"]
    assert "transport_socket" not in plain["filter_chains"][0]
    assert "listener_filters" not in plain
    [chain] = strict["filter_chains"]
    assert chain["transport_socket"]["typed_config"]["require_client_certificate"] is True
    # A gateway's listeners are its Gateways' servers: no modes for it.
    gateway = Node.from_metadata("g", {"namespace": "foo", "kind": "gateway", "labels": APP})
    assert world.security_for(gateway).mtls == ()


def test_permissive_tcp_passes_a_clients_own_tls() -> None:
    listener = {"name": "inbound|5432", "filter_chains": [{"filters": [{"name": "tcp"}]}]}
    chains = with_mode(listener, "PERMISSIVE", tcp=True)["filter_chains"]
    matches = [c["filter_chain_match"] for c in chains]
    assert [m["transport_protocol"] for m in matches] == ["tls", "tls", "raw_buffer"]
    assert "istio" in matches[0]["application_protocols"]
    assert ["transport_socket" in c for c in chains] == [True, False, False]


def test_warnings() -> None:
    resources = load_documents(
        "---\n".join(
            [
                _pa("a", "foo", "mtls: {mode: STRICT}"),
                _pa("b", "foo", "mtls: {mode: PERMISSIVE}"),
                _pa(
                    "fin",
                    "istio-system",
                    "{selector: {matchLabels: {app: finance}}, mtls: {mode: STRICT}}",
                ),
                textwrap.dedent(
                    """\
                    apiVersion: networking.istio.io/v1
                    kind: DestinationRule
                    metadata: {name: finance, namespace: foo}
                    spec:
                      host: finance
                      trafficPolicy: {tls: {mode: DISABLE}}
                    """
                ),
            ]
        )
    )
    world = World.build(
        1, resources, [_instance("f1", "foo", APP, 8080, 20001)], mesh_security=MeshSecurity()
    )
    problems = mtls_problems(world, resources)
    assert len(problems) == 3, problems
    assert problems[0].startswith("PeerAuthentication foo/b: ignored: namespace 'foo' already has")
    assert problems[1].startswith("PeerAuthentication istio-system/fin: spec.selector is ignored")
    assert problems[2].startswith(
        "DestinationRule foo/finance: tls.mode DISABLE for finance.foo.svc.cluster.local:8080"
    )
    # Nothing to say when the workload is not STRICT.
    relaxed = [r for r in resources if r.name != "a"]
    world = World.build(1, relaxed, [_instance("f1", "foo", APP, 8080, 20001)])
    assert all("DestinationRule" not in p for p in mtls_problems(world, relaxed))


def test_proxy_status_summary() -> None:
    assert summary(()) == "-"
    assert summary(((80, "STRICT"), (90, "STRICT"))) == "STRICT"
    assert summary(((80, "STRICT"), (90, "DISABLE"))) == "80:STRICT,90:DISABLE"


def test_a_push_follows_policies_and_service_accounts() -> None:
    """Memoized translation is re-made when what mTLS reads changes: a DISABLE policy
    unmarks the endpoint (EDS only), a new service account joins the checked names (CDS)."""
    memo = Memo()
    host, cluster = "finance.foo.svc.cluster.local", "outbound|8080||finance.foo.svc.cluster.local"
    first = _instance("f1", "foo", APP, 8080, 20001)

    def parts(resources: str, *instances: Instance) -> tuple[Any, Any]:
        world = World.build(1, load_documents(resources) if resources else [], instances)
        shared = translate_shared(world, memo)
        memo.rotate()
        as_dict = partial(json_format.MessageToDict, preserving_proto_field_name=True)
        return as_dict(shared.clusters[cluster].body), as_dict(shared.endpoints[cluster].body)

    c1, e1 = parts("", first)
    [lb] = e1["endpoints"][0]["lb_endpoints"]
    assert "metadata" not in lb  # a sidecar's endpoint takes the cluster's mesh mTLS
    c2, e2 = parts(_pa("plain", "foo", "mtls: {mode: DISABLE}"), first)
    [lb] = e2["endpoints"][0]["lb_endpoints"]
    # The cluster is unchanged (decided by the service, as in Istio); EDS marks the endpoint.
    assert lb["metadata"]["filter_metadata"]["envoy.transport_socket_match"] == {
        "tlsMode": "disabled"
    }
    assert c2 == c1
    second = Instance.from_document({**first.to_document(), "name": "f2", "service_account": "fin"})
    c3, _ = parts("", first, second)
    context = c3["transport_socket"]["typed_config"]
    names = context["common_tls_context"]["combined_validation_context"][
        "default_validation_context"
    ]["match_typed_subject_alt_names"]
    assert [n["matcher"]["exact"] for n in names] == [
        "spiffe://cluster.local/ns/foo/sa/fin",
        "spiffe://cluster.local/ns/foo/sa/finance",
    ]
    assert c1 != c3 and host in context["sni"]

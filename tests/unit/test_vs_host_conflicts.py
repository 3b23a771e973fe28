"""``apply`` warns with Istio's IST0109 when two VirtualServices bound to the mesh name the
same host where both are visible (Istio's ConflictingMeshGatewayHostsAnalyzer), and only
then."""

from __future__ import annotations

from tsunagi.api import load_documents
from tsunagi.mesh import World
from tsunagi.mesh.gateway_analysis import gateway_problems


def _vs(name: str, hosts: str, ns: str = "default", extra: str = "") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: {hosts}
{extra}
  tcp:
  - route: [{{destination: {{host: tcp-echo}}}}]
---"""


def _warnings(existing: str, applied: str) -> list[str]:
    new = load_documents(applied, "new.yaml")
    world = World.build(1, [*load_documents(existing, "old.yaml"), *new], [])
    return [w for w in gateway_problems(world, new) if "IST0109" in w]


def test_two_mesh_virtual_services_for_one_host_are_reported() -> None:
    [w] = _warnings(_vs("a", "[tcp-echo]"), _vs("b", "[tcp-echo.default.svc.cluster.local]"))
    assert w.startswith("VirtualService default/b: [IST0109] The VirtualServices default/a,")
    assert "define the same host tcp-echo.default.svc.cluster.local" in w
    assert "Merge them into a single VirtualService" in w


def test_no_conflict_for_other_hosts_gateways_or_namespaces_apart() -> None:
    assert _warnings(_vs("a", "[tcp-echo]"), _vs("b", "[other]")) == []
    bound = "  gateways: [edge]"  # not the mesh: a gateway's VirtualServices merge
    assert _warnings(_vs("a", "[tcp-echo]"), _vs("b", "[tcp-echo]", extra=bound)) == []
    local_a = _vs("a", "[tcp-echo.default.svc.cluster.local]", "x", '  exportTo: ["."]')
    local_b = _vs("b", "[tcp-echo.default.svc.cluster.local]", "y", '  exportTo: ["."]')
    assert _warnings(local_a, local_b) == []


def test_a_wildcard_exported_everywhere_conflicts_with_a_namespace_local_host() -> None:
    wide = _vs("wide", '["*.default.svc.cluster.local"]', "other")
    [w] = _warnings(wide, _vs("local", "[tcp-echo]", extra='  exportTo: ["."]'))
    assert "default/local,other/wide" in w

"""Golden tests: Istio YAML in, Envoy config out, with no network, clock or process.

Each folder under ``cases/`` holds ``config.yaml`` (Istio resources), ``workloads.yaml``
(registered instances), ``node.yaml`` (the proxy being configured) and ``expected.yaml``.
Run with ``UPDATE_GOLDEN=1`` to rewrite ``expected.yaml`` after an intended change, then
read the diff. ``node.yaml`` may say ``verified: true`` (the proxy's xDS certificate proved
its namespace and carries the CA's gateway mark, so it may hold keys). A Secret in
``config.yaml`` may hold :data:`CLIENT_CERT` and :data:`CLIENT_KEY`, which become a pair made
for the test run (no key is checked in; the output depends only on the pair existing).
"""

from __future__ import annotations

import base64
import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from tests.certs import make_cert
from tsunagi.api import load_documents
from tsunagi.api.mesh_config import load_mesh_config
from tsunagi.mesh import Node, World
from tsunagi.mesh.security import MeshSecurity
from tsunagi.mesh.telemetry import MeshTelemetry
from tsunagi.registry import Instance
from tsunagi.xds import resources as rs
from tsunagi.xds.translate import translate

CASES = sorted(p for p in (Path(__file__).parent / "cases").iterdir() if p.is_dir())
NAMES = {
    rs.CLUSTER: "clusters",
    rs.ENDPOINT: "endpoints",
    rs.LISTENER: "listeners",
    rs.ROUTE: "routes",
}
# SDS secrets (a gateway's credentials) are left out on purpose: golden files are checked in
# and must hold no private key; tests/unit/test_api_secrets.py tests them with fresh ones.
# Listed only when a case has some, so the other cases' files need not mention them
OPTIONAL_NAMES = {rs.EXTENSION_CONFIG: "extension_configs"}
CLIENT_CERT = "GOLDEN-CLIENT-CERT"
CLIENT_KEY = "GOLDEN-CLIENT-KEY"


@functools.cache
def _client_pair() -> tuple[str, str]:
    made = make_cert("golden-client.example")
    return base64.b64encode(made.cert).decode(), base64.b64encode(made.key).decode()


def _with_client_pair(config: str) -> str:
    if CLIENT_CERT not in config and CLIENT_KEY not in config:
        return config
    cert, key = _client_pair()
    return config.replace(CLIENT_CERT, cert).replace(CLIENT_KEY, key)


def render(case: Path) -> dict[str, Any]:
    config = (case / "config.yaml").read_text() if (case / "config.yaml").exists() else ""
    resources = load_documents(_with_client_pair(config), str(case / "config.yaml"))
    instances = [
        Instance.from_document(d)
        for d in yaml.safe_load((case / "workloads.yaml").read_text()) or []
    ]
    node_doc = yaml.safe_load((case / "node.yaml").read_text())
    node = Node.from_metadata(
        node_doc["id"], node_doc.get("metadata") or {}, bool(node_doc.get("verified"))
    )
    # Optional mesh-wide telemetry (the `tsunagi up` flags), e.g. {access_log: TEXT}
    mesh_file = case / "mesh_telemetry.yaml"
    mesh = MeshTelemetry(**yaml.safe_load(mesh_file.read_text())) if mesh_file.exists() else None
    # Optional MeshConfig (`tsunagi up --mesh-config`): the CUSTOM policies' providers
    mesh_config_file = case / "mesh_config.yaml"
    security = (
        MeshSecurity(mesh_config=load_mesh_config(mesh_config_file.read_text(), "mesh_config"))
        if mesh_config_file.exists()
        else None
    )
    snapshot = translate(World.build(1, resources, instances, mesh, mesh_security=security), node)
    out: dict[str, Any] = {}
    for type_url, key in {**NAMES, **OPTIONAL_NAMES}.items():
        if type_url in OPTIONAL_NAMES and not snapshot.of(type_url):
            continue
        items = []
        for name in sorted(snapshot.of(type_url)):
            any_msg = snapshot.of(type_url)[name].body
            as_dict = json_format.MessageToDict(any_msg, preserving_proto_field_name=True)
            items.append(json.loads(json.dumps(as_dict)))  # plain dicts for YAML
        out[key] = items
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden(case: Path) -> None:
    got = render(case)
    expected_file = case / "expected.yaml"
    if os.environ.get("UPDATE_GOLDEN") or not expected_file.exists():
        expected_file.write_text(yaml.safe_dump(got, sort_keys=False))
        if not os.environ.get("UPDATE_GOLDEN"):
            pytest.fail(f"wrote new golden file {expected_file}; review it and re-run")
    assert got == yaml.safe_load(expected_file.read_text())

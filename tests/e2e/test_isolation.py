"""A resource that cannot be translated is held back alone: the rest of the mesh is pushed
to real Envoys, and the CLI says what was held back and why.

The failure here is a real one, not a patched function: a stored VirtualService that no
longer parses, as a document written by another version of the control plane would be.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
import yaml

from .mesh import Mesh, wait_until
from .rules import JASON_TO_V2, SUBSETS, my_app_to

pytestmark = pytest.mark.e2e


def test_an_unparseable_stored_resource_holds_back_only_itself(mesh: Mesh) -> None:
    mesh.run("reviews", "v1")
    mesh.run("reviews", "v2")
    mesh.run("blue", "v1", 8080)
    mesh.run("green", "v1", 8080)
    client = mesh.client()
    assert mesh.apply(SUBSETS + "---" + JASON_TO_V2, "--wait").returncode == 0
    assert mesh.apply(my_app_to("blue"), "--wait").returncode == 0

    # Another version of the control plane left a VirtualService we cannot read.
    mesh.down()
    db = sqlite3.connect(mesh.state_dir / "tsunagi.db")
    try:
        (doc,) = db.execute(
            "SELECT document FROM resources WHERE kind='VirtualService' AND name='reviews'"
        ).fetchone()
        broken = json.loads(doc)
        broken["spec"]["http"] = "written by tsunagi 9"
        db.execute(
            "UPDATE resources SET document=? WHERE kind='VirtualService' AND name='reviews'",
            (json.dumps(broken),),
        )
        db.commit()
    finally:
        db.close()
    mesh.up()
    wait_until(
        lambda: len(mesh.api("GET", "/v1/proxies")["proxies"]) == len(mesh.workloads),
        what="every proxy to reconnect",
    )

    # Everything else is still pushed: a new rule reaches the client's Envoy.
    result = mesh.apply(my_app_to("green"), "--wait")
    assert result.returncode == 0, result.stderr
    status, body = client.get("my-app.example.com")
    assert (status, body["service"]) == (200, "green")
    # The unreadable rule is left out: reviews is served by its default route.
    status, body = client.get("reviews:9080")
    assert status == 200 and body["service"] == "reviews"

    # And the CLI says what was held back, on the resource and on every proxy.
    got = mesh.cli("get", "vs", "reviews", "-o", "yaml")
    assert got.returncode == 0, got.stderr
    (message,) = yaml.safe_load(got.stdout)["status"]["validationMessages"]
    assert message["level"] == "ERROR"
    assert "does not parse" in message["description"]
    assert "spec.http" in message["description"]
    table = mesh.cli("get", "vs")
    assert "Not fully in effect (see `-o yaml` for why): virtualservice/reviews" in table.stdout
    ps = mesh.cli("proxy-status")
    assert "Not translated" in ps.stdout
    assert f"{len(mesh.workloads)} proxies: VirtualService default/reviews" in ps.stdout

    # Applying the rule again (valid) clears the error and restores its routing.
    assert mesh.apply(JASON_TO_V2, "--wait").returncode == 0
    status, body = client.get("reviews:9080", headers={"end-user": "jason"})
    assert (status, body["version"]) == (200, "v2")
    assert "status" not in yaml.safe_load(mesh.cli("get", "vs", "reviews", "-o", "yaml").stdout)
    assert "Not translated" not in mesh.cli("proxy-status").stdout

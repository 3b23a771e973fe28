"""The CLI contract: bad input exits 1 with file/document/resource/field/reason and changes
nothing; usage errors exit 2; an unreachable control plane exits 3."""

from __future__ import annotations

import json

import pytest

from .mesh import Mesh, free_port
from .rules import all_to

pytestmark = pytest.mark.e2e

GOOD = all_to()

BAD = {
    "malformed YAML": ("spec: [unclosed\n", "line"),
    "unknown kind": (
        "apiVersion: networking.istio.io/v1\nkind: VirtualServise\nmetadata: {name: a}\nspec: {}\n",
        "VirtualService",
    ),
    "unknown field": (
        GOOD.replace("- route:", "- rout:"),
        'spec.http[0].rout: unknown field "rout"; did you mean "route"?',
    ),
    "negative weight": (
        GOOD.replace(
            "destination: {host: reviews}", "destination: {host: reviews}\n      weight: -10"
        ),
        "spec.http[0].route[0].weight",
    ),
    "empty route": (
        GOOD.replace("- route:\n    - destination: {host: reviews}", "- route: []"),
        "spec.http[0].route",
    ),
}


def stored(mesh: Mesh) -> list[tuple[str, str, int]]:
    result = mesh.cli("get", "vs", "-o", "json")
    assert result.returncode == 0, result.stderr
    items = mesh.api("GET", "/v1/resources?kind=VirtualService")["items"]
    return [(i["name"], json.dumps(i["document"], sort_keys=True), i["revision"]) for i in items]


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_exits_1_names_the_problem_and_changes_nothing(
    mesh: Mesh, case: str, tmp_path: object
) -> None:
    assert mesh.apply(GOOD).returncode == 0
    before = stored(mesh)
    text, expected = BAD[case]
    path = mesh.state_dir / "bad.yaml"
    # A good document first: the apply is all-or-nothing, so it must not be stored either.
    path.write_text(GOOD.replace("name: reviews", "name: other") + "---\n" + text)
    result = mesh.cli("apply", "-f", str(path))
    assert result.returncode == 1, result
    assert "nothing was applied" in result.stderr
    assert str(path) in result.stderr
    assert expected in result.stderr
    if case != "malformed YAML":
        assert "document 2" in result.stderr
    assert stored(mesh) == before


def test_get_shapes_and_delete(mesh: Mesh) -> None:
    assert mesh.apply(GOOD).returncode == 0
    table = mesh.cli("get", "virtualservices")
    assert table.returncode == 0 and "reviews" in table.stdout and "HOSTS" in table.stdout
    assert mesh.cli("get", "virtualservices", "-A").stdout == table.stdout
    assert mesh.cli("get", "vs", "reviews", "-A").returncode == 2
    as_yaml = mesh.cli("get", "vs", "reviews", "-o", "yaml")
    assert "kind: VirtualService" in as_yaml.stdout
    again = mesh.apply(as_yaml.stdout)  # what get prints can be applied again
    assert again.returncode == 0 and "unchanged" in again.stdout
    missing = mesh.cli("get", "vs", "nope")
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert mesh.cli("get", "nosuchkind").returncode == 1
    dry = mesh.apply(GOOD.replace("name: reviews", "name: dry"), "--dry-run")
    assert dry.returncode == 0 and "dry run" in dry.stdout
    assert mesh.cli("get", "vs", "dry").returncode == 1
    path = mesh.state_dir / "dry.yaml"
    path.write_text(GOOD.replace("name: reviews", "name: byfile"))
    assert mesh.cli("apply", "-f", str(path)).returncode == 0
    by_file = mesh.cli("delete", "-f", str(path))
    assert by_file.returncode == 0 and "byfile deleted" in by_file.stdout
    assert mesh.cli("get", "vs", "byfile").returncode == 1
    deleted = mesh.cli("delete", "virtualservice", "reviews")
    assert deleted.returncode == 0
    assert mesh.cli("get", "vs", "reviews").returncode == 1
    assert mesh.cli("delete", "vs", "reviews").returncode == 1


def test_usage_auth_and_unreachable_exit_codes(mesh: Mesh) -> None:
    assert mesh.cli("apply").returncode == 2
    assert mesh.cli("frobnicate").returncode == 2
    wrong = mesh.cli("get", "vs", "--token", "wrong")
    assert wrong.returncode == 1 and "token" in wrong.stderr
    gone = mesh.cli("get", "vs", "--server", f"http://127.0.0.1:{free_port()}")
    assert gone.returncode == 3 and "tsunagi up" in gone.stderr
    token = mesh.state_dir / "token"
    assert token.stat().st_mode & 0o777 == 0o600

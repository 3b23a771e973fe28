"""Every golden output is accepted by real Envoy (`envoy --mode validate`).

xDS-only references are made static for validation: EDS clusters get their assignment
inline, the outbound listener gets its route configuration inline, and a filter that loads
its config over ECDS gets that extension config's inline. Everything else is
exactly what translation produced. The runtime is the sidecar bootstrap's, so that limits
it sets (RE2 program size) are those Envoy validates against. Certificates a listener names
over SDS (a gateway's ``credentialName``) become static secrets of those names, holding a
throwaway certificate made for the test run (no key is kept in the repository), so that
Envoy builds every TLS context it would build at run time (cipher names, versions, SANs).
The mesh's own certificate and roots (mTLS) stay SDS files, as at run time: Envoy refuses
a path that does not exist, so the test writes them (throwaway again) where every proxy's
agent does, relative to Envoy's working directory.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.certs import make_cert
from tsunagi.agent.bootstrap import ProxyIdentity, bootstrap
from tsunagi.agent.envoy import envoy_binary
from tsunagi.agent.sds_files import write_secrets

CASES = sorted(p for p in (Path(__file__).parent / "cases").iterdir() if p.is_dir())


def static_bootstrap(expected: dict[str, Any]) -> dict[str, Any]:
    def plain(doc: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in doc.items() if k != "@type"}

    assignments = {e["cluster_name"]: plain(e) for e in expected["endpoints"]}
    routes = {r["name"]: plain(r) for r in expected["routes"]}
    clusters = []
    for c in map(plain, expected["clusters"]):
        if c.get("type") == "EDS":
            c.pop("eds_cluster_config")
            c["type"] = "STATIC"
            c["load_assignment"] = assignments[c["name"]]
        clusters.append(c)
    extensions = {e["name"]: e["typed_config"] for e in expected.get("extension_configs", [])}

    def inline(filters: list[dict[str, Any]]) -> None:
        for f in filters:
            if "config_discovery" in f:
                f.pop("config_discovery")
                f["typed_config"] = extensions[f["name"]]

    listeners = []
    for lst in map(plain, expected["listeners"]):
        for chain in lst.get("filter_chains", []):  # a UDP listener (DNS) has none
            inline(chain["filters"])
            for f in chain["filters"]:
                hcm = f["typed_config"]
                if "rds" in hcm:
                    hcm["route_config"] = routes[hcm.pop("rds")["route_config_name"]]
                inline(hcm.get("http_filters", []))
        listeners.append(lst)
    sidecar = bootstrap(ProxyIdentity("golden", "golden", "default"), "127.0.0.1", 1, 1)
    return {
        "static_resources": {"clusters": clusters, "listeners": listeners},
        "layered_runtime": sidecar["layered_runtime"],
        # Internal listeners (CONNECT's SNI routing) need the sidecar's bootstrap extension.
        "bootstrap_extensions": sidecar["bootstrap_extensions"],
    }


def static_secrets(boot: dict[str, Any], cert: Path, key: Path) -> None:
    """Make every SDS secret the listeners and clusters name static, with ``cert`` and ``key`` (or
    ``cert`` as the trusted CA, for a validation context)."""
    secrets: dict[str, dict[str, Any]] = {}

    def walk(node: Any, field: str = "") -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, field)
        elif isinstance(node, dict):
            sds = node.get("sds_config")
            if sds is not None and "name" in node and "path_config_source" not in sds:
                node.pop("sds_config")
                name = node["name"]
                if field == "validation_context_sds_secret_config":
                    ca = {"trusted_ca": {"filename": str(cert)}}
                    secrets[name] = {"name": name, "validation_context": ca}
                else:
                    pair = {"filename": str(cert)}, {"filename": str(key)}
                    chain = {"certificate_chain": pair[0], "private_key": pair[1]}
                    secrets[name] = {"name": name, "tls_certificate": chain}
            for k, v in node.items():
                walk(v, k)

    walk(boot["static_resources"]["listeners"])
    walk(boot["static_resources"]["clusters"])  # a DestinationRule's credentialName
    if secrets:
        boot["static_resources"]["secrets"] = list(secrets.values())


GOLDEN_FILES = "/etc/tsunagi-golden"
"""Where golden cases put the certificate files a DestinationRule's ``tls`` names (MUTUAL's
``clientCertificate`` and ``privateKey``): Envoy reads them, and no key is checked in."""


def with_golden_files(config: str, cert: Path, key: Path) -> str:
    """``config`` with :data:`GOLDEN_FILES` paths pointing at ``cert`` and ``key``."""
    config = config.replace(f"{GOLDEN_FILES}/client.pem", str(cert))
    return config.replace(f"{GOLDEN_FILES}/client.key", str(key))


@pytest.fixture(scope="module")
def throwaway_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("golden-cert")
    cert, key = where / "cert.pem", where / "key.pem"
    made = make_cert("golden.example")
    cert.write_bytes(made.cert)
    key.write_bytes(made.key)
    return cert, key


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_envoy_accepts_translation(
    case: Path, tmp_path: Path, throwaway_cert: tuple[Path, Path]
) -> None:
    expected = yaml.safe_load((case / "expected.yaml").read_text())
    config = tmp_path / "bootstrap.json"
    boot = static_bootstrap(expected)
    static_secrets(boot, *throwaway_cert)
    # File SDS subscriptions need a node; the SDS files sit where the agent writes them.
    boot["node"] = {"id": "golden", "cluster": "golden"}
    cert, key = (p.read_text() for p in throwaway_cert)
    write_secrets(str(tmp_path), cert, key, cert)
    config.write_text(with_golden_files(json.dumps(boot), *throwaway_cert))
    result = subprocess.run(
        [
            envoy_binary(),
            "--mode",
            "validate",
            "-c",
            str(config),
            "--use-dynamic-base-id",
            "--log-level",
            "error",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

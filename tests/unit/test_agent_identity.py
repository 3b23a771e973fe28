"""The agent's side of workload identity, without a control plane: the key and CSR it makes
in a subprocess, the SDS files it writes for Envoy, the mutual-TLS xDS cluster of its
bootstrap (checked by real Envoy), and renewal that keeps trying while the CA is away."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tsunagi import proxy_contract as pc
from tsunagi.agent import identity as identity_module
from tsunagi.agent.bootstrap import ProxyIdentity, bootstrap
from tsunagi.agent.envoy import envoy_binary
from tsunagi.agent.identity import (
    Certificate,
    IdentityError,
    WorkloadIdentity,
    new_key_and_csr,
    xds_trust,
)
from tsunagi.agent.sds_files import read_workload_chain, write_secrets
from tsunagi.ca.keystore import self_signed
from tsunagi.client import Rejected, Unreachable
from tsunagi.controlplane.http_api import certificate_reply

SPIFFE = "spiffe://cluster.local/ns/shop/sa/cart"


def test_the_subprocess_makes_a_p256_key_and_a_csr_naming_only_the_identity() -> None:
    key_pem, csr_pem = new_key_and_csr(SPIFFE)
    key = load_pem_private_key(key_pem.encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(sans) == [x509.UniformResourceIdentifier(SPIFFE)]
    # a key for each request: renewal never reuses one
    assert new_key_and_csr(SPIFFE)[0] != key_pem


def test_the_subprocess_refuses_a_wrong_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tsunagi.agent.csr", "not-a-spiffe-id"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "usage" in done.stderr and not done.stdout


def test_the_agent_never_imports_cryptography() -> None:
    """Making a key happens in the subprocess; the agent's modules stay light."""
    code = (
        "import sys, tsunagi.agent.run, tsunagi.agent.gateway, tsunagi.agent.identity;"
        "print('cryptography' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_sds_files_are_whole_private_and_in_envoys_format(tmp_path: Path) -> None:
    write_secrets(str(tmp_path), "CHAIN", "KEY", "ROOTS")
    sds = tmp_path / pc.SDS_DIR
    assert sds.stat().st_mode & 0o777 == 0o700
    names = sorted(p.name for p in sds.iterdir())
    assert names == sorted(f"{n}.json" for n in (pc.WORKLOAD_SECRET, pc.ROOT_CA_SECRET))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left aside
    for name in names:
        assert (sds / name).stat().st_mode & 0o777 == 0o600
    [own] = json.loads((sds / f"{pc.WORKLOAD_SECRET}.json").read_text())["resources"]
    assert own["name"] == pc.WORKLOAD_SECRET
    assert own["tls_certificate"]["private_key"] == {"inline_string": "KEY"}
    [roots] = json.loads((sds / f"{pc.ROOT_CA_SECRET}.json").read_text())["resources"]
    assert roots["validation_context"]["trusted_ca"] == {"inline_string": "ROOTS"}
    # replaced by a rename: a reader holding the old file still reads the old one whole
    inode = (sds / f"{pc.WORKLOAD_SECRET}.json").stat().st_ino
    write_secrets(str(tmp_path), "CHAIN2", "KEY2", "ROOTS")
    assert (sds / f"{pc.WORKLOAD_SECRET}.json").stat().st_ino != inode
    assert read_workload_chain(str(tmp_path)) == "CHAIN2"


def test_envoy_accepts_the_bootstrap_with_mtls_to_xds(tmp_path: Path) -> None:
    """The xds cluster presents the SDS files' certificate and requires the control plane's
    identity; real Envoy validates it, with the files where the agent writes them."""
    authority = self_signed(tmp_path / "ca", "cluster.local", datetime.datetime.now(datetime.UTC))
    key, csr = new_key_and_csr(SPIFFE)
    signed = authority.sign_csr(
        csr.encode(), SPIFFE, datetime.timedelta(hours=1), datetime.datetime.now(datetime.UTC)
    )
    write_secrets(str(tmp_path), signed.chain.decode(), key, signed.root.decode())
    ident = ProxyIdentity("cart-1.shop", "cart", "shop", service_account="cart")
    xds_name = "xds.tsunagi.cluster.local"
    doc = bootstrap(ident, "127.0.0.1", 15012, 15000, xds_server_name=xds_name)
    assert doc["node"]["metadata"][pc.META_SERVICE_ACCOUNT] == "cart"
    [xds] = doc["static_resources"]["clusters"]
    tls = xds["transport_socket"]["typed_config"]["common_tls_context"]
    assert tls["tls_certificate_sds_secret_configs"] == [pc.sds_secret_config(pc.WORKLOAD_SECRET)]
    validation = tls["combined_validation_context"]
    assert validation["validation_context_sds_secret_config"] == pc.sds_secret_config(
        pc.ROOT_CA_SECRET
    )
    sans = validation["default_validation_context"]["match_typed_subject_alt_names"]
    assert sans == [{"san_type": "DNS", "matcher": {"exact": xds_name}}]
    (tmp_path / "envoy.json").write_text(json.dumps(doc))

    def validate() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [envoy_binary(), "--mode", "validate", "-c", "envoy.json", "--use-dynamic-base-id"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = validate()
    assert done.returncode == 0, done.stderr[-2000:]
    # without the files (an agent that skipped its certificate), Envoy refuses the config
    os.rename(tmp_path / pc.SDS_DIR, tmp_path / "elsewhere")
    assert validate().returncode != 0


def test_bootstrap_reply_without_trust_is_a_clear_error() -> None:
    with pytest.raises(IdentityError, match="upgrade it"):
        xds_trust({"xds": {"host": "127.0.0.1", "port": 15010}})
    # one that names only the SPIFFE ID (before the DNS name): the same advice
    with pytest.raises(IdentityError, match="upgrade it"):
        xds_trust(
            {
                "xds": {"host": "127.0.0.1", "port": 15012, "identity": "spiffe://td/ns/a/sa/b"},
                "trust": {"trustDomain": "td", "rootCertificates": "PEM"},
            }
        )
    trust = xds_trust(
        {
            "xds": {"host": "127.0.0.1", "port": 15012, "serverName": "xds.tsunagi.td"},
            "trust": {"trustDomain": "td", "rootCertificates": "PEM"},
        }
    )
    assert (trust.port, trust.server_name, trust.trust_domain) == (15012, "xds.tsunagi.td", "td")


def test_renewal_is_due_half_way_through_what_is_left() -> None:
    # a CA that backdates not_before must not make renewal due at once
    cert = Certificate(SPIFFE, "1", not_before=700.0, not_after=1100.0, received=1000.0)
    assert cert.renew_at() == 1050.0


class _FlakyCa:
    """A control plane that signs with a real CA, except while it is "away"."""

    def __init__(self, tmp_path: Path, away: int, lifetime: float) -> None:
        now = datetime.datetime.now(datetime.UTC)
        self.authority = self_signed(tmp_path / "ca", "cluster.local", now)
        self.away = away
        self.lifetime = lifetime
        self.calls = 0

    def request(self, method: str, path: str, body: Any = None, **_: Any) -> dict[str, Any]:
        assert (method, path) == ("POST", "/v1/certificates")
        self.calls += 1
        if 1 < self.calls <= 1 + self.away:
            raise Unreachable("cannot reach the control plane")
        now = datetime.datetime.now(datetime.UTC)
        ttl = datetime.timedelta(seconds=self.lifetime)
        signed = self.authority.sign_csr(body["csr"].encode(), SPIFFE, ttl, now)
        return certificate_reply(signed)


def _keep_until(ident: WorkloadIdentity, ca: _FlakyCa, calls: int) -> None:
    """Run ``ident.keep`` (the renewal loop) until ``ca`` has had ``calls`` requests, or 20 s
    (a bound, not a measurement), then stop it; the loop must end when told."""
    stop = threading.Event()
    keeper = threading.Thread(target=ident.keep, args=(stop,), daemon=True)
    keeper.start()
    deadline = time.monotonic() + 20
    while ca.calls < calls and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    keeper.join(10)
    assert not keeper.is_alive()


def test_renewal_retries_while_the_ca_is_away_and_then_replaces_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(identity_module, "RETRY_FIRST", 0.05)
    ca = _FlakyCa(tmp_path, away=2, lifetime=1.0)
    ident = WorkloadIdentity(ca, str(tmp_path), "cluster.local", "shop", "cart", "cart-1")  # type: ignore[arg-type]
    first = ident.obtain()
    chain = read_workload_chain(str(tmp_path))
    _keep_until(ident, ca, 4)
    assert ca.calls >= 4  # the first, two while away, then one that worked
    assert ident.current is not None and ident.current.serial != first.serial
    assert read_workload_chain(str(tmp_path)) not in ("", chain)
    err = capsys.readouterr().err
    assert err.count("could not renew the certificate") + err.count("EXPIRED") == 2
    assert "certificate renewed" in err


def test_a_ca_answering_for_another_identity_is_refused(tmp_path: Path) -> None:
    class _Wrong(_FlakyCa):
        def request(self, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
            return {**super().request(method, path, body, **kw), "spiffeId": "spiffe://x/ns/a/sa/b"}

    ident = WorkloadIdentity(
        _Wrong(tmp_path, 0, 60.0),  # type: ignore[arg-type]
        str(tmp_path),
        "cluster.local",
        "shop",
        "cart",
        "cart-1",
    )
    with pytest.raises(IdentityError, match="but got spiffe://x/ns/a/sa/b"):
        ident.obtain()
    assert read_workload_chain(str(tmp_path)) == ""  # nothing written


class _RenewingCa(_FlakyCa):
    """Answers a workload token's caller with a fresh token, as the control plane does."""

    token = "tsw1.first"

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        self.seen = [*getattr(self, "seen", []), self.token]
        return {**super().request(method, path, body, **kw), "token": f"tsw1.{self.calls}"}


def test_the_client_switches_to_the_token_each_certificate_brings(tmp_path: Path) -> None:
    ca = _RenewingCa(tmp_path, 0, 60.0)
    ident = WorkloadIdentity(ca, str(tmp_path), "cluster.local", "shop", "cart", "cart-1")  # type: ignore[arg-type]
    ident.obtain()
    assert ca.token == "tsw1.1"  # heartbeats and deregistration share this client
    ident.obtain()
    assert ca.seen == ["tsw1.first", "tsw1.1"] and ca.token == "tsw1.2"


def test_a_malformed_csr_answer_is_an_identity_error_and_renewal_keeps_going(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A KeyError escaping here would end the renewal thread for good.
    real_run = subprocess.run
    runs = []

    def run(*args: Any, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        runs.append(args)
        if len(runs) in (2, 3):
            return subprocess.CompletedProcess(args, 0, b'{"csr": "x"}', b"")
        return real_run(*args, **kw)

    monkeypatch.setattr(identity_module.subprocess, "run", run)
    monkeypatch.setattr(identity_module, "RETRY_FIRST", 0.05)
    ca = _FlakyCa(tmp_path, 0, 1.0)
    ident = WorkloadIdentity(ca, str(tmp_path), "cluster.local", "shop", "cart", "cart-1")  # type: ignore[arg-type]
    first = ident.obtain()
    with pytest.raises(IdentityError, match="said something unexpected: 'key'"):
        ident.obtain()
    _keep_until(ident, ca, 2)
    assert ca.calls >= 2 and ident.current is not None and ident.current.serial != first.serial
    assert "said something unexpected" in capsys.readouterr().err


def test_a_refused_token_is_logged_with_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class _Refusing(_FlakyCa):
        def request(self, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
            raise Rejected(401, {"error": "the workload token ... expired"})

    ident = WorkloadIdentity(
        _Refusing(tmp_path, 0, 60.0),  # type: ignore[arg-type]
        str(tmp_path),
        "cluster.local",
        "shop",
        "cart",
        "cart-1",
    )
    with pytest.raises(Rejected):
        ident.obtain()
    err = capsys.readouterr().err
    assert "refused this sidecar's token" in err
    assert "tsunagi token create --namespace shop --service-account cart" in err

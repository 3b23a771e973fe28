"""``tsunagi up``'s TLS files for etcd are checked before anything starts: a missing or
unreadable file, one without a certificate, a key that is not the certificate's, half a pair,
or the flags without an etcd store each stop ``up`` with exit 2 and name the flag at fault.

Talking to a real etcd over TLS is tested in tests/e2e/test_etcd_tls.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.etcd_fixtures import ServerTls, make_tls
from tsunagi.cli.main import EXIT_USAGE, main
from tsunagi.store.etcd import EtcdTls

STORE = "etcd://127.0.0.1:1/prefix"


@pytest.fixture
def tls(tmp_path: Path) -> ServerTls:
    return make_tls(tmp_path / "pki")


def up(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """``tsunagi up ARGS`` run in-process; returns stderr once it has exited with 2."""
    code = main(["up", "--state-dir", str(tmp_path / "state"), *args])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    return err


def test_a_full_set_of_files_is_accepted(tls: ServerTls) -> None:
    EtcdTls(tls.ca, tls.client_cert, tls.client_key).credentials()
    EtcdTls(tls.ca).credentials()  # an etcd that asks clients for no certificate


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--etcd-ca", "{pki}/nope.pem"], "--etcd-ca {pki}/nope.pem: cannot read it"),
        (["--etcd-ca", "{pki}/client.key"], "--etcd-ca {pki}/client.key: no PEM certificate"),
        (
            ["--etcd-ca", "{pki}/ca.pem", "--etcd-cert", "{pki}/client.pem"],
            "--etcd-cert needs --etcd-key",
        ),
        (
            ["--etcd-ca", "{pki}/ca.pem", "--etcd-key", "{pki}/client.key"],
            "--etcd-key needs --etcd-cert",
        ),
        (
            ["--etcd-ca", "{pki}/ca.pem", "--etcd-cert", "{pki}/client.pem", "--etcd-key",
             "{pki}/server.key"],
            "--etcd-key {pki}/server.key is not the key of --etcd-cert {pki}/client.pem",
        ),
        (
            ["--etcd-ca", "{pki}/ca.pem", "--etcd-cert", "{pki}/client.key", "--etcd-key",
             "{pki}/client.key"],
            "--etcd-cert {pki}/client.key: no PEM certificate",
        ),
        (
            ["--etcd-ca", "{pki}/ca.pem", "--etcd-cert", "{pki}/client.pem", "--etcd-key",
             "{pki}/client.pem"],
            "--etcd-key {pki}/client.pem: not an unencrypted PEM private key",
        ),
        (["--etcd-cert", "{pki}/client.pem"], "--etcd-cert needs --etcd-ca"),
        (["--etcd-server-name", "etcd.test"], "--etcd-server-name needs --etcd-ca"),
    ],
)  # fmt: skip
def test_bad_files_stop_up_naming_the_flag(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tls: ServerTls,
    args: list[str],
    message: str,
) -> None:
    pki = str(tls.ca.parent)
    err = up(tmp_path, capsys, "--store", STORE, *(a.format(pki=pki) for a in args))
    assert message.format(pki=pki) in err
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


def test_the_flags_need_an_etcd_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tls: ServerTls
) -> None:
    err = up(tmp_path, capsys, "--etcd-ca", str(tls.ca))
    assert "--etcd-ca goes with --store etcd://" in err

"""Test certificates on disk and the TLS secrets made from them, as a user makes them with
``tsunagi create secret tls``."""

from __future__ import annotations

from pathlib import Path

from tsunagi.ca.issue import Issued

from .mesh import Mesh


def write_pem(tmp: Path, name: str, pem: Issued) -> tuple[Path, Path]:
    """``name.crt`` and ``name.key`` (owner-only, as a key file should be) in ``tmp``."""
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert.write_bytes(pem.cert)
    key.write_bytes(pem.key)
    key.chmod(0o600)
    return cert, key


def _create_args(
    name: str, cert: Path, key: Path, ca: Path | None, namespace: str | None
) -> list[str]:
    """``create secret tls NAME --cert --key [--ca] [-n]``."""
    args = ["create", "secret", "tls", name, "--cert", str(cert), "--key", str(key)]
    args += ["--ca", str(ca)] if ca else []
    return args + (["-n", namespace] if namespace else [])


def create_tls_secret(
    mesh: Mesh,
    name: str,
    cert: Path,
    key: Path,
    ca: Path | None = None,
    namespace: str | None = None,
) -> None:
    """``tsunagi create secret tls NAME --cert --key [--ca] [-n]``, which must succeed."""
    done = mesh.cli(*_create_args(name, cert, key, ca, namespace))
    assert done.returncode == 0, done.stderr


def renew_tls_secret(
    mesh: Mesh, name: str, cert: Path, key: Path, namespace: str | None = None
) -> str:
    """Replace the TLS secret ``name`` in place, the way ``create secret --help`` says
    (``--dry-run=client -o yaml | tsunagi apply -f -``), which must succeed; apply's output."""
    printed = mesh.cli(
        *_create_args(name, cert, key, None, namespace), "--dry-run=client", "-o", "yaml"
    )
    assert printed.returncode == 0, printed.stderr
    applied = mesh.apply(printed.stdout)
    assert applied.returncode == 0, applied.stderr
    return applied.stdout

"""Test certificates on disk and the TLS secrets made from them, as a user makes them with
``tsunagi create secret tls``."""

from __future__ import annotations

from pathlib import Path

from tests.certs import Pem

from .mesh import Mesh


def write_pem(tmp: Path, name: str, pem: Pem) -> tuple[Path, Path]:
    """``name.crt`` and ``name.key`` (owner-only, as a key file should be) in ``tmp``."""
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert.write_bytes(pem.cert)
    key.write_bytes(pem.key)
    key.chmod(0o600)
    return cert, key


def create_tls_secret(
    mesh: Mesh,
    name: str,
    cert: Path,
    key: Path,
    ca: Path | None = None,
    namespace: str | None = None,
) -> None:
    """``tsunagi create secret tls NAME --cert --key [--ca] [-n]``, which must succeed."""
    extra = ["--ca", str(ca)] if ca else []
    if namespace:
        extra += ["-n", namespace]
    done = mesh.cli("create", "secret", "tls", name, "--cert", str(cert), "--key", str(key), *extra)
    assert done.returncode == 0, done.stderr

"""The demo's HTTPS certificate: a CA of its own and a certificate for the page's host.

Written into the state directory (keys mode 0600) so a user can point ``curl --cacert`` at
the CA, and stored as the Secret the HTTPS Gateway names, as a user would with
``tsunagi create secret tls``.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

from tsunagi.ca.issue import issue
from tsunagi.secret_keys import TLS_CERT, TLS_KEY

HOST = "bookinfo.example.test"
SECRET = "bookinfo-credential"


def write_demo_certificates(directory: Path) -> dict[str, Path]:
    """Make the CA and the host's certificate under ``directory``; the paths by role
    (``ca``, ``cert``, ``key``)."""
    now = datetime.datetime.now(datetime.UTC)
    ca = issue("tsunagi demo CA", is_ca=True, now=now, lifetime=datetime.timedelta(days=30))
    leaf = issue(HOST, dns_names=(HOST,), issuer=ca, now=now, lifetime=datetime.timedelta(days=30))
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = {"ca": directory / "ca.crt", "cert": directory / f"{HOST}.crt"}
    paths["key"] = directory / f"{HOST}.key"
    paths["ca"].write_bytes(ca.cert)
    paths["cert"].write_bytes(leaf.cert)
    fd = os.open(paths["key"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(leaf.key)
    return paths


def secret_yaml(paths: dict[str, Path], namespace: str = "default") -> str:
    """The Secret ``tsunagi create secret tls`` would make from ``paths``, as YAML."""
    import yaml

    from tsunagi.cli.secrets import secret_document

    values = {TLS_CERT: paths["cert"].read_bytes(), TLS_KEY: paths["key"].read_bytes()}
    doc: dict[str, Any] = secret_document(SECRET, namespace, "tls", values)
    return yaml.safe_dump(doc)

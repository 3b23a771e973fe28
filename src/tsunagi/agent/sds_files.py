"""The proxy's certificate and trust bundle as Envoy SDS files (``proxy_contract.SDS_DIR``).

Envoy reads ``sds/default.json`` (its certificate chain and key) and ``sds/ROOTCA.json``
(the mesh's trust bundle) relative to its working directory, which is the agent's workdir,
and watches ``sds/``: a file renamed into it is read again and its certificate served from
the next handshake on, with no restart. So each file is written whole aside, synced, then
renamed into place (:func:`tsunagi.private_files.write_private`); Envoy never sees half a
file. The key's file is its owner's only (0600) in a directory only its owner may enter
(0700).

With ``json`` and ``os`` alone: the agent's steady state stays small.
"""

from __future__ import annotations

import json
import os

from tsunagi import proxy_contract as pc
from tsunagi.private_files import private_dir, write_private

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def workload_secret(chain_pem: str, key_pem: str) -> dict[str, object]:
    """The SDS file of the proxy's own certificate (:data:`pc.WORKLOAD_SECRET`)."""
    return {
        "resources": [
            {
                "@type": SECRET_TYPE,
                "name": pc.WORKLOAD_SECRET,
                "tls_certificate": {
                    "certificate_chain": {"inline_string": chain_pem},
                    "private_key": {"inline_string": key_pem},
                },
            }
        ]
    }


def root_secret(roots_pem: str) -> dict[str, object]:
    """The SDS file of the trust bundle peers are checked against (:data:`pc.ROOT_CA_SECRET`)."""
    return {
        "resources": [
            {
                "@type": SECRET_TYPE,
                "name": pc.ROOT_CA_SECRET,
                "validation_context": {"trusted_ca": {"inline_string": roots_pem}},
            }
        ]
    }


def write_secrets(workdir: str, chain_pem: str, key_pem: str, roots_pem: str) -> None:
    """Write (or replace) both SDS files under ``workdir``: the trust bundle first, so a
    new certificate from a new root is never served before peers' are trusted."""
    private_dir(os.path.join(workdir, pc.SDS_DIR))
    _replace(workdir, pc.ROOT_CA_SECRET, root_secret(roots_pem))
    _replace(workdir, pc.WORKLOAD_SECRET, workload_secret(chain_pem, key_pem))


def _replace(workdir: str, name: str, doc: dict[str, object]) -> None:
    write_private(os.path.join(workdir, pc.sds_file(name)), json.dumps(doc).encode())


def read_workload_chain(workdir: str) -> str:
    """The certificate chain the proxy serves now (PEM), "" when there is none."""
    try:
        with open(os.path.join(workdir, pc.sds_file(pc.WORKLOAD_SECRET))) as f:
            doc = json.load(f)
        return str(doc["resources"][0]["tls_certificate"]["certificate_chain"]["inline_string"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return ""

"""TLS to etcd: the files ``tsunagi up --etcd-ca/--etcd-cert/--etcd-key`` name, checked and
turned into gRPC channel credentials (as etcdctl's ``--cacert/--cert/--key``).

A production etcd serves its clients over TLS and, with ``--client-cert-auth``, admits only
those presenting a certificate its CA signed: anyone who can write to etcd can rewrite the
mesh's config, so that is the setup to run beyond one machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)


@dataclass(frozen=True)
class EtcdTls:
    """Where the files are. ``server_name``: the name etcd's certificate must carry, when
    the endpoints are addresses its certificate does not list (empty: the address dialled,
    which then must be in the certificate's IP SANs)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        """The files read and checked; raises :class:`ValueError` naming the file at fault
        and what it should hold."""
        ca = _read(self.ca, "--etcd-ca")
        if not _certificates(ca):
            raise ValueError(
                f"--etcd-ca {self.ca}: no PEM certificate in it; give the CA that signed "
                "etcd's server certificate (etcd's --trusted-ca-file, or its issuer)"
            )
        if self.cert is None and self.key is None:
            return grpc.ssl_channel_credentials(root_certificates=ca)
        if self.cert is None or self.key is None:
            given, missing = ("--etcd-cert", "--etcd-key")
            if self.cert is None:
                given, missing = missing, given
            raise ValueError(
                f"{given} needs {missing}: give the client certificate and key together"
            )
        chain = _read(self.cert, "--etcd-cert")
        certs = _certificates(chain)
        if not certs:
            raise ValueError(f"--etcd-cert {self.cert}: no PEM certificate in it")
        key_pem = _read(self.key, "--etcd-key")
        try:
            key = load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"--etcd-key {self.key}: not an unencrypted PEM private key ({e})"
            ) from None
        if _spki(key.public_key()) != _spki(certs[0].public_key()):
            raise ValueError(
                f"--etcd-key {self.key} is not the key of --etcd-cert {self.cert}: give the "
                "pair etcd's CA signed for this control plane"
            )
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key_pem, certificate_chain=chain
        )


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot read it ({e.strerror or e})") from None


def _certificates(pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        return []


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

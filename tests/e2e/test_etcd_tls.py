"""`tsunagi up --store etcd://… --etcd-ca/--etcd-cert/--etcd-key` against a real etcd that
serves its clients over TLS and admits only certificates its CA signed
(``--client-cert-auth``): config goes through and is in etcd; a control plane without the
right files does not start, and says which flag to give."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from tests.etcd_fixtures import Cluster, ServerTls, make_tls, read_prefix, start_cluster
from tsunagi.store.etcd import EtcdClient, EtcdError

from .mesh import Mesh, started_mesh

PREFIX = "/tls"
RULE = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 7}}}
"""


@pytest.fixture
def tls(tmp_path: Path) -> ServerTls:
    return make_tls(tmp_path / "pki")


@pytest.fixture
def cluster(tmp_path: Path, tls: ServerTls) -> Iterator[Cluster]:
    cluster = start_cluster(tmp_path / "etcd", tls=tls)
    try:
        yield cluster
    finally:
        cluster.stop()


def client_flags(tls: ServerTls) -> list[str]:
    return [
        "--etcd-ca", str(tls.ca),
        "--etcd-cert", str(tls.client_cert),
        "--etcd-key", str(tls.client_key),
    ]  # fmt: skip


def stored(cluster: Cluster, tls: ServerTls, server_name: str = "") -> dict[bytes, bytes]:
    """Every key under PREFIX, read straight from etcd over TLS."""
    credentials = grpc.ssl_channel_credentials(
        tls.ca.read_bytes(), tls.client_key.read_bytes(), tls.client_cert.read_bytes()
    )
    kvs = read_prefix(cluster.endpoints, PREFIX, credentials, server_name)
    return {kv.key: kv.value for kv in kvs}


def refused_start(tmp_path: Path, *up_args: str) -> subprocess.CompletedProcess[str]:
    """`tsunagi up UP_ARGS`, expected to exit on its own (killed after 60 s if not)."""
    mesh = Mesh(tmp_path / "refused", up_args=up_args)
    mesh.state_dir.mkdir(parents=True)
    return subprocess.run(
        mesh.up_command(), env=mesh.env, capture_output=True, text=True, timeout=60
    )


def test_config_goes_to_an_etcd_that_requires_client_certificates(
    tmp_path: Path, cluster: Cluster, tls: ServerTls
) -> None:
    # The etcd really refuses a client without TLS.
    async def plaintext() -> None:
        client = EtcdClient(cluster.endpoints, timeout=2)
        try:
            await client.status()
        finally:
            await client.close()

    with pytest.raises(EtcdError):
        asyncio.run(plaintext())

    store = cluster.url + PREFIX
    for mesh in started_mesh(tmp_path / "mesh", "--store", store, *client_flags(tls)):
        applied = mesh.apply(RULE)
        assert applied.returncode == 0, applied.stderr
        shown = mesh.cli("get", "destinationrules", "-o", "json")
        assert shown.returncode == 0, shown.stderr
        assert "reviews" in shown.stdout
    keys = stored(cluster, tls)
    (value,) = [v for k, v in keys.items() if k.endswith(b"/DestinationRule/default/reviews")]
    assert json.loads(value)["spec"]["trafficPolicy"]["connectionPool"]["tcp"] == {
        "maxConnections": 7
    }


def test_without_the_right_files_it_does_not_start_and_names_the_flag(
    tmp_path: Path, cluster: Cluster, tls: ServerTls
) -> None:
    store = cluster.url + PREFIX
    # Plaintext to a TLS etcd.
    plain = refused_start(tmp_path / "plain", "--store", store)
    assert plain.returncode != 0
    assert "give --etcd-ca" in plain.stderr, plain.stderr
    # TLS, but no client certificate for an etcd that asks for one.
    anonymous = refused_start(tmp_path / "anonymous", "--store", store, "--etcd-ca", str(tls.ca))
    assert anonymous.returncode != 0
    assert "that etcd accepts --etcd-cert" in anonymous.stderr, anonymous.stderr
    # Another CA's client certificate.
    other = make_tls(tmp_path / "other-pki")
    foreign = refused_start(
        tmp_path / "foreign",
        "--store", store,
        "--etcd-ca", str(tls.ca),
        "--etcd-cert", str(other.client_cert),
        "--etcd-key", str(other.client_key),
    )  # fmt: skip
    assert foreign.returncode != 0
    assert "cannot read the store" in foreign.stderr, foreign.stderr
    assert "that etcd accepts --etcd-cert" in foreign.stderr, foreign.stderr
    assert stored(cluster, tls) == {}  # nothing was written by any of them


def test_a_server_certificate_that_names_etcd_by_dns_needs_the_server_name(
    tmp_path: Path,
) -> None:
    tls = make_tls(tmp_path / "pki", server_sans=[x509.DNSName("etcd.mesh.test")])
    cluster = start_cluster(tmp_path / "etcd", tls=tls)
    try:
        store = cluster.url + PREFIX
        # The certificate does not name 127.0.0.1: refused, with a pointer to the flag.
        unnamed = refused_start(tmp_path / "unnamed", "--store", store, *client_flags(tls))
        assert unnamed.returncode != 0
        assert "--etcd-server-name" in unnamed.stderr, unnamed.stderr
        up_args = ("--store", store, *client_flags(tls), "--etcd-server-name", "etcd.mesh.test")
        for mesh in started_mesh(tmp_path / "mesh", *up_args):
            applied = mesh.apply(RULE)
            assert applied.returncode == 0, applied.stderr
        assert any(k.endswith(b"/reviews") for k in stored(cluster, tls, "etcd.mesh.test"))
    finally:
        cluster.stop()

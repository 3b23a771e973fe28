"""Real etcd for tests: one member or a three-member cluster on loopback, in temp data dirs.

Members are started (by :func:`benchmarks.etcd.start_cluster`, which the scale benchmark
uses too) and stopped by their own pids; their data dirs are removed. Tests skip when etcd
is not installed (``make tools`` installs Debian's etcd-server).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from benchmarks.etcd import Cluster, Member, ServerTls, unavailable
from benchmarks.etcd import start_cluster as start_etcd
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from tsunagi.registry import Registry
from tsunagi.store.etcd import EtcdClient, EtcdStore
from tsunagi.store.etcd.client import KeyValue

__all__ = [
    "Cluster",
    "Member",
    "ServerTls",
    "etcd_cluster",
    "eventually",
    "leader",
    "make_tls",
    "read_prefix",
    "registry_on",
    "start_cluster",
]

# Short heartbeats and elections: a single member is ready in a tenth of a second; a
# cluster elects a new leader within about a second after one is killed.
FAST = ("--heartbeat-interval", "10", "--election-timeout", "100")
FAST_CLUSTER = ("--heartbeat-interval", "50", "--election-timeout", "500")


def start_cluster(base: Path, size: int = 1, tls: ServerTls | None = None) -> Cluster:
    """Start ``size`` members under ``base`` (serving clients over TLS with ``tls``) and
    wait until each reports healthy (skips the test when etcd is not installed)."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    return start_etcd(base, size, FAST if size == 1 else FAST_CLUSTER, tls=tls)


def make_tls(base: Path, server_sans: Sequence[x509.GeneralName] | None = None) -> ServerTls:
    """A CA of its own, etcd's server certificate from it (for ``127.0.0.1`` unless
    ``server_sans``) and a client certificate, as PEM files in ``base``."""
    base.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "etcd test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(name: str, sans: Sequence[x509.GeneralName], usage: ObjectIdentifier) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        (base / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (base / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (base / f"{name}.key").chmod(0o600)

    (base / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    loopback = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    leaf("server", server_sans or loopback, ExtendedKeyUsageOID.SERVER_AUTH)
    leaf("client", [x509.DNSName("tsunagi")], ExtendedKeyUsageOID.CLIENT_AUTH)
    return ServerTls(
        ca=base / "ca.pem",
        cert=base / "server.pem",
        key=base / "server.key",
        client_cert=base / "client.pem",
        client_key=base / "client.key",
    )


def etcd_cluster(base: Path, size: int = 1) -> Iterator[Cluster]:
    """A fixture's body (``yield from``): a started cluster, stopped and removed afterwards."""
    cluster = start_cluster(base, size)
    try:
        yield cluster
    finally:
        cluster.stop()


@contextlib.asynccontextmanager
async def registry_on(cluster: Cluster, prefix: str, ttl: float) -> AsyncIterator[Registry]:
    """A registry on an etcd store of its own under ``prefix``, started as ``tsunagi up``
    starts one (a replica, as far as the registry goes)."""
    store = EtcdStore(cluster.endpoints, prefix)
    await store.open()
    try:
        registry = Registry(store, ttl=ttl)
        await registry.restore_leases()
        yield registry
    finally:
        await store.close()


def read_prefix(
    endpoints: Sequence[tuple[str, int]],
    prefix: str,
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str = "",
) -> list[KeyValue]:
    """Every key under ``prefix``, read straight from etcd (over TLS with ``credentials``),
    from a test's own thread."""

    async def read() -> list[KeyValue]:
        client = EtcdClient(endpoints, credentials=credentials, server_name=server_name)
        try:
            _, kvs = await client.range_prefix(prefix.encode())
        finally:
            await client.close()
        return list(kvs)

    return asyncio.run(read())


async def leader(cluster: Cluster) -> Member:
    """The member that leads now (asked of each running member in turn)."""
    for m in cluster.members:
        if m.proc is None or m.proc.poll() is not None:
            continue  # killed by the test
        client = EtcdClient([("127.0.0.1", m.client_port)])
        try:
            status = await client.status()
        finally:
            await client.close()
        if status.leader == status.member_id:
            return m
    raise AssertionError("the etcd cluster has no leader")


async def eventually(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    """Poll ``check`` until true; fail after ``timeout`` seconds (a bound, not a measure)."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None

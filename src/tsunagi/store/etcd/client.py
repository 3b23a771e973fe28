"""A thin asyncio client for etcd's v3 gRPC API: what the store and the registry need, no more.

Why not a PyPI client: none fits our pins and needs together (TLS, several members, watch
progress, and above all no blind retry of writes; see the README's etcd paragraph).

Endpoints: one gRPC channel to every member (``ipv4:a,b,c`` with ``round_robin``). gRPC keeps
a connection to each member and skips the ones that are down, so a dead member costs no new
connection on the next call; etcd forwards writes to the leader itself.

Retries: reads (Range, Status) are idempotent and are retried across members until their
deadline. Writes (Txn, lease grant/revoke) are sent once: after a timeout or a broken
connection the write may have committed, and only the caller knows how to find out (the store
re-reads; see :mod:`tsunagi.store.etcd.store`). :class:`Uncertain` says exactly that.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from tsunagi.store.base import StoreError
from tsunagi.store.etcd._proto import kv_pb2, rpc_pb2, rpc_pb2_grpc

# Errors after which a read may simply be tried again (on another member).
_RETRY_READ = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
)
# Errors after which a write may or may not have been applied.
_UNCERTAIN = (*_RETRY_READ, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
_OPTIONS = [
    ("grpc.lb_policy_name", "round_robin"),
    # Notice a member that vanished without closing its connections (kill -9, a cut cable).
    ("grpc.keepalive_time_ms", 5000),
    ("grpc.keepalive_timeout_ms", 3000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # Reconnect quickly to a member that comes back.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
# Watches on a member that has lost its leader are cancelled by that member (as etcd's own
# clients ask), instead of staying silent while the rest of the cluster moves on.
_REQUIRE_LEADER = (("hasleader", "true"),)
_READ_TRIES = 3
"""A read's deadline is shared by this many tries, so that a member which hangs (stopped,
or cut off without a reset, until keepalive gives up on it) cannot use all of it: the next
try goes to the next member."""


class EtcdError(StoreError):
    """etcd refused a request or could not be reached."""


class Uncertain(EtcdError):
    """A write was sent but its outcome is unknown: it may or may not have committed."""


class Compacted(EtcdError):
    """A watch asked for revisions that etcd has compacted away: re-list and watch again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revisions before {compact_revision} are compacted")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class KeyValue:
    """A key as etcd stores it, with its revisions and lease."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class Event:
    """One change seen by a watch: a put (``deleted`` False) or a delete of ``kv.key``."""

    kv: KeyValue
    deleted: bool
    prev: KeyValue | None = None


@dataclass(frozen=True)
class TxnResult:
    """A transaction's outcome: which branch ran, the store revision after it, and the
    key-values that its Range operations read (in order, all flattened)."""

    succeeded: bool
    revision: int
    read: tuple[KeyValue, ...] = ()


@dataclass(frozen=True)
class Status:
    """One member's view of the cluster."""

    version: str
    member_id: int
    leader: int
    revision: int
    raft_term: int


Op = Any
"""A transaction operation made by :func:`put`, :func:`delete` or :func:`get`."""
Compare = Any
"""A transaction guard made by :func:`mod_revision_is`."""


def put(key: bytes, value: bytes, lease: int = 0) -> Op:
    """A Txn operation that writes ``key`` (attached to ``lease`` unless 0)."""
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, lease=lease))


def delete(key: bytes) -> Op:
    """A Txn operation that deletes ``key`` (no error if it is absent)."""
    return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))


def get(key: bytes) -> Op:
    """A Txn operation that reads ``key``; its value lands in :attr:`TxnResult.read`."""
    return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))


def mod_revision_is(key: bytes, revision: int) -> Compare:
    """A Txn guard: ``key`` was last written at ``revision`` (0: ``key`` does not exist)."""
    return rpc_pb2.Compare(
        key=key,
        target=rpc_pb2.Compare.MOD,
        result=rpc_pb2.Compare.EQUAL,
        mod_revision=revision,
    )


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with ``prefix`` (etcd's ``range_end``)."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"  # every key
    end[-1] += 1
    return bytes(end)


def _kv(m: Any) -> KeyValue:
    return KeyValue(
        bytes(m.key),
        bytes(m.value),
        int(m.create_revision),
        int(m.mod_revision),
        int(m.version),
        int(m.lease),
    )


def parse_endpoints(text: str) -> list[tuple[str, int]]:
    """``host:port[,host:port...]`` as pairs; a clear ValueError for anything else."""
    out = []
    for part in text.split(","):
        host, sep, port = part.strip().rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"bad etcd endpoint {part!r}: write HOST:PORT, several separated by commas "
                "(etcd://10.0.0.1:2379,10.0.0.2:2379)"
            )
        out.append((host, int(port)))
    return out


def _target(endpoints: Sequence[tuple[str, int]]) -> str:
    """A gRPC target for all members. gRPC lists addresses only as IP literals, so names are
    resolved here, once (members are expected to keep their addresses)."""
    addresses = []
    for host, port in endpoints:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            ip = ipaddress.ip_address(infos[0][4][0])
        addresses.append((ip, port))
    if all(ip.version == 4 for ip, _ in addresses):
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in addresses)
    if all(ip.version == 6 for ip, _ in addresses):
        return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in addresses)
    raise ValueError("etcd endpoints mix IPv4 and IPv6 addresses: use one family")


class EtcdClient:
    """Talks to one etcd cluster through any of its members.

    ``credentials``: TLS channel credentials (``grpc.ssl_channel_credentials``); plaintext
    when None. ``server_name``: with TLS, the name every member's certificate must carry
    (empty: the address dialled). ``timeout``: the deadline of each call, retries of reads
    included.
    """

    def __init__(
        self,
        endpoints: Sequence[tuple[str, int]],
        *,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str = "",
        timeout: float = 5.0,
    ) -> None:
        target = _target(endpoints)
        self.where = ",".join(f"{h}:{p}" for h, p in endpoints)
        """The members as the user wrote them (for messages)."""
        self.timeout = timeout
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=_OPTIONS)
        else:
            options = list(_OPTIONS)
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        self._kv = rpc_pb2_grpc.KVStub(self._channel)
        self._watch = rpc_pb2_grpc.WatchStub(self._channel)
        self._lease = rpc_pb2_grpc.LeaseStub(self._channel)
        self._maintenance = rpc_pb2_grpc.MaintenanceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    def _failed(self, e: grpc.aio.AioRpcError) -> str:
        return f"etcd at {self.where}: {e.code().name}: {e.details()}"

    async def _read(self, call: Any, request: Any) -> Any:
        """An idempotent call, retried on another member until the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        each = self.timeout / _READ_TRIES
        while True:
            left = deadline - loop.time()
            try:
                return await call(request, timeout=max(min(left, each), 0.05), wait_for_ready=True)
            except grpc.aio.AioRpcError as e:
                if e.code() not in _RETRY_READ or loop.time() + 0.1 >= deadline:
                    raise EtcdError(self._failed(e)) from e
                await asyncio.sleep(0.1)

    async def range_prefix(
        self, prefix: bytes, *, revision: int = 0, page: int = 1000
    ) -> tuple[int, list[KeyValue]]:
        """Every key under ``prefix`` at one revision (the latest when 0), read in pages of
        ``page`` keys; returns that revision and the keys in order."""
        end = prefix_end(prefix)
        key = prefix
        out: list[KeyValue] = []
        while True:
            request = rpc_pb2.RangeRequest(key=key, range_end=end, limit=page, revision=revision)
            reply = await self._read(self._kv.Range, request)
            revision = revision or int(reply.header.revision)  # later pages: the same view
            out.extend(_kv(m) for m in reply.kvs)
            if not reply.more:
                return revision, out
            key = out[-1].key + b"\0"

    async def get(self, key: bytes) -> tuple[int, KeyValue | None]:
        """The store revision and ``key`` (None when absent); a linearizable read."""
        reply = await self._read(self._kv.Range, rpc_pb2.RangeRequest(key=key))
        return int(reply.header.revision), (_kv(reply.kvs[0]) if reply.kvs else None)

    async def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """One transaction: ``success`` if every ``compare`` holds, else ``failure``; all or
        nothing. Sent once; raises :class:`Uncertain` when it may have committed."""
        request = rpc_pb2.TxnRequest(compare=compare, success=success, failure=failure)
        try:
            reply = await self._kv.Txn(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as e:
            message = self._failed(e)
            if e.code() in _UNCERTAIN:
                raise Uncertain(message) from e
            raise EtcdError(message) from e
        read = tuple(
            _kv(m)
            for r in reply.responses
            if r.HasField("response_range")
            for m in r.response_range.kvs
        )
        return TxnResult(bool(reply.succeeded), int(reply.header.revision), read)

    async def watch(
        self, prefix: bytes, start_revision: int, *, prev_kv: bool = False
    ) -> AsyncGenerator[tuple[int, list[Event]], None]:
        """Changes under ``prefix`` from ``start_revision`` on, as ``(revision, events)``:
        the revision is that of the batch's last event (never a progress notification's:
        etcd before 3.4.25 can send progress ahead of events it still owes, etcd-io/etcd#15220),
        so a batch without events is not yielded. Raises :class:`Compacted` when
        ``start_revision`` is gone and :class:`EtcdError` when the stream breaks; callers
        resume from the last revision they saw (not one past it: a compaction at exactly
        that next revision drops its delete tombstones without refusing the watch)."""
        create = rpc_pb2.WatchCreateRequest(
            key=prefix,
            range_end=prefix_end(prefix),
            start_revision=start_revision,
            prev_kv=prev_kv,
            progress_notify=True,
        )
        done = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield rpc_pb2.WatchRequest(create_request=create)
            await done.wait()  # keep the request side open while we read

        call = self._watch.Watch(requests(), metadata=_REQUIRE_LEADER)
        try:
            async for reply in call:
                if reply.compact_revision:
                    raise Compacted(int(reply.compact_revision))
                if reply.canceled:
                    raise EtcdError(
                        f"etcd cancelled the watch: {reply.cancel_reason or 'no reason'}"
                    )
                events = [
                    Event(
                        _kv(e.kv),
                        e.type == kv_pb2.Event.DELETE,
                        _kv(e.prev_kv) if e.HasField("prev_kv") else None,
                    )
                    for e in reply.events
                ]
                if events:
                    yield events[-1].kv.mod_revision, events
            raise EtcdError(f"etcd at {self.where}: the watch stream ended")
        except grpc.aio.AioRpcError as e:
            raise EtcdError(self._failed(e)) from e
        finally:
            done.set()
            call.cancel()

    async def lease_grant(self, ttl: int) -> tuple[int, int]:
        """A new lease of ``ttl`` seconds: ``(id, granted ttl)``. Sent once (an unknown outcome
        leaves at most an unused lease, which expires by itself)."""
        try:
            reply = await self._lease.LeaseGrant(
                rpc_pb2.LeaseGrantRequest(TTL=ttl), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as e:
            raise EtcdError(self._failed(e)) from e
        if reply.error:
            raise EtcdError(f"etcd refused a lease: {reply.error}")
        return int(reply.ID), int(reply.TTL)

    async def lease_revoke(self, lease: int) -> None:
        """End ``lease`` now: etcd deletes every key attached to it, in one revision."""
        try:
            await self._lease.LeaseRevoke(
                rpc_pb2.LeaseRevokeRequest(ID=lease), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return  # already expired or revoked: the outcome wanted
            raise EtcdError(self._failed(e)) from e

    def keepalive(self) -> LeaseKeeper:
        """One long-lived keepalive stream for any number of leases."""
        return LeaseKeeper(self)

    async def status(self) -> Status:
        """The status of whichever member answers."""
        reply = await self._read(self._maintenance.Status, rpc_pb2.StatusRequest())
        return Status(
            str(reply.version),
            int(reply.header.member_id),
            int(reply.leader),
            int(reply.header.revision),
            int(reply.raftTerm),
        )

    async def compact(self, revision: int) -> None:
        """Drop the history before ``revision`` (watches from older revisions then fail)."""
        try:
            await self._kv.Compact(
                rpc_pb2.CompactionRequest(revision=revision, physical=True), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as e:
            raise EtcdError(self._failed(e)) from e


class LeaseKeeper:
    """Refreshes leases over one LeaseKeepAlive stream (opened on first use, reopened after
    it breaks). Replies come back in request order on the stream, one per request."""

    def __init__(self, client: EtcdClient) -> None:
        self._client = client
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._call: Any = None
        self._lock = asyncio.Lock()

    @staticmethod
    async def _requests(queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
        while True:
            yield await queue.get()

    async def refresh(self, lease: int) -> int:
        """Renew ``lease``; return its new TTL in seconds (0: the lease is gone)."""
        async with self._lock:  # one request in flight keeps replies matched to requests
            if self._call is None:
                self._call = self._client._lease.LeaseKeepAlive(
                    self._requests(self._queue), metadata=_REQUIRE_LEADER
                )
            await self._queue.put(rpc_pb2.LeaseKeepAliveRequest(ID=lease))
            try:
                reply = await asyncio.wait_for(self._call.read(), self._client.timeout)
            except (grpc.aio.AioRpcError, TimeoutError) as e:
                self._reset()
                raise EtcdError(f"etcd at {self._client.where}: lease keepalive failed: {e}") from e
            if reply is grpc.aio.EOF:
                self._reset()
                raise EtcdError(f"etcd at {self._client.where}: the keepalive stream ended")
            return int(reply.TTL)

    def _reset(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._call = None
        self._queue = asyncio.Queue()

    def close(self) -> None:
        """Close the stream (the leases themselves are left to expire or be revoked)."""
        self._reset()

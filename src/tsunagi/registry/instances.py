"""Workload instances: who serves which service, where, and whether they are still alive.

Instances are stored (so a control-plane restart keeps every endpoint). Where their leases
live depends on the store:

- A store that holds leases itself (:class:`~tsunagi.store.base.Leases`: etcd) writes each
  instance under a lease of the registry's TTL. A heartbeat renews that lease, whichever
  replica receives it; when heartbeats stop, the store deletes the instance and every replica
  sees it go. No replica expires anything on its own clock, so several control planes can
  share one registry. :meth:`Registry.expire` reports the instances whose heartbeats came to
  this replica and whose leases lapsed (see there who reports what).
- Otherwise (memory, SQLite) leases are kept in this process's memory: heartbeats touch
  memory, :meth:`Registry.expire` removes lapsed instances, and after a restart each stored
  instance gets a fresh lease, giving its agent a full TTL to check in again.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from tsunagi import protocols
from tsunagi import proxy_contract as pc
from tsunagi.api.names import DNS1123_LABEL_PATTERN, check_dns_subdomain, is_ip
from tsunagi.store import Key, Record, Store
from tsunagi.store.base import Leases

KIND = "WorkloadInstance"
"""The store kind that holds registered instances (internal; not an Istio kind)."""

EXPIRED_AFTER = 0.75
"""An instance gone from a leasing store this many TTLs or more after this replica last
renewed its lease expired; sooner, it was removed. Under 1: etcd's clock may run a little
ahead of ours (it starts the lease before our renewal returns)."""
AWAY_MARGIN = 3.0
"""Seconds beyond a TTL within which a lapsed lease's delete reaches this replica (etcd
rounds TTLs up to whole seconds and checks leases twice a second; the expiry loop runs every
second). An instance still stored, or gone, later than that after this replica last renewed
it was renewed elsewhere meanwhile: its expiry is that replica's to report."""

_DNS_LABEL = re.compile(DNS1123_LABEL_PATTERN)


class InvalidInstance(ValueError):
    """A registration that cannot be accepted; the message names the field."""


@dataclass(frozen=True)
class Instance:
    """One running workload behind a service port."""

    name: str
    service: str
    namespace: str
    port: int
    address: str
    target_port: int
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    locality: str = ""
    healthy: bool = True
    protocol: str = protocols.DEFAULT
    """The service port's protocol as the instance declared it (``tsunagi run --port
    9080/grpc``), canonical (upper case); absent in older registrations, so HTTP."""
    metrics_port: int = 0
    """Where the sidecar's agent serves ``/stats/prometheus`` on ``address`` (Istio's merged
    metrics); 0 when it serves none, so Prometheus discovery leaves the instance out."""
    kind: str = pc.DEFAULT_KIND
    """``sidecar``, or ``gateway`` for a ``tsunagi gateway``: with no service port (``port``
    and ``target_port`` 0) it is no endpoint of a service (see :attr:`serves`); with
    ``--port SERVICEPORT:LISTENPORT`` it registers one instance per port, an endpoint of its
    own service ``NAME.NAMESPACE`` as a sidecar is (Kubernetes' gateway Service)."""
    metrics_address: str = ""
    """Where ``metrics_port`` listens when not at ``address``: a gateway serves traffic at
    ``--address`` (perhaps 0.0.0.0) but its metrics at ``--metrics-address`` (127.0.0.1 by
    default), so its stats are not exposed at the edge; empty: ``address``."""
    service_account: str = ""
    """The workload's service account (``tsunagi run --service-account``), the last part
    of its SPIFFE ID; empty in older registrations: see :attr:`account`."""
    binds_privileged_ports: bool = False
    """A gateway that may bind ports below the host's unprivileged start (it runs as root or
    with ``CAP_NET_BIND_SERVICE``): ``apply`` does not warn that its Envoy cannot."""

    @property
    def account(self) -> str:
        """The service account its certificate names: ``service_account``, else (as
        ``tsunagi run`` defaults it) the service name."""
        return self.service_account or self.service

    @property
    def metrics_host(self) -> str:
        """The address Prometheus and the dashboard scrape ``metrics_port`` at."""
        return self.metrics_address or self.address

    @property
    def key(self) -> Key:
        return (KIND, self.namespace, self.name)

    @property
    def is_gateway(self) -> bool:
        """A ``tsunagi gateway`` (whose labels Gateways select), with or without ports."""
        return self.kind == pc.GATEWAY_KIND

    @property
    def serves(self) -> bool:
        """True when the instance is an endpoint of its service: every sidecar, and a
        gateway's ``--port`` registrations. A gateway without one is not: clients outside
        the mesh reach it at its address, on the ports its Gateways name."""
        return not self.is_gateway or self.port != 0

    def to_document(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"labels": dict(self.labels)}

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Instance:
        """Build and check an instance; raises :class:`InvalidInstance` naming the field."""
        try:
            inst = cls(
                name=str(doc["name"]),
                service=str(doc["service"]),
                namespace=str(doc.get("namespace") or "default"),
                port=int(doc["port"]),
                address=str(doc.get("address") or "127.0.0.1"),
                target_port=int(doc["target_port"]),
                labels=MappingProxyType(
                    {str(k): str(v) for k, v in (doc.get("labels") or {}).items()}
                ),
                locality=str(doc.get("locality") or ""),
                healthy=bool(doc.get("healthy", True)),
                protocol=protocols.canonical(str(doc.get("protocol") or protocols.DEFAULT)),
                metrics_port=int(doc.get("metrics_port") or 0),
                kind=str(doc.get("kind") or pc.DEFAULT_KIND),
                metrics_address=str(doc.get("metrics_address") or ""),
                binds_privileged_ports=bool(doc.get("binds_privileged_ports", False)),
                service_account=str(doc.get("service_account") or ""),
            )
        except KeyError as e:
            raise InvalidInstance(f"missing field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise InvalidInstance(str(e)) from None
        for what in ("name", "service", "namespace"):
            if not _DNS_LABEL.match(getattr(inst, what)):
                raise InvalidInstance(f"{what} {getattr(inst, what)!r} is not a DNS label")
        if inst.service_account:
            problem = check_dns_subdomain(inst.service_account, "service_account")
            if problem:
                raise InvalidInstance(problem)
        if inst.kind not in (pc.DEFAULT_KIND, pc.GATEWAY_KIND):
            raise InvalidInstance(
                f"kind {inst.kind!r} is not {pc.DEFAULT_KIND!r} or {pc.GATEWAY_KIND!r}"
            )
        portless = inst.is_gateway and inst.port == 0
        for what in ("port", "target_port"):
            if portless and getattr(inst, what) != 0:
                raise InvalidInstance(
                    f"{what} must be 0 for a gateway without a service port (or give both "
                    "port and target_port, as tsunagi gateway --port does)"
                )
            if not portless and not 1 <= getattr(inst, what) <= 65535:
                raise InvalidInstance(f"{what} must be 1..65535")
        if not 0 <= inst.metrics_port <= 65535:
            raise InvalidInstance("metrics_port must be 0..65535 (0: no metrics endpoint)")
        if inst.metrics_address and not is_ip(inst.metrics_address):
            raise InvalidInstance(
                f"metrics_address {inst.metrics_address!r} is not an IPv4 or IPv6 address"
            )
        if inst.locality and inst.locality.count("/") > 2:
            raise InvalidInstance("locality must be REGION[/ZONE[/SUBZONE]]")
        return inst


def protocol_disagreement(inst: Instance, others: Iterable[str]) -> str | None:
    """What to tell ``inst``'s agent when the other instances of its service port declared
    the protocols ``others`` (None when all agree): which protocol the mesh uses for all of
    them (:func:`tsunagi.protocols.pick`) and what to do about it."""
    declared = [*others, inst.protocol]
    chosen, disagree = protocols.pick(declared)
    if not disagree:
        return None
    counts = Counter(declared)
    seen = ", ".join(f"{p.lower()} ({counts[p]})" for p in sorted(counts))
    return (
        f"instances of {inst.service}.{inst.namespace}:{inst.port} disagree on its protocol "
        f"({seen}); the mesh uses {chosen.lower()} for all of them. Run every instance with "
        f"the same --port {inst.port}/PROTOCOL"
    )


def _parse(record: Record) -> Instance:
    return Instance.from_document(record.document)


class Registry:
    """Registers, heartbeats and expires instances on top of a :class:`Store`; the store
    keeps their leases when it can (see the module's docstring)."""

    def __init__(
        self, store: Store, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self.ttl = ttl
        self._clock = clock
        self._held: Leases | None = store if isinstance(store, Leases) else None
        """The store, when it holds the instances' leases itself (then ``_leases`` stays
        empty and other processes write instances too)."""
        self._leases: dict[Key, float] = {}
        self._indexed: dict[Key, Record] = {}
        """With a leasing store: the records the protocol index was last brought up to."""
        self._indexed_revision = -1
        self._protocols: dict[tuple[str, str, int], dict[str, str]] = {}
        """(namespace, service, port) → instance name → the protocol it declared."""
        self._port_of: dict[Key, tuple[str, str, int]] = {}
        # Register, deregister and expire decide from the store's contents and then write:
        # without a lock, an expiry in flight could delete an instance that just registered.
        self._lock = asyncio.Lock()
        self._listed: tuple[int, dict[Key, tuple[Record, Instance]]] = (-1, {})
        """The store revision :meth:`instances` last listed, and each record parsed."""
        self._beats: dict[Key, float] = {}
        """With a leasing store: when this replica last renewed each lease it renews (at a
        registration or heartbeat it received), to tell its expiry from a removal."""
        self._lapsed: list[Key] = []
        """Expiries seen when a registration found the instance gone (its agent, told so
        by a heartbeat, came back before :meth:`expire` looked), kept for that."""

    def instances(self) -> list[Instance]:
        """Every registered instance, gateways included."""
        contents = self._store.contents()
        revision, parsed = self._listed
        if revision != contents.revision:
            # Parsed once per stored record, not once per call: the dashboard's scraper
            # asks every few seconds, and a mesh has thousands. One tuple, swapped whole,
            # as the scraper's thread calls this too.
            parsed = {
                r.key: hit if (hit := parsed.get(r.key)) and hit[0] is r else (r, _parse(r))
                for r in contents.of_kind(KIND)
            }
            self._listed = (contents.revision, parsed)
        return [inst for _, inst in parsed.values()]

    def service_instances(self) -> list[Instance]:
        """The instances that are endpoints of their service (gateways are not)."""
        return [inst for inst in self.instances() if inst.serves]

    def gateways(self) -> list[Instance]:
        """The running gateways' registrations (``tsunagi gateway``; one per ``--port``)."""
        return [inst for inst in self.instances() if inst.is_gateway]

    def peer_protocols(self, inst: Instance) -> list[str]:
        """The protocols the other registered instances of ``inst``'s service port declare."""
        if self._held is not None:
            self._index_store()
        peers = self._protocols.get((inst.namespace, inst.service, inst.port), {})
        return [p for name, p in peers.items() if name != inst.name]

    def _index_store(self) -> None:
        """Bring the protocol index up to the store's instances: with a leasing store,
        other replicas register and the store expires, so the index follows the store, and
        re-reads only the records that changed since it last did."""
        contents = self._store.contents()
        if contents.revision == self._indexed_revision:
            return
        current = {r.key: r for r in contents.of_kind(KIND)}
        for key in self._port_of.keys() - current.keys():
            self._index(key, None)
        for key, record in current.items():
            if self._indexed.get(key) is not record:
                self._index(key, record.document)
        self._indexed, self._indexed_revision = current, contents.revision

    def _index(self, key: Key, doc: Mapping[str, Any] | None) -> None:
        """Keep the protocol index in step with the instance stored under ``key`` (``doc``
        None: removed). An index, so that a registration costs the same in a mesh of five
        instances as in one of five thousand."""
        old = self._port_of.pop(key, None)
        if old is not None:
            peers = self._protocols[old]
            del peers[key[2]]
            if not peers:
                del self._protocols[old]
        if doc is not None:
            port = (key[1], str(doc.get("service")), int(doc.get("port") or 0))
            protocol = str(doc.get("protocol") or protocols.DEFAULT).upper()
            self._protocols.setdefault(port, {})[key[2]] = protocol
            self._port_of[key] = port

    async def restore_leases(self) -> None:
        """Give every stored instance a fresh lease (call once after the store opens).

        With a leasing store, instances keep the leases they have (a restart drops nobody);
        one stored without a lease (by a version before leases) is put under one now, so it
        goes unless its agent heartbeats."""
        if self._held is not None:
            for rec in self._store.contents().of_kind(KIND):
                if not self._held.leased(rec.key):
                    await self._held.commit_leased(rec.key, rec.document, self.ttl)
            return
        deadline = self._clock() + self.ttl
        for rec in self._store.contents().of_kind(KIND):
            self._leases[rec.key] = deadline
            self._index(rec.key, rec.document)

    async def register(self, inst: Instance) -> int:
        """Store ``inst`` with a fresh lease; return the store's revision. Registering the
        same document again writes nothing (it only renews the lease)."""
        async with self._lock:
            if self._held is not None:
                return await self._register_leased(self._held, inst)
            self._leases[inst.key] = self._clock() + self.ttl
            current = self._store.contents().records.get(inst.key)
            if current is not None and current.document == inst.to_document():
                return self._store.contents().revision
            revision = await self._store.commit([(inst.key, inst.to_document())])
            self._index(inst.key, inst.to_document())
            return revision

    async def _register_leased(self, held: Leases, inst: Instance) -> int:
        renewed = self._clock()
        self._gone(inst.key, renewed)
        revision = await self._write_leased(held, inst)
        self._beats[inst.key] = renewed
        return revision

    async def _write_leased(self, held: Leases, inst: Instance) -> int:
        document = inst.to_document()
        current = self._store.contents().records.get(inst.key)
        if (
            current is not None
            and current.document == document
            and held.leased(inst.key)
            and await held.renew(inst.key)
        ):
            return self._store.contents().revision
        return await held.commit_leased(inst.key, document, self.ttl)

    async def heartbeat(self, namespace: str, name: str) -> bool:
        """Extend a lease; ``False`` means the instance is unknown (or its lease lapsed in
        the store) and must register again."""
        key = (KIND, namespace, name)
        if key not in self._store.contents().records:
            return False  # an expiry is noted when it re-registers, or by :meth:`expire`
        if self._held is not None:
            renewed = self._clock()
            if not await self._held.renew(key):  # etcd's errors raise: 503, not 404
                return False
            self._beats[key] = renewed
            return True
        self._leases[key] = self._clock() + self.ttl
        return True

    async def deregister(self, namespace: str, name: str) -> bool:
        """Remove an instance now (with a leasing store, by ending its lease); ``False``
        when it is not registered."""
        key = (KIND, namespace, name)
        async with self._lock:
            self._leases.pop(key, None)
            self._beats.pop(key, None)
            if key not in self._store.contents().records:
                return False
            if self._held is not None:
                await self._held.revoke(key)
                return True
            await self._store.commit([], [key])
            self._index(key, None)
            return True

    async def expire(self) -> list[Key]:
        """Remove every instance whose lease lapsed; return their keys (to log and count).

        With a leasing store the store removes them, for every replica at once; this returns
        those whose heartbeats came to this replica. Each is reported by one replica, the
        one its agent talked to, as each replica counts the registrations, heartbeats and
        removals it receives: per-process counters, as Prometheus metrics are, whose sum
        over the replicas is the mesh's. An instance that left the store is taken
        for expired when this replica last renewed its lease about a TTL before (see
        :data:`EXPIRED_AFTER`, :data:`AWAY_MARGIN`); sooner, someone removed it
        (deregistered through another replica, deleted); later, another replica renewed it
        since. So an agent that moved to another replica is not counted twice; an expiry
        that an etcd leader election delays (etcd extends leases then) goes uncounted."""
        if self._held is not None:
            return self._expired_in_store()
        async with self._lock:
            now = self._clock()
            stored = {r.key for r in self._store.contents().of_kind(KIND)}
            lapsed = [k for k in stored if self._leases.get(k, 0.0) < now]
            if lapsed:
                for k in lapsed:
                    self._leases.pop(k, None)
                await self._store.commit([], lapsed)
                for k in lapsed:
                    self._index(k, None)
            return lapsed

    def _expired_in_store(self) -> list[Key]:
        records = self._store.contents().records
        now = self._clock()
        for key, renewed in list(self._beats.items()):
            if key not in records:
                self._gone(key, now)
            elif now - renewed > self.ttl + AWAY_MARGIN:
                del self._beats[key]  # its agent heartbeats through another replica now
        lapsed, self._lapsed = self._lapsed, []
        return lapsed

    def _gone(self, key: Key, now: float) -> None:
        """``key`` may have left the store: note an expiry when it did, its lease last
        renewed here about a TTL ago."""
        renewed = self._beats.get(key)
        if renewed is None or key in self._store.contents().records:
            return
        del self._beats[key]
        if self.ttl * EXPIRED_AFTER <= now - renewed <= self.ttl + AWAY_MARGIN:
            self._lapsed.append(key)

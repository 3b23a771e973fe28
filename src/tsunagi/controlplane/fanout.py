"""Proxy status, ``apply --wait`` and one proxy's secrets across replicas: the replica a
client asks answers for the proxies of every live replica, asking each peer for its own
(``local=true``).

Every result names the replica of each proxy (``replica``) and reports each replica
(``replicas``: name, API URL, whether it is complete, and the error of one that did not
answer), so a peer that does not answer is named, never silently left out. A peer that has
left the store (stopped, or crashed and its lease lapsed) holds no proxies any more: they
reconnect to a live replica and are waited for there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from tsunagi.httpwire import reason
from tsunagi.store.base import StoreError

if TYPE_CHECKING:  # replicas.py loads etcd's stubs: only control planes on etcd import it
    from tsunagi.controlplane.replicas import Replica, Replicas

LocalWait = Callable[[float], Awaitable[tuple[bool, list[dict[str, Any]]]]]
"""Waits up to the given seconds for this replica's proxies: ``(complete, their statuses)``."""

_RETRY = 0.5
"""Seconds between two asks of a peer that did not answer (or of etcd)."""
_PROXIES_TIMEOUT = 5.0
"""Seconds a peer has to list its proxies."""


def _tagged(proxies: list[dict[str, Any]], replica: str) -> list[dict[str, Any]]:
    for p in proxies:
        p["replica"] = replica
    return proxies


def _report(replica: Replica, complete: bool, error: str = "") -> dict[str, Any]:
    return {"name": replica.name, "api": replica.api, "complete": complete, "error": error}


def _etcd_report(error: str) -> dict[str, Any]:
    return {"name": "etcd", "api": "", "complete": False, "error": error}


async def proxies_everywhere(
    replicas: Replicas, local: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(proxies, replica reports)``: ``local`` (this replica's) and every peer's."""
    proxies = _tagged(local, replicas.me.name)
    reports = [_report(replicas.me, True)]
    try:
        peers = await replicas.peers()
    except StoreError as e:
        return proxies, [*reports, _etcd_report(str(e))]
    query = {"local": "true"}
    for peer, status, body in await _ask(replicas, peers, "/v1/proxies", query, _PROXIES_TIMEOUT):
        if status == 200:
            proxies += _tagged(list(body.get("proxies") or []), peer.name)
            reports.append(_report(peer, True))
        else:
            reports.append(_report(peer, False, _failure(status, body)))
    return proxies, reports


async def wait_everywhere(
    replicas: Replicas, local: LocalWait, revision: int, timeout: float
) -> tuple[bool, list[dict[str, Any]], list[dict[str, Any]]]:
    """Wait up to ``timeout`` seconds until the proxies of every live replica have ACKed (or
    NACKed) ``revision``: ``(complete, proxies, replica reports)``. A peer that does not
    answer is asked again until it does, leaves the store, or time is up; then it is
    reported with its error and the wait is not complete."""
    deadline = asyncio.get_running_loop().time() + timeout
    here = asyncio.ensure_future(local(timeout))
    try:
        reports, proxies_of = await _wait_peers(replicas, revision, deadline)
        complete_here, mine = await here
    finally:
        here.cancel()  # when this wait is cancelled (its client left)
    proxies = _tagged(mine, replicas.me.name)
    for theirs in proxies_of.values():
        proxies += theirs
    everything = [_report(replicas.me, complete_here), *reports.values()]
    return all(r["complete"] for r in everything), proxies, everything


async def _wait_peers(
    replicas: Replicas, revision: int, deadline: float
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Ask every peer to wait for ``revision`` until ``deadline``: ``(a report of each live
    peer, and of etcd when it did not answer; proxies by the name of each peer that
    answered)``. An answer (complete, or timed out on the peer's side) is final."""
    loop = asyncio.get_running_loop()
    reports: dict[str, dict[str, Any]] = {}
    proxies_of: dict[str, list[dict[str, Any]]] = {}
    while True:
        left = deadline - loop.time()
        try:
            live = {p.name: p for p in await replicas.peers()}
        except StoreError as e:
            reports["etcd"] = _etcd_report(str(e))
            if left <= _RETRY:
                return reports, proxies_of
            await asyncio.sleep(_RETRY)
            continue
        # Gone from the store (and etcd's error, now it answers): their proxies moved.
        reports = {name: r for name, r in reports.items() if name in live}
        proxies_of = {name: p for name, p in proxies_of.items() if name in live}
        pending = [p for name, p in live.items() if name not in proxies_of]
        if not pending:
            return reports, proxies_of
        if left <= 0:
            for peer in pending:  # named even when there was no time to ask it
                reports.setdefault(peer.name, _report(peer, False, "not asked: time was up"))
            return reports, proxies_of
        # The peer answers a little before our deadline, so its statuses make our reply.
        query = {"revision": revision, "timeout": f"{max(0.0, left - _RETRY):.3f}", "local": "true"}
        for peer, status, body in await _ask(replicas, pending, "/v1/wait", query, left + 1.0):
            if status in (200, 504):
                proxies_of[peer.name] = _tagged(list(body.get("proxies") or []), peer.name)
                reports[peer.name] = _report(peer, status == 200 and bool(body.get("complete")))
            else:
                reports[peer.name] = _report(peer, False, _failure(status, body))
        if any(p.name not in proxies_of for p in pending):
            await asyncio.sleep(max(0.0, min(_RETRY, deadline - loop.time())))


async def secrets_everywhere(
    replicas: Replicas, proxy: str, namespace: str
) -> tuple[dict[str, Any] | None, list[str]]:
    """``GET /v1/proxies/{proxy}/secrets`` on every peer (``local=true``): ``(the answer of
    the peer ``proxy`` is connected to, its ``replica`` set; or None, and why each peer that
    could not say no is in doubt)``. A proxy is connected to one replica at a time."""
    try:
        peers = await replicas.peers()
    except StoreError as e:
        return None, [f"the other replicas could not be asked: {e}"]
    path = f"/v1/proxies/{quote(proxy, safe='')}/secrets"
    query = {"local": "true", **({"namespace": namespace} if namespace else {})}
    doubts = []
    for peer, status, body in await _ask(replicas, peers, path, query, _PROXIES_TIMEOUT):
        if status == 200:
            return {**body, "replica": peer.name}, []
        if status == _UNANSWERED:
            doubts.append(
                f"replica {peer.name} did not answer ({body['error']}): the proxy may be "
                f"connected there; ask it with --server {peer.api}"
            )
        elif status != 404:
            doubts.append(f"replica {peer.name} {_failure(status, body)}")
    return None, doubts


_UNANSWERED = 0
"""The status :func:`_ask` gives a peer that did not answer."""


async def _ask(
    replicas: Replicas, peers: list[Replica], path: str, query: dict[str, Any], timeout: float
) -> list[tuple[Replica, int, dict[str, Any]]]:
    """``GET path?query`` on every peer at once: ``(peer, status, body)`` each, in order; a
    peer that did not answer has status :data:`_UNANSWERED` and why in ``body["error"]``."""
    answers = await asyncio.gather(
        *(replicas.get(p, path, query, timeout) for p in peers), return_exceptions=True
    )
    return [
        (peer, _UNANSWERED, {"error": reason(a)}) if isinstance(a, BaseException) else (peer, *a)
        for peer, a in zip(peers, answers, strict=True)
    ]


def _failure(status: int, body: dict[str, Any]) -> str:
    """What went wrong with a peer's answer that is not the one wanted."""
    if status == _UNANSWERED:
        return f"did not answer: {body['error']}"
    return f"answered {status}: {body.get('error', '')}"

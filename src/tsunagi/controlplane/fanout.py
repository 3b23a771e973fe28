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
    answers = await asyncio.gather(
        *(replicas.get(p, "/v1/proxies", {"local": "true"}, _PROXIES_TIMEOUT) for p in peers),
        return_exceptions=True,
    )
    for peer, answer in zip(peers, answers, strict=True):
        if isinstance(answer, BaseException):
            reports.append(_report(peer, False, f"did not answer: {_why(answer)}"))
            continue
        status, body = answer
        if status != 200:
            reports.append(_report(peer, False, f"answered {status}: {body.get('error', '')}"))
            continue
        proxies += _tagged(list(body.get("proxies") or []), peer.name)
        reports.append(_report(peer, True))
    return proxies, reports


async def wait_everywhere(
    replicas: Replicas, local: LocalWait, revision: int, timeout: float
) -> tuple[bool, list[dict[str, Any]], list[dict[str, Any]]]:
    """Wait up to ``timeout`` seconds until the proxies of every live replica have ACKed (or
    NACKed) ``revision``: ``(complete, proxies, replica reports)``. A peer that does not
    answer is asked again until it does, leaves the store, or time is up; then it is
    reported with its error and the wait is not complete."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    here = asyncio.ensure_future(local(timeout))
    try:
        done, reports, proxies_of = await _wait_peers(replicas, revision, deadline)
        complete_here, mine = await here
    finally:
        here.cancel()  # when this wait is cancelled (its client left)
    proxies = _tagged(mine, replicas.me.name)
    for theirs in proxies_of.values():
        proxies += theirs
    everything = [_report(replicas.me, complete_here), *reports.values()]
    complete = complete_here and all(r["complete"] for r in reports.values()) and done
    return complete, proxies, everything


async def _wait_peers(
    replicas: Replicas, revision: int, deadline: float
) -> tuple[bool, dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Ask every peer to wait for ``revision`` until ``deadline``; ``(every live peer
    answered, reports by name, proxies by replica name)``."""
    loop = asyncio.get_running_loop()
    reports: dict[str, dict[str, Any]] = {}
    proxies_of: dict[str, list[dict[str, Any]]] = {}
    answered: set[str] = set()  # complete, or timed out on their side: final either way
    while True:
        left = deadline - loop.time()
        try:
            live = {p.name: p for p in await replicas.peers()}
        except StoreError as e:
            reports["etcd"] = _etcd_report(str(e))
            if left <= _RETRY:
                return False, reports, proxies_of
            await asyncio.sleep(_RETRY)
            continue
        reports.pop("etcd", None)
        for name in list(reports):  # gone from the store: its proxies moved elsewhere
            if name not in live:
                reports.pop(name)
                proxies_of.pop(name, None)
                answered.discard(name)
        pending = [p for name, p in live.items() if name not in answered]
        if not pending:
            return True, reports, proxies_of
        if left <= 0:
            return False, reports, proxies_of
        # The peer answers a little before our deadline, so its statuses make our reply.
        their_timeout = max(0.0, left - _RETRY)
        answers = await asyncio.gather(
            *(
                replicas.get(
                    p,
                    "/v1/wait",
                    {"revision": revision, "timeout": f"{their_timeout:.3f}", "local": "true"},
                    left + 1.0,
                )
                for p in pending
            ),
            return_exceptions=True,
        )
        retry = False
        for peer, answer in zip(pending, answers, strict=True):
            if isinstance(answer, BaseException):
                reports[peer.name] = _report(peer, False, f"did not answer: {_why(answer)}")
                retry = True
                continue
            status, body = answer
            if status in (200, 504):
                proxies_of[peer.name] = _tagged(list(body.get("proxies") or []), peer.name)
                complete = status == 200 and bool(body.get("complete"))
                reports[peer.name] = _report(peer, complete)
                answered.add(peer.name)
            else:
                reports[peer.name] = _report(
                    peer, False, f"answered {status}: {body.get('error', '')}"
                )
                retry = True
        if retry:
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
    answers = await asyncio.gather(
        *(replicas.get(p, path, query, _PROXIES_TIMEOUT) for p in peers),
        return_exceptions=True,
    )
    doubts = []
    for peer, answer in zip(peers, answers, strict=True):
        if isinstance(answer, BaseException):
            doubts.append(
                f"replica {peer.name} did not answer ({_why(answer)}): the proxy may be "
                f"connected there; ask it with --server {peer.api}"
            )
            continue
        status, body = answer
        if status == 200:
            return {**body, "replica": peer.name}, []
        if status != 404:
            doubts.append(f"replica {peer.name} answered {status}: {body.get('error', '')}")
    return None, doubts


def _why(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    return str(e) or type(e).__name__

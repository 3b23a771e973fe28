"""``proxy-config secret`` through a replica the proxy is not connected to: the replica asks
its peers (``local=true``) and answers with the one that holds the proxy, naming it; when none
does, it says which peers could not say no."""

from __future__ import annotations

from typing import Any

from tsunagi.controlplane.fanout import secrets_everywhere
from tsunagi.controlplane.replicas import Replica
from tsunagi.store.base import StoreError

HELD = {"proxy": "a.default", "kind": "sidecar", "namespace": "default", "secrets": []}


class Peers:
    """Peers that answer ``GET /v1/proxies/{proxy}/secrets`` as scripted (an exception: no
    answer), recording what they were asked."""

    def __init__(self, answers: dict[str, tuple[int, dict[str, Any]] | BaseException]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str, dict[str, Any]]] = []

    async def peers(self) -> list[Replica]:
        return [Replica(n, f"http://{n}", n, 2) for n in sorted(self.answers)]

    async def get(
        self, peer: Replica, path: str, query: dict[str, Any], timeout: float
    ) -> tuple[int, dict[str, Any]]:
        self.asked.append((peer.name, path, query))
        answer = self.answers[peer.name]
        if isinstance(answer, BaseException):
            raise answer
        return answer


async def test_the_peer_holding_the_proxy_answers_and_is_named() -> None:
    peers = Peers({"b:1": (404, {"error": "no proxy"}), "c:1": (200, dict(HELD))})
    found, doubts = await secrets_everywhere(peers, "a", "default")  # type: ignore[arg-type]
    assert found == {**HELD, "replica": "c:1"} and doubts == []
    # Each peer asked for its own proxies only (no fan-out from there), the name quoted.
    assert [q for _, _, q in peers.asked] == [{"local": "true", "namespace": "default"}] * 2
    assert {p for _, p, _ in peers.asked} == {"/v1/proxies/a/secrets"}


async def test_no_peer_holding_it_names_those_that_could_not_say() -> None:
    peers = Peers(
        {
            "b:1": (404, {"error": "no proxy"}),
            "c:1": OSError("connection refused"),
            "d:1": (500, {"error": "internal error"}),
        }
    )
    found, doubts = await secrets_everywhere(peers, "x/y", "")  # type: ignore[arg-type]
    assert found is None
    assert doubts == [
        "replica c:1 did not answer (connection refused): the proxy may be connected there; "
        "ask it with --server http://c:1",
        "replica d:1 answered 500: internal error",
    ]
    assert {p for _, p, _ in peers.asked} == {"/v1/proxies/x%2Fy/secrets"}
    assert all(q == {"local": "true"} for _, _, q in peers.asked)


async def test_without_etcd_it_says_the_others_could_not_be_asked() -> None:
    class NoEtcd(Peers):
        async def peers(self) -> list[Replica]:
            raise StoreError("cannot list the replicas: etcd at 127.0.0.1:1: UNAVAILABLE")

    found, doubts = await secrets_everywhere(NoEtcd({}), "a", "")  # type: ignore[arg-type]
    assert found is None
    assert doubts == [
        "the other replicas could not be asked: cannot list the replicas: etcd at "
        "127.0.0.1:1: UNAVAILABLE"
    ]

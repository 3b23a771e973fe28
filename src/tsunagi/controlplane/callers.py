"""Who is calling the API, and what they may do.

Two kinds of caller: the admin (the token ``tsunagi up`` writes in its state directory) may
do everything and obtain any identity, a local convenience; a workload (a token made by
``tsunagi token create``, :mod:`.workload_tokens`) may only run its own sidecars: read the
bootstrap, obtain its own certificate, and register, heartbeat and deregister instances of
its own namespace and service account (plus the two reads its agent makes: which workloads
are behind upstream addresses, for its metrics, and waiting for a deregistration to reach
every proxy, so none still sends to it when it stops).
"""

from __future__ import annotations

from dataclasses import dataclass

from tsunagi.controlplane.workload_tokens import WorkloadClaims

WORKLOAD_ROUTES = frozenset(
    {
        ("GET", "/healthz"),
        ("GET", "/v1/bootstrap"),
        ("POST", "/v1/certificates"),
        ("POST", "/v1/instances"),
        ("POST", "/v1/instances/resolve"),
        ("POST", "/v1/instances/{namespace}/{name}/heartbeat"),
        ("DELETE", "/v1/instances/{namespace}/{name}"),
        ("GET", "/v1/wait"),
    }
)
"""``(method, route path)`` a workload token may call; anything else is 403."""


@dataclass(frozen=True)
class Caller:
    """The holder of the request's token."""

    workload: WorkloadClaims | None = None
    """The identity a workload token is for; None: the admin."""

    @property
    def is_admin(self) -> bool:
        return self.workload is None

    def may_call(self, method: str, route: str) -> bool:
        """Whether this caller may use the route ``method route`` at all."""
        return self.workload is None or (method, route) in WORKLOAD_ROUTES

    def may_be(self, namespace: str, service_account: str) -> bool:
        """Whether this caller may obtain, or register instances as, this identity."""
        w = self.workload
        return w is None or (w.namespace, w.service_account) == (namespace, service_account)

    @property
    def may_run_gateway(self) -> bool:
        """Whether this caller may obtain a gateway's certificate, whose proxy receives
        private keys: the admin, or a token made with ``tsunagi token create --gateway``."""
        return self.workload is None or self.workload.gateway

    def describe(self) -> str:
        """What the token is for, to say in a 403."""
        w = self.workload
        if w is None:
            return "the admin token"
        return (
            f"a workload token for namespace {w.namespace!r}, service account {w.service_account!r}"
        )

    def refusal(self, what: str) -> str:
        """The 403 message for doing ``what`` beyond this token's scope."""
        w = self.workload
        assert w is not None  # the admin is never refused
        return (
            f"{what} is not allowed with {self.describe()}: it may obtain only that identity "
            f"and register only its instances in namespace {w.namespace!r} (use the admin "
            "token, STATE_DIR/token, for anything else)"
        )

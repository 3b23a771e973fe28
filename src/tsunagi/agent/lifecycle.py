"""What every proxy's agent does while its Envoy runs, sidecar or gateway alike: keep Envoy
alive, keep the proxy's instance registered, and deregister it on the way out."""

from __future__ import annotations

import threading

from tsunagi.agent.envoy import EnvoyProcess
from tsunagi.agent.logs import log
from tsunagi.agent.memory import release_startup_memory, trim_heap
from tsunagi.client import Client, Rejected, Unreachable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (agent/records.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def wait_ready_or_stop(envoy: EnvoyProcess, stop: threading.Event, timeout: float) -> bool:
    """Wait for Envoy's first config, at most ``timeout`` seconds; False when ``stop`` (a
    Ctrl-C, a SIGTERM) came first."""
    import time

    deadline = time.monotonic() + timeout
    while not stop.is_set():
        try:
            envoy.wait_ready(min(0.5, max(0.0, deadline - time.monotonic())))
            return True
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"Envoy was not ready after {timeout:.0f}s: is the control plane's xDS "
                    f"port reachable? See {envoy.log}"
                ) from None
    return False


def supervise_envoy(
    envoy: EnvoyProcess, stop: threading.Event, name: str, ready_timeout: float
) -> None:
    """Restart ``envoy`` whenever it exits, backing off while it keeps failing, until
    ``stop`` is set."""
    backoff = 0.1
    while not stop.is_set() and envoy.proc is not None:
        code = envoy.proc.wait()
        if stop.is_set():
            return
        log.warning("%s: Envoy exited with %s; restarting it in %.1fs", name, code, backoff)
        if stop.wait(backoff):
            return
        envoy.start()
        try:
            envoy.wait_ready(ready_timeout)
            backoff = 0.1
        except (RuntimeError, TimeoutError) as e:
            log.warning("%s: %s", name, e)
            backoff = min(backoff * 2, 10.0)


class Registration:
    """One instance kept registered with the control plane: registered, heartbeaten a few
    times per TTL, registered again when the control plane forgot it, retried while it is
    away (Envoy keeps its config meanwhile)."""

    def __init__(
        self,
        client: Client,
        stop: threading.Event,
        instance: Callable[[], dict[str, Any]],
        on_registered: Callable[[], None] = lambda: None,
    ) -> None:
        self.client = client
        self.stop = stop
        self.instance = instance
        """The registration document (called at each registration: its values may change)."""
        self.on_registered = on_registered
        self.registered = False

    def keep(self) -> None:
        """Register, then heartbeat until ``stop`` is set."""
        doc = self.instance()
        name, namespace = doc["name"], doc["namespace"]
        ttl = 15.0
        path = f"/v1/instances/{namespace}/{name}/heartbeat"
        while not self.stop.is_set():
            try:
                if not self.registered:
                    reply = self.client.request("POST", "/v1/instances", self.instance())
                    ttl = float(reply.get("ttl", ttl))
                    for warning in reply.get("warnings", ()):
                        log.warning("%s: %s", name, warning)
                    self.registered = True
                    release_startup_memory()
                    self.on_registered()
                if self.stop.wait(max(0.2, ttl / 3)):
                    return
                self.client.request("POST", path)
                # Parsing a burst of metric lines leaves freed blocks in the C heap that
                # glibc keeps; hand them back between heartbeats (microseconds when idle).
                trim_heap()
            except Rejected as e:
                if e.status == 404:
                    self.registered = False  # the control plane forgot us: register again
                elif e.status == 401:
                    # The token expired while the control plane was away (a running sidecar
                    # renews it with each certificate): nothing here can fix that.
                    log.error(
                        "%s: the control plane refused this sidecar's token (%s); make a new "
                        "one with `tsunagi token create` and restart the sidecar with it. "
                        "Retrying in 10s",
                        name,
                        e,
                    )
                    self.stop.wait(10.0)
                else:
                    log.warning("%s: %s; retrying in 1s", name, e)
                    self.stop.wait(1.0)
            except Unreachable:
                self.stop.wait(0.5)  # it will be back; Envoy keeps its config meanwhile


RESOLVE_TIMEOUT = 1.0
"""Seconds a scrape may wait for the control plane to name upstream workloads."""


def resolve_upstreams(client: Client, hosts: list[str]) -> dict[str, str]:
    """Upstream hosts → their workloads' metadata, from the registry: the metrics'
    resolver (:class:`~tsunagi.agent.metrics.Aggregator`) of every proxy that reports as a
    source, sidecar or gateway. A scrape waits at most :data:`RESOLVE_TIMEOUT`."""
    reply = client.request(
        "POST", "/v1/instances/resolve", {"addresses": hosts}, timeout=RESOLVE_TIMEOUT
    )
    return dict(reply["workloads"])


def deregister(client: Client, namespace: str, name: str, drain_timeout: float) -> None:
    """Remove the instance and wait (at most ``drain_timeout``) until every proxy has the
    change, so that none still sends here when Envoy stops."""
    # Always ask, even if we never saw the reply: a registration in flight when the stop
    # came may have landed, and would otherwise live on for a whole TTL.
    try:
        reply = client.request("DELETE", f"/v1/instances/{namespace}/{name}", ok=(200, 404))
        client.request(
            "GET",
            "/v1/wait",
            query={"revision": reply.get("revision", 0), "timeout": drain_timeout},
            timeout=drain_timeout + 2,
            ok=(200, 504),
        )
    except (Rejected, Unreachable) as e:
        log.warning("%s: could not deregister cleanly: %s", name, e)

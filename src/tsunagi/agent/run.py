"""``tsunagi run``: sidecar injection for a local process.

Order matters and is the point: the proxy is ready before the app starts, the app listens
before the instance is registered, and on the way out the instance is deregistered (and the
change confirmed by every proxy) before in-flight requests drain and Envoy stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tsunagi.agent.bootstrap import ProxyIdentity, bootstrap
from tsunagi.agent.children import die_with_parent
from tsunagi.agent.envoy import EnvoyProcess
from tsunagi.agent.ports import free_ports, wait_listening
from tsunagi.client import Client, Rejected, Unreachable

log = logging.getLogger("tsunagi.agent")


@dataclass(frozen=True)
class RunOptions:
    """What ``tsunagi run`` was asked to do."""

    service: str
    command: tuple[str, ...]
    port: int = 80
    version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace: str = "default"
    locality: str = ""
    outbound_port: int = 0
    inbound_port: int = 0
    name: str = ""
    concurrency: int = 2
    delta: bool = False
    ready_timeout: float = 30.0
    drain_timeout: float = 5.0


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
        self.name = opts.name or f"{opts.service}-{opts.version or 'x'}-{secrets.token_hex(3)}"
        outbound, inbound, admin, app = free_ports(4)
        self.outbound_port = opts.outbound_port or outbound
        self.inbound_port = opts.inbound_port or inbound
        self.admin_port, self.app_port = admin, app
        self.workdir = Path(tempfile.mkdtemp(prefix=f"tsunagi-{self.name}-"))
        self.registered = False
        self.stopping = False

    async def _api(
        self, method: str, path: str, body: object = None, **kw: object
    ) -> dict[str, object]:
        return await asyncio.to_thread(self.client.request, method, path, body, **kw)  # type: ignore[arg-type]

    async def run(self) -> int:
        info = await self._api("GET", "/v1/bootstrap")
        xds = info["xds"]
        assert isinstance(xds, dict)
        ident = ProxyIdentity(
            node_id=f"{self.name}.{self.opts.namespace}",
            service=self.opts.service,
            namespace=self.opts.namespace,
            labels=self.labels,
            locality=self.opts.locality,
            outbound_port=self.outbound_port,
            inbound={self.opts.port: (self.inbound_port, self.app_port)},
        )
        envoy = EnvoyProcess(
            self.workdir,
            bootstrap(ident, str(xds["host"]), int(xds["port"]), self.admin_port, self.opts.delta),
            self.admin_port,
            concurrency=self.opts.concurrency,
        )
        self.envoy = envoy
        await envoy.start()
        await envoy.wait_ready(self.opts.ready_timeout)
        log.info(
            "%s: proxy ready (outbound 127.0.0.1:%d, inbound %d → app %d)",
            self.name,
            self.outbound_port,
            self.inbound_port,
            self.app_port,
        )
        proxy = f"http://127.0.0.1:{self.outbound_port}"
        env = {
            **os.environ,
            "PORT": str(self.app_port),
            "HTTP_PROXY": proxy,
            "http_proxy": proxy,
            "NO_PROXY": "localhost,127.0.0.1",
            "no_proxy": "localhost,127.0.0.1",
            "SERVICE_NAME": self.opts.service,
            "SERVICE_VERSION": self.opts.version or "v1",
            "POD_NAME": self.name,
        }
        # Own process group: the agent decides when the app stops (after deregistering).
        app = await asyncio.create_subprocess_exec(
            *self.opts.command, env=env, process_group=0, preexec_fn=die_with_parent
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        tasks = [
            asyncio.create_task(self._register_when_listening(app)),
            asyncio.create_task(self._supervise_envoy(app)),
        ]
        app_done = asyncio.create_task(app.wait())
        stop_task = asyncio.create_task(stop.wait())
        await asyncio.wait({app_done, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        self.stopping = True
        for t in tasks:
            t.cancel()
        await self._deregister()
        if not app_done.done():
            await self._drain()
            app.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(app_done, 10)
            except TimeoutError:
                app.kill()
                await app_done
        stop_task.cancel()
        await envoy.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
        code = _exit_code(app_done.result())
        log.info("%s: app exited with %d; sidecar stopped", self.name, code)
        return code

    def _instance(self) -> dict[str, object]:
        return {
            "name": self.name,
            "service": self.opts.service,
            "namespace": self.opts.namespace,
            "port": self.opts.port,
            "address": "127.0.0.1",
            "target_port": self.inbound_port,
            "labels": self.labels,
            "locality": self.opts.locality,
        }

    async def _register_when_listening(self, app: asyncio.subprocess.Process) -> None:
        while not await asyncio.to_thread(wait_listening, self.app_port):
            if app.returncode is not None:
                return
            await asyncio.sleep(0.05)
        ttl = 15.0
        while not self.stopping:
            try:
                if not self.registered:
                    reply = await self._api("POST", "/v1/instances", self._instance())
                    ttl = float(reply.get("ttl", ttl))  # type: ignore[arg-type]
                    self.registered = True
                    log.info(
                        "%s: registered as %s:%d", self.name, self.opts.service, self.opts.port
                    )
                await asyncio.sleep(max(0.2, ttl / 3))
                await self._api(
                    "POST", f"/v1/instances/{self.opts.namespace}/{self.name}/heartbeat"
                )
            except Rejected as e:
                if e.status == 404:
                    self.registered = False  # the control plane forgot us: register again
                else:
                    log.warning("%s: %s; retrying in 1s", self.name, e)
                    await asyncio.sleep(1.0)
            except Unreachable:
                await asyncio.sleep(0.5)  # it will be back; Envoy keeps its config meanwhile

    async def _supervise_envoy(self, app: asyncio.subprocess.Process) -> None:
        while not self.stopping:
            assert self.envoy.proc is not None
            code = await self.envoy.proc.wait()
            if self.stopping:
                return
            log.warning("%s: Envoy exited with %s; restarting it", self.name, code)
            await self.envoy.start()
            with contextlib.suppress(TimeoutError, RuntimeError):
                await self.envoy.wait_ready(self.opts.ready_timeout)

    async def _deregister(self) -> None:
        if not self.registered:
            return
        try:
            reply = await self._api(
                "DELETE", f"/v1/instances/{self.opts.namespace}/{self.name}", ok=(200, 404)
            )
            # Wait (briefly) until every proxy has stopped sending here.
            await self._api(
                "GET",
                "/v1/wait",
                query={"revision": reply.get("revision", 0), "timeout": self.opts.drain_timeout},
                timeout=self.opts.drain_timeout + 2,
                ok=(200, 504),
            )
        except (Rejected, Unreachable) as e:
            log.warning("%s: could not deregister cleanly: %s", self.name, e)

    async def _drain(self) -> None:
        """Let requests already inside the inbound listener finish."""
        stat = f"http.inbound_{self.opts.port}.downstream_rq_active"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.opts.drain_timeout
        while loop.time() < deadline and await self.envoy.stat(stat) > 0:
            await asyncio.sleep(0.05)


async def run_sidecar(opts: RunOptions, client: Client) -> int:
    return await Sidecar(opts, client).run()

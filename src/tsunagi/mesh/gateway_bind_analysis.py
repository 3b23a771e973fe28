"""``apply`` warns about a Gateway server whose port a running gateway would bind as a
privileged port (below 1024, or the host's ``net.ipv4.ip_unprivileged_port_start``): a
gateway without ``CAP_NET_BIND_SERVICE`` cannot bind it, and the failure otherwise shows only
as a rejected listener (NACK) in ``proxy-status``. Istio's gateways avoid it the same way this
warning suggests: the Service's port 80 is the pod's targetPort 8080 (``tsunagi gateway --port
80:8080``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tsunagi.api import GatewaySpec, Resource
from tsunagi.mesh import gateways as gw
from tsunagi.mesh.world import of_spec
from tsunagi.registry import Instance

DEFAULT_UNPRIVILEGED_START = 1024
"""Linux's default ``net.ipv4.ip_unprivileged_port_start``."""
SYSCTL = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")


def unprivileged_port_start(sysctl: Path = SYSCTL) -> int:
    """The lowest port an unprivileged process may bind on this host (gateways run here);
    the Linux default when the setting cannot be read."""
    try:
        return int(sysctl.read_text().strip())
    except (OSError, ValueError):
        return DEFAULT_UNPRIVILEGED_START


@dataclass(frozen=True)
class RunningGateway:
    """One running ``tsunagi gateway``: its labels and its ``--port`` map (service port →
    listen port; a port not in it is bound by its own number)."""

    name: str
    labels: Mapping[str, str]
    ports: Mapping[int, int] = field(default_factory=dict)


def running_gateways(instances: Iterable[Instance]) -> list[RunningGateway]:
    """The running gateways among registered ``instances`` (one registration per ``--port``;
    those of one proxy share namespace, name, address and labels)."""
    groups: dict[tuple[object, ...], RunningGateway] = {}
    for inst in instances:
        if not inst.is_gateway or inst.binds_privileged_ports:
            continue  # a gateway with CAP_NET_BIND_SERVICE (root's) binds any port
        key = (inst.namespace, inst.service, inst.address, tuple(sorted(inst.labels.items())))
        seen = groups.get(key) or RunningGateway(
            f"{inst.service}.{inst.namespace}", dict(inst.labels), {}
        )
        if inst.port:
            seen = RunningGateway(
                seen.name, seen.labels, {**seen.ports, inst.port: inst.target_port}
            )
        groups[key] = seen
    return list(groups.values())


def privileged_port_problems(
    resources: Iterable[Resource],
    running: Iterable[RunningGateway],
    unprivileged_start: int = DEFAULT_UNPRIVILEGED_START,
) -> list[str]:
    """A warning per server of the Gateways in ``resources`` that a running gateway selecting
    it would bind below ``unprivileged_start``."""
    running = list(running)
    out: list[str] = []
    for g in of_spec(resources, GatewaySpec):
        for i, server in enumerate(g.spec.servers):
            number = server.port.number
            for r in running:
                bound = r.ports.get(number, number)
                if not gw.selects(g.spec.selector, r.labels) or not 0 < bound < unprivileged_start:
                    continue
                out.append(
                    f"Gateway {g.namespace}/{g.name}: spec.servers[{i}].port.number: gateway "
                    f"{r.name} would bind port {number}, a privileged port: without root or "
                    "CAP_NET_BIND_SERVICE the bind fails (proxy-status shows the listener "
                    f"rejected). Restart it with `tsunagi gateway ... --port {number}:"
                    f"{number + 8000}` (Istio's way: the server keeps port {number}, the "
                    f"gateway listens on {number + 8000}), or give it that capability"
                )
                break
    return out

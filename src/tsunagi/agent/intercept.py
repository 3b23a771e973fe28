"""``tsunagi run --intercept``: iptables rules that send an app's traffic through its sidecar,
as Istio's init container sets them up (``tools/istio-iptables``), in the ``nat`` table of
the agent's network namespace, in chains of our own:

- ``OUTPUT -p tcp → TSUNAGI_OUTPUT``: the app's outbound TCP goes to ``TSUNAGI_REDIRECT``
  (REDIRECT to the outbound capture listener), except traffic that stays on this host
  (``-o lo``: loopback and the host's own addresses), Envoy's own (it runs with group
  :data:`~tsunagi.proxy_contract.INTERCEPT_GID`, matched by ``-m owner --gid-owner``: Envoy
  runs as root, for its files, so Istio's uid 1337 would not tell it apart) and connections to
  the control plane (the agent's own API calls).
- ``PREROUTING -p tcp → TSUNAGI_INBOUND``: TCP arriving for the app's port goes to
  ``TSUNAGI_IN_REDIRECT`` (REDIRECT to the sidecar's inbound listener); the app listens on
  that port itself, on loopback, where the sidecar hands it the request.
- ``OUTPUT -p udp --dport 53 → TSUNAGI_DNS``: DNS queries go to the sidecar's DNS listener
  (Envoy's DNS filter), except Envoy's own (forwarding to the host's resolvers). Envoy's DNS
  filter speaks UDP only, so DNS over TCP is left to the host's resolvers.

Rules go in with one ``iptables-restore`` of the whole ``nat`` table (what was there, without
any ``TSUNAGI_`` line, plus ours): a leftover of a crashed agent is replaced, not doubled,
and no moment has half the rules. :func:`remove` restores the table without ours. Two
``iptables`` processes at start and two at exit; none while the sidecar runs.

Refused (:func:`refusal`) without root, without ``iptables``, and in the machine's initial
network namespace: there the rules would capture every process of the host. Run it in a
namespace of its own (``ip netns exec NAME tsunagi run --intercept ...``).
"""

from __future__ import annotations

import os
import subprocess

from tsunagi import proxy_contract as pc

PREFIX = "TSUNAGI_"
CHAINS = ("TSUNAGI_INBOUND", "TSUNAGI_IN_REDIRECT", "TSUNAGI_OUTPUT", "TSUNAGI_REDIRECT")
DNS_CHAIN = "TSUNAGI_DNS"
OWNER = "tsunagi-agent-pid="
TOOLS = ("iptables-save", "iptables-restore")


class InterceptError(RuntimeError):
    """The rules could not be installed; the message says why and what to do."""


def _on_path(tool: str) -> bool:
    dirs = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(os.pathsep)
    return any(os.access(os.path.join(d, tool), os.X_OK) for d in dirs if d)


INITIAL_NETNS = "net:[4026531833]"
"""The kernel's fixed name for the machine's initial network namespace (PROC_NET_INIT_INO)."""


def in_host_namespace() -> bool:
    """Whether this process runs in the machine's initial network namespace (the host's;
    a container's or an ``ip netns`` namespace is another)."""
    try:
        return os.readlink("/proc/self/ns/net") == INITIAL_NETNS
    except OSError:  # no /proc: nothing to tell by, so not assumed safe
        return True


def refusal() -> str:
    """Why ``--intercept`` cannot run here ("" when it can)."""
    if os.geteuid() != 0:
        return (
            "--intercept needs root (it sets iptables rules in the network namespace): "
            "run tsunagi run as root inside the workload's namespace"
        )
    missing = [t for t in TOOLS if not _on_path(t)]
    if missing:
        tools = " and ".join(missing)
        return f"--intercept needs {tools}: install iptables (apt-get install iptables)"
    if in_host_namespace():
        return (
            "--intercept would capture the traffic of every process on this host: run it in "
            "a network namespace of its own, e.g. ip netns exec NAME tsunagi run --intercept ..."
        )
    return ""


def resolvers(path: str = "/etc/resolv.conf") -> tuple[str, ...]:
    """The ``nameserver`` addresses of ``path`` (none when it cannot be read)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return ()
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            out.append(parts[1].split("%")[0])  # an IPv6 zone index is no use to Envoy
    return tuple(out)


def addresses_of(where: list[str]) -> tuple[str, ...]:
    """The IPv4 addresses of ``where`` (URLs like ``http://10.0.0.1:15014``, or bare host
    names and addresses), resolved now, before DNS is captured; loopback ones are left
    out (never captured anyway)."""
    import socket  # already loaded by the agent's HTTP client

    out: list[str] = []
    for item in where:
        host = item.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
        host = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
        if not host:
            continue
        try:
            infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            continue  # an IPv6 address or a name that does not resolve: nothing to exempt
        for info in infos:
            ip = str(info[4][0])
            if not ip.startswith("127.") and ip not in out:
                out.append(ip)
    return tuple(out)


def rules(
    capture_port: int,
    dns_port: int,
    app_port: int,
    inbound_port: int,
    exclude: tuple[str, ...] = (),
    owner: int = 0,
) -> list[str]:
    """Our lines of the ``nat`` table, in ``iptables-restore`` syntax (see the module doc);
    ``exclude``: IPv4 addresses whose connections are never captured (the control plane's);
    ``owner``: the agent's pid, in a comment, so that another agent can tell live rules
    from a crashed one's (:func:`install`)."""
    gid = pc.INTERCEPT_GID  # Envoy's group (tsunagi run starts it so)
    out = [f":{c} - [0:0]" for c in (*CHAINS, DNS_CHAIN)]
    out += [
        "-A PREROUTING -p tcp -j TSUNAGI_INBOUND",
        f'-A OUTPUT -p tcp -m comment --comment "{OWNER}{owner}" -j TSUNAGI_OUTPUT',
        "-A OUTPUT -p udp --dport 53 -j TSUNAGI_DNS",
        f"-A TSUNAGI_INBOUND -p tcp --dport {app_port} -j TSUNAGI_IN_REDIRECT",
        f"-A TSUNAGI_IN_REDIRECT -p tcp -j REDIRECT --to-ports {inbound_port}",
        "-A TSUNAGI_OUTPUT -o lo -j RETURN",
        f"-A TSUNAGI_OUTPUT -m owner --gid-owner {gid} -j RETURN",
        *(f"-A TSUNAGI_OUTPUT -d {ip}/32 -j RETURN" for ip in exclude),
        "-A TSUNAGI_OUTPUT -j TSUNAGI_REDIRECT",
        f"-A TSUNAGI_REDIRECT -p tcp -j REDIRECT --to-ports {capture_port}",
        f"-A TSUNAGI_DNS -m owner --gid-owner {gid} -j RETURN",
        f"-A TSUNAGI_DNS -p udp -j REDIRECT --to-ports {dns_port}",
    ]
    return out


def without_ours(saved: str) -> list[str]:
    """``iptables-save -t nat`` output without its last COMMIT and without any line of ours."""
    lines = [ln for ln in saved.splitlines() if ln.strip() and PREFIX not in ln]
    lines = [ln for ln in lines if not ln.startswith("#")]
    while lines and lines[-1] == "COMMIT":
        lines.pop()
    return lines if lines and lines[0] == "*nat" else ["*nat"]


def _tool(args: list[str], stdin: str = "") -> str:
    try:
        done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InterceptError(f"{args[0]}: {e}") from None
    if done.returncode != 0:
        raise InterceptError(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _restore(lines: list[str]) -> None:
    _tool(["iptables-restore", "-w", "5"], "\n".join([*lines, "COMMIT", ""]))


def owner_of(saved: str) -> int:
    """The pid of the agent whose rules ``saved`` (``iptables-save``) holds; 0: none."""
    at = saved.find(OWNER)
    if at < 0:
        return 0
    digits = saved[at + len(OWNER) :].split('"', 1)[0].split()[0]
    return int(digits) if digits.isdigit() else 0


def _is_agent(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"tsunagi" in f.read()
    except OSError:
        return False


def install(ours: list[str]) -> None:
    """Replace whatever of ours the ``nat`` table holds with ``ours`` (:func:`rules`), at
    once: a crashed agent's leftovers are replaced; a running agent's are not touched (one
    intercepting workload per network namespace)."""
    saved = _tool(["iptables-save", "-t", "nat"])
    holder = owner_of(saved)
    if holder and holder != os.getpid() and _is_agent(holder):
        raise InterceptError(
            f"another tsunagi run --intercept (pid {holder}) already intercepts this network "
            "namespace: give each workload a namespace of its own"
        )
    _restore([*without_ours(saved), *ours])


def remove() -> None:
    """Take every line of ours out of the ``nat`` table (nothing else changes)."""
    saved = _tool(["iptables-save", "-t", "nat"])
    if PREFIX in saved:
        _restore(without_ours(saved))

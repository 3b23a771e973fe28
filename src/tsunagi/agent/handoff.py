"""From ``tsunagi run`` (or ``tsunagi gateway``) to the agent: the same process, a fresh
interpreter.

The command line is parsed by the CLI, which imports what every other command needs too
(``argparse``, the whole parser, ``pathlib``, the wheel's Envoy locator). None of that is
used again once the sidecar runs, and freeing modules does not give their memory back (their
objects are scattered through the heap). So the CLI hands its checked options over and
``exec``s ``python -m tsunagi.agent``: the pid, the process group, the terminal and the
signals stay the same (whoever started ``tsunagi run`` still waits for that pid), and the
agent's interpreter loads only the agent. With the agent's own lean imports, a sidecar's
agent went from 9.7 to 6.8 MB of private memory (docs/benchmarks.md, "Sidecar memory").
Interpreter options given to the CLI (``-X``, ``-W``) are not carried over.

The options (and the API token, which must not show in ``ps``) travel in an anonymous
in-memory file whose descriptor the new interpreter inherits and reads first.
"""

from __future__ import annotations

import json
import os
import sys

from tsunagi.agent.run import RunOptions

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (agent/records.py)
if TYPE_CHECKING:
    from tsunagi.agent.gateway import GatewayOptions

FD_FLAG = "--handoff-fd"
_GATEWAY = "gateway"
"""The handoff's ``mode`` for ``tsunagi gateway`` (absent: ``tsunagi run``)."""


def encode(opts: RunOptions | GatewayOptions, server: str, token: str) -> bytes:
    """The handoff document: the run (or gateway) options and how to reach the control
    plane."""
    fields = opts._asdict()
    fields["labels"] = dict(opts.labels)
    doc = {"options": fields, "server": server, "token": token}
    if isinstance(opts, RunOptions):
        fields["command"] = list(opts.command)
    else:
        doc["mode"] = _GATEWAY
    return json.dumps(doc).encode()


def decode(data: bytes) -> tuple[RunOptions | GatewayOptions, str, str]:
    """``(options, server, token)`` from :func:`encode`'s bytes."""
    doc = json.loads(data)
    fields = doc["options"]
    opts: RunOptions | GatewayOptions
    if doc.get("mode") == _GATEWAY:
        # Only a gateway's agent loads the gateway's module.
        from tsunagi.agent.gateway import GatewayOptions

        fields["ports"] = tuple(tuple(p) for p in fields.get("ports", ()))
        opts = GatewayOptions(**fields)
    else:
        fields["command"] = tuple(fields["command"])
        fields["upstreams"] = tuple(tuple(u) for u in fields.get("upstreams", ()))
        opts = RunOptions(**fields)
    return opts, str(doc["server"]), str(doc["token"])


def exec_agent(opts: RunOptions | GatewayOptions, server: str, token: str) -> None:
    """Replace this process with the agent's interpreter; returns only when that cannot be
    done here (no ``memfd_create``, or no interpreter path), and the caller runs the sidecar
    in this process instead."""
    if not sys.executable or not hasattr(os, "memfd_create"):
        return
    fd = os.memfd_create("tsunagi-handoff", 0)  # no MFD_CLOEXEC: the agent inherits it
    try:
        os.write(fd, encode(opts, server, token))
        os.lseek(fd, 0, os.SEEK_SET)
        sys.stdout.flush()
        sys.stderr.flush()
        # The service (or gateway) name only makes the process recognisable in `ps`.
        who = (
            ["--service", opts.service]
            if isinstance(opts, RunOptions)
            else ["--gateway", opts.name]
        )
        os.execv(sys.executable, [sys.executable, "-m", "tsunagi.agent", FD_FLAG, str(fd), *who])
    except OSError:
        os.close(fd)


def receive(argv: list[str]) -> tuple[RunOptions | GatewayOptions, str, str]:
    """In the agent: read and close the handoff whose descriptor ``argv`` names."""
    fd = int(argv[argv.index(FD_FLAG) + 1])
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return decode(b"".join(chunks))

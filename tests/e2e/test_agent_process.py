"""``tsunagi run`` hands over to a fresh agent interpreter (agent/handoff.py): the same pid
keeps running the sidecar, and the API token shows nowhere a neighbour could read it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .mesh import Mesh, children, cmdline


def _fd_targets(pid: int) -> list[str]:
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            out.append(os.readlink(fd))
    return out


def test_run_becomes_the_agent_in_the_same_process_without_showing_the_token(
    mesh: Mesh,
) -> None:
    w = mesh.run("reviews", "v1")
    status, body = mesh.client().get("reviews:9080")
    assert status == 200, body
    args = cmdline(w.proc.pid)
    # The pid the caller started is the agent now, and Envoy and the app are its children.
    assert args[1:3] == ["-m", "tsunagi.agent"], args
    assert "reviews" in args
    assert w.envoy_pid() in children(w.proc.pid)
    assert w.app_pid() in children(w.proc.pid)
    token = mesh.token()
    for pid in (w.proc.pid, w.envoy_pid(), w.app_pid()):
        assert pid is not None
        assert token not in " ".join(cmdline(pid))
        assert token not in Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        # The handoff's descriptor was read and closed: nobody holds the options or token.
        assert not [t for t in _fd_targets(pid) if "tsunagi-handoff" in t]

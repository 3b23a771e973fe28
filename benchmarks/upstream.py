"""``python -m benchmarks.upstream``: the benchmark upstream as an app for ``tsunagi run``.

Listens on ``$PORT`` like any app the mesh runs, then becomes Envoy (exec) answering 200.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmarks.configs import upstream, write_json
from benchmarks.procs import envoy_command, free_port

CONFIG_NAME = "upstream.json"
"""How this app's Envoy is told apart from the sidecar's: both are children of the agent and
both are called ``envoy``, but only the sidecar's CPU is the mesh's cost."""


def main() -> None:
    port = int(os.environ["PORT"])
    path = Path(tempfile.mkdtemp(prefix="tsunagi-bench-upstream-")) / CONFIG_NAME
    write_json(path, upstream(port, free_port()))
    argv = envoy_command(path)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()

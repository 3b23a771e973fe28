"""``python -m benchmarks.upstream``: the benchmark upstream as an app for ``tsunagi run``.

Listens on ``$PORT`` like any app the mesh runs, then becomes Envoy (exec) answering 200.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmarks.configs import upstream, write_json
from benchmarks.procs import envoy_command, free_port


def main() -> None:
    port = int(os.environ["PORT"])
    path = Path(tempfile.mkdtemp(prefix="tsunagi-bench-upstream-")) / "upstream.json"
    write_json(path, upstream(port, free_port()))
    argv = envoy_command(path)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()

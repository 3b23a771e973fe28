"""``python -m tsunagi.agent``: the sidecar agent, as ``tsunagi run`` execs it (and the
gateway's, as ``tsunagi gateway`` does).

Not a command for people: ``tsunagi run`` (or ``gateway``) parses and checks the command
line, then replaces itself with this (``agent/handoff.py``). Exit codes are ``tsunagi
run``'s: the app's own (a gateway's: 0 once stopped), 1 if the proxy could not start or the
control plane refused it, 3 if the control plane is unreachable.
"""

from __future__ import annotations

import sys

from tsunagi.agent import handoff
from tsunagi.agent.logs import configure
from tsunagi.agent.run import RunOptions, run_sidecar
from tsunagi.client import Client, Rejected, Unreachable

EXIT_INVALID, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 1, 3, 130
"""As ``tsunagi.cli.main`` (not imported here: it is the CLI this process left behind)."""


def main(argv: list[str]) -> int:
    """Run the sidecar handed over on ``argv``'s descriptor; the exit code."""
    if handoff.FD_FLAG not in argv:
        print("error: this is started by `tsunagi run`; run that instead", file=sys.stderr)
        return 2
    configure()
    opts, server, token = handoff.receive(argv)
    try:
        if isinstance(opts, RunOptions):
            return run_sidecar(opts, Client(server, token))
        from tsunagi.agent.gateway import run_gateway

        return run_gateway(opts, Client(server, token))
    except (RuntimeError, TimeoutError, OSError, Unreachable) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE if isinstance(e, Unreachable) else EXIT_INVALID
    except Rejected as e:
        print(f"error: {e}", file=sys.stderr)
        if e.errors != [str(e)]:
            for line in e.errors:
                print(f"  {line}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``tsunagi dashboard``: print (and open) the running control plane's dashboard URL."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import webbrowser
from urllib.parse import quote, urlsplit

from tsunagi.client import find_token, state_dir

EXIT_OK, EXIT_UNREACHABLE = 0, 3
URL_FILE = "dashboard"  # written by tsunagi.controlplane.dashboard


def dashboard_url(base: str, token: str) -> str:
    """The one-time sign-in URL: the dashboard swaps the token for a session cookie."""
    return f"{base.rstrip('/')}/?token={quote(token, safe='')}"


def _listening(base: str) -> bool:
    parts = urlsplit(base)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), 2):
            return True
    except OSError:
        return False


def _has_browser() -> bool:
    """Whether ``webbrowser`` would show something (not a text browser over a bare ssh)."""
    if sys.platform in ("darwin", "win32"):
        return True
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return bool(os.environ.get("BROWSER"))
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return True


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Print the URL; open it unless ``--no-browser`` or no browser is available."""
    where = state_dir(args.state_dir)
    try:
        base = (where / URL_FILE).read_text().strip()
    except OSError:
        print(
            f"error: no dashboard in {where}: start the control plane with `tsunagi up` "
            "(or pass the --state-dir it uses)",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    if not _listening(base):
        print(
            f"error: the dashboard at {base} does not answer: is `tsunagi up` still running?",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    url = dashboard_url(base, find_token(args.token, where))
    print(url)
    if not args.no_browser:
        if _has_browser():
            webbrowser.open(url)
        else:
            print("(no browser found here: open the URL above yourself)", file=sys.stderr)
    return EXIT_OK

"""``tsunagi dashboard``: print (and open) the running control plane's dashboard URL."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import urllib.error
import urllib.request
import webbrowser
from urllib.parse import quote, urlsplit

from tsunagi.client import find_token, state_dir

EXIT_OK, EXIT_REJECTED, EXIT_UNREACHABLE = 0, 1, 3
URL_FILE = "dashboard"  # written by tsunagi.controlplane.dashboard


class SignInRefused(Exception):
    """The dashboard refused the API token (it belongs to another control plane)."""


def login_code(base: str, token: str, timeout: float = 5.0) -> str:
    """A fresh single-use login code from the dashboard at ``base``, asked for with the API
    token in a header. Raises :class:`SignInRefused`, or OSError when it does not answer."""
    request = urllib.request.Request(
        f"{base.rstrip('/')}/api/login-code",
        method="POST",
        headers={"Authorization": f"Bearer {token}"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    try:
        with opener.open(request, timeout=timeout) as reply:
            return str(json.load(reply)["code"])
    except urllib.error.HTTPError as e:
        raise SignInRefused(f"the dashboard at {base} refused the token (HTTP {e.code})") from e


def dashboard_url(base: str, token: str) -> str:
    """A sign-in URL for the dashboard at ``base``: it carries a login code that works once,
    within a minute (the API token never goes into a URL). Raises like :func:`login_code`."""
    return f"{base.rstrip('/')}/?code={quote(login_code(base, token), safe='')}"


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
    try:
        url = dashboard_url(base, find_token(args.token, where))
    except SignInRefused as e:
        print(f"error: {e}: pass the --token or --state-dir of that control plane", file=sys.stderr)
        return EXIT_REJECTED
    except OSError as e:
        print(f"error: the dashboard at {base} did not answer: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(url)
    if not args.no_browser:
        if _has_browser():
            webbrowser.open(url)
        else:
            print("(no browser found here: open the URL above yourself)", file=sys.stderr)
    return EXIT_OK

"""A small client for the control plane's HTTP API, shared by the CLI and the agent.

It speaks plain HTTP through :mod:`tsunagi.httpwire`: the agent runs beside every workload and
should cost as little memory and start-up time as possible.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from tsunagi import httpwire

DEFAULT_SERVER = "http://127.0.0.1:15014"


class Unreachable(Exception):
    """The control plane did not answer (exit code 3)."""


class Rejected(Exception):
    """The control plane answered with an error (exit code 1)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        super().__init__(str(body.get("error") or body))

    @property
    def errors(self) -> list[str]:
        return [str(e) for e in self.body.get("errors") or [self.body.get("error", "")]]


def state_dir(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("TSUNAGI_STATE_DIR") or "~/.tsunagi").expanduser()


def find_token(explicit: str | None, state: Path) -> str:
    """``--token``, else ``TSUNAGI_TOKEN``, else the file ``tsunagi up`` wrote."""
    if explicit:
        return explicit
    if os.environ.get("TSUNAGI_TOKEN"):
        return os.environ["TSUNAGI_TOKEN"]
    try:
        return (state / "token").read_text().strip()
    except OSError:
        return ""


class Client:
    """Talks JSON to one control plane."""

    def __init__(
        self, server: str = DEFAULT_SERVER, token: str = "", timeout: float = 10.0
    ) -> None:
        self.server = server
        self.token = token
        self.timeout = timeout

    @classmethod
    def from_env(
        cls, server: str | None = None, token: str | None = None, state: str | None = None
    ) -> Client:
        where = state_dir(state)
        return cls(
            server=server or os.environ.get("TSUNAGI_SERVER") or DEFAULT_SERVER,
            token=find_token(token, where),
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any | None = None,
        query: dict[str, Any] | None = None,
        timeout: float | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> dict[str, Any]:
        url = urlsplit(self.server)
        if url.scheme != "http" or not url.hostname:
            raise Unreachable(f"server must look like http://HOST:PORT, got {self.server!r}")
        if query:
            path = f"{path}?{urlencode(query)}"
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        payload = json.dumps(body).encode() if body is not None else None
        try:
            status, raw = httpwire.request(
                url.hostname,
                url.port or 80,
                method,
                path,
                payload,
                headers,
                timeout or self.timeout,
            )
        except OSError as e:
            raise Unreachable(
                f"cannot reach the control plane at {self.server}: {e}. "
                "Is `tsunagi up` running? Set --server or TSUNAGI_SERVER."
            ) from None
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"error": raw.decode(errors="replace").strip()}
        if status not in ok:
            raise Rejected(status, data if isinstance(data, dict) else {"error": data})
        return data if isinstance(data, dict) else {"items": data}

"""A small client for the control plane's HTTP API, shared by the CLI and the agent.

It speaks plain HTTP through :mod:`tsunagi.httpwire`: the agent runs beside every workload and
should cost as little memory and start-up time as possible. For the same reason ``pathlib``,
``typing`` and ``urllib`` are imported only where the CLI needs them (0.8 MB of private memory
per sidecar, measured).
"""

from __future__ import annotations

import json
import os

from tsunagi import httpwire

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

DEFAULT_SERVER = "http://127.0.0.1:15014"


class Unreachable(Exception):
    """The control plane did not answer (exit code 3)."""


class Unanswered(Unreachable):
    """A replica got a request that is not safe to send twice and gave no answer (timed out,
    or the connection broke): it may have acted on it, so it is not sent to another."""

    def __init__(self, server: str, method: str, path: str, error: OSError) -> None:
        self.server = server
        super().__init__(
            f"{server} got {method} {path.split('?', 1)[0]} and gave no answer "
            f"({httpwire.reason(error)}); it may have been carried out. Check (e.g. `tsunagi get`) "
            "before sending it again"
        )


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
"""The methods HTTP defines as idempotent (RFC 9110, 9.2.2): safe to send twice."""
IDEMPOTENT_POSTS = frozenset({"/v1/certificates", "/v1/instances/resolve"})
"""The API's POSTs that are safe to send twice: signing a CSR again only issues another
certificate for the same key and identity; resolving is a lookup (a POST for its body)."""


def idempotent(method: str, path: str) -> bool:
    """Whether sending ``method path`` twice does what sending it once does: by the method
    (:data:`IDEMPOTENT`), and for POST by the endpoint (:data:`IDEMPOTENT_POSTS`, and an
    instance's heartbeat: renewing a lease twice is renewing it)."""
    method = method.upper()
    if method in IDEMPOTENT:
        return True
    path = path.split("?", 1)[0]
    return method == "POST" and (path in IDEMPOTENT_POSTS or path.endswith("/heartbeat"))


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
    from pathlib import Path

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
    """Talks JSON to a control plane: ``server`` is its URL, or the URLs of several replicas
    separated by commas. A request goes to the replica that answered last. When that one
    never got the request (refused, unreachable, the connection broke while sending), it
    goes to the next one, and so on round the list, whatever the method. When a replica got
    the request and then gave no answer (timed out, reset), it may have acted on it: only an
    :func:`idempotent` request goes on to the next replica (GET, HEAD, PUT, DELETE, as HTTP
    defines them, and the API's POSTs that are safe to repeat); any other is reported as
    :class:`Unanswered`, naming the replica, and is not sent again."""

    def __init__(
        self, server: str = DEFAULT_SERVER, token: str = "", timeout: float = 10.0
    ) -> None:
        self.server = server
        self.token = token
        self.timeout = timeout
        self._first = 0
        """Index in :meth:`servers` of the replica that answered last."""

    def servers(self) -> list[str]:
        """The URLs in ``server``, in the order given."""
        return [s.strip() for s in self.server.split(",") if s.strip()] or [self.server]

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
        """Send one request; its JSON answer when the status is in ``ok``.

        Only an :func:`idempotent` request a replica got but did not answer is sent to the
        next one; a DELETE sent again that answers 404 is done (the first one deleted it).
        Raises :class:`Rejected` for another status, :class:`Unreachable` when no replica
        answered, :class:`Unanswered` when a replica got a non-idempotent request and gave
        no answer."""
        repeatable = idempotent(method, path)
        servers = self.servers()
        places = []
        for server in servers:
            where = server_address(server)
            if where is None:
                raise Unreachable(
                    f"server must look like http://HOST:PORT (several: separated by commas), "
                    f"got {server!r}"
                )
            places.append(where)
        if query:
            from urllib.parse import urlencode

            path = f"{path}?{urlencode(query)}"
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        payload = json.dumps(body).encode() if body is not None else None
        failures = []
        sent = False  # some replica got the request and did not answer
        start = self._first
        for i in range(len(servers)):
            n = (start + i) % len(servers)
            try:
                status, raw = httpwire.request(
                    *places[n],
                    method,
                    path,
                    payload,
                    headers,
                    timeout or self.timeout,
                )
            except httpwire.NotSent as e:
                failures.append(f"{servers[n]}: {e}")
                continue
            except OSError as e:
                # Next time, start with the one after it: it may still be hung.
                self._first = (n + 1) % len(servers)
                if not repeatable:
                    raise Unanswered(servers[n], method, path, e) from None
                failures.append(f"{servers[n]}: {httpwire.reason(e)} after the request was sent")
                sent = True
                continue
            self._first = n
            break
        else:
            raise Unreachable(
                f"cannot reach the control plane at {'; '.join(failures)}. "
                "Is `tsunagi up` running? Set --server or TSUNAGI_SERVER."
            )
        if sent and status == 404 and method.upper() == "DELETE":
            ok = (*ok, 404)  # a replica that got it before deleted it: done
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"error": raw.decode(errors="replace").strip()}
        if status not in ok:
            raise Rejected(status, data if isinstance(data, dict) else {"error": data})
        return data if isinstance(data, dict) else {"items": data}


def server_address(server: str) -> tuple[str, int] | None:
    """``(host, port)`` of an ``http://HOST[:PORT][/...]`` URL (port 80 by default; an IPv6
    host in brackets), or ``None`` when ``server`` is not one."""
    scheme, sep, rest = server.partition("://")
    if scheme.lower() != "http" or not sep:
        return None
    authority = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if authority.startswith("["):
        host, bracket, tail = authority[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            return None
        port_text = tail[1:]
    else:
        host, _, port_text = authority.partition(":")
    if not host:
        return None
    if not port_text:
        return host.lower(), 80
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        return None
    return host.lower(), int(port_text)

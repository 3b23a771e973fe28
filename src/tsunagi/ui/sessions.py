"""The dashboard's sign-in state: one-time login codes and browser sessions, in memory.

A code is what ``tsunagi dashboard`` puts in the URL it opens: random, single use, valid
for :data:`CODE_TTL` seconds, so a URL seen later (a browser's command line, shell history)
signs nobody in. Redeeming it creates a session: a random id, kept here with its last use,
that expires after :data:`SESSION_IDLE` seconds without a request. Nothing is derived from
the API token, so a leaked cookie is worth one dashboard session and nothing else.
Time comes from ``clock`` so tests control it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

CODE_TTL = 60.0
SESSION_IDLE = 12 * 3600.0
MAX_CODES = 1000
"""Codes outstanding at once: a flood of requests for codes cannot grow memory."""
MAX_SESSIONS = 1000


class SignIns:
    """Login codes and sessions for one dashboard."""

    def __init__(
        self,
        *,
        code_ttl: float = CODE_TTL,
        session_idle: float = SESSION_IDLE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.code_ttl = code_ttl
        self.session_idle = session_idle
        self.clock = clock
        self._codes: dict[str, float] = {}
        """code → expiry time."""
        self._sessions: dict[str, float] = {}
        """session id → time of last use (insertion order: oldest first)."""

    def new_code(self) -> str:
        """A fresh single-use login code."""
        now = self.clock()
        self._codes = {c: t for c, t in self._codes.items() if t > now}
        while len(self._codes) >= MAX_CODES:
            del self._codes[next(iter(self._codes))]
        code = secrets.token_urlsafe(24)
        self._codes[code] = now + self.code_ttl
        return code

    def redeem(self, code: str) -> str | None:
        """A new session id for a valid code (which is used up), or None."""
        expires = self._codes.pop(code, None)
        now = self.clock()
        if expires is None or expires <= now:
            return None
        self._sessions = {s: t for s, t in self._sessions.items() if now - t < self.session_idle}
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        session = secrets.token_urlsafe(32)
        self._sessions[session] = now
        return session

    def check(self, session: str) -> bool:
        """Whether ``session`` is live; a live session's idle time starts over."""
        last = self._sessions.get(session)
        now = self.clock()
        if last is None:
            return False
        if now - last >= self.session_idle:
            del self._sessions[session]
            return False
        # Move to the end: the dict stays ordered by last use for eviction.
        del self._sessions[session]
        self._sessions[session] = now
        return True

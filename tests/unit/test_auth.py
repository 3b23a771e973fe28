"""The API token file: made once, owner-only, never empty."""

from __future__ import annotations

import stat
from pathlib import Path

from tsunagi.controlplane.auth import TOKEN_FILE, ensure_token


def test_token_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    token = ensure_token(tmp_path)
    path = tmp_path / TOKEN_FILE
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token(tmp_path) == token
    assert [p.name for p in tmp_path.iterdir()] == [TOKEN_FILE]


def test_an_empty_token_left_by_a_crash_is_replaced(tmp_path: Path) -> None:
    (tmp_path / TOKEN_FILE).write_text("")
    token = ensure_token(tmp_path)
    assert token
    assert (tmp_path / TOKEN_FILE).read_text().strip() == token

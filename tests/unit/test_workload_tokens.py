"""Workload tokens: made and checked with the state directory's key; expiry, tampering and
another control plane's key are refused."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from tsunagi.controlplane import workload_tokens as wt

NOW = 1_800_000_000.0
CLAIMS = wt.WorkloadClaims("default", "web", NOW + 3600)


def test_the_key_is_made_once_owner_only(tmp_path: Path) -> None:
    key = wt.ensure_key(tmp_path)
    path = tmp_path / wt.KEY_FILE
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert wt.ensure_key(tmp_path) == key


def test_a_token_carries_its_identity_until_it_expires(tmp_path: Path) -> None:
    key = wt.ensure_key(tmp_path)
    token = wt.create(key, CLAIMS)
    assert wt.is_workload_token(token)
    assert wt.verify(key, token, NOW) == CLAIMS
    with pytest.raises(wt.Expired, match="'default', service account 'web' expired") as e:
        wt.verify(key, token, NOW + 3600)
    assert e.value.claims == CLAIMS


def _parts(token: str) -> tuple[str, str]:
    payload, mac = token.removeprefix(wt.PREFIX).split(".")
    return payload, mac


def test_a_changed_claim_or_signature_is_refused(tmp_path: Path) -> None:
    key = wt.ensure_key(tmp_path)
    payload, mac = _parts(wt.create(key, CLAIMS))
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sa"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(wt.TokenError, match="not signed by this control plane"):
        wt.verify(key, f"{wt.PREFIX}{forged}.{mac}", NOW)
    flipped = ("A" if mac[0] != "A" else "B") + mac[1:]
    for bad in (flipped, "", "!!notbase64", mac + "AA"):
        with pytest.raises(wt.TokenError):
            wt.verify(key, f"{wt.PREFIX}{payload}.{bad}", NOW)
    with pytest.raises(wt.TokenError):
        wt.verify(key, f"{wt.PREFIX}{payload}", NOW)


def test_another_control_planes_token_is_refused(tmp_path: Path) -> None:
    ours = wt.ensure_key(tmp_path / "a")
    theirs = wt.ensure_key(tmp_path / "b")
    assert ours != theirs
    with pytest.raises(wt.TokenError, match="not signed by this control plane"):
        wt.verify(ours, wt.create(theirs, CLAIMS), NOW)


def test_an_admin_token_is_not_a_workload_token(tmp_path: Path) -> None:
    with pytest.raises(wt.TokenError, match="not a workload token"):
        wt.verify(wt.ensure_key(tmp_path), "some-admin-token", NOW)


def test_a_key_file_of_the_wrong_length_is_an_error_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / wt.KEY_FILE
    path.write_bytes(b"short")
    with pytest.raises(wt.KeyFileError, match=f"{path}: the workload token key has 5 bytes"):
        wt.ensure_key(tmp_path)
    assert path.read_bytes() == b"short"  # left for the operator to restore

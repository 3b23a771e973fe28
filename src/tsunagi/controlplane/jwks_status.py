"""What is known of fetching each JWK set, and how ``tsunagi get requestauthentication``
shows it.

The fetcher (:mod:`tsunagi.controlplane.jwks`) keeps one :class:`FetchState` per source
and replaces it after each fetch; the API reads them when a RequestAuthentication is listed
and adds a ``status`` computed then (nothing is written to the store). Each source is, for
the rules naming it:

- ``PENDING``: not fetched yet (just applied, or the first fetch is under way): tokens fail;
- ``OK``: the last fetch succeeded (when, how many keys, when the next refresh is due);
- ``FAILING``: the last fetch failed (the error, since when, when it is tried again); the
  last good set is kept if there is one, else tokens fail (as in Istio).

Everything here is pure: times come in as Unix seconds.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from tsunagi.api import JWTRule, RequestAuthenticationSpec, Resource, parse_document
from tsunagi.mesh import request_authentication as ra

OK = "OK"
FAILING = "FAILING"
PENDING = "PENDING"

CONDITION = "JwksFetched"
"""The ``status.conditions[].type`` summing up every source of one RequestAuthentication."""


@dataclass(frozen=True)
class FetchState:
    """What the control plane knows of fetching one source (a
    :func:`~tsunagi.mesh.request_authentication.jwks_key`)."""

    fetched_at: float | None = None
    """Unix seconds of the last fetch that succeeded; None: none has yet."""
    keys: int = 0
    """How many keys the set fetched then holds."""
    error: str = ""
    """Why the latest fetch failed; empty once one succeeds."""
    failing_since: float | None = None
    """Unix seconds of the first of the failures in a row."""
    next_fetch: float | None = None
    """Unix seconds the next fetch (refresh or retry) is due; None: not scheduled yet."""

    @property
    def state(self) -> str:
        """``OK``, ``FAILING`` or ``PENDING``."""
        if self.error:
            return FAILING
        return OK if self.fetched_at is not None else PENDING

    def succeeded(self, now: float, keys: int, next_fetch: float) -> FetchState:
        """After a fetch at ``now`` that got a set of ``keys`` keys."""
        return FetchState(fetched_at=now, keys=keys, next_fetch=next_fetch)

    def failed(self, now: float, error: str, next_fetch: float) -> FetchState:
        """After a fetch at ``now`` that failed with ``error`` (the last good set stays)."""
        since = self.failing_since if self.error and self.failing_since is not None else now
        return replace(self, error=error, failing_since=since, next_fetch=next_fetch)


def key_count(document: str) -> int:
    """How many keys a fetched JWK set holds (0 if it is not one)."""
    try:
        keys = json.loads(document).get("keys")
    except (ValueError, AttributeError):
        return 0
    return len(keys) if isinstance(keys, list) else 0


def timestamp(seconds: float) -> str:
    """RFC 3339 in UTC to the second, as Kubernetes writes times in ``status``."""
    when = datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(microsecond=0)
    return when.isoformat().replace("+00:00", "Z")


def entry(source: str, issuer: str, state: FetchState | None) -> dict[str, Any]:
    """One source's line in ``status.jwks`` (``state`` None: the fetcher has not seen it)."""
    st = state or FetchState()
    out: dict[str, Any] = {"uri": source}
    if issuer:
        out["issuer"] = issuer
    out["state"] = st.state
    if st.fetched_at is not None:
        out["keys"] = st.keys
        out["lastFetched"] = timestamp(st.fetched_at)
    if st.error:
        out["error"] = st.error
        if st.failing_since is not None:
            out["failingSince"] = timestamp(st.failing_since)
    if st.next_fetch is not None:
        out["nextFetch"] = timestamp(st.next_fetch)
    return out


def entries(rules: Iterable[JWTRule], states: Mapping[str, FetchState]) -> list[dict[str, Any]]:
    """``status.jwks`` of a RequestAuthentication with ``rules``: one entry per source
    fetched for them (rules sharing one share its entry), in rule order; none for inline
    ``jwks``."""
    out: dict[str, dict[str, Any]] = {}
    for rule in rules:
        source = ra.jwks_key(rule)
        if source is not None and source not in out:
            out[source] = entry(source, rule.issuer, states.get(source))
    return list(out.values())


def condition(jwks: list[dict[str, Any]]) -> dict[str, Any]:
    """Istio's ``status.conditions`` item summing up ``jwks`` (from :func:`entries`)."""
    failing = [e for e in jwks if e["state"] == FAILING]
    pending = [e for e in jwks if e["state"] == PENDING]
    if failing:
        lines = []
        for e in failing:
            kept = "keeping the last good set" if "keys" in e else "its tokens get 401"
            # the error names the URL it got, but not always the source (OpenID discovery)
            error = e["error"] if e["uri"] in e["error"] else f"{e['uri']}: {e['error']}"
            lines.append(f"{error} ({kept}; next try {e.get('nextFetch')})")
        return {
            "type": CONDITION,
            "status": "False",
            "reason": "FetchFailing",
            "message": "; ".join(lines),
        }
    if pending:
        uris = ", ".join(e["uri"] for e in pending)
        return {
            "type": CONDITION,
            "status": "Unknown",
            "reason": "Pending",
            "message": f"not fetched yet (tokens get 401 until it is): {uris}",
        }
    return {
        "type": CONDITION,
        "status": "True",
        "reason": "Fetched",
        "message": "every key set is fetched",
    }


def status(rules: Iterable[JWTRule], states: Mapping[str, FetchState]) -> dict[str, Any]:
    """The ``status`` fields of a RequestAuthentication with ``rules`` (``conditions`` and
    ``jwks``); empty when it fetches nothing (inline ``jwks`` only)."""
    jwks = entries(rules, states)
    if not jwks:
        return {}
    return {"conditions": [condition(jwks)], "jwks": jwks}


def stored_rules(document: Mapping[str, Any]) -> tuple[JWTRule, ...]:
    """The ``jwtRules`` of a stored RequestAuthentication document; none if it no longer
    parses (the push reports that)."""
    try:
        res = parse_document(dict(document), "store", 1)
    except Exception:
        return ()
    return tuple(res.spec.jwt_rules) if isinstance(res.spec, RequestAuthenticationSpec) else ()


def document_status(
    document: Mapping[str, Any], states: Mapping[str, FetchState]
) -> dict[str, Any]:
    """:func:`status` of a stored RequestAuthentication document (empty if it no longer
    parses: the push reports that)."""
    return status(stored_rules(document), states)


def apply_messages(
    resources: Iterable[Resource], states: Mapping[str, FetchState]
) -> tuple[list[str], list[str]]:
    """``(warnings, notes)`` for ``apply``: each key set the applied RequestAuthentications
    fetch that is failing now (a warning) or not fetched yet (a note: the control plane
    fetches it in the background; ``apply`` never waits for the network)."""
    warnings: list[str] = []
    notes: list[str] = []
    for r in resources:
        if not isinstance(r.spec, RequestAuthenticationSpec):
            continue
        see = f"see `tsunagi get requestauthentication {r.name} -n {r.namespace}`"
        for e in entries(r.spec.jwt_rules, states):
            who = f"RequestAuthentication {r.namespace}/{r.name}"
            tokens = f"tokens of {e['issuer']!r}" if "issuer" in e else "its tokens"
            if e["state"] == FAILING:
                kept = (
                    f"the last good set ({e['keys']} keys) is kept"
                    if "keys" in e
                    else f"{tokens} get 401 until a fetch succeeds"
                )
                warnings.append(
                    f"{who}: fetching {e['uri']} fails: {e['error']}; {kept}; the control "
                    f"plane tries again at {e.get('nextFetch')}; {see}"
                )
            elif e["state"] == PENDING:
                notes.append(
                    f"{who}: the control plane fetches {e['uri']} in the background; "
                    f"{tokens} get 401 until it has; {see}"
                )
    return warnings, notes

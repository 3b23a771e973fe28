"""How the CLI prints resources and proxy status: tables for people, YAML/JSON for tools."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import yaml


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["   ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _summary(item: dict[str, Any]) -> str:
    spec = item["document"].get("spec") or {}
    if item["kind"] == "WorkloadInstance":
        doc = item["document"]
        if doc.get("kind") == "gateway":
            # It listens on its Gateways' ports, selected by its labels; with `--port` it is
            # also an endpoint of its service at that port.
            labels = ",".join(f"{k}={v}" for k, v in sorted((doc.get("labels") or {}).items()))
            port = f":{doc['port']} → :{doc['target_port']}" if doc.get("port") else ""
            return f"gateway {doc['service']}{port} at {doc['address']} ({labels or 'no labels'})"
        return f"{doc['service']}:{doc['port']} → {doc['address']}:{doc['target_port']}"
    hosts = spec.get("hosts") or ([spec["host"]] if "host" in spec else [])
    return ",".join(str(h) for h in hosts)


def _jwks(item: dict[str, Any]) -> list[dict[str, Any]]:
    """A RequestAuthentication's key sources and their fetch state (``status.jwks``)."""
    return list((item.get("status") or {}).get("jwks") or ())


def _jwks_cell(sources: list[dict[str, Any]]) -> str:
    """The worst state of ``sources`` (FAILING, PENDING, OK), with how many are in it when
    not all are: ``FAILING (1 of 2)``."""
    for worst in ("FAILING", "PENDING", "OK"):
        n = sum(1 for s in sources if s.get("state") == worst)
        if n:
            return worst if n == len(sources) else f"{worst} ({n} of {len(sources)})"
    return "-"


def _with_status(item: dict[str, Any]) -> dict[str, Any]:
    """The stored document, plus a ``status`` block (as Istio writes one) when the control
    plane could not put all of it into proxy config."""
    if not item.get("status"):
        return dict(item["document"])
    return {**item["document"], "status": item["status"]}


def resources(items: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        docs = [_with_status(i) for i in items]
        return json.dumps(docs[0] if len(docs) == 1 else {"items": docs}, indent=2)
    if fmt == "yaml":
        return yaml.safe_dump_all([_with_status(i) for i in items], sort_keys=False).rstrip()
    if not items:
        return "No resources found."
    wide = fmt == "wide"
    # JWKS: the fetch state of RequestAuthentications' jwksUri, when some are listed
    jwks = ["JWKS"] if any(_jwks(i) for i in items) else []
    headers = ["KIND", "NAMESPACE", "NAME", "HOSTS", *jwks] + (["REVISION"] if wide else [])
    rows = [
        [i["kind"], i["namespace"], i["name"], _summary(i)]
        + [_jwks_cell(_jwks(i)) for _ in jwks]
        + ([str(i["revision"])] if wide else [])
        for i in items
    ]
    out = table(headers, rows)
    failing = [i for i in items if (i.get("status") or {}).get("validationMessages")]
    if failing:
        names = ", ".join(f"{i['kind'].lower()}/{i['name']}" for i in failing)
        out += f"\n\nNot fully in effect (see `-o yaml` for why): {names}"
    unfetched = [i for i in items if _jwks_cell(_jwks(i)).startswith(("FAILING", "PENDING"))]
    if unfetched:
        names = ", ".join(f"{i['kind'].lower()}/{i['name']}" for i in unfetched)
        out += f"\n\nJWKS failing or not fetched yet (see `-o yaml` for why): {names}"
    return out


def _gateway_note(proxy: dict[str, Any]) -> str:
    """`` (gateway)``, with the ports of ``tsunagi gateway --port`` (``80→8080``)."""
    ports = proxy.get("gateway_ports") or {}
    listed = ",".join(f"{p}→{lp}" for p, lp in sorted(ports.items(), key=lambda i: int(i[0])))
    return f" (gateway {listed})" if listed else " (gateway)"


def replica_suffix(proxy: dict[str, Any]) -> str:
    """`` (replica HOST:PORT)`` when the proxy's replica is known, else ""."""
    return f" (replica {proxy['replica']})" if proxy.get("replica") else ""


def replica_problems(
    replicas: list[dict[str, Any]], consequence: str = "its proxies are not shown"
) -> list[str]:
    """One line per replica that did not answer, naming it, why, and ``consequence``."""
    return [
        f"replica {r.get('name')}{' (' + r['api'] + ')' if r.get('api') else ''} "
        f"{r.get('error')}; {consequence}"
        for r in replicas
        if r.get("error")
    ]


def proxy_status(proxies: list[dict[str, Any]]) -> str:
    if not proxies:
        return "No proxies connected."
    # ECDS only when some proxy loads extension configs (EnvoyFilter EXTENSION_CONFIG)
    ecds = ("ECDS",) if any("ECDS" in p["types"] for p in proxies) else ()
    # SDS only when some gateway holds credentials (Gateway credentialName)
    sds = ("SDS",) if any("SDS" in p["types"] for p in proxies) else ()
    kinds = ("CDS", "EDS", *ecds, "LDS", "RDS", *sds)
    # Each sidecar's inbound mTLS mode (PeerAuthentication), when the control plane says
    mtls = ("MTLS",) if any("mtls" in p for p in proxies) else ()
    # Which control plane each is connected to, when several replicas share the store
    replica = ("REPLICA",) if any(p.get("replica") for p in proxies) else ()
    headers = ["NAME", "SERVICE", *mtls, *kinds, "REVISION", *replica]
    rows = []
    errors = []
    for p in proxies:
        types = p["types"]
        rows.append(
            [
                p["id"],
                p.get("service", "") + (_gateway_note(p) if p.get("kind") == "gateway" else ""),
                *(str(p.get("mtls", "-")) for _ in mtls),
                *(types.get(t, {}).get("state", "-") for t in kinds),
                str(p.get("revision", "")),
                *(str(p.get("replica") or "-") for _ in replica),
            ]
        )
        for t, st in types.items():
            if st.get("state") == "NACKED":
                errors.append(f"{p['id']} {t}: {st.get('message', '')}")
    out = table(headers, rows)
    if errors:
        out += "\n\nRejected by Envoy:\n" + "\n".join(f"  {e}" for e in errors)
    untranslated: dict[str, list[str]] = {}
    for p in proxies:
        for e in p.get("translation_errors") or ():
            untranslated.setdefault(e, []).append(p["id"])
    if untranslated:
        out += "\n\nNot translated (the rest of each proxy's config is current):"
        for e, ids in untranslated.items():
            who = ids[0] if len(ids) == 1 else f"{len(ids)} proxies"
            out += f"\n  {who}: {e}"
    return out

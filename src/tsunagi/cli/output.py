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
        return f"{doc['service']}:{doc['port']} → {doc['address']}:{doc['target_port']}"
    hosts = spec.get("hosts") or ([spec["host"]] if "host" in spec else [])
    return ",".join(str(h) for h in hosts)


def resources(items: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        docs = [i["document"] for i in items]
        return json.dumps(docs[0] if len(docs) == 1 else {"items": docs}, indent=2)
    if fmt == "yaml":
        return yaml.safe_dump_all([i["document"] for i in items], sort_keys=False).rstrip()
    if not items:
        return "No resources found."
    wide = fmt == "wide"
    headers = ["KIND", "NAMESPACE", "NAME", "HOSTS"] + (["REVISION"] if wide else [])
    rows = [
        [i["kind"], i["namespace"], i["name"], _summary(i)] + ([str(i["revision"])] if wide else [])
        for i in items
    ]
    return table(headers, rows)


def proxy_status(proxies: list[dict[str, Any]]) -> str:
    if not proxies:
        return "No proxies connected."
    headers = ["NAME", "SERVICE", "CDS", "EDS", "LDS", "RDS", "REVISION"]
    rows = []
    errors = []
    for p in proxies:
        types = p["types"]
        rows.append(
            [
                p["id"],
                p.get("service", ""),
                *(types.get(t, {}).get("state", "-") for t in ("CDS", "EDS", "LDS", "RDS")),
                str(p.get("revision", "")),
            ]
        )
        for t, st in types.items():
            if st.get("state") == "NACKED":
                errors.append(f"{p['id']} {t}: {st.get('message', '')}")
    out = table(headers, rows)
    if errors:
        out += "\n\nRejected by Envoy:\n" + "\n".join(f"  {e}" for e in errors)
    return out

"""``tsunagi proxy-config secret NAME``: the certificates a proxy holds, as ``istioctl
proxy-config secret POD`` shows them, from the control plane's record of what its CA issued
the proxy, what it sent the proxy and what the proxy ACKed
(``GET /v1/proxies/{proxy}/secrets``)."""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from tsunagi.client import Client

EXIT_OK = 0
NONE_FOUND = "No active or warming secrets found."  # istioctl's words
HEADERS = (
    "RESOURCE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE",
    "SOURCE",
)  # fmt: skip


def add_parser(sub: Any, connection_args: Any) -> None:
    """``proxy-config secret`` under ``sub``."""
    pc = sub.add_parser(
        "proxy-config",
        help="what one proxy holds (istioctl proxy-config): secret",
        description="Show what one proxy holds, as the control plane sent it and the proxy "
        "ACKed it.",
    )
    kinds = pc.add_subparsers(dest="proxy_config_kind", required=True, metavar="KIND")
    secret = kinds.add_parser(
        "secret",
        help="the certificates a proxy holds (never their keys)",
        description="List the certificates a proxy holds, one row per SDS secret, as "
        "`istioctl proxy-config secret` does: every proxy holds default (its own workload "
        "certificate, whose SAN is its SPIFFE ID) and ROOTCA (the mesh's trust bundle), the "
        "last the CA issued to it (SOURCE agent); a gateway holds kubernetes://NAME (certificate "
        "chain) and kubernetes://NAME-cacert (CA) for each credentialName its Gateways' "
        "servers name. STATUS is ACTIVE once the proxy ACKed that version, WARMING while it "
        "asked for it and has not ACKed it (a renewal in flight, or a credential that does "
        "not exist), PENDING before it asked. VALID CERT: now is between NOT BEFORE and NOT "
        "AFTER. SOURCE: who serves it to Envoy (agent or control-plane). -o json|yaml adds "
        "subject, SANs, issuer and every certificate of a chain; no output carries a private key.",
    )
    secret.add_argument(
        "name",
        metavar="NAME",
        help="the proxy, as `tsunagi proxy-status` names it (NAME.NAMESPACE), or NAME with -n",
    )
    secret.add_argument(
        "-n", "--namespace", default="", help="the proxy's namespace when NAME lacks it"
    )
    secret.add_argument("-o", "--output", choices=["json", "yaml"], default="")
    connection_args(secret)


def cmd_proxy_config(args: argparse.Namespace, client: Client) -> int:
    """Print the proxy's secrets (a table, or the API's answer as JSON or YAML)."""
    query = {"namespace": args.namespace} if args.namespace else None
    path = f"/v1/proxies/{quote(args.name, safe='')}/secrets"
    reply = client.request("GET", path, query=query)
    if args.output == "json":
        print(json.dumps(reply, indent=2))
    elif args.output == "yaml":
        import yaml  # here: every `tsunagi run` builds this parser, and pays its imports

        print(yaml.safe_dump(reply, sort_keys=False).rstrip())
    else:
        print(secrets_table(reply["secrets"]))
    return EXIT_OK


def secrets_table(secrets: list[dict[str, Any]]) -> str:
    """istioctl's columns plus SOURCE, then why any row lacks a certificate."""
    from tsunagi.cli.output import table

    if not secrets:
        return NONE_FOUND
    rows = [
        [
            s["name"],
            s["type"],
            s["status"],
            "true" if s["valid"] else "false",
            s["serial_number"],
            s["not_after"],
            s["not_before"],
            s["source"],
        ]
        for s in secrets
    ]
    out = table(HEADERS, rows)
    notes = [f"  {s['name']}: {s['message']}" for s in secrets if s.get("message")]
    return out + ("\n\n" + "\n".join(notes) if notes else "")

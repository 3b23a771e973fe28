"""``tsunagi token create``: a workload token for one identity, made by the control plane
(``POST /v1/tokens``, admin token only).

The token goes alone to stdout, so ``TSUNAGI_TOKEN=$(tsunagi token create ...)`` works; what
it is for goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from tsunagi.client import Client


def add_parser(sub: Any, connection_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``token create`` to the ``tsunagi`` parser's subcommands ``sub``."""
    token = sub.add_parser(
        "token",
        help="make workload tokens",
        description="Workload tokens let a sidecar (tsunagi run --token T, or TSUNAGI_TOKEN) "
        "obtain the certificate of one identity and register only its instances; the admin "
        "token that `tsunagi up` writes may do everything and obtain any identity, a local "
        "convenience: give each workload its own token.",
    )
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="print a token for one namespace and service account",
        description="Print a workload token that may obtain only "
        "spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT and register that "
        "identity's instances. Tokens are signed, not stored: one stays valid until it "
        "expires (delete STATE_DIR/workload-token.key and restart to void them all). A "
        "running sidecar renews its own: each certificate it obtains comes with a fresh "
        "token for the same identity, so --ttl need only cover the sidecar's start.",
    )
    connection_args(create)
    create.add_argument("--namespace", "-n", required=True, help="the workload's namespace")
    create.add_argument("--service-account", required=True, help="the workload's service account")
    create.add_argument(
        "--ttl",
        default="24h",
        metavar="DURATION",
        help="how long the token is good for, e.g. 8h or 30m (default 24h, at most 366 "
        "days); a running sidecar renews it with each certificate",
    )
    create.add_argument(
        "--gateway",
        action="store_true",
        help="it may also run `tsunagi gateway` with its credentials: the gateway's "
        "certificate then lets it receive the private keys of the TLS credentials its "
        "Gateways name. Without it a gateway runs, but its TLS servers have no certificate",
    )


def cmd_token(args: argparse.Namespace, client: Client) -> int:
    """Ask the control plane for the token and print it."""
    reply = client.request(
        "POST",
        "/v1/tokens",
        {
            "namespace": args.namespace,
            "serviceAccount": args.service_account,
            "ttl": args.ttl,
            "gateway": args.gateway,
        },
    )
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(reply["expires"]))
    kind = "gateway token" if reply.get("gateway") else "workload token"
    print(f"{kind} for {reply['spiffeId']}, expires {expires}", file=sys.stderr)
    print(reply["token"])
    return 0

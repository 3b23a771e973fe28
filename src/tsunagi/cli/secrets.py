"""``tsunagi create secret tls|generic`` and the ``get secrets`` table, as kubectl has them.

A Secret is made here from files and sent through ``/v1/apply`` like any YAML, so the
control plane's checks (certificates parse, the key matches) are the only ones. The table
reads certificates (public) from what the API returns; private keys never reach the CLI.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tsunagi.client import Client, Rejected
from tsunagi.secret_keys import (
    CA_KEYS,
    CERT_KEY_PAIRS,
    OPAQUE_TYPE,
    TLS_CA,
    TLS_CERT,
    TLS_KEY,
    TLS_TYPE,
    served_pair,
)

if TYPE_CHECKING:
    from tsunagi.ca.summary import CertificateSummary

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2

TLS_FILES = ((TLS_CERT, "cert"), (TLS_KEY, "key"), (TLS_CA, "ca"))
"""Secret key ← the ``create secret tls`` option that names its file (kubectl's keys)."""


def add_parser(sub: Any, connection_args: Any) -> None:
    """``create secret tls`` and ``create secret generic`` under ``sub``."""
    create = sub.add_parser("create", help="create a TLS or generic secret (kubectl's form)")
    kinds = create.add_subparsers(dest="create_kind", required=True, metavar="KIND")
    secret = kinds.add_parser(
        "secret",
        help="a Secret that a Gateway server's credentialName names",
        description="Make a Secret from files, as `kubectl create secret` does. Gateways "
        "read its certificate and key by Istio's key names: tls.crt/tls.key/ca.crt, or "
        "cert/key/cacert. The control plane checks that they parse and that the key "
        "matches; `get secrets` and the API never show the key. To renew a certificate in "
        "place: `tsunagi create secret tls NAME --cert F --key F --dry-run=client -o yaml "
        "| tsunagi apply -f -`.",
    )
    types = secret.add_subparsers(dest="secret_type", required=True, metavar="TYPE")
    tls = types.add_parser(
        "tls",
        help="type kubernetes.io/tls: --cert, --key, optional --ca (for MUTUAL)",
        description="A Secret of type kubernetes.io/tls with keys tls.crt (--cert), tls.key "
        "(--key) and, for a MUTUAL server, ca.crt (--ca: the CA that client certificates "
        "must chain to).",
    )
    tls.add_argument("name")
    tls.add_argument("--cert", required=True, help="PEM certificate chain, leaf first")
    tls.add_argument("--key", required=True, help="PEM private key (unencrypted)")
    tls.add_argument("--ca", help="PEM CA that verifies clients (MUTUAL servers)")
    generic = types.add_parser(
        "generic",
        help="type Opaque from files: --from-file=[KEY=]PATH (Istio's keys: cert, key, cacert)",
        description="A Secret of type Opaque, one key per --from-file (KEY=PATH, or PATH for "
        "a key named after the file). Istio's gateway reads cert, key and cacert; a Secret "
        "named NAME-cacert with only cacert gives NAME's server its CA. A DestinationRule's "
        "tls.credentialName (TLS origination at a gateway, or at sidecars its "
        "workloadSelector selects) reads the same keys: the client certificate and key "
        "(MUTUAL) and the CA that verifies the server.",
    )
    generic.add_argument("name")
    generic.add_argument(
        "--from-file",
        action="append",
        required=True,
        metavar="[KEY=]PATH",
        help="a key and the file its value comes from (repeat it)",
    )
    for p in (tls, generic):
        connection_args(p)
        p.add_argument("-n", "--namespace", default="default")
        p.add_argument(
            "--dry-run",
            choices=["none", "client", "server"],
            default="none",
            help="client: print it (with -o) without sending; server: check it, store nothing",
        )
        p.add_argument(
            "-o",
            "--output",
            choices=["yaml", "json"],
            help="with --dry-run=client: print the Secret (it holds the key) to pipe into "
            "`tsunagi apply -f -`",
        )


def _read_files(entries: Sequence[tuple[str, str]]) -> dict[str, bytes]:
    """``key → bytes`` of each ``(key, path)``; OSError names the file."""
    return {key: Path(path).read_bytes() for key, path in entries}


def _entries(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(key, path)`` pairs from the command line (ValueError: a usage problem)."""
    if args.secret_type == "tls":
        return [(key, getattr(args, opt)) for key, opt in TLS_FILES if getattr(args, opt)]
    out: list[tuple[str, str]] = []
    for spec in args.from_file:
        key, sep, path = spec.partition("=")
        if not sep:
            key, path = Path(spec).name, spec
        if not key or not path:
            raise ValueError(f"--from-file looks like [KEY=]PATH, got {spec!r}")
        if any(k == key for k, _ in out):
            raise ValueError(f"key {key!r} is given twice in --from-file")
        out.append((key, path))
    return out


def secret_document(
    name: str, namespace: str, kind: str, values: dict[str, bytes]
) -> dict[str, Any]:
    """The Secret as ``kubectl create secret`` writes it (base64 ``data``)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": TLS_TYPE if kind == "tls" else OPAQUE_TYPE,
        "data": {k: base64.b64encode(v).decode() for k, v in values.items()},
    }


def cmd_create(args: argparse.Namespace, client: Client) -> int:
    """Build the Secret from its files and apply it (the control plane checks it)."""
    try:
        entries = _entries(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        values = _read_files(entries)
    except OSError as e:
        print(f"error: cannot read {e.filename}: {e.strerror or e}", file=sys.stderr)
        return EXIT_INVALID
    doc = secret_document(args.name, args.namespace, args.secret_type, values)
    if args.dry_run == "client":
        if args.output == "json":
            print(json.dumps(doc, indent=2))
        elif args.output == "yaml":
            import yaml  # here: every `tsunagi run` builds this parser, and pays its imports

            print(yaml.safe_dump(doc, sort_keys=False).rstrip())
        else:
            print(f"secret/{args.name} created (dry run)")
        return EXIT_OK
    existing = client.request(
        "GET", "/v1/resources", query={"kind": "Secret", "namespace": args.namespace}
    )
    if any(i["name"] == args.name for i in existing["items"]):
        print(
            f'error: secret "{args.name}" already exists in namespace {args.namespace}; '
            f"delete it first (`tsunagi delete secret {args.name} -n {args.namespace}`), or "
            "renew it in place with --dry-run=client -o yaml | tsunagi apply -f -",
            file=sys.stderr,
        )
        return EXIT_INVALID
    body = {"text": json.dumps(doc), "filename": "<create>", "dry_run": args.dry_run == "server"}
    try:
        reply = client.request("POST", "/v1/apply", body)
    except Rejected as e:
        print(f"error: {e}", file=sys.stderr)
        for line in e.errors:
            print(f"  {line}", file=sys.stderr)
        # the checks name Secret keys; say which file each came from
        for key, path in entries:
            print(f"  ({key} is {path})", file=sys.stderr)
        return EXIT_INVALID
    for w in reply.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    suffix = " (server dry run)" if args.dry_run == "server" else ""
    print(f"secret/{args.name} created{suffix}")
    return EXIT_OK


# ----------------------------------------------------------------------------- get secrets


def _certificate(doc: dict[str, Any], now: datetime.datetime) -> CertificateSummary | None:
    """The certificate the gateway serves from this Secret (Istio's pair: both keys there;
    the API redacts the key's value, not its name), else any certificate it holds, else its
    CA (a ``NAME-cacert`` Secret has only that); None if none parses."""
    from tsunagi.ca.summary import summarize

    data = doc.get("data") or {}
    plain = doc.get("stringData") or {}
    served = served_pair({**data, **plain}) or ()
    for key in (*served[:1], *(cert for cert, _ in CERT_KEY_PAIRS), *CA_KEYS):
        raw: bytes | None = None
        if isinstance(plain.get(key), str):
            raw = plain[key].encode()
        elif isinstance(data.get(key), str):
            try:
                raw = base64.b64decode(data[key], validate=True)
            except ValueError:
                raw = None
        if raw:
            certs, _ = summarize(raw, now)
            if certs:
                return certs[0]
    return None


def secrets_table(items: list[dict[str, Any]], wide: bool) -> str:
    """NAMESPACE, NAME, TYPE, DATA (key names), and the certificate's SUBJECT, SANS and NOT
    AFTER; ``wide`` adds ISSUER, SERIAL and REVISION. Never a value."""
    from tsunagi.cli.output import table

    if not items:
        return "No resources found."
    headers = ["NAMESPACE", "NAME", "TYPE", "DATA", "SUBJECT", "SANS", "NOT AFTER"]
    if wide:
        headers += ["ISSUER", "SERIAL", "REVISION"]
    now = datetime.datetime.now(datetime.UTC)
    rows = []
    for item in items:
        doc = item["document"]
        keys = sorted({*(doc.get("data") or {}), *(doc.get("stringData") or {})})
        cert = _certificate(doc, now)
        row = [
            item["namespace"],
            item["name"],
            str(doc.get("type") or OPAQUE_TYPE),
            ",".join(keys) or "<none>",
            *((cert.subject, ",".join(cert.sans), cert.not_after) if cert else ("", "", "")),
        ]
        if wide:
            row += [
                *((cert.issuer, cert.serial_number) if cert else ("", "")),
                str(item["revision"]),
            ]
        rows.append(row)
    return table(headers, rows)

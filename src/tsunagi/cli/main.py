"""The ``tsunagi`` command. Exit codes: 0 ok, 1 invalid input or rejected, 2 usage,
3 control plane unreachable."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tsunagi.client import Client, Rejected, Unreachable, state_dir

if TYPE_CHECKING:
    from tsunagi.api.mesh_config import MeshConfig
    from tsunagi.store.etcd.tls import EtcdTls

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"labels look like KEY=VALUE, got {text!r}")
    return key, value


def _gateway_label(text: str) -> tuple[str, str]:
    """A ``--label`` of ``tsunagi gateway``: a Kubernetes label, as Gateway selectors match."""
    from tsunagi.api.names import check_label_key, check_label_value

    key, value = _label(text)
    problem = check_label_key(key) or check_label_value(value)
    if problem:
        raise argparse.ArgumentTypeError(f"{problem}; e.g. --label istio=ingressgateway")
    return key, value


def _dns_label(what: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        from tsunagi.api.names import check_dns_label

        problem = check_dns_label(text, what)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return text

    return check


def _service_account(text: str) -> str:
    from tsunagi.api.names import check_dns_subdomain

    problem = check_dns_subdomain(text, "--service-account")
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _gateway_name(text: str) -> str:
    """``--name`` of ``tsunagi gateway``: each copy registers as NAME-<6 characters>, which
    must still be a DNS label."""
    name = _dns_label("--name")(text)
    if len(name) > 56:
        raise argparse.ArgumentTypeError(f"--name must be at most 56 characters, got {len(name)}")
    return name


def _ip_address(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IP address (e.g. 127.0.0.1, or 0.0.0.0 for every interface)"
        ) from None


def _duration(text: str) -> float:
    from tsunagi.api.durations import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e} (e.g. 5ms, 0.1s)") from None
    return seconds


def _positive_duration(text: str) -> float:
    seconds = _duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 (e.g. 5s)")
    return seconds


def _trust_domain(text: str) -> str:
    from tsunagi.api.names import check_dns_subdomain

    problem = check_dns_subdomain(text, "--trust-domain")
    if problem:
        raise argparse.ArgumentTypeError(f"{problem}; e.g. --trust-domain cluster.local")
    return text


def _cert_ttl(text: str) -> float:
    seconds = _positive_duration(text)
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is under a second; give e.g. 1h or 24h")
    return seconds


def _http_url(text: str) -> str:
    if not text:  # the default: none
        return text
    if not text.startswith(("http://", "https://")) or len(text.split("//", 1)[1]) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL")
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage from 0 to 100")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 lets the OS choose)")
    return int(text)


def _trace_export(text: str) -> str:
    from tsunagi.telemetry.export import parse_target

    if not text:  # the default: no export
        return text
    try:
        parse_target(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _service_port(text: str) -> tuple[int, str]:
    from tsunagi.protocols import parse_port

    try:
        return parse_port(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _gateway_port(text: str) -> tuple[int, int, str]:
    """``SERVICEPORT[:LISTENPORT][/PROTOCOL]`` of ``tsunagi gateway --port``:
    ``(service port, listen port, protocol)``; LISTENPORT defaults to SERVICEPORT."""
    from tsunagi.protocols import parse_port

    ports, slash, protocol = text.partition("/")
    service, colon, listen = ports.partition(":")
    example = "e.g. --port 80:8080 or --port 443:8443/https"
    try:
        port, proto = parse_port(f"{service}{slash}{protocol}")
        listen_port = parse_port(listen)[0] if colon else port
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"ports look like SERVICEPORT[:LISTENPORT][/PROTOCOL], got {text!r} ({e}); {example}"
        ) from None
    return port, listen_port, proto


def _upstream(text: str) -> tuple[str, int, int]:
    """``SERVICE:PORT[@LOCALPORT]`` of ``tsunagi run --upstream``; LOCALPORT 0: a free one."""
    target, _, local = text.partition("@")
    service, sep, port = target.rpartition(":")
    example = "e.g. --upstream tcp-echo:9000 or --upstream db.data:5432@15432"
    if not sep or not service or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"upstreams look like SERVICE:PORT[@LOCALPORT], got {text!r}; {example}"
        )
    if local and (not local.isdigit() or not 0 < int(local) < 65536):
        raise argparse.ArgumentTypeError(
            f"LOCALPORT in {text!r} must be a port number 1..65535 (leave it out for a free "
            f"one); {example}"
        )
    return service, int(port), int(local or 0)


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        metavar="URL[,URL...]",
        help="control plane API (env TSUNAGI_SERVER, default http://127.0.0.1:15014); several "
        "replicas' URLs separated by commas: a call goes to the next when one is unreachable "
        "(and, if safe to repeat, when one got it and did not answer)",
    )
    p.add_argument("--token", help="API token (env TSUNAGI_TOKEN, default: the state dir's)")
    p.add_argument(
        "--state-dir",
        help="where `tsunagi up` keeps state (env TSUNAGI_STATE_DIR, default ~/.tsunagi)",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="tsunagi", description="Istio's API on real Envoy.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="run the control plane",
        description="Run the control plane. It writes STATE_DIR/prometheus.yml, a complete "
        "Prometheus config for the mesh (prometheus --config.file STATE_DIR/prometheus.yml): "
        "targets come from GET /v1/prometheus/targets, the control plane's pilot_* metrics "
        "from GET /metrics (both need the API token, which the config reads from "
        "STATE_DIR/token).",
    )
    up.add_argument("--state-dir")
    up.add_argument(
        "--store",
        default="",
        help="sqlite:PATH (default: STATE_DIR/tsunagi.db), memory:, or "
        "etcd://HOST:PORT[,HOST:PORT...][/PREFIX]: config kept in an etcd cluster (keys under "
        "/tsunagi/ unless PREFIX), which several control planes can share",
    )
    up.add_argument(
        "--etcd-ca",
        metavar="FILE",
        help="talk to the etcd --store over TLS, trusting this CA (PEM) for etcd's "
        "certificate, which must name the addresses in --store (or --etcd-server-name)",
    )
    up.add_argument(
        "--etcd-cert",
        metavar="FILE",
        help="with --etcd-ca: the client certificate (PEM) to present to etcd, for an etcd "
        "that asks for one (--client-cert-auth)",
    )
    up.add_argument("--etcd-key", metavar="FILE", help="the private key of --etcd-cert (PEM)")
    up.add_argument(
        "--etcd-server-name",
        metavar="NAME",
        default="",
        help="with --etcd-ca: the name etcd's certificate carries, when it does not list "
        "the addresses --store dials",
    )
    up.add_argument(
        "--xds-port",
        type=int,
        default=15012,
        help="where proxies get their config (ADS); mutual TLS only: a proxy presents its "
        "workload certificate, whose namespace and service account must be those it claims "
        "(there is no plaintext port)",
    )
    up.add_argument("--api-port", type=int, default=15014)
    up.add_argument(
        "--address",
        type=_ip_address,
        default="127.0.0.1",
        metavar="ADDR",
        help="where the API, xDS and trace ports listen (default 127.0.0.1; a host's own "
        "address, e.g. 10.0.0.5, so that workloads on other hosts reach it with "
        "TSUNAGI_SERVER=http://10.0.0.5:15014). The dashboard stays on loopback unless "
        "this is 0.0.0.0",
    )
    up.add_argument(
        "--dashboard-port",
        type=int,
        default=20001,
        help="the dashboard's web server, loopback clients signed in by `tsunagi dashboard` "
        "only (default 20001, Kiali's; 0: the OS chooses)",
    )
    up.add_argument(
        "--scrape-interval",
        type=_positive_duration,
        default=5.0,
        metavar="DURATION",
        help="how often the control plane scrapes every sidecar's metrics for the dashboard "
        "(default 5s; it keeps the last hour)",
    )
    up.add_argument(
        "--scrape-max-series",
        type=_positive_int,
        default=20_000,
        metavar="N",
        help="most series the dashboard's metrics store keeps (default 20000; each costs "
        "4 bytes per scrape in the hour kept, 2.9 kB at 5s); new ones beyond are dropped",
    )
    up.add_argument(
        "--prometheus",
        type=_http_url,
        default="",
        metavar="URL",
        help="compute the dashboard's graph and charts with PromQL against this Prometheus "
        "(e.g. http://127.0.0.1:9090) instead of the built-in scraper",
    )
    up.add_argument(
        "--instance-ttl",
        type=float,
        default=15.0,
        help="seconds without a heartbeat before an instance is removed (default 15; with "
        "an etcd --store, the TTL of each instance's etcd lease, in whole seconds, renewed by "
        "a heartbeat to any replica)",
    )
    up.add_argument(
        "--debounce-after",
        type=_duration,
        default=0.005,
        metavar="DURATION",
        help="push once config has been quiet this long (default 5ms; Istio's "
        "PILOT_DEBOUNCE_AFTER)",
    )
    up.add_argument(
        "--debounce-max",
        type=_duration,
        default=0.05,
        metavar="DURATION",
        help="push at the latest this long after the first change of a burst (default 50ms; "
        "Istio's PILOT_DEBOUNCE_MAX)",
    )
    up.add_argument(
        "--api-max-body-mib",
        type=_positive_int,
        default=16,
        metavar="MIB",
        help="largest API request body (an apply's YAML), in MiB (default 16)",
    )
    up.add_argument(
        "--api-connections-per-client",
        type=_positive_int,
        default=256,
        metavar="N",
        help="concurrent API connections one client address may hold (default 256: every "
        "agent of a local mesh connects from 127.0.0.1)",
    )

    up.add_argument(
        "--trace-sampling",
        type=_percent,
        default=0.0,
        metavar="PCT",
        help="percent of requests the sidecars trace, 0 to 100 (default 0: no tracer, and "
        "none of its per-request cost; Istio's default is 1); a Telemetry resource "
        "overrides it per namespace or workload",
    )
    up.add_argument(
        "--access-log",
        nargs="?",
        const="text",
        default="",
        type=str.lower,
        choices=["text", "json"],
        help="every sidecar logs every request to its `tsunagi run` output, in Istio's "
        "default text format (or JSON: --access-log json); a Telemetry resource can turn "
        "it on or off per namespace or workload",
    )

    up.add_argument(
        "--outbound-policy",
        type=str.upper,
        default="ALLOW_ANY",
        choices=["ALLOW_ANY", "REGISTRY_ONLY"],
        help="what sidecars do with a request for a host that is neither a mesh service nor "
        "declared by a ServiceEntry: ALLOW_ANY (default, as Istio's) passes it through to "
        "where its name resolves; REGISTRY_ONLY answers 502 (route block_all); a Sidecar "
        "resource's outboundTrafficPolicy overrides it per namespace or workload",
    )
    up.add_argument(
        "--zipkin-port",
        type=_port,
        default=9411,
        metavar="PORT",
        help="the trace collector's Zipkin v2 API: sidecars send spans here; Zipkin's UI, "
        "Grafana or curl read /api/v2/traces (default 9411; 0: the OS chooses)",
    )
    up.add_argument(
        "--otlp-port",
        type=_port,
        default=4317,
        metavar="PORT",
        help="OTLP/gRPC trace ingest for apps using the OpenTelemetry SDK (default 4317; "
        "0: the OS chooses)",
    )
    up.add_argument(
        "--trace-max-spans",
        type=_positive_int,
        default=10_000,
        metavar="N",
        help="the collector keeps the newest N spans in memory (default 10000)",
    )
    up.add_argument(
        "--trace-export",
        type=_trace_export,
        default="",
        metavar="URL",
        help="also forward every span: to a Zipkin collector (http://HOST:9411/api/v2/spans) "
        "or an OTLP/gRPC one (otlp://HOST:4317)",
    )

    up.add_argument(
        "--trust-domain",
        type=_trust_domain,
        default="cluster.local",
        help="the trust domain of every workload identity, "
        "spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT (default cluster.local)",
    )
    up.add_argument(
        "--root-namespace",
        type=_dns_label("--root-namespace"),
        default="istio-system",
        help="PeerAuthentication and AuthorizationPolicy here apply to the whole mesh "
        "(default istio-system)",
    )
    up.add_argument(
        "--ca-cert",
        metavar="FILE",
        help="sign workload certificates with this CA certificate (PEM; with --ca-key), as "
        "Istio's plug-in cacerts; default: a root made on first start in STATE_DIR/ca",
    )
    up.add_argument("--ca-key", metavar="FILE", help="the private key of --ca-cert (PEM)")
    up.add_argument(
        "--token-file",
        metavar="FILE",
        help="the admin token to use (one word in a file no other user may read; also "
        "written to STATE_DIR/token for the CLI); default: one made in STATE_DIR/token. "
        "Replicas on one etcd --store need the same one",
    )
    up.add_argument(
        "--workload-token-key",
        metavar="FILE",
        help="the 32-byte key that signs workload tokens (`tsunagi token create`), e.g. a "
        "copy of the first replica's STATE_DIR/workload-token.key, or `head -c 32 "
        "/dev/urandom > FILE`; default: one made in STATE_DIR. Replicas on one etcd --store "
        "share the CA by being given the same --ca-cert/--ca-key files, and this key and "
        "--token-file likewise: each publishes their fingerprints (never the secrets) in "
        "etcd, and one whose differ from a running replica's refuses to start",
    )
    up.add_argument(
        "--ca-chain",
        metavar="FILE",
        help="when --ca-cert is an intermediate: the certificates from it up to the root "
        "(PEM); the root is the trust bundle workloads get",
    )
    up.add_argument(
        "--workload-cert-ttl",
        type=_cert_ttl,
        default=24 * 3600.0,
        metavar="DURATION",
        help="lifetime of workload certificates, e.g. 90m or 24h (default 24h); a request "
        "may ask for less, never more",
    )
    up.add_argument(
        "--mesh-config",
        metavar="FILE",
        help="Istio MeshConfig YAML (the istio ConfigMap's mesh key): its extensionProviders "
        "(envoyExtAuthzHttp, envoyExtAuthzGrpc) are the external authorizers that "
        "AuthorizationPolicy action CUSTOM names; other fields are refused as not supported yet",
    )

    run = sub.add_parser(
        "run",
        help="run a command with a sidecar",
        description="Start Envoy, then CMD; register CMD's instance while it runs. CMD gets "
        "PORT (where to listen) and HTTP_PROXY and HTTPS_PROXY (its sidecar: HTTPS goes "
        "through CONNECT, routed by SNI with tls routes). When CMD "
        "exits (or crashes) the instance is deregistered and the sidecar stops. Exit status: "
        "CMD's own, or 128+N if a signal N killed it (as a shell reports it: kill -9 gives "
        "137); 1 if the sidecar could not start, 3 if the control plane is unreachable.",
    )
    _connection_args(run)
    run.add_argument("--service", required=True)
    run.add_argument(
        "--port",
        type=_service_port,
        default=(80, "HTTP"),
        metavar="PORT[/PROTOCOL]",
        help="the service port clients use, and its protocol (Istio's names, any case): http "
        "(the default), http2 or grpc (HTTP/2 to the app, h2c), grpc-web, http_proxy; tcp, "
        "https, tls, mongo, mysql, redis, udp (not HTTP: the inbound listener passes TCP "
        "connections through; other apps reach it with --upstream)",
    )
    run.add_argument(
        "--upstream",
        type=_upstream,
        action="append",
        default=[],
        metavar="SERVICE:PORT[@LOCALPORT]",
        help="repeatable: a local TCP listener on 127.0.0.1:LOCALPORT (a free port when left "
        "out) that proxies connections to SERVICE's PORT, for clients that cannot use an HTTP "
        "proxy (databases, brokers); VirtualService tcp routes (weights, subsets) apply. The "
        "app finds it in TSUNAGI_UPSTREAM_<SERVICE>_<PORT>=127.0.0.1:LOCALPORT (SERVICE "
        "upper-cased, other characters as _)",
    )
    run.add_argument(
        "--version", default="", help="the version label (subsets and sourceLabels match it)"
    )
    run.add_argument(
        "--label",
        type=_label,
        action="append",
        default=[],
        metavar="K=V",
        help="a workload label, repeatable (subsets, sourceLabels and selectors match them)",
    )
    run.add_argument(
        "--namespace",
        "-n",
        default="default",
        help="the workload's namespace (sourceNamespace, exportTo and rule lookup use it)",
    )
    run.add_argument(
        "--service-account",
        type=_service_account,
        default=None,
        metavar="SA",
        help="the workload's service account (default: the service name): its identity is "
        "spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SA, in the certificate the agent gets from the "
        "control plane's CA (the token must be allowed it) and presents on xDS and to peers",
    )
    run.add_argument(
        "--locality",
        default="",
        metavar="REGION[/ZONE[/SUBZONE]]",
        help="where this workload runs: its endpoints carry it, and its proxy prefers "
        "endpoints nearby when a DestinationRule has outlierDetection or localityLbSetting",
    )
    run.add_argument(
        "--outbound-port",
        type=int,
        default=0,
        help="fix the outbound (HTTP_PROXY and HTTPS_PROXY) listener's port",
    )
    run.add_argument(
        "--inbound-port",
        type=int,
        default=0,
        help="fix the inbound listener's port (so a browser can reach the app)",
    )
    run.add_argument(
        "--metrics-port",
        type=_port,
        default=0,
        help="where the agent serves Istio's merged metrics (GET /stats/prometheus: "
        "istio_requests_total and friends, Envoy's own, the app's); default: a free port, "
        "logged and registered for Prometheus discovery",
    )
    run.add_argument(
        "--app-metrics",
        default="",
        metavar="PATH",
        help="also serve the app's own Prometheus metrics, fetched from PATH on the app's "
        "port at each scrape (e.g. /metrics), merged as Istio's agent does",
    )
    run.add_argument("--name", default="")
    run.add_argument(
        "--address",
        type=_ip_address,
        default="127.0.0.1",
        metavar="ADDR",
        help="this host's address, where sidecars on other hosts reach the workload: the "
        "instance registers it, and the inbound listener and metrics endpoint bind it "
        "(default 127.0.0.1: one host); the app itself stays on 127.0.0.1 behind its sidecar",
    )
    run.add_argument(
        "--intercept",
        action="store_true",
        help="transparent interception, as Istio's sidecars: iptables rules in this network "
        "namespace send the app's outbound TCP and DNS queries through the sidecar, which "
        "answers mesh names (reviews, reviews.NS, ...) with stable virtual IPs, so the app "
        "needs no proxy settings; TCP arriving for the service port goes through the inbound "
        "listener to the app, which listens on that port (PORT). Needs root, iptables and a "
        "network namespace of its own (refused in the host's); rules removed on exit",
    )
    run.add_argument("--concurrency", type=int, default=2, help="Envoy worker threads")
    run.add_argument("--xds-protocol", choices=["sotw", "delta"], default="delta")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")

    gw = sub.add_parser(
        "gateway",
        help="run an ingress or egress gateway: Envoy with no app, serving the mesh's Gateways",
        description="Run Envoy as a gateway until Ctrl-C: it serves every Gateway whose "
        "selector matches its labels, listening at --address on the port numbers the "
        "Gateways' servers name (a port opens when a Gateway naming it is applied, and "
        "closes when none names it), and routes with the VirtualServices bound to those "
        "Gateways (`gateways: [NAME]`). HTTPS and TLS servers use the certificate of "
        "their tls.credentialName (`tsunagi create secret tls NAME --cert F --key F` in "
        "the gateway's namespace; the gateway receives their keys only with the admin token "
        "or a token made with `tsunagi token create --gateway`): SIMPLE, MUTUAL, "
        "PASSTHROUGH by SNI with tls routes; TCP "
        "servers take tcp routes. Istio's Bookinfo: tsunagi gateway --name "
        "istio-ingressgateway --label istio=ingressgateway. It registers as a workload of "
        "kind gateway (`tsunagi get workloads`) and shows in `tsunagi proxy-status`; "
        "without --port it is no endpoint of a service. With --port SERVICEPORT:LISTENPORT "
        "it is also the mesh service NAME.NAMESPACE.svc.cluster.local at SERVICEPORT, as "
        "Istio's gateways are Kubernetes Services (sidecars route to it by name: Istio's "
        "egress-gateway task), and Gateway servers on SERVICEPORT listen on LISTENPORT.",
    )
    _connection_args(gw)
    gw.add_argument(
        "--name",
        required=True,
        type=_gateway_name,
        help="the gateway's name (e.g. istio-ingressgateway): its service in proxy-status",
    )
    gw.add_argument(
        "--label",
        type=_gateway_label,
        action="append",
        default=[],
        metavar="K=V",
        help="a label Gateway selectors match (e.g. istio=ingressgateway), repeatable",
    )
    gw.add_argument(
        "--namespace",
        "-n",
        type=_dns_label("--namespace"),
        default="default",
        help="the gateway's namespace (default: default); its servers' credentialName "
        "secrets are read from it, as Istio's gateways read theirs",
    )
    gw.add_argument(
        "--service-account",
        type=_service_account,
        default=None,
        metavar="SA",
        help="the gateway's service account (default: its --name): its certificate names "
        "spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SA, which proves its namespace on xDS (only "
        "then does it get its credentialName secrets)",
    )
    gw.add_argument(
        "--address",
        type=_ip_address,
        default="127.0.0.1",
        help="where the listeners bind (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    gw.add_argument(
        "--port",
        type=_gateway_port,
        action="append",
        default=[],
        metavar="SERVICEPORT[:LISTENPORT][/PROTOCOL]",
        help="repeatable: make the gateway an endpoint of its service NAME.NAMESPACE at "
        "SERVICEPORT (Kubernetes' Service port; protocol http by default), reached at "
        "LISTENPORT (its targetPort; default SERVICEPORT); a Gateway server with port.number "
        "SERVICEPORT listens on LISTENPORT (e.g. --port 80:8080 keeps `port: 80` in "
        "Gateways without binding port 80)",
    )
    gw.add_argument(
        "--metrics-port",
        type=_port,
        default=0,
        help="where the agent serves Istio's metrics with the gateway as the source "
        "(GET /stats/prometheus: istio_requests_total reporter=source and friends, merged "
        "with Envoy's own), at --metrics-address; default: a free port, logged and "
        "registered for Prometheus discovery and the dashboard. Access logs (tsunagi up "
        "--access-log or a Telemetry selecting its labels) go to stdout as [gateway "
        "NAME-xxxxxx.NAMESPACE] lines; with tracing on it starts the trace of each request "
        "it receives",
    )
    gw.add_argument(
        "--metrics-address",
        type=_ip_address,
        default="127.0.0.1",
        help="where the metrics endpoint binds (default 127.0.0.1 whatever --address is, so "
        "a gateway on 0.0.0.0 does not expose its stats at the edge; give an interface "
        "address for a Prometheus on another host); registered for Prometheus discovery",
    )
    gw.add_argument("--concurrency", type=int, default=2, help="Envoy worker threads")
    gw.add_argument("--xds-protocol", choices=["sotw", "delta"], default="delta")

    apply = sub.add_parser("apply", help="create or update resources from YAML")
    _connection_args(apply)
    apply.add_argument("-f", "--filename", required=True, help="a YAML file, or - for stdin")
    apply.add_argument(
        "--wait", action="store_true", help="return once every affected proxy has ACKed the change"
    )
    apply.add_argument("--timeout", type=float, default=30.0)
    apply.add_argument("--dry-run", action="store_true")

    get = sub.add_parser("get", help="show resources")
    _connection_args(get)
    get.add_argument(
        "kind",
        help="virtualservice (vs), destinationrule (dr), serviceentry (se), gateway (gw), "
        "sidecar, envoyfilter, workloadentry (we), peerauthentication (pa), "
        "authorizationpolicy (ap), requestauthentication (ra; its JWKS column and `-o yaml` "
        "status tell whether each jwksUri is fetched: OK, FAILING or PENDING), telemetry, "
        "secrets (never their keys), workloads; plurals work too",
    )
    get.add_argument("name", nargs="?")
    get.add_argument(
        "-n", "--namespace", default="", help="only this namespace (default: every namespace)"
    )
    get.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="every namespace (kubectl's habit; also what no -n does)",
    )
    get.add_argument("-o", "--output", choices=["yaml", "json", "wide"], default="")

    delete = sub.add_parser("delete", help="delete resources")
    _connection_args(delete)
    delete.add_argument("-f", "--filename")
    delete.add_argument("kind", nargs="?")
    delete.add_argument("name", nargs="?")
    delete.add_argument("-n", "--namespace", default="default")
    delete.add_argument("--wait", action="store_true")
    delete.add_argument("--timeout", type=float, default=30.0)

    from tsunagi.cli import secrets

    secrets.add_parser(sub, _connection_args)

    ps = sub.add_parser(
        "proxy-status",
        help="which proxies have which config, and each sidecar's inbound mTLS mode",
    )
    _connection_args(ps)

    from tsunagi.cli import proxy_config

    proxy_config.add_parser(sub, _connection_args)

    from tsunagi.cli import token

    token.add_parser(sub, _connection_args)

    dash = sub.add_parser(
        "dashboard",
        help="print the dashboard's URL and open it in a browser",
        description="Print the URL of the running control plane's dashboard and open it in a "
        "browser when one is available, like `istioctl dashboard kiali`. The URL carries a "
        "login code that works once, within a minute (never the API token); the page then "
        "keeps a session cookie for 12 hours of idleness. Run it again for a new code.",
    )
    dash.add_argument(
        "--state-dir",
        help="where `tsunagi up` keeps state (env TSUNAGI_STATE_DIR, default ~/.tsunagi)",
    )
    dash.add_argument("--token", help="API token (env TSUNAGI_TOKEN, default: the state dir's)")
    dash.add_argument("--no-browser", action="store_true", help="only print the URL")

    # The rules' folder is named without importing the demo: every `tsunagi run` builds this
    # parser, and the sidecar's memory budget has no room for modules it never uses.
    demo = sub.add_parser(
        "demo",
        help="the sample app, its rules and a walkthrough",
        description="Run the control plane and Bookinfo with sidecars until Ctrl-C. The YAMLs "
        "of Istio's traffic tasks (routing, fault injection, shifting, timeouts, circuit "
        "breaking, mirroring, outlier detection, CORS, headers) and security tasks (mutual "
        "TLS, authorization, external authorization: the demo runs an authorizer that answers "
        "as Istio's sample does, as ext-authz) ship in tsunagi/demo/rules, under Istio's "
        "names; --tasks prints their full paths and what each shows.",
    )
    demo.add_argument("--state-dir")
    demo.add_argument("--port", type=int, default=9080, help="productpage's local port")
    demo.add_argument(
        "--traffic",
        type=float,
        default=0.0,
        metavar="RPS",
        help="send this many requests a second to the product page, so the dashboard's graph "
        "and charts fill in (default 0: only what you send)",
    )
    demo.add_argument(
        "--no-access-log",
        action="store_true",
        help="keep the sidecars' access log lines out of the terminal (on by default)",
    )
    demo.add_argument(
        "--tasks",
        action="store_true",
        help="print the walkthrough of Istio's traffic and security tasks (apply commands) "
        "and exit",
    )
    return top


def _read(filename: str) -> str:
    """The text of ``filename`` (``-``: stdin); OSError or UnicodeDecodeError if unreadable."""
    # Bytes, then UTF-8: YAML files are UTF-8 whatever the locale says.
    data = sys.stdin.buffer.read() if filename == "-" else Path(filename).read_bytes()
    return data.decode("utf-8")


def _read_error(filename: str, e: OSError | UnicodeDecodeError) -> str:
    if isinstance(e, UnicodeDecodeError):
        return (
            f"error: cannot read {filename}: not UTF-8 text (byte 0x{e.object[e.start]:02x}"
            f" at offset {e.start}); save it as UTF-8"
        )
    return f"error: cannot read {filename}: {e.strerror or e}"


def _wait(client: Client, revision: int, timeout: float, started: float) -> int:
    reply = client.request(
        "GET",
        "/v1/wait",
        query={"revision": revision, "timeout": timeout, "since": started},
        timeout=timeout + 5,
        ok=(200, 504),
    )
    nacked = [p for p in reply.get("proxies", []) if p.get("nacked")]
    if nacked:
        for p in nacked:
            print(f"error: proxy {p['id']} rejected the config: {p['message']}", file=sys.stderr)
        return EXIT_INVALID
    if not reply.get("complete"):
        from tsunagi.cli.output import replica_problems, replica_suffix

        stale = [
            p["id"] + replica_suffix(p) for p in reply.get("proxies", []) if not p.get("synced")
        ]
        silent = replica_problems(
            reply.get("replicas") or [], "its proxies could not be waited for"
        )
        print(
            f"error: timed out after {timeout:.0f}s waiting for "
            f"{', '.join(stale) or ('replicas' if silent else 'proxies')}",
            file=sys.stderr,
        )
        for line in silent:
            print(f"  {line}", file=sys.stderr)
        return EXIT_INVALID
    n = len(reply.get("proxies", []))
    print(f"all {n} prox{'y' if n == 1 else 'ies'} in sync after {reply['elapsed_ms']:.0f} ms")
    return EXIT_OK


def cmd_apply(args: argparse.Namespace, client: Client) -> int:
    started = time.time()
    name = "<stdin>" if args.filename == "-" else args.filename
    try:
        text = _read(args.filename)
    except (OSError, UnicodeDecodeError) as e:
        print(_read_error(name, e), file=sys.stderr)
        return EXIT_INVALID
    reply = client.request(
        "POST", "/v1/apply", {"text": text, "filename": name, "dry_run": args.dry_run}
    )
    for w in reply.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    for n in reply.get("notes", []):
        print(f"note: {n}", file=sys.stderr)
    suffix = " (dry run)" if args.dry_run else ""
    for r in reply["results"]:
        print(f"{r['kind'].lower()}/{r['name']} {r['action']}{suffix}")
    if args.wait and not args.dry_run:
        return _wait(client, reply["revision"], args.timeout, started)
    return EXIT_OK


def cmd_delete(args: argparse.Namespace, client: Client) -> int:
    started = time.time()
    if args.filename:
        try:
            body = {"text": _read(args.filename), "filename": args.filename}
        except (OSError, UnicodeDecodeError) as e:
            print(_read_error(args.filename, e), file=sys.stderr)
            return EXIT_INVALID
    elif args.kind and args.name:
        body = {"kind": args.kind, "name": args.name, "namespace": args.namespace}
    else:
        print("error: use `delete -f FILE` or `delete KIND NAME`", file=sys.stderr)
        return EXIT_USAGE
    reply = client.request("POST", "/v1/delete", body)
    for r in reply["results"]:
        print(f"{r['kind'].lower()}/{r['name']} deleted")
    if args.wait:
        return _wait(client, reply["revision"], args.timeout, started)
    return EXIT_OK


def cmd_get(args: argparse.Namespace, client: Client) -> int:
    query = {"kind": args.kind}
    if args.all_namespaces and (args.name or args.namespace):
        print("error: -A lists every namespace; it takes no NAME and no -n", file=sys.stderr)
        return EXIT_USAGE
    if args.name:
        query["name"] = args.name
        query["namespace"] = args.namespace or "default"
    elif args.namespace:
        query["namespace"] = args.namespace
    reply = client.request("GET", "/v1/resources", query=query)
    from tsunagi.cli import output

    items = reply["items"]
    if items and args.output in ("", "wide") and all(i["kind"] == "Secret" for i in items):
        from tsunagi.cli.secrets import secrets_table

        print(secrets_table(items, args.output == "wide"))
        return EXIT_OK
    print(output.resources(items, args.output))
    return EXIT_OK


def _cmd_create(args: argparse.Namespace, client: Client) -> int:
    from tsunagi.cli.secrets import cmd_create

    return cmd_create(args, client)


def _cmd_token(args: argparse.Namespace, client: Client) -> int:
    from tsunagi.cli.token import cmd_token

    return cmd_token(args, client)


def _cmd_proxy_config(args: argparse.Namespace, client: Client) -> int:
    from tsunagi.cli.proxy_config import cmd_proxy_config

    return cmd_proxy_config(args, client)


def cmd_proxy_status(args: argparse.Namespace, client: Client) -> int:
    from tsunagi.cli import output

    reply = client.request("GET", "/v1/proxies")
    print(output.proxy_status(reply["proxies"]))
    # A replica that did not answer: its proxies are missing above, so say so.
    for line in output.replica_problems(reply.get("replicas") or []):
        print(f"warning: {line}", file=sys.stderr)
    return EXIT_OK


def cmd_up(args: argparse.Namespace) -> int:
    import datetime

    from tsunagi.controlplane.main import Settings, serve
    from tsunagi.controlplane.push import Debounce

    if bool(args.ca_cert) != bool(args.ca_key):
        given, missing = ("--ca-cert", "--ca-key") if args.ca_cert else ("--ca-key", "--ca-cert")
        print(
            f"error: {given} needs {missing}: give the CA's certificate and key together",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.ca_chain and not args.ca_cert:
        print("error: --ca-chain goes with --ca-cert and --ca-key", file=sys.stderr)
        return EXIT_USAGE
    try:
        etcd_tls = _etcd_tls(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    mesh_config = _mesh_config(args.mesh_config)
    if mesh_config is None:
        return EXIT_INVALID
    settings = Settings(
        mesh_config=mesh_config,
        state_dir=state_dir(args.state_dir),
        store=args.store,
        host=args.address,
        xds_port=args.xds_port,
        api_port=args.api_port,
        instance_ttl=args.instance_ttl,
        debounce=Debounce(quiet=args.debounce_after, max_delay=args.debounce_max),
        api_max_body=args.api_max_body_mib * 1024 * 1024,
        api_connections_per_client=args.api_connections_per_client,
        trace_sampling=args.trace_sampling,
        access_log=args.access_log.upper(),
        zipkin_port=args.zipkin_port,
        otlp_port=args.otlp_port,
        trace_max_spans=args.trace_max_spans,
        trace_export=args.trace_export,
        dashboard_port=args.dashboard_port,
        scrape_interval=args.scrape_interval,
        scrape_max_series=args.scrape_max_series,
        prometheus=args.prometheus,
        outbound_policy=args.outbound_policy,
        trust_domain=args.trust_domain,
        root_namespace=args.root_namespace,
        ca_cert=Path(args.ca_cert) if args.ca_cert else None,
        ca_key=Path(args.ca_key) if args.ca_key else None,
        ca_chain=Path(args.ca_chain) if args.ca_chain else None,
        workload_cert_ttl=datetime.timedelta(seconds=args.workload_cert_ttl),
        token_file=Path(args.token_file) if args.token_file else None,
        workload_token_key=Path(args.workload_token_key) if args.workload_token_key else None,
        etcd_tls=etcd_tls,
    )
    import asyncio

    try:
        asyncio.run(serve(settings))
    except (OSError, ValueError, RuntimeError) as e:
        # Ports in use (gRPC raises RuntimeError), a bad --store, an unreadable state dir.
        print(f"error: cannot start the control plane: {e}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _etcd_tls(args: argparse.Namespace) -> EtcdTls | None:
    """``up``'s TLS files for etcd, read and checked now (a bad one stops the start with its
    name); None without ``--etcd-ca``. Raises :class:`ValueError` saying what is wrong."""
    from tsunagi.store.etcd.tls import EtcdTls

    if not args.etcd_ca:
        given = [f for f in ("cert", "key", "server_name") if getattr(args, f"etcd_{f}")]
        if given:
            flag = "--etcd-" + given[0].replace("_", "-")
            raise ValueError(f"{flag} needs --etcd-ca: name the CA that signed etcd's certificate")
        return None
    if not args.store.startswith("etcd://"):
        raise ValueError("--etcd-ca goes with --store etcd://HOST:PORT[,HOST:PORT...]")
    tls = EtcdTls(
        Path(args.etcd_ca),
        Path(args.etcd_cert) if args.etcd_cert else None,
        Path(args.etcd_key) if args.etcd_key else None,
        args.etcd_server_name,
    )
    tls.credentials()
    return tls


def _mesh_config(path: str | None) -> MeshConfig | None:
    """``--mesh-config``'s MeshConfig (empty without the flag); None, after saying why on
    stderr, when the file cannot be read or holds something tsunagi does not honor."""
    from tsunagi.api import ValidationFailed
    from tsunagi.api.mesh_config import MeshConfig, load_mesh_config

    if not path:
        return MeshConfig()
    try:
        return load_mesh_config(Path(path).read_text(encoding="utf-8"), path)
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else e
        print(
            f"error: --mesh-config {path}: cannot read it ({why}); give the path of a "
            "MeshConfig YAML file (extensionProviders: ...)",
            file=sys.stderr,
        )
    except ValidationFailed as e:
        print(f"error: --mesh-config: the control plane did not start:\n{e}", file=sys.stderr)
    return None


def _upstream_conflict(upstreams: Sequence[tuple[str, int, int]], namespace: str) -> str:
    """Why these ``--upstream`` values cannot all hold ('' when they can); a service named
    two ways (``db``, ``DB.default``, ``db.default.svc.cluster.local``) is one service."""
    targets: dict[tuple[str, int], str] = {}
    locals_: set[int] = set()
    for service, port, local in upstreams:
        name = service.lower().removesuffix(".svc.cluster.local").removesuffix(".svc")
        key = (name if "." in name else f"{name}.{namespace}", port)
        if key in targets:
            return (
                f"--upstream {service}:{port} names the same service port as "
                f"{targets[key]}:{port}; give each service port once"
            )
        if local and local in locals_:
            return f"two --upstream values use local port {local}; give each its own (or none)"
        targets[key] = service
        locals_.add(local)
    return ""


def _run_agent(opts: Any, client: Client, run: Callable[[Any, Client], int]) -> int:
    """Run a proxy's agent (sidecar or gateway) in a fresh interpreter that loads only the
    agent (agent/handoff.py); where that cannot be done, it runs right here."""
    from tsunagi.agent.handoff import exec_agent

    exec_agent(opts, client.server, client.token)
    try:
        return run(opts, client)
    except (RuntimeError, TimeoutError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID


def cmd_run(args: argparse.Namespace, client: Client) -> int:
    from tsunagi.agent.envoy import envoy_binary
    from tsunagi.agent.run import RunOptions, run_sidecar

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print(
            "error: give the command to run after --, e.g. tsunagi run --service web -- "
            "python app.py",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.app_metrics and not args.app_metrics.startswith("/"):
        print(
            f"error: --app-metrics {args.app_metrics!r} must be a path on the app's port, "
            "starting with /, e.g. --app-metrics /metrics",
            file=sys.stderr,
        )
        return EXIT_USAGE
    problem = _upstream_conflict(args.upstream, args.namespace)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.address in ("0.0.0.0", "::"):
        # Registered as the endpoint other sidecars connect to: it must be one address.
        print(
            f"error: --address {args.address} is every interface, not an address other "
            "hosts can connect to; give this host's own address (e.g. --address 10.0.0.5)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    opts = RunOptions(
        service=args.service,
        command=tuple(cmd),
        port=args.port[0],
        protocol=args.port[1],
        version=args.version,
        labels=dict(args.label),
        namespace=args.namespace,
        service_account=args.service_account or args.service,
        locality=args.locality,
        outbound_port=args.outbound_port,
        inbound_port=args.inbound_port,
        metrics_port=args.metrics_port,
        app_metrics=args.app_metrics,
        upstreams=tuple(args.upstream),
        name=args.name,
        address=args.address,
        concurrency=args.concurrency,
        delta=args.xds_protocol == "delta",
        envoy=envoy_binary(),
        intercept=args.intercept,
    )
    if args.intercept:
        from tsunagi.agent.intercept import refusal

        reason = refusal()
        if reason:
            print(f"error: {reason}", file=sys.stderr)
            return EXIT_INVALID
    return _run_agent(opts, client, run_sidecar)


def cmd_gateway(args: argparse.Namespace, client: Client) -> int:
    from tsunagi.agent.envoy import envoy_binary
    from tsunagi.agent.gateway import GatewayOptions, run_gateway

    labels = dict(args.label)
    if len(labels) != len(args.label):
        keys = [k for k, _ in args.label]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        print(f"error: --label {twice[0]} is given more than once", file=sys.stderr)
        return EXIT_USAGE
    problem = _gateway_port_conflict(args.port)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if not labels:
        logging.getLogger("tsunagi").warning(
            "no --label: only Gateways with an empty selector select this gateway "
            "(Istio's Bookinfo needs --label istio=ingressgateway)"
        )
    opts = GatewayOptions(
        name=args.name,
        labels=labels,
        namespace=args.namespace,
        service_account=args.service_account or args.name,
        address=args.address,
        ports=tuple(args.port),
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
        concurrency=args.concurrency,
        delta=args.xds_protocol == "delta",
        envoy=envoy_binary(),
    )
    return _run_agent(opts, client, run_gateway)


def _gateway_port_conflict(ports: list[tuple[int, int, str]]) -> str:
    """Why the ``tsunagi gateway --port`` values cannot all hold, or ""."""
    services: set[int] = set()
    listens: dict[int, int] = {}
    for port, listen, _ in ports:
        if port in services:
            return f"--port {port} is given more than once; give each service port once"
        services.add(port)
        if listen in listens:
            return (
                f"--port {listens[listen]}:{listen} and --port {port}:{listen} listen on the "
                "same port; give each service port its own LISTENPORT"
            )
        listens[listen] = port
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("TSUNAGI_LOG", "INFO").upper(),
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.command == "up":
        return cmd_up(args)
    if args.command == "dashboard":
        from tsunagi.cli.dashboard import cmd_dashboard

        return cmd_dashboard(args)
    if args.command == "demo":
        from tsunagi.demo.runner import run_demo
        from tsunagi.demo.tasks import walkthrough

        if args.tasks:
            print(walkthrough())
            return EXIT_OK

        return run_demo(
            state_dir(args.state_dir),
            args.port,
            traffic=args.traffic,
            access_log=not args.no_access_log,
        )
    client = Client.from_env(args.server, args.token, args.state_dir)
    commands = {
        "apply": cmd_apply,
        "get": cmd_get,
        "delete": cmd_delete,
        "proxy-status": cmd_proxy_status,
        "proxy-config": _cmd_proxy_config,
        "create": _cmd_create,
        "token": _cmd_token,
        "run": cmd_run,
        "gateway": cmd_gateway,
    }
    try:
        return commands[args.command](args, client)
    except Unreachable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Rejected as e:
        print(f"error: {e}", file=sys.stderr)
        errors = e.errors
        if errors != [str(e)]:
            for line in errors:
                print(f"  {line}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

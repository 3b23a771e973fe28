"""The sidecar's Istio metrics: the line token both sides agree on, the agent's aggregator
and its Prometheus exposition, the metrics endpoint's merge, and the translation of metric
overrides and access log settings into loggers."""

from __future__ import annotations

import http.client
import os
import re
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tsunagi import proxy_contract as pc
from tsunagi.agent.metrics import BUCKETS, LABELS, Aggregator, Identity, parse_token
from tsunagi.agent.metrics_server import MetricsPipe, MetricsServer, start_metrics
from tsunagi.agent.ports import free_ports
from tsunagi.mesh import Node
from tsunagi.mesh.telemetry import (
    CLIENT,
    SERVER,
    MetricOverride,
    ProxyTelemetry,
)
from tsunagi.xds.translate import accesslog

ME = Identity("productpage", "default", {"app": "productpage", "version": "v1"})
REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"
PEER = "reviews-v2;default;reviews;v2;Kubernetes"
HOST = "127.0.0.1:15006"
"""The endpoint the source lines name (``%UPSTREAM_HOST%``): reviews-v2's sidecar."""
LOOKUPS: list[list[str]] = []


def registry(hosts: list[str]) -> dict[str, str]:
    """The control plane's ``/v1/instances/resolve``, as the tests' mesh has it."""
    LOOKUPS.append(sorted(hosts))
    return {HOST: PEER} if HOST in hosts else {}


def src(
    code: str = "200",
    flags: str = "-",
    grpc: str = "-",
    ms: str = "3",
    token: str = "s",
    host: str = HOST,
    principal: str = "-",
    content_type: str = "text/plain",
) -> str:
    """A source line as the outbound metrics logger writes it."""
    fields = (token, REVIEWS, host, principal, code, flags, grpc, content_type, ms, "80", "300")
    return "\t".join(fields)


def dst(peer: str = PEER, code: str = "200", token: str = "d") -> str:
    """A destination line of the oldest format: no principal, no content type."""
    return "\t".join((token, peer, code, "-", "-", "7", "90", "200"))


_SAMPLE = re.compile(r"^(\w+)\{(.*)\} (\S+)$")


def parsed(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) == name:
            out.append((dict(re.findall(r'(\w+)="([^"]*)"', m.group(2))), float(m.group(3))))
    return out


def test_workload_metadata_is_istios_format_from_labels() -> None:
    labels = {"app": "reviews", "version": "v1"}
    assert pc.workload_name(labels, "reviews") == "reviews-v1"
    assert (
        pc.workload_metadata(labels, "reviews", "shop") == "reviews-v1;shop;reviews;v1;Kubernetes"
    )
    # No version: the app's name, revision "latest"; canonical labels win.
    assert pc.workload_metadata({}, "db", "default") == "db;default;db;latest;Kubernetes"
    canon = {"app": "db", "service.istio.io/canonical-name": "pg"}
    assert pc.workload_metadata(canon, "db", "d").split(";")[2] == "pg"
    assert ";" not in pc.workload_metadata({"app": "a;b"}, "x", "d").split(";", 1)[0][2:]


def test_node_reads_the_metrics_fifo_from_its_metadata() -> None:
    node = Node.from_metadata("n.default", {pc.META_METRICS_LOG: "/run/x.fifo"})
    assert node.metrics_log == "/run/x.fifo"
    assert Node.from_metadata("n.default", {}).metrics_log == ""


def test_source_lines_become_istio_series_with_istio_labels_in_order() -> None:
    agg = Aggregator(ME, registry)
    agg.feed([src(), src(), src("503", "UF")])
    text = agg.render()
    series = parsed(text, "istio_requests_total")
    assert sorted(v for _, v in series) == [1, 2]
    ok = next(lb for lb, v in series if v == 2)
    assert list(ok) == list(LABELS)  # Istio's order
    assert ok["reporter"] == "source"
    assert ok["source_workload"] == "productpage-v1" and ok["source_app"] == "productpage"
    assert ok["destination_workload"] == "reviews-v2" and ok["destination_version"] == "v2"
    assert ok["destination_service"] == "reviews.default.svc.cluster.local"
    assert ok["destination_service_name"] == "reviews"
    assert ok["destination_service_namespace"] == "default"
    assert ok["request_protocol"] == "http" and ok["grpc_response_status"] == ""
    assert ok["connection_security_policy"] == "unknown" and ok["response_flags"] == "-"
    assert "# TYPE istio_request_duration_milliseconds histogram" in text


def test_destinations_are_named_from_the_endpoint_by_the_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tsunagi.agent import metrics

    now = [1000.0]
    monkeypatch.setattr(metrics.time, "monotonic", lambda: now[0])
    LOOKUPS.clear()
    agg = Aggregator(ME, registry)
    outside = "93.184.216.34:443"
    agg.feed([src(), src(host=outside), src(host="-", code="503", flags="UF")])

    def destinations() -> list[tuple[str, str]]:
        series = parsed(agg.render(), "istio_requests_total")
        return sorted((lb["response_code"], lb["destination_workload"]) for lb, _ in series)

    assert destinations() == [("200", "reviews-v2"), ("200", "unknown"), ("503", "unknown")]
    assert [sorted([HOST, outside])] == LOOKUPS  # "-" (no endpoint) is never asked about
    agg.render()
    assert len(LOOKUPS) == 1  # known hosts are remembered, unknown ones for a while
    now[0] += metrics.UNKNOWN_HOST_TTL + 1
    agg.render()
    assert LOOKUPS[1:] == [[outside]]
    now[0] += metrics.KNOWN_HOST_TTL
    agg.render()
    assert LOOKUPS[2:] == [sorted([HOST, outside])]  # an address may change hands

    def down(hosts: list[str]) -> dict[str, str]:
        raise OSError("control plane unreachable")

    lost = Aggregator(ME, down)
    lost.feed([src()])
    (labels, count), *_ = parsed(lost.render(), "istio_requests_total")
    assert labels["destination_workload"] == "unknown" and count == 1  # still rendered


def test_histograms_use_envoys_buckets_cumulatively() -> None:
    agg = Aggregator(ME, registry)
    agg.feed([src(ms="3"), src(ms="3"), src(ms="700"), src(ms="99999999")])
    buckets = parsed(agg.render(), "istio_request_duration_milliseconds_bucket")
    by_le = {lb["le"]: v for lb, v in buckets}
    assert list(by_le)[:-1] == [
        str(int(b)) if b == int(b) else str(b) for b in BUCKETS
    ]  # every bound, then +Inf
    assert by_le["1"] == 0 and by_le["5"] == 2 and by_le["500"] == 2 and by_le["1000"] == 3
    assert by_le["3600000"] == 3 and by_le["+Inf"] == 4  # one above the last bound
    text = agg.render()
    assert parsed(text, "istio_request_duration_milliseconds_count")[0][1] == 4
    assert parsed(text, "istio_request_duration_milliseconds_sum")[0][1] == 3 + 3 + 700 + 99999999
    assert parsed(text, "istio_request_bytes_sum")[0][1] == 320


def test_destination_lines_name_the_caller_or_unknown() -> None:
    agg = Aggregator(ME, registry)
    malformed = [
        "garbage",
        "a;b;c;d",  # four fields
        "a;b;c;d;e;f",
        "a b;default;reviews;v2;Kubernetes",  # not a Kubernetes name
        'x";default;reviews;v2;Kubernetes',
        "a;;c;d;e",
        "a" * 60 + ";" + ";".join(["b" * 60] * 4),  # each field fine, but 304 characters
    ]
    agg.feed([dst(), dst(peer="-"), *(dst(peer=p) for p in malformed)])
    series = parsed(agg.render(), "istio_requests_total")
    known = [lb for lb, _ in series if lb["source_workload"] == "reviews-v2"]
    unknown = [(lb, v) for lb, v in series if lb["source_workload"] == "unknown"]
    assert len(known) == 1 and [v for _, v in unknown] == [1 + len(malformed)]
    # Istio's values for a caller it cannot identify: the revision is "latest".
    (nobody, _), *_ = unknown
    assert nobody["source_canonical_service"] == "unknown"
    assert nobody["source_canonical_revision"] == "latest"
    assert nobody["source_app"] == "unknown" and nobody["source_version"] == "unknown"
    assert nobody["source_workload_namespace"] == "unknown"
    assert agg.folded == len(malformed)  # a malformed peer never opens a series
    lb = known[0]
    assert lb["reporter"] == "destination" and lb["source_app"] == "reviews"
    assert lb["destination_workload"] == "productpage-v1"
    assert lb["destination_service"] == "productpage.default.svc.cluster.local"
    assert lb["connection_security_policy"] == "none"


def test_the_callers_certificate_names_its_principal() -> None:
    """Over mesh mTLS the destination line carries the caller certificate's URI SANs
    (``%DOWNSTREAM_PEER_URI_SAN%``): Istio's ``source_principal`` and
    ``connection_security_policy``; a line of an older config (no such field) still counts."""
    agg = Aggregator(ME, registry)
    spiffe_id = "spiffe://cluster.local/ns/default/sa/reviews"

    def with_principal(principal: str) -> str:
        token, peer, *rest = dst().split("\t")
        return "\t".join((token, peer, principal, *rest))

    agg.feed([with_principal(spiffe_id), with_principal("-"), dst()])
    series = {
        (lb["source_principal"], lb["connection_security_policy"]): v
        for lb, v in parsed(agg.render(), "istio_requests_total")
    }
    assert series == {(spiffe_id, "mutual_tls"): 1, ("unknown", "none"): 2}
    # Every destination metric line asks Envoy for it.
    node = Node("productpage-1", metrics_log="/tmp/m")
    [logger, *_] = accesslog.http_access_loggers(node, ProxyTelemetry(), accesslog.INBOUND)
    line = logger["typed_config"]["log_format"]["text_format_source"]["inline_string"]
    assert line.split("\t")[2] == "%DOWNSTREAM_PEER_URI_SAN%"


def _metric_lines(loggers: list[dict[str, object]]) -> list[list[str]]:
    out = []
    for lg in loggers:
        fmt = lg["typed_config"]["log_format"]  # type: ignore[index]
        out.append(fmt["text_format_source"]["inline_string"].rstrip("\n").split("\t"))
    return out


def test_the_servers_certificate_names_the_destination_principal() -> None:
    """On the client side Istio's ``destination_principal`` is the server certificate's
    URI SAN when the upstream connection is mTLS (``%UPSTREAM_PEER_URI_SAN%``), unknown
    over plain text; ``connection_security_policy`` stays unknown there, as Istio reports
    it. A line of an older config (no such field) still counts."""
    agg = Aggregator(ME, registry)
    reviews = "spiffe://cluster.local/ns/default/sa/reviews"
    agg.feed([src(principal=reviews), src(principal=reviews), src()])
    # Several URI SANs (Envoy joins them with commas): the workload identity among them.
    agg.feed([src(principal=f"https://reviews.example/,{reviews}")])
    agg.feed(["\t".join(("s", REVIEWS, HOST, "200", "-", "-", "3", "80", "300"))])
    series = parsed(agg.render(), "istio_requests_total")
    assert sorted((lb["destination_principal"], v) for lb, v in series) == [
        (reviews, 3),
        ("unknown", 2),
    ]
    assert {lb["connection_security_policy"] for lb, _ in series} == {"unknown"}
    assert {lb["destination_workload"] for lb, _ in series} == {"reviews-v2"}
    assert agg.bad_lines == 0 and agg.folded == 0
    # Every source metric line asks Envoy for it, right after the endpoint.
    node = Node("productpage-1", metrics_log="/tmp/m")
    http, tunnel = _metric_lines(
        accesslog.http_access_loggers(node, ProxyTelemetry(), accesslog.OUTBOUND)
    )
    (tcp,) = _metric_lines(accesslog.tcp_access_loggers(node, ProxyTelemetry(), outbound=True))
    assert http[2:4] == ["%UPSTREAM_HOST%", "%UPSTREAM_PEER_URI_SAN%"]
    assert tcp[7:] == ["%UPSTREAM_HOST%", "%UPSTREAM_PEER_URI_SAN%"]
    assert tunnel[7:] == ["%UPSTREAM_HOST%", "%UPSTREAM_PEER_URI_SAN%", "%REQ(:AUTHORITY)%"]


def test_a_servers_uri_that_is_no_workload_identity_opens_no_series(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server outside the mesh chooses the certificate it presents: a URI that is not a
    workload identity counts as unknown, whatever its value, so it opens no series of its
    own; past the cap, new identities fold with the endpoint into the unknown series."""
    from tsunagi.agent import metrics

    monkeypatch.setattr(metrics, "MAX_HTTP_SERIES", 3)
    monkeypatch.setattr(metrics, "FOLDED_HEADROOM", 1)
    agg = Aggregator(ME, registry)
    odd = [
        "https://api.example/1",
        "spiffe://cluster.local/ns/default/sa/",  # an empty service account
        "spiffe://cluster.local/ns/default/sa/web/extra",
        "spiffe://cluster.local/ns/default/svc/web",
        'spiffe://cluster.local/ns/a"b/sa/web',
        "spiffe://" + "t" * 250 + "/ns/default/sa/web",  # each part fine, 280 characters
        "urn:uuid:1",
    ]
    agg.feed([src(principal=p) for p in odd])
    series = parsed(agg.render(), "istio_requests_total")
    assert [(lb["destination_principal"], v) for lb, v in series] == [("unknown", len(odd))]
    assert agg.folded == 0  # the endpoint is known: only the principal is not
    forged = [f"spiffe://cluster.local/ns/default/sa/w{i}" for i in range(10)]
    agg.feed([src(principal=p) for p in forged])
    series = parsed(agg.render(), "istio_requests_total")
    assert len(series) == 4 and sum(v for _, v in series) == len(odd) + 10
    folded = [(lb, v) for lb, v in series if lb["destination_workload"] == "unknown"]
    assert [(lb["destination_principal"], v) for lb, v in folded] == [("unknown", 8)]
    assert agg.folded == 8


def test_outbound_tcp_names_the_servers_principal() -> None:
    """``--upstream`` listeners' connections carry the server's principal too (on their
    connect, periodic and end lines alike); a non-identity counts as unknown; lines of an
    older config (an upstream listener's, a tunnel's) still count."""
    agg = Aggregator(ME, registry)
    echo = "outbound|9000||tcp-echo.default.svc.cluster.local"
    sa = "spiffe://cluster.local/ns/default/sa/tcp-echo"

    def tcp(kind: str, conn: str, rx: int, tx: int, principal: str) -> str:
        return "\t".join(("u", kind, conn, str(rx), str(tx), "-", echo, HOST, principal))

    agg.feed(
        [
            tcp("TcpUpstreamConnected", "1", 0, 0, sa),
            tcp("TcpPeriodic", "1", 4, 4, sa),
            tcp("TcpConnectionEnd", "1", 10, 20, sa),
            tcp("TcpConnectionEnd", "2", 5, 5, "https://api.example/"),
            "\t".join(("u", "TcpConnectionEnd", "3", "1", "1", "-", echo, HOST)),  # older
        ]
    )
    old_tunnel = ("u", "DownstreamEnd", "4", "7", "9", "-", "PassthroughCluster", "-", "x.test:443")
    agg.feed(["\t".join(old_tunnel)])
    text = agg.render()
    assert agg.bad_lines == 0
    opened = parsed(text, "istio_tcp_connections_opened_total")
    by_principal = sorted(
        (lb["destination_principal"], lb["destination_service"], v) for lb, v in opened
    )
    assert by_principal == [
        (sa, "tcp-echo.default.svc.cluster.local", 1),
        ("unknown", "tcp-echo.default.svc.cluster.local", 2),
        ("unknown", "x.test", 1),
    ]
    sent = {lb["destination_principal"]: v for lb, v in parsed(text, "istio_tcp_sent_bytes_total")}
    assert sent[sa] == 20
    assert {lb["connection_security_policy"] for lb, _ in opened} == {"unknown"}


def test_grpc_and_passthrough_lines() -> None:
    agg = Aggregator(ME, registry)
    assert parse_token("s|grpc").grpc and not parse_token("s").grpc
    # gRPC by the request's content type, Istio's rule: exactly application/grpc, or
    # application/grpc+ and a codec (the line carries the type cut to 24 characters).
    agg.feed([src(grpc="14", code="200", content_type="application/grpc")])
    agg.feed([src(grpc="0", code="200", content_type="application/grpc+proto")])
    # A gRPC request that got no response: no status, still gRPC (the request said so).
    agg.feed([src(grpc="-", code="0", flags="DC", content_type="application/grpc")])
    # Not gRPC: grpc-web, anything else, none. Envoy derives a status from the HTTP code
    # for those; it is no gRPC status, so none is reported.
    agg.feed([src(grpc="2", code="500", content_type="application/grpc-web+proto")])
    agg.feed([src(grpc="0", code="200", content_type="application/json")])
    agg.feed([src(grpc="0", code="200", content_type="-")])
    # An older config's line: a second logger for gRPC requests, no content type.
    older = "\t".join(("s|grpc", REVIEWS, HOST, "-", "200", "-", "5", "3", "80", "300"))
    agg.feed([older])
    agg.feed(["\t".join(("s", "PassthroughCluster", "-", "-", "200", "-", "-", "1", "1", "1"))])
    assert agg.bad_lines == 0
    series = parsed(agg.render(), "istio_requests_total")
    grpc = [lb for lb, _ in series if lb["request_protocol"] == "grpc"]
    assert sorted(lb["grpc_response_status"] for lb in grpc) == ["", "0", "14", "5"]
    assert {lb["response_code"] for lb in grpc} == {"0", "200"}
    http = [(lb["response_code"], v) for lb, v in series if lb["request_protocol"] == "http"]
    assert sorted(http) == [("200", 1), ("200", 2), ("500", 1)]
    assert {lb["grpc_response_status"] for lb, _ in series if lb["request_protocol"] == "http"} == {
        ""
    }
    passthrough = next(lb for lb, _ in series if lb["destination_service"] == "PassthroughCluster")
    assert passthrough["destination_service_name"] == "PassthroughCluster"
    assert passthrough["destination_workload"] == "unknown"


def test_bad_lines_are_counted_not_fatal() -> None:
    agg = Aggregator(ME, registry)
    agg.feed(["", "nonsense", "s\tshort", "x\t1\t2", src(ms="not-a-number"), "s|BAD\t1", src()])
    assert agg.bad_lines == 5  # an empty line (between two newlines) is no line
    assert sum(v for _, v in parsed(agg.render(), "istio_requests_total")) == 1


def test_a_batch_of_repeats_counts_as_the_same_lines_fed_one_by_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tsunagi.agent import metrics

    monkeypatch.setattr(metrics, "MAX_HTTP_SERIES", 2)
    monkeypatch.setattr(metrics, "FOLDED_HEADROOM", 1)
    lines = [src(ms="3"), src(ms="3"), dst(), src(ms="40"), src(ms="3"), "nonsense", "nonsense"]
    lines += [dst(peer="w9;default;w9;v1;Kubernetes")] * 3  # over the cap: folded, 3 times
    lines += [dst(peer="w8;default;w8;v1;Kubernetes", code="503")] * 2  # past the headroom
    lines += ["t\tTcpPeriodic\t7\t100\t40\t-"] * 2 + ["t\tTcpConnectionEnd\t7\t150\t90\t-"]
    batch, single = Aggregator(ME, registry), Aggregator(ME, registry)
    batch.feed(lines)
    for line in lines:
        single.feed([line])
    assert batch.render() == single.render()
    assert (batch.bad_lines, batch.folded, batch.dropped) == (2, 3, {"http": 2, "tcp": 0})
    assert (single.bad_lines, single.folded, single.dropped) == (2, 3, {"http": 2, "tcp": 0})
    assert parsed(batch.render(), "istio_request_duration_milliseconds_sum")[0][1] == 49


def test_tcp_cumulative_bytes_become_deltas_per_connection() -> None:
    agg = Aggregator(ME, registry)
    agg.feed(
        [
            "t\tTcpUpstreamConnected\t7\t0\t0\t-",
            "t\tTcpPeriodic\t7\t100\t40\t-",
            "t\tTcpUpstreamConnected\t8\t0\t0\t-",
            "t\tTcpConnectionEnd\t7\t150\t90\t-",
            "t\tTcpConnectionEnd\t9\t0\t0\tUF",  # never connected upstream
        ]
    )
    text = agg.render()

    def total(name: str) -> float:
        return sum(v for _, v in parsed(text, name))

    assert total("istio_tcp_connections_opened_total") == 3
    assert total("istio_tcp_connections_closed_total") == 2
    assert total("istio_tcp_received_bytes_total") == 150
    assert total("istio_tcp_sent_bytes_total") == 90
    (labels, _), *_ = parsed(text, "istio_tcp_sent_bytes_total")
    assert labels["request_protocol"] == "tcp" and "response_code" not in labels


def test_overrides_in_the_token_disable_metrics_and_remove_labels() -> None:
    token = "s|REQUEST_SIZE!|RESPONSE_SIZE!|REQUEST_COUNT-source_app|REQUEST_COUNT-response_code"
    assert parse_token(token).disabled == {"REQUEST_SIZE", "RESPONSE_SIZE"}
    agg = Aggregator(ME, registry)
    agg.feed([src(token=token), src(token=token, code="503")])
    text = agg.render()
    # Two codes merge into one series once response_code is removed.
    (labels, value), *rest = parsed(text, "istio_requests_total")
    assert not rest and value == 2
    assert "source_app" not in labels and "response_code" not in labels
    assert "istio_request_bytes" not in text and "istio_response_bytes" not in text
    # The duration keeps its labels: one series per code.
    durations = parsed(text, "istio_request_duration_milliseconds_count")
    assert sorted((lb["response_code"], v) for lb, v in durations) == [("200", 1), ("503", 1)]


def test_counts_are_exact_under_concurrent_scrapes() -> None:
    agg = Aggregator(ME, registry)
    lines = [src(code=str(200 + i % 3)) for i in range(100)]
    stop = threading.Event()
    seen: list[list[float]] = [[], [], []]

    def scraper(mine: list[float]) -> None:
        while not stop.is_set():
            mine.append(sum(v for _, v in parsed(agg.render(), "istio_requests_total")))

    threads = [threading.Thread(target=scraper, args=(seen[i],)) for i in range(3)]
    for t in threads:
        t.start()
    for _ in range(50):
        agg.feed(lines)
    stop.set()
    for t in threads:
        t.join()
    text = agg.render()
    assert sum(v for _, v in parsed(text, "istio_requests_total")) == 5000
    assert sum(v for _, v in parsed(text, "istio_request_bytes_count")) == 5000
    # Each scrape saw whole batches: never a count torn between two lines of a batch.
    for mine in seen:
        assert all(v % 100 == 0 for v in mine) and mine == sorted(mine), mine


def test_metrics_token_resolves_overrides_per_mode() -> None:
    t = accesslog.metrics_token
    assert t("s", (), CLIENT) == "s"
    off = (MetricOverride(disabled=True),)
    assert t("s", off, CLIENT) is None and t("d", off, SERVER) is None
    server_only = (MetricOverride(mode=SERVER, disabled=True),)
    assert t("s", server_only, CLIENT) == "s" and t("d", server_only, SERVER) is None
    overrides = (
        MetricOverride(disabled=True),
        MetricOverride(metric="REQUEST_COUNT", disabled=False),
        MetricOverride(metric="REQUEST_COUNT", removed_tags=("source_app",)),
    )
    token = t("s", overrides, CLIENT)
    assert token == "s|REQUEST_COUNT-source_app|REQUEST_DURATION!|REQUEST_SIZE!|RESPONSE_SIZE!"
    assert parse_token(token).removed == {"REQUEST_COUNT": {"source_app"}}
    # A TCP metric override leaves HTTP alone, and the other way round.
    assert t("s", (MetricOverride(metric="TCP_SENT_BYTES", disabled=True),), CLIENT) == "s"
    assert t("t", (MetricOverride(metric="TCP_SENT_BYTES", disabled=True),), SERVER) == (
        "t|TCP_SENT_BYTES!"
    )


def test_loggers_follow_the_fifo_overrides_and_access_log_settings() -> None:
    node = Node.from_metadata("w.default", {pc.META_METRICS_LOG: "/x.fifo"})
    plain = accesslog.http_access_loggers(node, ProxyTelemetry(), accesslog.OUTBOUND)
    assert [lg["name"] for lg in plain] == ["envoy.access_loggers.file"] * 2
    http, tunnel = (
        lg["typed_config"]["log_format"]["text_format_source"]["inline_string"] for lg in plain
    )
    # Every request, gRPC or not, one line: 10 operators, the gRPC status and the request's
    # content type (cut to what tells gRPC's apart) among them; the agent decides.
    assert http.startswith("s\t%UPSTREAM_CLUSTER%\t") and http.count("%") == 20
    assert "\t%GRPC_STATUS_NUMBER%\t%REQ(CONTENT-TYPE):24%\t%DURATION%\t" in http
    assert plain[0]["filter"] == accesslog.NOT_CONNECT
    # CONNECT tunnels (HTTPS_PROXY): an outbound TCP line with the CONNECT's target.
    assert tunnel.startswith("u\t%ACCESS_LOG_TYPE%\t") and tunnel.endswith("%REQ(:AUTHORITY)%\n")
    assert plain[1]["filter"] == accesslog.CONNECT_REQUEST
    # Inbound: one logger that every request reaches (no CONNECT comes in).
    (inbound,) = accesslog.http_access_loggers(node, ProxyTelemetry(), accesslog.INBOUND, 9080)
    assert "filter" not in inbound
    off = ProxyTelemetry(metric_overrides=(MetricOverride(mode=CLIENT, disabled=True),))
    assert accesslog.http_access_loggers(node, off, accesslog.OUTBOUND) == []
    assert accesslog.http_access_loggers(node, off, accesslog.INBOUND, 9080)
    assert accesslog.http_access_loggers(Node("x"), ProxyTelemetry(), accesslog.OUTBOUND) == []
    text = ProxyTelemetry(access_log="TEXT", access_log_filter="response.code >= 400")
    (stdout,) = accesslog.http_access_loggers(Node("x.default"), text, accesslog.INBOUND, 1)
    fmt = stdout["typed_config"]["log_format"]["text_format_source"]["inline_string"]
    assert fmt.startswith("[sidecar x.default] [%START_TIME%]")
    cel = stdout["filter"]["extension_filter"]
    assert cel["typed_config"]["expression"] == "response.code >= 400"
    (tcp,) = accesslog.tcp_access_loggers(Node("x.default"), text)
    assert tcp["filter"]["and_filter"]["filters"][1] == {
        "log_type_filter": {"types": ["TcpConnectionEnd"]}
    }


def _serve_once(body: bytes, status: int = 200) -> tuple[int, threading.Thread]:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)

    def answer() -> None:
        conn, _ = sock.accept()
        with conn:
            conn.recv(65536)
            head = (
                f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            conn.sendall(head.encode() + body)
        sock.close()

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    return sock.getsockname()[1], t


def _get(port: int, path: str) -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def test_endpoint_merges_ours_envoys_and_the_apps_and_survives_failures() -> None:
    agg = Aggregator(ME, registry)
    agg.feed([src()])
    envoy_port, _ = _serve_once(b"# TYPE envoy_server_live gauge\nenvoy_server_live 1\n")
    app_port, _ = _serve_once(b"# TYPE app_hits counter\napp_hits 5\n# EOF\n")
    server = MetricsServer(0, agg, envoy_port, app_port, "/metrics")
    server.start()
    try:
        status, text = _get(server.port, "/stats/prometheus")
        assert status == 200
        order = [
            text.index(s) for s in ("istio_requests_total{", "envoy_server_live 1", "app_hits 5")
        ]
        assert order == sorted(order)  # Istio's agent's order: its own, Envoy's, the app's
        assert "# EOF" not in text
        # Now neither Envoy nor the app answers: the rest is still served, failures counted.
        status, text = _get(server.port, "/stats/prometheus")
        assert status == 200 and "istio_requests_total{" in text
        assert 'istio_agent_scrape_failures_total{type="envoy"} 1' in text
        assert 'istio_agent_scrape_failures_total{type="application"} 1' in text
        assert _get(server.port, "/other")[0] == 404
    finally:
        server.close()


def test_pipe_feeds_the_aggregator_and_never_blocks_the_writer() -> None:
    agg = Aggregator(ME, registry)
    with tempfile.TemporaryDirectory() as d:
        pipe = MetricsPipe(Path(d) / "m.fifo", agg)
        pipe.start()
        # A writer opening it (as Envoy does) neither blocks nor needs the reader first.
        fd = os.open(pipe.path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, ("\n".join([src()] * 10) + "\n" + src()[:20]).encode())
            os.write(fd, (src()[20:] + "\n").encode())  # a line split across two writes
        finally:
            os.close(fd)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if sum(v for _, v in parsed(agg.render(), "istio_requests_total")) == 11:
                break
            time.sleep(0.02)
        assert sum(v for _, v in parsed(agg.render(), "istio_requests_total")) == 11
        assert agg.bad_lines == 0
        pipe.close()


def test_a_fixed_metrics_port_in_use_is_a_clear_error() -> None:
    import socket

    (port,) = free_ports(1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        with pytest.raises(OSError):
            MetricsServer(port, Aggregator(ME, registry), 1)


def test_series_are_capped_and_the_excess_is_counted_with_the_peer_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tsunagi.agent import metrics

    monkeypatch.setattr(metrics, "MAX_HTTP_SERIES", 5)
    monkeypatch.setattr(metrics, "FOLDED_HEADROOM", 2)
    monkeypatch.setattr(metrics, "MAX_TCP_SERIES", 1)
    agg = Aggregator(ME, registry)
    # A caller forging a new identity per request: 5 series, then one with the peer unknown.
    forged = [dst(peer=f"w{i};default;w{i};v1;Kubernetes") for i in range(50)]
    agg.feed(forged)
    text = agg.render()
    series = parsed(text, "istio_requests_total")
    assert len(series) == 6 and sum(v for _, v in series) == 50  # every request counted
    assert total_of(series, source_workload="unknown") == 45 and agg.folded == 45
    # Folded series may still open up to the headroom (codes differ), then lines drop.
    agg.feed([dst(peer=f"x{i};default;x;v1;Kubernetes", code=str(500 + i)) for i in range(3)])
    assert len(parsed(agg.render(), "istio_requests_total")) == 7
    assert agg.dropped == {"http": 2, "tcp": 0}
    # An existing series keeps counting whatever the cap.
    agg.feed([dst(peer="w0;default;w0;v1;Kubernetes")])
    assert total_of(parsed(agg.render(), "istio_requests_total"), source_workload="w0") == 2
    agg.feed(["t\tTcpConnectionEnd\t1\t0\t0\t-", "t\tTcpConnectionEnd\t2\t0\t0\tUF"])
    assert agg.dropped["tcp"] == 1
    assert len(parsed(agg.render(), "istio_tcp_connections_closed_total")) == 1


def total_of(series: list[tuple[dict[str, str], float]], **labels: str) -> float:
    return sum(v for lb, v in series if all(lb.get(k) == x for k, x in labels.items()))


def test_the_cap_is_reported_by_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    from tsunagi.agent import metrics

    monkeypatch.setattr(metrics, "MAX_HTTP_SERIES", 1)
    monkeypatch.setattr(metrics, "FOLDED_HEADROOM", 0)
    agg = Aggregator(ME, registry)
    agg.feed([dst(peer=f"w{i};default;w;v1;Kubernetes") for i in range(3)])
    server = MetricsServer(0, agg, _closed_port(), 0, "")
    server.start()
    try:
        text = _get(server.port, "/stats/prometheus")[1]
    finally:
        server.close()
    assert parsed(text, "istio_agent_metric_lines_dropped_total") == [
        ({"protocol": "http"}, 2),
        ({"protocol": "tcp"}, 0),
    ]
    assert "istio_agent_metric_requests_folded_total 0" in text  # nothing could be folded into


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    (port,) = free_ports(1)
    return port


def test_lean_path_serves_istios_request_metrics_without_fetching_anything() -> None:
    agg = Aggregator(ME, registry)
    agg.feed([src(), dst()])
    # Envoy's and the app's ports answer nothing: the lean path must not need them.
    server = MetricsServer(0, agg, _closed_port(), _closed_port(), "/metrics")
    server.start()
    try:
        status, text = _get(server.port, pc.ISTIO_METRICS_PATH)
        full = _get(server.port, "/stats/prometheus")[1]
    finally:
        server.close()
    assert status == 200
    families = {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE")}
    assert families == {"istio_requests_total", "istio_request_duration_milliseconds"}
    assert sum(v for _, v in parsed(text, "istio_requests_total")) == 2
    assert "istio_agent" not in text and "istio_request_bytes" not in text
    # Nothing was fetched for it: only the full scrape tried (and failed) Envoy and the app.
    assert "istio_agent_scrapes_total 1" in full
    assert 'istio_agent_scrape_failures_total{type="envoy"} 1' in full


def _trickler() -> tuple[int, threading.Event]:
    """An app that answers its metrics a byte at a time, forever (until the event)."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    stop = threading.Event()

    def serve() -> None:
        with sock:
            conn, _ = sock.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                while not stop.wait(0.1):
                    try:
                        conn.sendall(b"#")
                    except OSError:
                        return

    threading.Thread(target=serve, daemon=True).start()
    return sock.getsockname()[1], stop


def test_a_trickling_app_cannot_hold_a_scrape_past_its_budget() -> None:
    # Each byte arrives well within a socket timeout: only a bound on the whole fetch ends it.
    agg = Aggregator(ME, registry)
    agg.feed([src()])
    envoy_port, _ = _serve_once(b"envoy_server_live 1\n")
    app_port, stop = _trickler()
    server = MetricsServer(0, agg, envoy_port, app_port, "/metrics")
    server.start()
    try:
        status, text = _get(server.port, "/stats/prometheus")  # the client waits 5 s at most
    finally:
        stop.set()
        server.close()
    assert status == 200 and "envoy_server_live 1" in text and "istio_requests_total{" in text
    assert 'istio_agent_scrape_failures_total{type="application"} 1' in text


def test_close_ends_the_pipe_reader_and_the_server_thread() -> None:
    import socket

    with tempfile.TemporaryDirectory() as d:
        pipe = MetricsPipe(Path(d) / "m.fifo", Aggregator(ME, registry))
        pipe.start()
        reader = pipe._thread
        assert reader.is_alive()  # blocked in read(): nothing was written
        pipe.close()
        assert not reader.is_alive()
    server = MetricsServer(0, Aggregator(ME, registry), _closed_port())
    server.start()
    serving = server._thread
    port = server.port
    assert serving.is_alive()  # blocked in accept()
    server.close()
    assert not serving.is_alive()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 5):
        pass


def test_a_taken_metrics_port_names_the_flag_and_leaves_no_pipe_reader() -> None:
    """Sidecar and gateway start their metrics the same way (:func:`start_metrics`): a port
    in use is an error naming ``--metrics-port``, and the pipe already started is closed."""
    import socket

    with tempfile.TemporaryDirectory() as d, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        before = set(threading.enumerate())
        with pytest.raises(RuntimeError, match=f"port {port}: .*--metrics-port"):
            start_metrics(d, Aggregator(ME, registry), "x", port, _closed_port())
        assert not [t for t in set(threading.enumerate()) - before if t.name == "metrics-pipe"]
        again = os.path.join(d, "again")
        os.mkdir(again)
        pipe, server = start_metrics(again, Aggregator(ME, registry), "x", 0, _closed_port())
        try:
            assert server.port > 0 and pipe.path == os.path.join(again, "metrics.fifo")
        finally:
            server.close()
            pipe.close()


def test_a_connect_tunnel_to_a_tls_port_counts_only_as_tcp() -> None:
    """The CONNECT stream's own line (its tunnel logger's, to the internal listener's
    cluster; the plain request logger skips CONNECTs) is not counted: the listener behind it
    reports the connection as outbound TCP to where it went."""
    agg = Aggregator(ME, registry)
    tunnel = f"{pc.CONNECT_CLUSTER_PREFIX}443|api.example.test"
    line = ("u", "DownstreamEnd", "6", "900", "4000", "-", tunnel, "-", "-", "api.example.test:443")
    agg.feed(["\t".join(line)])
    cluster = "outbound|443|a|api.example.test"
    agg.feed(["\t".join(("u", "TcpConnectionEnd", "7", "900", "4000", "-", cluster, HOST, "-"))])
    text = agg.render()
    assert parsed(text, "istio_requests_total") == [] and agg.bad_lines == 0
    ((labels, value),) = parsed(text, "istio_tcp_connections_opened_total")
    assert labels["destination_service"] == "api.example.test" and value == 1


def test_a_tunnel_through_passthrough_counts_as_tcp_to_the_host_asked_for() -> None:
    """A CONNECT to a host the mesh does not know (ALLOW_ANY): the outbound listener's tunnel
    line becomes Istio's istio_tcp_* to PassthroughCluster, destination_service the host;
    a refused CONNECT (no upstream) and one to an internal listener count as nothing."""
    agg = Aggregator(ME, registry)
    tunnel = ("u", "DownstreamEnd", "9", "517", "3100", "-", "PassthroughCluster")
    agg.feed(["\t".join((*tunnel, "127.0.0.1:8443", "-", "secure.localhost:8443"))])
    agg.feed(["\t".join(("u", "DownstreamEnd", "10", "0", "0", "-", "-", "-", "-", "x.test:443"))])
    internal = f"{pc.CONNECT_CLUSTER_PREFIX}443|api.example.test"
    agg.feed(["\t".join(("u", "DownstreamEnd", "11", "5", "5", "-", internal, "-", "-", "a:443"))])
    text = agg.render()
    assert agg.bad_lines == 0 and parsed(text, "istio_requests_total") == []
    ((labels, value),) = parsed(text, "istio_tcp_connections_opened_total")
    assert value == 1 and labels["reporter"] == "source"
    assert labels["destination_service"] == "secure.localhost"
    assert labels["destination_service_name"] == "PassthroughCluster"
    ((_, closed),) = parsed(text, "istio_tcp_connections_closed_total")
    ((_, sent),) = parsed(text, "istio_tcp_sent_bytes_total")
    assert closed == 1 and sent == 3100


def test_over_mtls_this_proxy_names_its_own_principal() -> None:
    """This proxy's own certificate is the one presented over mesh mTLS: once the agent
    knows its SPIFFE ID, it is Istio's ``destination_principal`` on the server side and
    ``source_principal`` on the client side of mTLS requests; plain text keeps ``unknown``."""
    agg = Aggregator(ME, registry)
    me = "spiffe://cluster.local/ns/default/sa/productpage"
    caller = "spiffe://cluster.local/ns/default/sa/reviews"
    agg.use_identity(me)
    token, peer, *rest = dst().split("\t")
    agg.feed(["\t".join((token, peer, caller, *rest)), dst()])
    agg.feed([src(principal=caller), src()])
    series = parsed(agg.render(), "istio_requests_total")
    inbound = {
        lb["source_principal"]: lb["destination_principal"]
        for lb, _ in series
        if lb["reporter"] == "destination"
    }
    outbound = {
        lb["destination_principal"]: lb["source_principal"]
        for lb, _ in series
        if lb["reporter"] == "source"
    }
    assert inbound == {caller: me, "unknown": "unknown"}
    assert outbound == {caller: me, "unknown": "unknown"}

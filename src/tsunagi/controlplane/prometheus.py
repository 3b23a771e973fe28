"""Prometheus finds the mesh: HTTP service discovery and a ready-made ``prometheus.yml``.

``GET /v1/prometheus/targets`` answers in Prometheus' HTTP SD format (a JSON list of
``{"targets": ["host:port"], "labels": {...}}``): one group for this control plane and one
per registered instance whose sidecar serves metrics. Each group carries the labels Istio's
Kubernetes pod discovery gives (``namespace``, ``pod``, ``app``, ``version``), which is what
Istio's dashboards, recording rules and Kiali select on, and ``__meta_tsunagi_role``
(``control-plane``, ``sidecar`` or ``gateway``) for the jobs of :func:`config` to keep their
own targets.

``tsunagi up`` writes :func:`config` to ``STATE_DIR/prometheus.yml``: two jobs,
``tsunagi-control-plane`` (``/metrics``, like istiod's monitoring port, with the API token)
and ``envoy-stats`` (each sidecar's ``/stats/prometheus``, Istio's job name for sidecars),
both discovered from that endpoint with the token file as credentials.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import yaml

from tsunagi.registry import Instance

TARGETS_PATH = "/v1/prometheus/targets"
CONTROL_PLANE_JOB = "tsunagi-control-plane"
SIDECAR_JOB = "envoy-stats"
ROLE_LABEL = "__meta_tsunagi_role"
SIDECAR_METRICS_PATH = "/stats/prometheus"
"""Istio's agent serves the merged sidecar metrics here."""

SCRAPE_INTERVAL = "5s"
"""Istio's sample Prometheus scrapes every 15 s. A local mesh has a handful of targets, so
5 s costs little and a change shows in a dashboard's 1-minute rate windows within seconds."""


def host_port(host: str, port: int) -> str:
    """``host:port`` as a scrape target (IPv6 in brackets; a wildcard bind is reached on
    loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    try:
        if ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass  # a host name
    return f"{host}:{port}"


def scraped(instances: Iterable[Instance]) -> Iterator[tuple[Instance, str]]:
    """Every instance that serves metrics (``metrics_port`` > 0) with its ``host:port``, in
    namespace and name order, once per ``host:port``: a proxy that registered several
    instances (a gateway's ``--port``s, a sidecar's services) is scraped once, or its
    counters would be summed twice."""
    seen: set[str] = set()
    for inst in sorted(instances, key=lambda i: (i.namespace, i.name)):
        if inst.metrics_port > 0:
            target = host_port(inst.metrics_host, inst.metrics_port)
            if target not in seen:
                seen.add(target)
                yield inst, target


def targets(
    instances: Iterable[Instance], control_plane: str, root_namespace: str = "istio-system"
) -> list[dict[str, Any]]:
    """The HTTP SD target groups: the control plane at ``control_plane`` (``host:port`` of
    its API), then every instance with a metrics port, once per address and port (a sidecar
    is scraped once however many instances it registered)."""
    groups: list[dict[str, Any]] = [
        {
            "targets": [control_plane],
            "labels": {
                ROLE_LABEL: "control-plane",
                "__metrics_path__": "/metrics",
                # istiod's pod labels: Istio's control-plane dashboard selects app="istiod".
                "app": "istiod",
                "namespace": root_namespace,
                "pod": f"istiod-{socket.gethostname()}",
            },
        }
    ]
    for inst, target in scraped(instances):
        labels = {
            ROLE_LABEL: "gateway" if inst.is_gateway else "sidecar",
            "__metrics_path__": SIDECAR_METRICS_PATH,
            "namespace": inst.namespace,
            "pod": inst.name,
            "app": inst.labels.get("app", inst.service),
        }
        if inst.labels.get("version"):
            labels["version"] = inst.labels["version"]
        groups.append({"targets": [target], "labels": labels})
    return groups


def config(api_url: str, token_file: Path) -> dict[str, Any]:
    """A complete Prometheus configuration for the mesh whose API is at ``api_url``."""
    credentials = {"type": "Bearer", "credentials_file": str(token_file.resolve())}
    discovery = {
        "url": api_url.rstrip("/") + TARGETS_PATH,
        # Prometheus' default is 60 s: a sidecar that just started would wait that long.
        "refresh_interval": SCRAPE_INTERVAL,
        "authorization": credentials,
    }

    def keep(role: str) -> list[dict[str, Any]]:
        return [{"source_labels": [ROLE_LABEL], "regex": role, "action": "keep"}]

    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "scrape_configs": [
            {
                "job_name": CONTROL_PLANE_JOB,
                # /metrics needs the API token like every other route of the API.
                "authorization": credentials,
                "http_sd_configs": [discovery],
                "relabel_configs": keep("control-plane"),
            },
            {
                # No credentials on the scrape itself: the token is the control plane's and
                # sidecars do not ask for it.
                "job_name": SIDECAR_JOB,
                "http_sd_configs": [discovery],
                # Gateways too: Istio's envoy-stats job scrapes every Envoy, gateways
                # included (their metrics say reporter="source", as in Istio).
                "relabel_configs": keep("sidecar|gateway"),
            },
        ],
    }


class _Plain(yaml.SafeDumper):
    """Repeats shared parts instead of writing YAML anchors: the file is for people too."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def write_config(state_dir: Path, api_url: str, token_file: Path) -> Path:
    """Write :func:`config` to ``state_dir/prometheus.yml`` (atomically); return its path."""
    path = state_dir / "prometheus.yml"
    header = (
        "# Written by `tsunagi up` for the control plane at " + api_url + "; rewritten at each\n"
        "# start. Run a stock Prometheus on it as is:\n"
        f"#   prometheus --config.file {path.resolve()}\n"
    )
    text = header + yaml.dump(config(api_url, token_file), Dumper=_Plain, sort_keys=False)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path

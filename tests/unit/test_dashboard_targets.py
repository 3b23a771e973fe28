"""The built-in scraper's targets: one per metrics URL, however many instances a proxy
registered (a gateway registers one per ``--port``, each with its metrics port)."""

from __future__ import annotations

from typing import Any

from tsunagi.controlplane.dashboard import scrape_targets
from tsunagi.registry import Instance

from .examples import instance_document


class _Registered:
    def __init__(self, *instances: Instance) -> None:
        self._instances = list(instances)

    def instances(self) -> list[Instance]:
        return self._instances


def _inst(name: str, **fields: Any) -> Instance:
    return Instance.from_document(instance_document(name, **fields))


def test_a_proxy_with_several_registrations_is_scraped_once() -> None:
    gateway_ports = [
        _inst("gw-0-http", service="gw", port=80, metrics_port=15020),
        _inst("gw-0-https", service="gw", port=443, metrics_port=15020),
    ]
    other = _inst("web-0", service="web", metrics_port=15021)
    silent = _inst("db-0", service="db", metrics_port=0)
    registry: Any = _Registered(*gateway_ports, other, silent)
    urls = [t.url for t in scrape_targets(registry)]
    assert urls == [
        "http://127.0.0.1:15020/stats/istio",
        "http://127.0.0.1:15021/stats/istio",
    ]

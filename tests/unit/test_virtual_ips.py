"""Virtual IPs for intercepting sidecars: one stable address per service host."""

from __future__ import annotations

import ipaddress

import pytest

from tsunagi.api import load_documents
from tsunagi.mesh import Node, World
from tsunagi.mesh import virtual_ips as vips
from tsunagi.registry import Instance
from tsunagi.xds.translate.dns_table import dns_names

from .examples import instance_document

RANGE = ipaddress.ip_network("240.240.0.0/16")


def _in_range(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip in RANGE and address not in ("240.240.0.0", "240.240.255.255")


def test_each_host_gets_a_distinct_address_in_istios_range() -> None:
    hosts = [f"svc{i}.ns{i % 7}.svc.cluster.local" for i in range(3000)]
    got = vips.allocate(hosts)
    assert set(got) == set(hosts)
    assert len(set(got.values())) == len(hosts)
    assert all(_in_range(a) for a in got.values())


def test_an_address_depends_on_the_host_not_on_the_others_or_their_order() -> None:
    host = "reviews.default.svc.cluster.local"
    crowd = [f"s{i}.default.svc.cluster.local" for i in range(200)]
    # No other host wants its address (else the later one moves: the next test).
    assert vips.preferred_offset(host) not in {vips.preferred_offset(h) for h in crowd}
    alone = vips.allocate([host])[host]
    assert vips.allocate([*reversed(crowd), host])[host] == alone
    # Same input in another order (another process, a restart): the same answer.
    assert vips.allocate(crowd) == vips.allocate(list(reversed(crowd)))


def test_a_collision_goes_to_the_later_host_in_sorted_order() -> None:
    # Find two hosts that want the same address (the hash is fixed, so this is too).
    seen: dict[int, str] = {}
    pair = None
    for i in range(200_000):
        host = f"h{i}.example"
        offset = vips.preferred_offset(host)
        if offset in seen:
            pair = sorted([seen[offset], host])
            break
        seen[offset] = host
    assert pair is not None
    first, second = pair
    got = vips.allocate([second, first])
    assert got[first] == vips.allocate([first])[first]  # the earlier keeps its own
    assert got[second] != got[first]
    assert int(ipaddress.ip_address(got[second])) == int(ipaddress.ip_address(got[first])) + 1


def test_the_range_wraps_and_refuses_more_hosts_than_it_holds() -> None:
    assert vips._address(vips.USABLE) == "240.240.255.254"
    assert vips._address(1) == "240.240.0.1"
    with pytest.raises(ValueError, match=r"240\.240\.0\.0/16"):
        vips.allocate(str(i) for i in range(vips.USABLE + 1))


CONFIG = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.test]
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: default}
spec:
  hosts: [legacy.internal]
  addresses: [10.9.8.7, 10.10.0.0/16]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 10.9.8.70}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: default}
spec:
  hosts: ["*.wild.test"]
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: direct, namespace: default}
spec:
  hosts: [direct.internal]
  resolution: NONE
  ports: [{number: 7000, name: tcp, protocol: TCP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hidden, namespace: other}
spec:
  hosts: [hidden.internal]
  exportTo: ["."]
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
"""


def _world() -> World:
    instances = [
        Instance.from_document(instance_document("r1", "reviews", address="10.0.0.1")),
        Instance.from_document(instance_document("t1", "ratings", namespace="other")),
    ]
    return World.build(1, load_documents(CONFIG, "config.yaml"), instances)


def test_the_world_gives_addresses_as_istio_allocates_them() -> None:
    addresses = _world().service_addresses
    # Registered services and entries without addresses: allocated, in range.
    for host in ("reviews.default.svc.cluster.local", "api.example.test"):
        assert len(addresses[host]) == 1 and _in_range(addresses[host][0]), host
    # An entry's own single addresses (its ranges cannot be answered in DNS).
    assert addresses["legacy.internal"] == ("10.9.8.7",)
    # Wildcards and resolution NONE (clients must reach the real address): none.
    assert "*.wild.test" not in addresses and "direct.internal" not in addresses
    # Stable: another World of the same config (a restart) allocates the same.
    assert _world().service_addresses == addresses


def test_dns_names_are_relative_to_the_proxys_namespace_and_its_visibility() -> None:
    world = _world()
    names = dns_names(world, Node("web.default", namespace="default"))
    reviews = world.service_addresses["reviews.default.svc.cluster.local"]
    for name in ("reviews", "reviews.default", "reviews.default.svc"):
        assert names[name] == reviews
    assert "ratings" not in names  # another namespace: only its longer names
    assert "ratings.other" in names and "ratings.other.svc.cluster.local" in names
    assert names["legacy.internal"] == ("10.9.8.7",)
    assert "hidden.internal" not in names  # exported to its own namespace only
    other = dns_names(world, Node("x.other", namespace="other"))
    assert "ratings" in other and "hidden.internal" in other and "reviews" not in other

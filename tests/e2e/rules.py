"""Istio rules the end-to-end tests apply, written as users write them."""

from __future__ import annotations


def destination_rule(body: str) -> str:
    """The reviews DestinationRule with ``body`` (YAML, indented as under ``spec:``)."""
    return f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
{body.strip(chr(10))}
"""


SUBSETS = destination_rule(
    """
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""
)


def loopback_service_entry(name: str, host: str, *ports: str) -> str:
    """A MESH_EXTERNAL ServiceEntry ``name`` for ``host``, whose one endpoint is 127.0.0.1 (a
    server the test runs there); ``ports``: each a YAML flow mapping, e.g.
    ``{number: 80, name: http, protocol: HTTP, targetPort: 8443}``."""
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  ports: [{", ".join(ports)}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"""


def virtual_service(http: str, version: str = "v1") -> str:
    """The reviews VirtualService with ``http`` (YAML, indented as under ``http:``)."""
    return f"""
apiVersion: networking.istio.io/{version}
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
{http.strip(chr(10))}
"""


JASON_TO_V2 = virtual_service(
    """
  - match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
""",
    "v1beta1",
)

SPLIT_80_20 = virtual_service(
    """
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews, subset: v2}
      weight: 20
""",
    "v1alpha3",
)


def all_to(subset: str = "") -> str:
    """Every reviews request to one subset (or to the whole service)."""
    dest = f"{{host: reviews, subset: {subset}}}" if subset else "{host: reviews}"
    return virtual_service(f"  - route:\n    - destination: {dest}")


def my_app_to(service: str) -> str:
    """``my-app.example.com`` (a host that is no service) routed to ``service``'s port 8080."""
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: my-app}}
spec:
  hosts: [my-app.example.com]
  http:
  - route:
    - destination: {{host: {service}, port: {{number: 8080}}}}
"""

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

"""The mesh as translation sees it: an immutable World and the Node being configured."""

from tsunagi.mesh.world import ClientScope, Endpoint, Intercept, Node, Service, Upstream, World

__all__ = ["ClientScope", "Endpoint", "Intercept", "Node", "Service", "Upstream", "World"]

"""The mesh as translation sees it: an immutable World and the Node being configured."""

from tsunagi.mesh.world import ClientScope, Endpoint, Node, Service, Upstream, World

__all__ = ["ClientScope", "Endpoint", "Node", "Service", "Upstream", "World"]

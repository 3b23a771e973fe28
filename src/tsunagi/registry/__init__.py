"""Workload instances registered by agents, with leases kept alive by heartbeats."""

from tsunagi.registry.instances import KIND, Instance, InvalidInstance, Registry

__all__ = ["KIND", "Instance", "InvalidInstance", "Registry"]

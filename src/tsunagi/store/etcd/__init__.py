"""etcd as the store: a thin gRPC client (:mod:`.client`) and :class:`EtcdStore`."""

from __future__ import annotations

from tsunagi.store.etcd.client import EtcdClient, EtcdError
from tsunagi.store.etcd.store import EtcdStore, parse_url
from tsunagi.store.etcd.tls import EtcdTls

__all__ = ["EtcdClient", "EtcdError", "EtcdStore", "EtcdTls", "parse_url"]

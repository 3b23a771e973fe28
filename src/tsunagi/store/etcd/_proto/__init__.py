"""etcd's v3 gRPC API (rpc.proto, kv.proto, auth.proto from etcd v3.7.1's ``api/``), vendored.

The protos are etcd's (Apache-2.0, see LICENSE here) with their HTTP-gateway and gogoproto
annotations removed; the ``_pb2`` modules are generated from them by
``scripts/etcd_protos.py`` (``make etcd-protos``). Do not edit the generated files.
"""

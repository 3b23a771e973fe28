"""A thin grpc.aio adapter around the sans-I/O ADS streams (SotW and delta).

All protocol decisions live in :mod:`tsunagi.xds.protocol`; this module only moves messages
between gRPC and that state machine, and tells the cache when something was ACKed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import json_format

from tsunagi.xds.cache import NodeEntry, SnapshotCache
from tsunagi.xds.dependencies import DependencyCache
from tsunagi.xds.protocol import DeltaStream, Nack, SotwStream

log = logging.getLogger("tsunagi.xds")
_stream_ids = itertools.count(1)


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Serves ADS to Envoy; one task reads, one loop writes, per stream."""

    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        # One cache of "which EDS/RDS names does this resource reference" for every stream:
        # every sidecar gets the same clusters, so each is decoded once, not once per stream.
        self.deps = DependencyCache()

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> None:
        await self._serve(
            SotwStream(nonce_prefix=f"s{next(_stream_ids)}-", deps=self.deps),
            request_iterator,
            context,
        )

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> None:
        await self._serve(
            DeltaStream(nonce_prefix=f"d{next(_stream_ids)}-", deps=self.deps),
            request_iterator,
            context,
        )

    async def _serve(
        self,
        stream: SotwStream | DeltaStream,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
    ) -> None:
        entry: NodeEntry | None = None
        wake = asyncio.Event()
        first = await anext(requests, None)
        if first is None:
            return
        stream.receive(first)
        node = stream.node
        if node is None or not node.id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry a node id"
            )
            return
        metadata = json_format.MessageToDict(node.metadata)
        entry = self.cache.connect(node.id, metadata, stream)
        wake = entry.wake
        kind = "delta" if isinstance(stream, DeltaStream) else "sotw"
        log.info("proxy %s connected (%s ADS)", node.id, kind)

        async def read() -> None:
            async for request in requests:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s <- %s", node.id, json_format.MessageToDict(request))
                for event in stream.receive(request):
                    if isinstance(event, Nack):
                        log.warning(
                            "proxy %s rejected %s: %s", node.id, event.type_url, event.message
                        )
                wake.set()
                await self.cache.notify()

        reader = asyncio.create_task(read())
        try:
            while not reader.done():
                while (response := stream.next_response()) is not None:
                    if log.isEnabledFor(logging.DEBUG):
                        log.debug("%s -> %s %s", node.id, response.type_url, response.nonce)
                    await context.write(response)
                wake.clear()
                waiter = asyncio.create_task(wake.wait())
                await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
            reader.result()
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            reader.cancel()
            self.cache.disconnect(entry)
            await self.cache.notify()
            log.info("proxy %s disconnected", node.id)


async def start_server(cache: SnapshotCache, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Start serving ADS on ``host:port`` (0 picks a free port); return the server and port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    )
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(AdsServicer(cache), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound

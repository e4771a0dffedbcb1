"""The search service's extractor channel reaches a replica added to DNS after it connected.

gRPC clients resolve a name again only when a connection closes; servers close
theirs after max_connection_age. This runs the real mechanism: a DNS server on
loopback that gRPC's own resolver queries, two extractors on 127.0.0.1 and
127.0.0.2 (the whole of 127/8 is loopback on Linux), the second added to DNS later.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from extractor_service.app import ExtractorApp
from extractor_service.settings import ExtractorSettings
from search_service.extractor_client import ExtractorClient
from tests.photos import photo_bytes

NAME = "extractor.test."


class LoopbackDns(asyncio.DatagramProtocol):
    """Answers A queries for NAME with ``self.addresses``; everything else is empty."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.DatagramTransport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        if question.rdtype == dns.rdatatype.A and question.name.to_text() == NAME:
            response.answer.append(dns.rrset.from_text(NAME, 1, "IN", "A", *self.addresses))
        elif question.name.to_text() != NAME:
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def loopback_dns() -> AsyncIterator[tuple[LoopbackDns, int]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        LoopbackDns, local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    yield protocol, port
    transport.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def embeds_served(app: ExtractorApp) -> float:
    assert app.server is not None
    assert app.server.metrics_port is not None
    url = f"http://{app.settings.host}:{app.server.metrics_port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    for line in text.splitlines():
        if line.startswith("grpc_server_handled_total") and 'grpc_method="Embed"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.slow
async def test_a_replica_added_to_dns_gets_calls_once_connections_age(
    loopback_dns: tuple[LoopbackDns, int], lite0_model_dir: Path
) -> None:
    resolver, dns_port = loopback_dns
    port = free_port()

    def extractor(host: str) -> ExtractorApp:
        return ExtractorApp(
            ExtractorSettings(
                model_dir=lite0_model_dir,
                host=host,
                port=port,
                metrics_port=0,
                grace_period_s=0,
                max_connection_age_s=1.0,
                max_connection_age_grace_s=1.0,
            )
        )

    first, second = extractor("127.0.0.1"), extractor("127.0.0.2")
    resolver.addresses = ["127.0.0.1"]
    await first.start()
    await first.wait_ready()
    client = ExtractorClient(
        f"dns://127.0.0.1:{dns_port}/{NAME.rstrip('.')}:{port}", max_message_bytes=1 << 24
    )
    image = [("photo", photo_bytes("coffee"))]
    try:
        for _ in range(3):
            await client.embed(image, timeout_s=30)
        assert await embeds_served(first) == 3  # connected: only the first exists

        await second.start()
        await second.wait_ready()
        resolver.addresses = ["127.0.0.1", "127.0.0.2"]
        for _ in range(200):  # each well under a second: a few connection ages
            await client.embed(image, timeout_s=30)
            if await embeds_served(second) >= 5:
                break
        assert await embeds_served(second) >= 5
    finally:
        await client.close()
        await second.stop()
        await first.stop()

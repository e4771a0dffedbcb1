"""TLS and mTLS on real servers, with certificates made in the test."""

from __future__ import annotations

import grpc
import pytest

from imagesearch.search.v1 import search_pb2, search_pb2_grpc
from tests import photos
from tests.security.certs import Authority
from tests.security.channels import health_code, tls_channel
from tests.security.conftest import Pki, StartApp

OK, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE


async def test_tls_server_answers_a_client_that_trusts_its_ca(
    pki: Pki, start_secure_search: StartApp
) -> None:
    _, port = await start_secure_search(tls_cert_file=pki.server.cert, tls_key_file=pki.server.key)
    async with tls_channel(port, pki.ca.bundle.read_bytes()) as channel:
        assert await health_code(channel) == OK
    async with tls_channel(port, pki.ca.bundle.read_bytes(), host="127.0.0.1") as channel:
        assert await health_code(channel) == OK  # the IP is in the certificate too


async def test_tls_server_refuses_plaintext_and_is_refused_by_other_ca_clients(
    pki: Pki, start_secure_search: StartApp
) -> None:
    _, port = await start_secure_search(tls_cert_file=pki.server.cert, tls_key_file=pki.server.key)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert await health_code(channel) == UNAVAILABLE
    async with tls_channel(port, pki.other_ca.bundle.read_bytes()) as channel:
        assert await health_code(channel) == UNAVAILABLE


async def test_server_certificate_for_another_host_is_refused(
    pki: Pki, start_secure_search: StartApp
) -> None:
    wrong = pki.ca.issue("elsewhere.example", hosts=("elsewhere.example",))
    _, port = await start_secure_search(tls_cert_file=wrong.cert, tls_key_file=wrong.key)
    async with tls_channel(port, pki.ca.bundle.read_bytes()) as channel:
        assert await health_code(channel) == UNAVAILABLE


async def test_expired_server_certificate_is_refused(
    pki: Pki, start_secure_search: StartApp
) -> None:
    expired = pki.ca.issue("server", hosts=("localhost",), expired=True)
    _, port = await start_secure_search(tls_cert_file=expired.cert, tls_key_file=expired.key)
    async with tls_channel(port, pki.ca.bundle.read_bytes()) as channel:
        assert await health_code(channel) == UNAVAILABLE


async def test_mtls_needs_a_valid_client_certificate_from_the_configured_ca(
    pki: Pki, start_secure_search: StartApp
) -> None:
    _, port = await start_secure_search(
        tls_cert_file=pki.server.cert,
        tls_key_file=pki.server.key,
        tls_client_ca_file=pki.ca.bundle,
    )
    roots = pki.ca.bundle.read_bytes()
    async with tls_channel(port, roots, pki.client) as channel:
        assert await health_code(channel) == OK
    refused = {
        "no client certificate": None,
        "another CA's certificate": pki.other_ca.issue("someone", client=True),
        "an expired certificate": pki.ca.issue("late", client=True, expired=True),
    }
    for case, client in refused.items():
        async with tls_channel(port, roots, client) as channel:
            assert await health_code(channel) == UNAVAILABLE, case


async def test_renewed_server_certificate_is_served_without_a_restart(
    pki: Pki, start_secure_search: StartApp
) -> None:
    # The renewed certificate comes from a new CA, which the client alone trusts:
    # only a server that re-read its files can complete the handshake.
    _, port = await start_secure_search(tls_cert_file=pki.server.cert, tls_key_file=pki.server.key)
    new_ca = Authority(pki.folder, "renewed-ca")
    async with tls_channel(port, new_ca.bundle.read_bytes()) as channel:
        assert await health_code(channel) == UNAVAILABLE
    new_ca.issue("server", hosts=("localhost",), into=pki.server)
    async with tls_channel(port, new_ca.bundle.read_bytes()) as channel:
        assert await health_code(channel) == OK
    async with tls_channel(port, pki.ca.bundle.read_bytes()) as channel:
        assert await health_code(channel) == UNAVAILABLE  # the old certificate is gone


async def test_renewed_client_ca_bundle_is_used_without_a_restart(
    pki: Pki, start_secure_search: StartApp
) -> None:
    bundle = pki.folder / "client-ca.pem"
    bundle.write_bytes(pki.ca.bundle.read_bytes())
    _, port = await start_secure_search(
        tls_cert_file=pki.server.cert, tls_key_file=pki.server.key, tls_client_ca_file=bundle
    )
    stranger = pki.other_ca.issue("stranger", client=True)
    roots = pki.ca.bundle.read_bytes()
    async with tls_channel(port, roots, stranger) as channel:
        assert await health_code(channel) == UNAVAILABLE
    bundle.write_bytes(pki.ca.bundle.read_bytes() + pki.other_ca.bundle.read_bytes())
    async with tls_channel(port, roots, stranger) as channel:
        assert await health_code(channel) == OK


async def test_search_reaches_the_extractor_over_mtls_and_follows_a_renewed_client_cert(
    pki: Pki, start_secure_extractor: StartApp, start_secure_search: StartApp
) -> None:
    callers = pki.folder / "extractor-callers"
    callers.write_text("cert search-service reader\n")
    _, extractor_port = await start_secure_extractor(
        tls_cert_file=pki.server.cert,
        tls_key_file=pki.server.key,
        tls_client_ca_file=pki.ca.bundle,
        auth_file=callers,
    )
    # The search service starts with a certificate the extractor does not trust.
    own = pki.other_ca.issue("search-service", client=True)
    _, port = await start_secure_search(
        extractor_address=f"127.0.0.1:{extractor_port}",
        extractor_tls_ca_file=pki.ca.bundle,
        extractor_tls_cert_file=own.cert,
        extractor_tls_key_file=own.key,
        extractor_tls_server_name="localhost",
        extractor_timeout_s=5,
    )
    item = search_pb2.IngestItem(key="cat", image=photos.photo_bytes("chelsea"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Ingest(search_pb2.IngestRequest(items=[item]))
        assert refused.value.code() == UNAVAILABLE
        pki.ca.issue("search-service", client=True, into=own)  # renewed on disk
        response = await stub.Ingest(search_pb2.IngestRequest(items=[item]))
        assert response.results[0].status == search_pb2.INGEST_STATUS_CREATED


async def test_health_port_answers_probes_in_plaintext_and_serves_nothing_else(
    pki: Pki, start_secure_search: StartApp
) -> None:
    app, _ = await start_secure_search(
        tls_cert_file=pki.server.cert, tls_key_file=pki.server.key, health_port=0
    )
    assert app.server is not None
    assert app.server.health_port is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.server.health_port}") as channel:
        assert await health_code(channel) == OK
        stub = search_pb2_grpc.SearchServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListCollections(search_pb2.ListCollectionsRequest())
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED

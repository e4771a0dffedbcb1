"""Callers and roles on real servers: every RPC of both services against every role."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from imagesearch.extractor.v1 import extractor_pb2, extractor_pb2_grpc
from imagesearch.search.v1 import search_pb2, search_pb2_grpc
from search_service.app import ROLES
from service_core.auth import Role, hash_token
from tests.security.channels import bearer, health_code, tls_channel
from tests.security.conftest import TOKENS, Pki, StartApp, callers_file
from tests.test_access_log import access_lines

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
Metadata = Sequence[tuple[str, str]]
Call = Callable[[Any, Metadata], Awaitable[object]]


async def _stream(responses: AsyncIterator[Any]) -> object:
    return [response async for response in responses]


# Each call names a collection that does not exist, so that an allowed call
# changes nothing and ends with an ordinary status (NOT_FOUND, INVALID_ARGUMENT).
# Streams send no message: a client still writing when the server has already
# refused the call may see INTERNAL from grpc's core instead of the server's status.
SEARCH_CALLS: dict[str, Call] = {
    "Search": lambda s, m: s.Search(search_pb2.SearchRequest(collection="absent"), metadata=m),
    "GetImage": lambda s, m: s.GetImage(
        search_pb2.GetImageRequest(collection="absent", key="k"), metadata=m
    ),
    "ListCollections": lambda s, m: s.ListCollections(
        search_pb2.ListCollectionsRequest(), metadata=m
    ),
    "GetCollectionStats": lambda s, m: s.GetCollectionStats(
        search_pb2.GetCollectionStatsRequest(collection="absent"), metadata=m
    ),
    "Ingest": lambda s, m: s.Ingest(search_pb2.IngestRequest(collection="absent"), metadata=m),
    "IngestStream": lambda s, m: _stream(s.IngestStream(iter([]), metadata=m)),
    "DeleteImages": lambda s, m: s.DeleteImages(
        search_pb2.DeleteImagesRequest(collection="absent", keys=["k"]), metadata=m
    ),
    "CreateCollection": lambda s, m: s.CreateCollection(
        search_pb2.CreateCollectionRequest(name=""), metadata=m
    ),
    "DeleteCollection": lambda s, m: s.DeleteCollection(
        search_pb2.DeleteCollectionRequest(name="absent"), metadata=m
    ),
    "RefitProjection": lambda s, m: s.RefitProjection(
        search_pb2.RefitProjectionRequest(collection="absent"), metadata=m
    ),
}


async def status_of(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def test_every_search_rpc_has_a_role_and_a_call_here() -> None:
    methods = set(search_pb2.DESCRIPTOR.services_by_name["SearchService"].methods_by_name)
    assert set(ROLES) == methods
    assert set(SEARCH_CALLS) == methods


async def test_search_rpc_by_role_matrix(pki: Pki, start_secure_search: StartApp) -> None:
    _, port = await start_secure_search(
        tls_cert_file=pki.server.cert,
        tls_key_file=pki.server.key,
        auth_file=callers_file(pki.folder),
    )
    seen: dict[tuple[str, str], grpc.StatusCode] = {}
    async with tls_channel(port, pki.ca.bundle.read_bytes()) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        for method, call in SEARCH_CALLS.items():
            code, details = await status_of(call(stub, ()))
            seen[method, "anonymous"] = code
            assert code == UNAUTHENTICATED, method
            assert "no credentials" in details
            for role, token in TOKENS.items():
                code, details = await status_of(call(stub, bearer(token)))
                seen[method, role] = code
                if Role.parse(role) >= ROLES[method]:
                    assert code not in (UNAUTHENTICATED, PERMISSION_DENIED), (method, role)
                else:
                    assert code == PERMISSION_DENIED, (method, role)
                    need = ROLES[method].name.lower()
                    assert f"{method} needs role {need}" in details
                    assert f"'{role}-user' has {role}" in details
    assert len(seen) == 40  # 10 RPCs x (anonymous, reader, writer, admin)


async def test_an_admin_can_really_create_and_delete_and_a_writer_cannot(
    pki: Pki, start_secure_search: StartApp
) -> None:
    _, port = await start_secure_search(auth_file=callers_file(pki.folder))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        request = search_pb2.CreateCollectionRequest(name="photos")
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.CreateCollection(request, metadata=bearer(TOKENS["writer"]))
        assert denied.value.code() == PERMISSION_DENIED
        listed = await stub.ListCollections(
            search_pb2.ListCollectionsRequest(), metadata=bearer(TOKENS["reader"])
        )
        assert "photos" not in [c.name for c in listed.collections]
        await stub.CreateCollection(request, metadata=bearer(TOKENS["admin"]))
        listed = await stub.ListCollections(
            search_pb2.ListCollectionsRequest(), metadata=bearer(TOKENS["reader"])
        )
        assert "photos" in [c.name for c in listed.collections]


async def test_wrong_malformed_and_revoked_tokens_are_unauthenticated(
    pki: Pki, start_secure_search: StartApp, caplog: pytest.LogCaptureFixture
) -> None:
    path = callers_file(pki.folder)
    _, port = await start_secure_search(auth_file=path)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)

        async def list_as(metadata: Metadata) -> tuple[grpc.StatusCode, str]:
            return await status_of(
                stub.ListCollections(search_pb2.ListCollectionsRequest(), metadata=metadata)
            )

        assert await list_as(bearer("not-a-token")) == (
            UNAUTHENTICATED,
            "the bearer token is not (or no longer) valid",
        )
        code, details = await list_as((("authorization", "Basic dXNlcjpwdw=="),))
        assert (code, details) == (
            UNAUTHENTICATED,
            "the authorization metadata must be 'Bearer <token>'",
        )
        assert (await list_as(bearer(TOKENS["reader"])))[0] == grpc.StatusCode.OK
        # Revoke the reader and add a new token, while the server runs.
        kept = [line for line in path.read_text().splitlines() if " reader " not in line]
        path.write_text("\n".join([*kept, f"token {hash_token('fresh')} reader new-user"]))
        assert (await list_as(bearer(TOKENS["reader"])))[0] == UNAUTHENTICATED
        assert (await list_as(bearer("fresh")))[0] == grpc.StatusCode.OK
        # A broken edit keeps the last good file rather than locking everyone out.
        path.write_text("token nonsense\n")
        assert (await list_as(bearer("fresh")))[0] == grpc.StatusCode.OK
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "callers file unusable" in logged  # the log was captured, and says why
    for token in ("not-a-token", TOKENS["reader"], "fresh", "dXNlcjpwdw=="):
        assert token not in logged


async def test_health_is_open_and_reflection_follows_its_setting(
    pki: Pki, start_secure_search: StartApp
) -> None:
    path = callers_file(pki.folder)
    _, behind_role = await start_secure_search(auth_file=path, reflection="admin")
    _, off = await start_secure_search(auth_file=path, reflection="off")
    _, open_ = await start_secure_search(auth_file=path)

    async def list_services(
        port: int, metadata: Metadata, *, ask: bool = False
    ) -> tuple[grpc.StatusCode, str]:
        """Only a call expected to succeed sends its request (see SEARCH_CALLS)."""
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            requests = [reflection_pb2.ServerReflectionRequest(list_services="")] if ask else []
            return await status_of(
                _stream(stub.ServerReflectionInfo(iter(requests), metadata=metadata))
            )

    for port in (behind_role, off, open_):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await health_code(channel) == grpc.StatusCode.OK
    assert (await list_services(open_, (), ask=True))[0] == grpc.StatusCode.OK
    assert (await list_services(off, bearer(TOKENS["admin"])))[0] == grpc.StatusCode.UNIMPLEMENTED
    assert (await list_services(behind_role, ()))[0] == UNAUTHENTICATED
    assert (await list_services(behind_role, bearer(TOKENS["writer"])))[0] == PERMISSION_DENIED
    assert (await list_services(behind_role, bearer(TOKENS["admin"]), ask=True))[
        0
    ] == grpc.StatusCode.OK


async def test_client_certificate_identity_gives_its_configured_role(
    pki: Pki, start_secure_search: StartApp
) -> None:
    _, port = await start_secure_search(
        tls_cert_file=pki.server.cert,
        tls_key_file=pki.server.key,
        tls_client_ca_file=pki.ca.bundle,
        auth_file=callers_file(pki.folder, "cert someone writer"),
    )
    roots = pki.ca.bundle.read_bytes()
    async with tls_channel(port, roots, pki.client) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        code, _ = await status_of(SEARCH_CALLS["DeleteImages"](stub, ()))
        assert code == grpc.StatusCode.NOT_FOUND  # allowed; the collection is absent
        code, details = await status_of(SEARCH_CALLS["DeleteCollection"](stub, ()))
        assert code == PERMISSION_DENIED
        assert "caller 'someone' has writer" in details
        # A token sent beside the certificate is the caller's stated identity.
        code, _ = await status_of(SEARCH_CALLS["DeleteCollection"](stub, bearer(TOKENS["admin"])))
        assert code == grpc.StatusCode.NOT_FOUND
    async with tls_channel(port, roots, pki.search_client) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        code, details = await status_of(SEARCH_CALLS["Search"](stub, ()))
        assert code == UNAUTHENTICATED
        assert "client certificate 'search-service' is not a configured caller" in details


EXTRACTOR_CALLS: dict[str, Call] = {
    "Embed": lambda s, m: s.Embed(extractor_pb2.EmbedRequest(), metadata=m),
    "EmbedStream": lambda s, m: _stream(s.EmbedStream(iter([]), metadata=m)),
    "GetModelInfo": lambda s, m: s.GetModelInfo(extractor_pb2.GetModelInfoRequest(), metadata=m),
}


async def test_extractor_accepts_only_its_configured_callers(
    pki: Pki, start_secure_extractor: StartApp
) -> None:
    path = pki.folder / "extractor-callers"
    path.write_text(f"cert search-service reader\ntoken {hash_token('probe')} reader prober\n")
    _, port = await start_secure_extractor(
        tls_cert_file=pki.server.cert,
        tls_key_file=pki.server.key,
        tls_client_ca_file=pki.ca.bundle,
        auth_file=path,
    )
    methods = set(extractor_pb2.DESCRIPTOR.services_by_name["ExtractorService"].methods_by_name)
    assert set(EXTRACTOR_CALLS) == methods
    roots = pki.ca.bundle.read_bytes()
    seen = 0
    async with (
        tls_channel(port, roots, pki.search_client) as configured,
        tls_channel(port, roots, pki.client) as unknown,
    ):
        for method, call in EXTRACTOR_CALLS.items():
            allowed = [
                (configured, ()),
                (unknown, bearer("probe")),
            ]
            refused = [(unknown, ()), (unknown, bearer("wrong")), (configured, bearer("wrong"))]
            for channel, metadata in allowed:
                code, _ = await status_of(
                    call(extractor_pb2_grpc.ExtractorServiceStub(channel), metadata)
                )
                assert code not in (UNAUTHENTICATED, PERMISSION_DENIED), (method, metadata)
                seen += 1
            for channel, metadata in refused:
                code, _ = await status_of(
                    call(extractor_pb2_grpc.ExtractorServiceStub(channel), metadata)
                )
                assert code == UNAUTHENTICATED, (method, metadata)
                seen += 1
    assert seen == 15  # 3 RPCs x 5 callers


async def test_per_caller_rate_limit_says_when_to_retry(
    pki: Pki, start_secure_search: StartApp
) -> None:
    _, port = await start_secure_search(
        auth_file=callers_file(pki.folder), rate_limit_per_s=0.5, rate_limit_burst=2
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        call = SEARCH_CALLS["ListCollections"]
        for _ in range(2):
            assert (await status_of(call(stub, bearer(TOKENS["reader"]))))[0] == grpc.StatusCode.OK
        code, details = await status_of(call(stub, bearer(TOKENS["reader"])))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate limit of 0.5 requests/s for 'reader-user' exceeded; retry in" in details
        # Another caller has a bucket of its own.
        assert (await status_of(call(stub, bearer(TOKENS["admin"]))))[0] == grpc.StatusCode.OK


async def test_search_sends_its_token_to_an_extractor_that_wants_one(
    pki: Pki, start_secure_extractor: StartApp, start_secure_search: StartApp
) -> None:
    from tests import photos

    callers = pki.folder / "extractor-callers"
    callers.write_text(f"token {hash_token('search-to-extractor')} reader search\n")
    _, extractor_port = await start_secure_extractor(
        tls_cert_file=pki.server.cert, tls_key_file=pki.server.key, auth_file=callers
    )
    token_file = pki.folder / "extractor.token"
    token_file.write_text("search-to-extractor\n")
    common = {
        "extractor_address": f"localhost:{extractor_port}",
        "extractor_tls_ca_file": pki.ca.bundle,
        "extractor_timeout_s": 5,
    }
    _, with_token = await start_secure_search(extractor_token_file=token_file, **common)
    _, without = await start_secure_search(**common)
    item = search_pb2.IngestItem(key="cat", image=photos.photo_bytes("chelsea"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{with_token}") as channel:
        response = await search_pb2_grpc.SearchServiceStub(channel).Ingest(
            search_pb2.IngestRequest(items=[item])
        )
        assert response.results[0].status == search_pb2.INGEST_STATUS_CREATED
    # Another photo: the same one would be UNCHANGED, never sent to the extractor.
    other = search_pb2.IngestItem(key="coffee", image=photos.photo_bytes("coffee"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{without}") as channel:
        code, details = await status_of(
            search_pb2_grpc.SearchServiceStub(channel).Ingest(
                search_pb2.IngestRequest(items=[other])
            )
        )
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "UNAUTHENTICATED" in details


async def test_the_access_log_names_the_caller_and_its_role(
    pki: Pki, start_secure_search: StartApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="access")
    _, port = await start_secure_search(auth_file=callers_file(pki.folder))
    method = "/imagesearch.search.v1.SearchService/ListCollections"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        await stub.ListCollections(
            search_pb2.ListCollectionsRequest(), metadata=bearer(TOKENS["reader"])
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.ListCollections(search_pb2.ListCollectionsRequest())
        with pytest.raises(grpc.aio.AioRpcError):  # known, but not allowed
            await stub.CreateCollection(
                search_pb2.CreateCollectionRequest(name="x"), metadata=bearer(TOKENS["writer"])
            )
    listed = await access_lines(caplog, method, 2)
    assert [(getattr(r, "code", None), getattr(r, "caller", None)) for r in listed] == [
        ("OK", "reader-user (reader)"),
        ("UNAUTHENTICATED", None),
    ]
    [denied] = await access_lines(caplog, "/imagesearch.search.v1.SearchService/CreateCollection")
    assert getattr(denied, "caller", None) == "writer-user (writer)"

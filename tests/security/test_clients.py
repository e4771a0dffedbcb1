"""The CLI and the evaluation's channels against a TLS server that wants a token."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from evaluation.api import channel
from imagesearch.search.v1 import search_pb2, search_pb2_grpc
from service_core.tls import channel_credentials
from tests.security.conftest import TOKENS, Pki, StartApp, callers_file

REPO = Path(__file__).resolve().parents[2]


async def imagesearch(
    *args: str, env: dict[str, str] | None = None, cwd: Path
) -> tuple[int, str, str]:
    """Runs the imagesearch console script; its exit status, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "imagesearch_cli",
        *args,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), "GRPC_VERBOSITY": "NONE", **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_speaks_tls_with_a_token_from_flags_or_environment(
    pki: Pki, start_secure_search: StartApp, tmp_path: Path
) -> None:
    _, port = await start_secure_search(
        tls_cert_file=pki.server.cert,
        tls_key_file=pki.server.key,
        auth_file=callers_file(pki.folder),
    )
    server = ("--server", f"localhost:{port}")
    reader, writer = tmp_path / "reader.token", tmp_path / "writer.token"
    reader.write_text(TOKENS["reader"] + "\n")
    writer.write_text(TOKENS["writer"])
    ca = ("--ca-file", str(pki.ca.bundle))

    code, out, err = await imagesearch(
        *server, *ca, "--token-file", str(reader), "stats", "--all", cwd=tmp_path
    )
    assert code == 0, err
    code, _, err = await imagesearch(*server, *ca, "stats", "--all", cwd=tmp_path)
    assert code == 1
    assert err.startswith("error: UNAUTHENTICATED: no credentials")
    code, _, err = await imagesearch(
        *server, "delete", "k", *ca, "--token-file", str(reader), cwd=tmp_path
    )
    assert code == 1
    assert err == (
        "error: PERMISSION_DENIED: /imagesearch.search.v1.SearchService/DeleteImages needs "
        "role writer; caller 'reader-user' has reader\n"
    )
    environment = {"IMAGESEARCH_CA_FILE": str(pki.ca.bundle), "IMAGESEARCH_TOKEN_FILE": str(writer)}
    code, out, err = await imagesearch(*server, "delete", "k", env=environment, cwd=tmp_path)
    assert code == 0, err
    assert "deleted 0 from 'default'" in out
    code, _, err = await imagesearch(*server, "stats", "--all", cwd=tmp_path)  # plaintext
    assert code == 1
    assert "unreachable" in err


async def test_cli_presents_a_client_certificate(
    pki: Pki, start_secure_search: StartApp, tmp_path: Path
) -> None:
    _, port = await start_secure_search(
        tls_cert_file=pki.server.cert,
        tls_key_file=pki.server.key,
        tls_client_ca_file=pki.ca.bundle,
        auth_file=callers_file(pki.folder, "cert someone writer"),
    )
    code, out, err = await imagesearch(
        "--server",
        f"127.0.0.1:{port}",
        "--server-name",
        "localhost",
        "delete",
        "k",
        "--ca-file",
        str(pki.ca.bundle),
        "--cert-file",
        str(pki.client.cert),
        "--key-file",
        str(pki.client.key),
        cwd=tmp_path,
    )
    assert code == 0, err
    assert "deleted 0" in out
    code, _, err = await imagesearch(
        "--server", f"localhost:{port}", "--cert-file", str(pki.client.cert), "stats", cwd=tmp_path
    )
    assert code == 1
    assert err == "error: a client certificate needs both its cert and key files\n"


async def test_evaluation_channel_carries_tls_and_the_token(
    pki: Pki, start_secure_search: StartApp
) -> None:
    _, port = await start_secure_search(
        tls_cert_file=pki.server.cert,
        tls_key_file=pki.server.key,
        auth_file=callers_file(pki.folder),
    )
    credentials = channel_credentials(ca_file=pki.ca.bundle, token=TOKENS["admin"])
    async with channel(f"127.0.0.1:{port}", credentials, "localhost") as secure:
        stub = search_pb2_grpc.SearchServiceStub(secure)
        await stub.CreateCollection(search_pb2.CreateCollectionRequest(name="eval-tls"))
        listed = await stub.ListCollections(search_pb2.ListCollectionsRequest())
        assert "eval-tls" in [c.name for c in listed.collections]

"""Connections to PostgreSQL: the connection type, codecs, and connection-loss errors."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import asyncpg

from service_core.errors import Unavailable

# A connection of its own or one borrowed from the pool.
Connection: TypeAlias = (
    "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
)

# What asyncpg raises when the server goes away, restarts, or refuses connections
# while starting: the request fails as UNAVAILABLE and the pool reconnects later.
_CONNECTION_ERRORS = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # What releasing a connection raises when the server died under a query: the
    # reset finds the protocol still mid-operation (seen on kill -9 of PostgreSQL).
    asyncpg.InternalClientError,
)


@contextlib.asynccontextmanager
async def database_errors() -> AsyncIterator[None]:
    """Turns a lost or refused database connection into a retryable UNAVAILABLE."""
    try:
        yield
    except _CONNECTION_ERRORS as error:
        raise Unavailable(
            f"the database is unavailable ({type(error).__name__}); retry",
            reason="DATABASE_UNAVAILABLE",
        ) from error


async def init_connection(connection: Connection) -> None:
    """The pool's init hook: jsonb as Python objects, in binary so COPY can carry it."""
    await connection.set_type_codec(
        "jsonb",
        encoder=_jsonb_encode,
        decoder=_jsonb_decode,
        schema="pg_catalog",
        format="binary",
    )


def _jsonb_encode(value: Any) -> bytes:
    return b"\x01" + json.dumps(value, separators=(",", ":")).encode()  # format version 1


def _jsonb_decode(data: bytes) -> Any:
    return json.loads(data[1:])

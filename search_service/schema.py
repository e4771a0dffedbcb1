"""Numbered schema migrations, applied at start-up, one transaction each."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

from search_service import sql
from search_service.db import Connection

log = logging.getLogger(__name__)

# Any fixed number: replicas starting together take turns migrating.
_LOCK_ID = 0x1A6E5EA
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """The migrations shipped in search_service/migrations/, in order."""
    found = []
    for entry in resources.files("search_service.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def migrate(connection: Connection) -> list[int]:
    """Applies every migration not yet recorded; returns the versions it applied."""
    await connection.execute(sql.MIGRATION_LOCK, _LOCK_ID)
    try:
        await connection.execute(sql.CREATE_MIGRATIONS_TABLE)
        done = {row["version"] for row in await connection.fetch(sql.APPLIED_MIGRATIONS)}
        applied = []
        for migration in available():
            if migration.version in done:
                continue
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(sql.RECORD_MIGRATION, migration.version, migration.name)
            log.info(
                "migration applied",
                extra={"version": migration.version, "migration": migration.name},
            )
            applied.append(migration.version)
        return applied
    finally:
        await connection.execute(sql.MIGRATION_UNLOCK, _LOCK_ID)

"""The search service under benchmark: ``python -m search_service``, vectors only."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import IO

from devenv.stack import spawn

ROOT = Path(__file__).resolve().parent.parent


def start_server(dsn: str, port: int, log: IO[bytes], **settings: str) -> subprocess.Popen[bytes]:
    """``python -m search_service`` against the cube cluster; vectors-only, no auto-fit.

    ``settings`` adds SEARCH_* variables: ``ingest_concurrency="1"`` sets
    SEARCH_INGEST_CONCURRENCY.
    """
    defaults: dict[str, object] = {
        "database_url": dsn,
        "port": port,
        "extractor_address": "127.0.0.1:1",
        "auto_fit_threshold": 10**9,
        "grace_period_s": 0,
        "log_level": "WARNING",
    }
    return spawn("search", defaults | settings, log=log, cwd=ROOT)

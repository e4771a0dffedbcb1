"""Runs the whole system locally: PostgreSQL, the extractor, the search service.

``make run`` calls this (``make run CITUS=1``: on a local Citus coordinator and two
workers instead of one PostgreSQL). It stays in the foreground with both services'
logs; Ctrl-C (or SIGTERM) stops the services gracefully, then the database. Data lives
in the cluster directory and survives restarts.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from devenv import citus
from devenv.postgres import DEFAULT_DATA_DIR, LocalPostgres, PostgresError
from devenv.stack import spawn, stop_all


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument(
        "--citus",
        action="store_true",
        help="a Citus coordinator and two workers (devenv.citus) instead of one PostgreSQL",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the cluster directory (default .data/postgres, or .data/citus with --citus)",
    )
    parser.add_argument("--extractor-port", type=int, default=50051)
    parser.add_argument("--search-port", type=int, default=50052)
    options = parser.parse_args(argv)

    cluster: LocalPostgres | citus.LocalCitus
    try:
        if options.citus:
            data_dir = options.data_dir or Path(
                os.environ.get("IMAGESEARCH_CITUSDATA", citus.DEFAULT_DATA_DIR)
            )
            cluster = citus.LocalCitus(data_dir)
        else:
            data_dir = options.data_dir or Path(
                os.environ.get("IMAGESEARCH_PGDATA", DEFAULT_DATA_DIR)
            )
            cluster = LocalPostgres(data_dir)
        dsn = cluster.start()
    except PostgresError as error:
        sys.exit(f"error: {error}")
    kind = "PostgreSQL"
    if isinstance(cluster, citus.LocalCitus):
        kind = f"Citus coordinator and {len(cluster.workers)} workers"
    print(f"{kind}: {dsn} (data in {cluster.data_dir})", flush=True)

    extractor_address = f"127.0.0.1:{options.extractor_port}"
    children = [
        spawn(
            "extractor",
            {"port": options.extractor_port, "model_dir": options.model_dir, "log_format": "text"},
        ),
        spawn(
            "search",
            {
                "port": options.search_port,
                "database_url": dsn,
                "extractor_address": extractor_address,
                "log_format": "text",
            },
        ),
    ]
    print(
        f"extractor: {extractor_address}   search: 127.0.0.1:{options.search_port}\n"
        f"try: grpcurl -plaintext 127.0.0.1:{options.search_port} list   (Ctrl-C stops)",
        flush=True,
    )

    stopping: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    status = 0
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.2)
        if not stopping:  # a service exited by itself: say so, stop the rest
            status = 1
            print("a service exited; stopping the others", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C reached the children too: they are already draining
    finally:
        stop_all(children)
        cluster.stop()
    sys.exit(status)


if __name__ == "__main__":
    main()

"""The body of each service's ``__main__``: parse settings, log, serve, exit."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from service_core.config import describe, load_settings
from service_core.logs import configure_logging
from service_core.server import App, run_until_signal
from service_core.settings import ServerSettings
from service_core.tracing import Tracing, tracing_from_environment

S = TypeVar("S", bound=ServerSettings)


def run_main(
    build: Callable[[S, Tracing], App],
    settings_type: type[S],
    *,
    prefix: str,
    description: str,
    service_name: str,
) -> NoReturn:
    """Runs a service process until a signal, and exits with its status.

    Tracing follows the standard OTEL_* variables (``service_name`` unless
    OTEL_SERVICE_NAME says otherwise); its buffered spans are exported on the way out.
    """
    settings = load_settings(
        settings_type,
        prefix=prefix,
        environ=os.environ,
        argv=sys.argv[1:],
        description=description,
    )
    configure_logging(settings.log_level, settings.log_format)
    log = logging.getLogger(build.__module__)
    try:
        tracing = tracing_from_environment(service_name, os.environ)
    except ValueError as error:
        log.error("%s", error)
        sys.exit(2)
    log.info("starting", extra={"settings": describe(settings), "tracing": tracing.enabled})
    try:
        status = asyncio.run(run_until_signal(build(settings, tracing)))
    finally:
        tracing.shutdown()
    sys.exit(status)

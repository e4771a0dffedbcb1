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

S = TypeVar("S", bound=ServerSettings)


def run_main(
    build: Callable[[S], App], settings_type: type[S], *, prefix: str, description: str
) -> NoReturn:
    """Runs a service process until a signal, and exits with its status."""
    settings = load_settings(
        settings_type,
        prefix=prefix,
        environ=os.environ,
        argv=sys.argv[1:],
        description=description,
    )
    configure_logging(settings.log_level, settings.log_format)
    logging.getLogger(build.__module__).info("starting", extra={"settings": describe(settings)})
    sys.exit(asyncio.run(run_until_signal(build(settings))))

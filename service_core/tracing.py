"""OpenTelemetry tracing, configured by the standard OTEL_* variables and absent when off.

Off (the default: ``OTEL_TRACES_EXPORTER`` unset or ``none``, or ``OTEL_SDK_DISABLED``
true), a ``Tracing`` holds no provider: no interceptor is installed, asyncpg is not
patched, the extractor's hooks are skipped, and the SDK is not even imported. On, it
holds an SDK ``TracerProvider`` whose spans go to the exporters named in
``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, or any installed exporter's entry point).
Whoever builds a Tracing owns it and calls ``shutdown()`` last: the process in
``service_core.main``, a test with its in-memory exporter.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

# Calls no trace needs: probes every few seconds, and tools reading descriptors.
_UNTRACED_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.")

_EXPORTERS = "opentelemetry_traces_exporter"  # the entry-point group exporters register in
# "otlp" is the specification's name; the installed exporter speaks OTLP over gRPC.
_ALIASES = {"otlp": "otlp_proto_grpc"}


@dataclass(frozen=True)
class Tracing:
    """The tracer provider the servers report spans to; ``None``: tracing is off."""

    provider: TracerProvider | None = None
    # Spans for every database query. They are most of what tracing costs a search
    # (docs/observability.md); OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=asyncpg leaves them out.
    database_spans: bool = True

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def tracer(self, name: str) -> Tracer | None:
        """A tracer for ``name``'s own spans, or None when off (callers skip the work)."""
        return None if self.provider is None else self.provider.get_tracer(name)

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:  # type: ignore[type-arg]
        """The instrumentation's server interceptor: one span per call, parented on the
        caller's ``traceparent``. It goes first so that every other interceptor, and the
        log lines they write, run inside the call's span."""
        if self.provider is None:
            return []
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        return [
            aio_server_interceptor(  # type: ignore[no-untyped-call]
                tracer_provider=self.provider, filter_=_traced
            )
        ]

    def client_interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """Client spans that send the current trace context on as ``traceparent``."""
        if self.provider is None:
            return []
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        interceptors: list[grpc.aio.ClientInterceptor] = aio_client_interceptors(  # type: ignore[no-untyped-call]
            tracer_provider=self.provider
        )
        return interceptors

    def instrument_asyncpg(self) -> Callable[[], None]:
        """Spans for every asyncpg query; returns the function that removes them.

        The instrumentation patches asyncpg's classes for the whole process.
        """
        if self.provider is None or not self.database_spans:
            return lambda: None
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
        instrumentor.instrument(tracer_provider=self.provider)
        return instrumentor.uninstrument  # type: ignore[no-any-return]

    def untraced(self) -> contextlib.AbstractContextManager[object]:
        """A block whose instrumented calls record nothing (background pings)."""
        if self.provider is None:
            return contextlib.nullcontext()
        from opentelemetry.instrumentation.utils import suppress_instrumentation

        return suppress_instrumentation()

    def shutdown(self) -> None:
        """Exports what is buffered and stops the exporters."""
        if self.provider is not None:
            self.provider.shutdown()


def _traced(details: grpc.HandlerCallDetails) -> bool:
    method: str = details.method
    return not method.lstrip("/").startswith(_UNTRACED_SERVICES)


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def tracing_from_environment(
    default_service_name: str, environ: Mapping[str, str] | None = None
) -> Tracing:
    """The Tracing that the OTEL_* variables of ``environ`` (the process's) ask for.

    This reads OTEL_SDK_DISABLED, OTEL_TRACES_EXPORTER, OTEL_SERVICE_NAME and
    OTEL_PYTHON_DISABLED_INSTRUMENTATIONS (of ours, only "asyncpg" can be left out); the
    SDK itself reads the others (OTEL_TRACES_SAMPLER and its _ARG, OTEL_EXPORTER_OTLP_*,
    OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*) from the process environment, as every
    OpenTelemetry SDK does. Raises ValueError for an exporter that is not installed.
    """
    environ = os.environ if environ is None else environ
    names = [
        name.strip().lower()
        for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if name.strip() and name.strip().lower() != "none"
    ]
    if not names or _true(environ.get("OTEL_SDK_DISABLED")):
        return Tracing()
    exporters = [_exporter(name, environ) for name in names]
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    service_name = environ.get("OTEL_SERVICE_NAME") or default_service_name
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider, database_spans=database_spans_wanted(environ))


def database_spans_wanted(environ: Mapping[str, str]) -> bool:
    """False when OTEL_PYTHON_DISABLED_INSTRUMENTATIONS lists asyncpg (the variable the
    OpenTelemetry Python distribution reads for the same)."""
    disabled = environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")
    return "asyncpg" not in {name.strip().lower() for name in disabled}


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name == "otlp":
        protocol = environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        )
        if protocol.strip().lower() != "grpc":
            raise ValueError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: only 'grpc' is installed "
                "(point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's gRPC port, 4317)"
            )
    entry_name = _ALIASES.get(name, name)
    found = importlib.metadata.entry_points(group=_EXPORTERS, name=entry_name)
    if not found:
        installed = importlib.metadata.entry_points(group=_EXPORTERS)
        known = sorted({"none", "otlp"} | {e.name for e in installed})
        raise ValueError(
            f"OTEL_TRACES_EXPORTER names {name!r}, which is not installed; "
            f"known: {', '.join(known)}"
        )
    return next(iter(found)).load()()

"""Who is calling, and may they: bearer tokens and client certificates mapped to roles.

The callers file (``--auth-file``, a Kubernetes Secret mounted as a file) has one
caller a line; ``#`` starts a comment::

    token <sha256 hex of the token> <role> <name>
    cert  <identity in the client certificate> <role>

A token is sent as ``authorization: Bearer <token>`` metadata; only its SHA-256
is stored, so the file is no use to whoever reads it. A certificate identity is
one of the names gRPC reports for a verified client certificate (its DNS or URI
subject alternative names, else its common name), so it needs mTLS. Roles are
ordered: ``reader`` < ``writer`` < ``admin``, each allowed what the ones before are.

The file is re-read when it changes (a token added or revoked takes effect on the
next call). ``python -m service_core.auth new ROLE NAME`` makes a token and its line.
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import hmac
import logging
import secrets
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from service_core import logs
from service_core.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from service_core.handlers import responses_of, rewrap
from service_core.settings import ServerSettings
from service_core.tls import Stamp, stamp

log = logging.getLogger(__name__)

Behavior = Callable[..., Any]


class Role(enum.IntEnum):
    """What a caller may do; a higher role may do all a lower one may."""

    READER = 1
    WRITER = 2
    ADMIN = 3

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(r.name.lower() for r in cls)
            raise ValueError(f"unknown role {text!r}; expected one of {names}") from None


# The methods a role-checked server leaves open: probes must work without a token.
OPEN = object()


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the name in its callers-file line and its role."""

    name: str
    role: Role


@dataclass(frozen=True)
class Callers:
    """The parsed callers file."""

    tokens: tuple[tuple[bytes, Caller], ...]
    identities: Mapping[str, Caller]

    @classmethod
    def parse(cls, text: str, source: str = "callers file") -> Callers:
        tokens: list[tuple[bytes, Caller]] = []
        identities: dict[str, Caller] = {}
        for number, line in enumerate(text.splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            where = f"{source} line {number}"
            try:
                if words[0] == "token" and len(words) == 4:
                    digest = bytes.fromhex(words[1].removeprefix("sha256:"))
                    if len(digest) != 32:
                        raise ValueError("a token hash is 64 hex digits (SHA-256)")
                    tokens.append((digest, Caller(words[3], Role.parse(words[2]))))
                elif words[0] == "cert" and len(words) == 3:
                    identities[words[1]] = Caller(words[1], Role.parse(words[2]))
                else:
                    raise ValueError(
                        "expected 'token <sha256> <role> <name>' or 'cert <identity> <role>'"
                    )
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
        return cls(tuple(tokens), identities)

    def by_token(self, token: str) -> Caller | None:
        """The caller whose token this is; every entry is compared, in constant time."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for stored, caller in self.tokens:
            if hmac.compare_digest(stored, digest):
                found = caller
        return found


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class CallersFile:
    """The callers file, re-read when it changes; a broken edit keeps the last good one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: Stamp = stamp([path])
        self.callers = self._read()

    def _read(self) -> Callers:
        return Callers.parse(self.path.read_text(encoding="utf-8"), str(self.path))

    def current(self) -> Callers:
        try:
            now = stamp([self.path])
            if now != self._stamp:
                self.callers, self._stamp = self._read(), now
                log.info("callers file re-read", extra={"path": str(self.path)})
        except (OSError, ValueError) as error:
            log.error("callers file unusable, keeping the last good one: %s", error)
        return self.callers


class RateLimiter:
    """A token bucket per caller: ``rate`` requests a second, bursts of ``burst``.

    At most ``max_callers`` buckets are kept (least recently seen dropped), so
    callers that come and go cannot grow it without bound.
    """

    def __init__(self, rate: float, burst: int, max_callers: int = 10_000) -> None:
        self.rate, self.burst, self._max = rate, burst, max_callers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def wait_s(self, key: str, now: float | None = None) -> float:
        """0 and a request spent if ``key`` may call now, else seconds until it may."""
        now = time.monotonic() if now is None else now
        level, then = self._buckets.pop(key, (float(self.burst), now))
        level = min(float(self.burst), level + (now - then) * self.rate)
        wait = 0.0
        if level >= 1:
            level -= 1
        else:
            wait = (1 - level) / self.rate
        self._buckets[key] = (level, now)
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait


class AccessInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates each call, checks its role, and applies the per-caller rate.

    ``required`` maps full method names to the least role they need, or to OPEN;
    a method not in it needs ``admin`` (a new RPC is closed until listed).
    ``callers`` None turns authentication off (every call is allowed, and the
    rate limit, if any, is per peer address). Runs inside the error interceptor,
    so its domain errors become statuses there.
    """

    def __init__(
        self,
        required: Mapping[str, Role | object],
        callers: CallersFile | None,
        limiter: RateLimiter | None,
    ) -> None:
        self._required = required
        self._callers = callers
        self._limiter = limiter

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        need = self._required.get(method, Role.ADMIN)
        if handler is None or need is OPEN:
            return handler
        assert isinstance(need, Role)
        metadata = handler_call_details.invocation_metadata or ()

        def check(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            self._check(method, need, metadata, context)

        return rewrap(
            handler,
            unary=lambda behavior, _: _unary(behavior, check),
            streaming=lambda behavior, _: _streaming(behavior, check),
        )

    def _check(
        self,
        method: str,
        need: Role,
        metadata: Sequence[tuple[str, str | bytes]],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        caller = self._authenticate(metadata, context) if self._callers else None
        if caller is not None:
            logs.caller.set(f"{caller.name} ({caller.role.name.lower()})")
        if caller is not None and caller.role < need:
            raise PermissionDenied(
                f"{method} needs role {need.name.lower()}; caller {caller.name!r} "
                f"has {caller.role.name.lower()}",
                reason="ROLE_NOT_ALLOWED",
                metadata={"method": method, "required_role": need.name.lower()},
            )
        if self._limiter is not None:
            key = caller.name if caller else _peer_host(context.peer())
            wait = self._limiter.wait_s(key)
            if wait > 0:
                raise ResourceExhausted(
                    f"rate limit of {self._limiter.rate:g} requests/s for {key!r} exceeded; "
                    f"retry in {wait:.2f} s",
                    reason="RATE_LIMITED",
                    retry_after=wait,
                )

    def _authenticate(
        self,
        metadata: Sequence[tuple[str, str | bytes]],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Caller:
        assert self._callers is not None
        callers = self._callers.current()
        values = [v for k, v in metadata if k == "authorization"]
        if values:
            scheme, _, token = str(values[0]).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated(
                    "the authorization metadata must be 'Bearer <token>'",
                    reason="MALFORMED_CREDENTIALS",
                )
            caller = callers.by_token(token.strip())
            if caller is None:
                raise Unauthenticated(
                    "the bearer token is not (or no longer) valid", reason="INVALID_TOKEN"
                )
            return caller
        identities = [i.decode() for i in context.peer_identities() or ()]
        for identity in identities:
            if identity in callers.identities:
                return callers.identities[identity]
        if identities:
            raise Unauthenticated(
                f"client certificate {identities[0]!r} is not a configured caller, "
                "and no bearer token was sent",
                reason="UNKNOWN_CLIENT_CERTIFICATE",
            )
        raise Unauthenticated(
            "no credentials: send 'authorization: Bearer <token>' metadata "
            "or a client certificate of a configured caller",
            reason="NO_CREDENTIALS",
        )


def _peer_host(peer: str) -> str:
    """'ipv4:10.0.0.7:5123' -> 'ipv4:10.0.0.7': the port changes per connection."""
    return peer.rpartition(":")[0] or peer


def _unary(behavior: Behavior, check: Callable[[Any], None]) -> Behavior:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        check(context)
        return await behavior(request, context)

    return wrapped


def _streaming(behavior: Behavior, check: Callable[[Any], None]) -> Behavior:
    async def wrapped(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        check(context)
        async for response in responses_of(behavior, request, context):
            yield response

    return wrapped


HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = (
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)


class _Mounted(Protocol):
    """A mounted service (server.Service): its full name and its role table."""

    @property
    def name(self) -> str: ...

    @property
    def roles(self) -> Mapping[str, Role]: ...


def access_interceptors(
    settings: ServerSettings, services: Sequence[_Mounted]
) -> list[grpc.aio.ServerInterceptor]:  # type: ignore[type-arg]
    """The AccessInterceptor that ``settings`` ask for, or none when neither auth nor a limit."""
    callers = CallersFile(settings.auth_file) if settings.auth_file else None
    limiter = None
    if settings.rate_limit_per_s > 0:
        limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    if callers is None and limiter is None:
        return []
    required: dict[str, Role | object] = {}
    for service in services:
        for method, role in service.roles.items():
            required[f"/{service.name}/{method}"] = role
    for method in ("Check", "Watch", "List"):
        required[f"/{HEALTH_SERVICE}/{method}"] = OPEN
    if settings.reflection != "off":
        reflection = OPEN if settings.reflection == "open" else Role.parse(settings.reflection)
        for name in REFLECTION_SERVICES:
            required[f"/{name}/ServerReflectionInfo"] = reflection
    return [AccessInterceptor(required, callers, limiter)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service_core.auth", description="Tokens for the callers file."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="make a token: prints it, then its callers-file line")
    new.add_argument("role", choices=[r.name.lower() for r in Role])
    new.add_argument("name")
    line = commands.add_parser("hash", help="the callers-file line of a token read from stdin")
    line.add_argument("role", choices=[r.name.lower() for r in Role])
    line.add_argument("name")
    options = parser.parse_args(argv)
    if options.command == "new":
        token = secrets.token_urlsafe(32)
        print(token)
    else:
        token = sys.stdin.readline().strip()
        if not token:
            parser.error("no token on stdin")
    print(f"token {hash_token(token)} {options.role} {options.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

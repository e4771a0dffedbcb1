"""Builds a frozen settings dataclass from environment variables and CLI flags.

Each field of the dataclass is one setting: ``--grace-period-s`` on the command
line, ``<PREFIX>GRACE_PERIOD_S`` in the environment, the field's default
otherwise (flag beats environment beats default). The field's ``help`` metadata
documents it in ``--help``. Nothing is read at import time: callers pass the
environment and argv in.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")


def setting(default: Any, help: str) -> Any:
    """Declares a settings field with its default and its documentation."""
    return dataclasses.field(default=default, metadata={"help": help})


def _parser_for(kind: Any) -> Any:
    """Returns a function that turns the text of a flag or variable into ``kind``."""
    origin = get_origin(kind)
    if origin in (types.UnionType,) or str(origin) == "typing.Union":
        inner = [a for a in get_args(kind) if a is not type(None)]
        parse_inner = _parser_for(inner[0])
        return lambda text: None if text.strip() in ("", "none") else parse_inner(text)
    if origin is tuple:
        parse_item = _parser_for(get_args(kind)[0])
        return lambda text: tuple(parse_item(p.strip()) for p in text.split(",") if p.strip())
    if kind is bool:
        return _parse_bool
    if kind in (int, float, str, Path):
        return kind
    raise TypeError(f"unsupported settings type {kind!r}")


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def load_settings(
    cls: type[T],
    *,
    prefix: str,
    environ: Mapping[str, str],
    argv: Sequence[str] | None = None,
    description: str | None = None,
) -> T:
    """Reads every field of dataclass ``cls`` from ``argv`` and ``environ``.

    Raises SystemExit with argparse's usage message when a value does not parse,
    so a mistyped variable stops start-up with one clear line.
    """
    hints = get_type_hints(cls)
    parser = argparse.ArgumentParser(description=description)
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    for field in fields:
        env_name = prefix + field.name.upper()
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            default=None,
            help=f"{field.metadata.get('help', '')} (env {env_name}; default {field.default!r})",
        )
    options = parser.parse_args(list(argv or []))
    values: dict[str, Any] = {}
    for field in fields:
        env_name = prefix + field.name.upper()
        raw = getattr(options, field.name)
        source = f"--{field.name.replace('_', '-')}"
        if raw is None and env_name in environ:
            raw, source = environ[env_name], env_name
        if raw is None:
            continue
        try:
            values[field.name] = _parser_for(hints[field.name])(raw)
        except ValueError as error:
            parser.error(f"{source}: {error}")
    try:
        return cls(**values)
    except ValueError as error:  # __post_init__ validation
        parser.error(str(error))


def describe(settings: object) -> dict[str, Any]:
    """The settings as a flat dict for the start-up log line, passwords redacted."""
    described: dict[str, Any] = {}
    for key, value in dataclasses.asdict(settings).items():  # type: ignore[call-overload]
        if isinstance(value, Path):
            value = str(value)
        described[key] = redact(value) if isinstance(value, str) else value
    return described


_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the password of a URL (``user:pw@``) or a libpq ``password=`` hidden."""
    try:
        parts = urllib.parse.urlsplit(text)
        if parts.password is not None:
            host = parts.netloc.rpartition("@")[2]
            netloc = f"{parts.username or ''}:***@{host}"
            text = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    except ValueError:  # not a URL at all
        pass
    text = re.sub(r"([?&]password=)[^&]*", r"\1***", text, flags=re.IGNORECASE)
    return _KEYWORD_PASSWORD.sub(r"\1***", text) if "://" not in text else text

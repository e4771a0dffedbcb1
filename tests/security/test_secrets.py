"""Secrets stay out of logs; the callers file, its token command and the rate limiter."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from search_service.settings import SearchSettings
from service_core.auth import Callers, RateLimiter, Role, main
from service_core.config import describe, load_settings, redact
from service_core.logs import JsonFormatter


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (
            "postgresql://app:s3cr%40t@db:5432/imagesearch",
            "postgresql://app:***@db:5432/imagesearch",
        ),
        ("postgresql://app@db/imagesearch", "postgresql://app@db/imagesearch"),
        (
            "postgresql://db/x?sslmode=require&password=s3cr",
            "postgresql://db/x?sslmode=require&password=***",
        ),
        ("host=db user=app password=s3cr dbname=x", "host=db user=app password=*** dbname=x"),
    ],
)
def test_dsn_passwords_are_redacted(dsn: str, shown: str) -> None:
    assert redact(dsn) == shown


def test_start_up_log_line_carries_no_database_password() -> None:
    settings = load_settings(
        SearchSettings,
        prefix="SEARCH_",
        environ={"SEARCH_DATABASE_URL": "postgresql://app:hunter2@db/imagesearch"},
    )
    assert settings.database_url.endswith("hunter2@db/imagesearch")  # still used as given
    record = logging.makeLogRecord({"msg": "starting", "settings": describe(settings)})
    line = JsonFormatter().format(record)
    assert "hunter2" not in line
    assert json.loads(line)["settings"]["database_url"] == "postgresql://app:***@db/imagesearch"


def test_new_token_command_prints_a_token_and_the_line_that_admits_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["new", "writer", "ci-bot"]) == 0
    token, line = capsys.readouterr().out.splitlines()
    assert len(token) >= 40
    assert token not in line  # only its hash goes in the file
    callers = Callers.parse(line)
    caller = callers.by_token(token)
    assert caller is not None
    assert (caller.name, caller.role) == ("ci-bot", Role.WRITER)
    assert callers.by_token(token + "x") is None


def test_hash_command_reads_the_token_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("my-token\n"))
    assert main(["hash", "reader", "alice"]) == 0
    line = capsys.readouterr().out.strip()
    assert Callers.parse(line).by_token("my-token") is not None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("token abc reader x", "line 1: non-hexadecimal"),
        ("# ok\ntoken " + "ab" * 16 + " reader x", "line 2: a token hash is 64 hex digits"),
        ("token " + "ab" * 32 + " root x", "line 1: unknown role 'root'"),
        ("user alice admin", "line 1: expected 'token <sha256> <role> <name>'"),
    ],
)
def test_callers_file_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Callers.parse(text, "callers")


def test_a_broken_callers_file_stops_start_up_with_its_line(tmp_path: Path) -> None:
    from service_core.auth import access_interceptors

    path = tmp_path / "callers"
    path.write_text("cert someone superuser\n")
    settings = SearchSettings(auth_file=path)
    with pytest.raises(ValueError, match=f"{path} line 1: unknown role 'superuser'"):
        access_interceptors(settings, [])


def test_reflection_behind_a_role_needs_a_callers_file() -> None:
    with pytest.raises(ValueError, match="needs auth_file"):
        SearchSettings(reflection="admin")


def test_rate_limiter_refills_at_its_rate_and_keeps_callers_apart() -> None:
    limiter = RateLimiter(rate=2.0, burst=3, max_callers=2)
    assert [limiter.wait_s("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.wait_s("a", now=0.0) == pytest.approx(0.5)
    assert limiter.wait_s("a", now=0.5) == 0.0  # one request refilled in 0.5 s
    assert limiter.wait_s("b", now=0.5) == 0.0
    limiter.wait_s("c", now=0.5)  # past max_callers: "a", least recent, is forgotten
    assert limiter.wait_s("a", now=0.5) == 0.0

"""Settings come from flags, then the environment, then defaults, and are validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from extractor_service.settings import ExtractorSettings
from search_service.settings import SearchSettings
from service_core.config import load_settings


def test_flag_beats_environment_beats_default() -> None:
    settings = load_settings(
        SearchSettings,
        prefix="SEARCH_",
        environ={"SEARCH_PORT": "7000", "SEARCH_POOL_MAX_SIZE": "3", "PORT": "1"},
        argv=["--port", "7001"],
    )
    assert settings.port == 7001
    assert settings.pool_max_size == 3
    assert settings.grace_period_s == SearchSettings().grace_period_s


def test_typed_values_parse_from_text() -> None:
    settings = load_settings(
        ExtractorSettings,
        prefix="EXTRACTOR_",
        environ={
            "EXTRACTOR_PROVIDERS": "CUDAExecutionProvider, CPUExecutionProvider",
            "EXTRACTOR_MODEL_DIR": "/models/lite0",
            "EXTRACTOR_MAX_BATCH_WAIT_MS": "2.5",
        },
    )
    assert settings.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert settings.model_dir == Path("/models/lite0")
    assert settings.max_batch_wait_ms == 2.5


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SEARCH_PORT": "eighty"}, "SEARCH_PORT: invalid literal for int()"),
        ({"SEARCH_PORT": "70000"}, "port must be 0..65535"),
        ({"SEARCH_LOG_FORMAT": "xml"}, "log_format must be 'json' or 'text'"),
        ({"SEARCH_POOL_MIN_SIZE": "5", "SEARCH_POOL_MAX_SIZE": "2"}, "pool_min_size"),
    ],
)
def test_bad_value_stops_start_up_with_one_clear_line(
    environ: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        load_settings(SearchSettings, prefix="SEARCH_", environ=environ)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_help_names_each_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_settings(SearchSettings, prefix="SEARCH_", environ={}, argv=["--help"])
    shown = capsys.readouterr().out
    assert "--database-url" in shown
    assert "SEARCH_DATABASE_URL" in shown


def test_readme_documents_every_setting() -> None:
    import dataclasses

    from service_core.settings import ServerSettings

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    shared = {f.name for f in dataclasses.fields(ServerSettings)}
    for settings, prefix in ((ExtractorSettings, "EXTRACTOR_"), (SearchSettings, "SEARCH_")):
        for field in dataclasses.fields(settings):
            if prefix == "SEARCH_" and field.name in shared:
                continue  # documented once, under the extractor's names
            assert f"`{prefix}{field.name.upper()}`" in readme, field.name

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.errors import InputError
from edge_runtime.settings import ServeSettings, SettingsError


def test_defaults_then_env_then_flags() -> None:
    env = {"OTAML_BUNDLE": "/env/bundle", "OTAML_PORT": "9000", "OTAML_MAX_BATCH": "10", "OTAML_LOG_LEVEL": "DEBUG"}
    settings = ServeSettings.from_sources({"port": "9100", "max_batch": None}, env)
    assert settings.bundle == Path("/env/bundle")
    assert settings.port == 9100  # the flag wins
    assert settings.max_batch == 10  # the env applies where no flag was given
    assert settings.log_level == "debug"
    assert settings.max_streams == 1024  # the default
    assert settings.access_log is False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTAML_PORT": "eighty"}, "Config 'OTAML_PORT' has value 'eighty'. Not a valid integer; expected 1..65535."),
        ({"OTAML_PORT": "70000"}, "Config 'OTAML_PORT' has value '70000'. Out of range"),
        ({"OTAML_ACCESS_LOG": "maybe"}, "Config 'OTAML_ACCESS_LOG' has value 'maybe'. Not a valid bool"),
        ({"OTAML_LOG_LEVEL": "loud"}, "Config 'OTAML_LOG_LEVEL' has value 'loud'. Expected one of debug"),
        ({"OTAML_MAX_BODY_BYTES": "10"}, "Config 'OTAML_MAX_BODY_BYTES' has value '10'. Out of range; expected 64.."),
    ],
)
def test_bad_values_name_the_key_and_the_value(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        ServeSettings.from_sources({}, {"OTAML_BUNDLE": "/b", **env})
    assert str(info.value).startswith(message)
    assert isinstance(info.value, InputError)


def test_bad_flag_is_named_as_a_flag() -> None:
    with pytest.raises(SettingsError, match="Config '--max-streams' has value '0'"):
        ServeSettings.from_sources({"bundle": "/b", "max_streams": "0"}, {})


def test_missing_bundle_says_how_to_give_one() -> None:
    with pytest.raises(SettingsError, match="--bundle DIR or set OTAML_BUNDLE"):
        ServeSettings.from_sources({}, {})


def test_empty_env_values_are_ignored() -> None:
    assert ServeSettings.from_sources({"bundle": "/b"}, {"OTAML_PORT": ""}).port == 8080

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.agent.config import AgentConfig, ConfigError, load_config
from edge_runtime.fleet.settings import FleetConfigError

EXAMPLE = Path(__file__).parents[3] / "deploy" / "agent.example.toml"


def test_example_config_loads_with_documented_defaults() -> None:
    config = load_config(EXAMPLE)
    assert config.repository == "otaml/pump-anomaly"
    assert config.channel_ref == "otaml/pump-anomaly:production"
    assert (config.memory_mb, config.cpus) == (100, 0.25)
    assert config.private_ports == (18081, 18082)
    assert config.platform.startswith("linux/")
    assert config.metrics_path == Path("/var/lib/otaml-agent/agent.prom")


def test_image_ref_names_the_digest_in_the_registry_host() -> None:
    config = AgentConfig.from_mapping(
        {"registry": {"url": "http://127.0.0.1:5000/", "repository": "pump"}, "trust": {"insecure": True}}
    )
    assert config.plain_http
    assert config.image_ref("sha256:" + "a" * 64) == "127.0.0.1:5000/pump@sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("patch", "words"),
    [
        ({"registry": {"url": "ftp://x", "repository": "r"}}, "registry.url"),
        ({"registry": {"url": "http://x"}}, "registry.repository"),
        ({"service": {"cpus": "lots"}}, "'service.cpus' has value 'lots'"),
        ({"service": {"cpus": -1}}, "service.cpus"),
        ({"service": {"private_ports": [1, 1]}}, "service.private_ports"),
        ({"service": {"public_port": 18081}}, "public_port"),
        ({"poll": {"jitter": 2}}, "poll.jitter"),
        ({"service": {"memory_mb": True}}, "service.memory_mb"),
        ({"containerd": {"namespace": "agent-"}}, "containerd.namespace"),
    ],
)
def test_bad_values_name_the_key_and_the_value(patch: dict, words: str) -> None:
    data: dict = {"registry": {"url": "http://127.0.0.1:5000", "repository": "pump"}, "trust": {"insecure": True}}
    for section, values in patch.items():
        data[section] = {**data.get(section, {}), **values}
        if section == "registry" and "repository" not in values and "url" in values and values["url"] == "http://x":
            data["registry"] = dict(values)
    with pytest.raises(ConfigError, match=words.replace(".", r"\.").replace("(", r"\(")):
        AgentConfig.from_mapping(data)


def test_missing_and_malformed_files_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"agent\.example\.toml"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[registry\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


@pytest.mark.parametrize(("value", "mode"), [(None, "auto"), ("auto", "auto"), (True, "on"), (False, "off")])
def test_warm_rollback_is_auto_by_default_and_takes_booleans(value: object, mode: str) -> None:
    data: dict = {"registry": {"url": "http://127.0.0.1:5000", "repository": "pump"}, "trust": {"insecure": True}}
    if value is not None:
        data["update"] = {"warm_rollback": value}
    assert AgentConfig.from_mapping(data).warm_rollback == mode


def test_a_bad_warm_rollback_value_says_what_to_use() -> None:
    data: dict = {
        "registry": {"url": "http://x:1", "repository": "p"},
        "update": {"warm_rollback": "maybe"},
        "trust": {"insecure": True},
    }
    with pytest.raises(ConfigError, match=r"'update\.warm_rollback' has value 'maybe'.*\"auto\""):
        AgentConfig.from_mapping(data)


def test_the_fleet_section_takes_the_devices_identity_by_default() -> None:
    data: dict = {
        "registry": {"url": "http://x:1", "repository": "p"},
        "trust": {"insecure": True},
        "device": {"id": "pump-7", "groups": {"hw": "pi4"}},
        "fleet": {"fleet": "plant-3", "broker_host": "broker.local"},
    }
    config = AgentConfig.from_mapping(data)
    assert config.fleet is not None
    assert (config.fleet.device_id, dict(config.fleet.groups), config.fleet.fleet) == (
        "pump-7",
        {"hw": "pi4"},
        "plant-3",
    )
    assert AgentConfig.from_mapping({k: v for k, v in data.items() if k != "fleet"}).fleet is None
    with pytest.raises(ConfigError, match=r"'device\.id' has value 'a/b'"):
        AgentConfig.from_mapping({**data, "device": {"id": "a/b"}})


def test_capture_windows_is_off_by_default_and_turns_the_services_capture_on() -> None:
    data: dict = {
        "registry": {"url": "http://x:1", "repository": "p"},
        "trust": {"insecure": True},
        "device": {"id": "pump-7"},
        "fleet": {},
    }
    off = AgentConfig.from_mapping(data)
    assert off.fleet is not None
    assert off.fleet.capture_windows is False
    assert "OTAML_CAPTURE_WINDOWS" not in off.service_env
    on = AgentConfig.from_mapping({**data, "fleet": {"capture_windows": True}})
    assert on.fleet is not None
    assert on.fleet.capture_windows is True
    assert on.service_env["OTAML_CAPTURE_WINDOWS"] == "true"
    with pytest.raises(FleetConfigError, match=r"'fleet\.capture_windows' has value 'yes'"):
        AgentConfig.from_mapping({**data, "fleet": {"capture_windows": "yes"}})


def test_token_hosts_are_a_list_of_host_names() -> None:
    data: dict = {"registry": {"url": "https://r.example", "repository": "p"}, "trust": {"insecure": True}}
    assert AgentConfig.from_mapping(data).token_hosts == ()
    data["registry"]["token_hosts"] = ["auth.example.com"]
    assert AgentConfig.from_mapping(data).token_hosts == ("auth.example.com",)
    data["registry"]["token_hosts"] = "auth.example.com"
    with pytest.raises(ConfigError, match=r"registry\.token_hosts"):
        AgentConfig.from_mapping(data)

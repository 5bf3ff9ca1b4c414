import json
from pathlib import Path

import pytest

from edgeproxy.daemon.config import ConfigError, build_config
from edgeproxy.daemon.options import OPTIONS

REPO = Path(__file__).resolve().parents[2]


def test_defaults():
    config = build_config({"config": None})
    assert config.manifests == Path("/etc/edgeproxy")
    assert config.min_sync_period == pytest.approx(0.1)
    assert config.healthz_bind_address == ("127.0.0.1", 10266)
    assert config.metrics_bind_address == ("127.0.0.1", 10267)
    assert config.cleanup_on_exit is True


def test_file_then_flags_win(tmp_path):
    cfg = tmp_path / "edgeproxy.yaml"
    cfg.write_text("udpTimeout: 2s\nlogFormat: json\nmaxRemovalRatio: 0.2\n")
    config = build_config({"config": str(cfg), "udp_timeout": "500ms"})
    assert config.udp_timeout == pytest.approx(0.5)  # flag wins
    assert config.log_format == "json"  # from the file
    assert config.max_removal_ratio == pytest.approx(0.2)


def test_schema_error_names_file_and_field(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("udpTimout: 2s\niptablesSyncPeriod: soon\n")
    with pytest.raises(ConfigError) as err:
        build_config({"config": str(cfg)})
    text = str(err.value)
    assert str(cfg) in text and "udpTimout" in text and "iptablesSyncPeriod" in text


def test_bad_flag_names_flag():
    with pytest.raises(ConfigError, match="--iptables-min-sync-period"):
        build_config({"config": None, "min_sync_period": "fast"})


def test_config_inside_manifest_dir_refused(tmp_path):
    (tmp_path / "m").mkdir()
    cfg = tmp_path / "m" / "edgeproxy.yaml"
    cfg.write_text("{}\n")
    with pytest.raises(ConfigError, match="inside the manifest directory"):
        build_config({"config": str(cfg), "manifests": str(tmp_path / "m")})


def test_every_option_has_a_schema_field_and_example():
    schema = json.loads((REPO / "schemas" / "config.schema.json").read_text())
    keys = set(schema["properties"]) - {"apiVersion", "kind"}
    assert keys == {option.key for option in OPTIONS}
    example = (REPO / "config" / "edgeproxy.yaml").read_text()
    for option in OPTIONS:
        assert f"\n{option.key}:" in example and option.flag.lstrip("-") in example


def test_schema_choices_and_defaults_are_the_options_own():
    """The schema is data (it ships as JSON): these are the copies the options table's
    choice lists (model.FILTER_MODES, BACKEND_CHOICES) and defaults must agree with."""
    schema = json.loads((REPO / "schemas" / "config.schema.json").read_text())["properties"]
    for option in OPTIONS:
        field = schema[option.key]
        if option.choices is not None:
            assert field.get("enum") == list(option.choices), option.key
        if "default" in field:
            assert field["default"] == option.default, option.key


def test_example_config_is_valid():
    config = build_config({"config": str(REPO / "config" / "edgeproxy.yaml")})
    assert config.drain_grace == pytest.approx(30.0)


def test_udp_timeout_has_one_default_everywhere():
    """The flag, the config schema, ProxyServer and UdpService: model.DEFAULT_UDP_TIMEOUT_SECONDS."""
    import inspect

    from edgeproxy.daemon.durations import parse_duration
    from edgeproxy.forwarding.server import ProxyServer
    from edgeproxy.forwarding.udp import UdpService
    from edgeproxy.model import DEFAULT_UDP_TIMEOUT_SECONDS

    option = next(o for o in OPTIONS if o.dest == "udp_timeout")
    assert parse_duration(option.default) == DEFAULT_UDP_TIMEOUT_SECONDS
    assert build_config({"config": None}).udp_timeout == DEFAULT_UDP_TIMEOUT_SECONDS
    assert inspect.signature(ProxyServer).parameters["udp_timeout"].default == \
        DEFAULT_UDP_TIMEOUT_SECONDS
    assert inspect.signature(UdpService).parameters["timeout"].default == \
        DEFAULT_UDP_TIMEOUT_SECONDS

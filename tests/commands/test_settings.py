"""Every subcommand that talks to the daemon or the node reads --config, and a setting has the
same flag (name, choices, metavar) everywhere it appears; -o yaml wherever -o json exists."""

from __future__ import annotations

import argparse

import pytest

from edgeproxy.cli import build_parser
from edgeproxy.commands._settings import resolve
from edgeproxy.daemon.options import OPTIONS

TALKS_TO_DAEMON_OR_NODE = ("status", "confirm-removal", "doctor", "rules", "cleanup",
                           "validate", "run")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _flags(sub: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in sub._actions for flag in action.option_strings}


@pytest.mark.parametrize("name", TALKS_TO_DAEMON_OR_NODE)
def test_reads_the_config_file(name):
    assert "--config" in _flags(_subparsers()[name])


def test_a_daemon_setting_is_spelled_the_same_everywhere():
    by_flag = {option.flag: option for option in OPTIONS}
    for name, sub in _subparsers().items():
        for flag, action in _flags(sub).items():
            option = by_flag.get(flag)
            if option is None or name == "run" or (name, flag) == ("cleanup",
                                                                   "--iptables-backend"):
                continue  # cleanup's backend has its own "all"
            assert action.dest == option.dest, (name, flag)
            assert action.metavar == option.metavar, (name, flag)
            assert (tuple(action.choices) if action.choices else None) == option.choices, (
                name, flag)
    # What other commands once called --address is the daemon's own flag now.
    assert "--address" not in _flags(_subparsers()["status"])


def test_json_output_always_has_yaml_beside_it():
    for name, sub in _subparsers().items():
        output = _flags(sub).get("-o")
        if output is not None and "json" in (output.choices or ()):
            assert "yaml" in output.choices, name


def test_flag_over_config_file_over_default(tmp_path):
    config = tmp_path / "edgeproxy.yaml"
    config.write_text("healthzBindAddress: 127.0.0.1:19999\n")
    status = _subparsers()["status"]
    args = status.parse_args(["--config", str(config)])
    assert resolve(args, "status")["healthz_bind_address"] == ("127.0.0.1", 19999)
    args = status.parse_args(["--config", str(config), "--healthz-bind-address", ":1234"])
    assert resolve(args, "status")["healthz_bind_address"] == ("0.0.0.0", 1234)
    args = status.parse_args([])
    assert resolve(args, "status")["healthz_bind_address"] == ("127.0.0.1", 10266)

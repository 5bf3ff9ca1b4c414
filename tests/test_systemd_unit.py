"""edgeproxy.service: the settings the daemon relies on, `systemd-analyze verify`, and its ExecStart
line run as written (binary path swapped for this checkout's, config pointed at a temp file)
inside a network namespace, with a NOTIFY_SOCKET of our own standing in for systemd: it must
send READY=1 and WATCHDOG=1, answer /readyz, and exit 0 on SIGTERM."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from edgeproxy.demo.daemon import copy_examples

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "edgeproxy.service"
EDGEPROXY_BIN = REPO / ".venv" / "bin" / "edgeproxy"
REQUIRED_CAPS = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"}
DEFAULT_DRAIN_GRACE = 30.0  # seconds, `--drain-grace` default


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """systemd unit syntax: sections of `Key=value` lines (keys may repeat, order matters),
    `#`/`;` comments, trailing-backslash continuations."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not Key=value: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def value(unit: dict, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert found, f"[{section}] {key}= missing"
    return found[-1]


def seconds(text: str) -> float:
    """systemd time span ("30s", "1min 30s", "90", "infinity") to seconds."""
    if text == "infinity":
        return float("inf")
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "": 1}
    total = 0.0
    for number, unit_name in re.findall(r"([\d.]+)\s*([a-z]*)", text):
        total += float(number) * units[unit_name]
    return total


@pytest.fixture(scope="module")
def unit() -> dict:
    assert UNIT.is_file(), f"{UNIT} is missing"
    return parse_unit(UNIT.read_text())


def test_unit_has_the_settings_a_remote_node_needs(unit):
    assert value(unit, "Service", "Type") == "notify"
    assert 0 < seconds(value(unit, "Service", "WatchdogSec")) <= 300
    assert value(unit, "Service", "Restart") == "always"
    # A remote node must never give up restarting (the setting lives in [Unit]).
    assert value(unit, "Unit", "StartLimitIntervalSec") in ("0", "infinity")
    caps = set(" ".join(values(unit, "Service", "CapabilityBoundingSet")).split())
    assert caps == REQUIRED_CAPS
    assert set(" ".join(values(unit, "Service", "AmbientCapabilities")).split()) <= REQUIRED_CAPS
    assert value(unit, "Service", "ProtectSystem") == "strict"
    writable = " ".join(values(unit, "Service", "ReadWritePaths")).split()
    assert any(p.lstrip("-") == "/run/xtables.lock" for p in writable), writable
    assert values(unit, "Service", "RuntimeDirectory"), "RuntimeDirectory= missing"
    assert value(unit, "Service", "ProtectHome") in ("yes", "true", "read-only", "tmpfs")
    assert value(unit, "Service", "NoNewPrivileges") in ("yes", "true")
    # strict makes /etc read-only: the manifest directory must not be made writable again.
    assert not [p for p in writable if "/etc" in p], writable
    nofile = value(unit, "Service", "LimitNOFILE").split(":")[-1]
    assert nofile == "infinity" or int(nofile) >= 65536
    assert seconds(value(unit, "Service", "TimeoutStopSec")) > DEFAULT_DRAIN_GRACE
    after = " ".join(values(unit, "Unit", "After")).split()
    before = " ".join(values(unit, "Unit", "Before")).split()
    assert "network.target" in after
    assert "network-online.target" not in after  # an offline node never gets there
    assert {"kubelet.service", "edgecore.service"} <= set(before)
    assert values(unit, "Install", "WantedBy")


def _exec_start_argv(unit: dict) -> list[str]:
    line = value(unit, "Service", "ExecStart")
    line = line.lstrip("-@+!:")  # systemd's ExecStart prefixes
    argv = shlex.split(line)
    assert argv[0].startswith("/"), f"ExecStart must name an absolute path: {argv[0]}"
    assert os.path.basename(argv[0]) == "edgeproxy" and "run" in argv[1:], argv
    return argv


def test_systemd_analyze_verify_accepts_the_unit(unit, tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (apt package systemd)")
    argv = _exec_start_argv(unit)
    # verify checks that the binary exists: point it at this checkout's.
    text = UNIT.read_text().replace(argv[0], str(EDGEPROXY_BIN))
    copy = tmp_path / "edgeproxy.service"
    copy.write_text(text)
    result = subprocess.run([tool, "verify", "--man=no", str(copy)], capture_output=True,
                            text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if "edgeproxy.service" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr



def test_unit_security_score():
    """systemd-analyze's exposure score for the shipped unit (lower is better)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (apt package systemd)")
    result = subprocess.run([tool, "security", "--offline=true", "--no-pager", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    line = [ln for ln in result.stdout.splitlines() if "Overall exposure level" in ln][-1]
    score = float(line.split(":")[1].split()[0])
    assert score <= 3.0, result.stdout

def _config_path_arg(argv: list[str]) -> int | None:
    for i, arg in enumerate(argv):
        if arg == "--config":
            return i + 1
    return None


def test_exec_start_runs_as_written_until_ready_then_stops_on_sigterm(unit, netns, tmp_path):
    if not EDGEPROXY_BIN.exists():
        pytest.skip(f"{EDGEPROXY_BIN} missing: run ./scripts/bootstrap")
    argv = _exec_start_argv(unit)
    argv[0] = str(EDGEPROXY_BIN)
    manifests = copy_examples(REPO / "config" / "examples", tmp_path / "manifests")
    config = tmp_path / "edgeproxy.yaml"
    config.write_text(f"manifests: {manifests}\nstateDir: {tmp_path / 'state'}\n"
                      "healthzBindAddress: 127.0.0.1:10266\n"
                      "metricsBindAddress: 127.0.0.1:10267\n")
    index = _config_path_arg(argv)
    if index is not None:
        argv[index] = str(config)
    else:
        argv += ["--config", str(config)]
    # systemd's specifiers a unit may use for its runtime directory.
    argv = [a.replace("%t", "/run").replace("${RUNTIME_DIRECTORY}", str(tmp_path / "state"))
            for a in argv]

    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.2)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="2000000")
    proc = netns.popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    messages: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
                any("READY=1" in m for m in messages) and any("WATCHDOG=1" in m for m in messages)):
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                messages.append(notify.recv(4096).decode())
            except socket.timeout:
                pass
        assert any("READY=1" in m for m in messages), messages
        assert any("WATCHDOG=1" in m for m in messages), messages
        # STATUS= says what is served, for `systemctl status edgeproxy`.
        ready_message = next(m for m in messages if "READY=1" in m)
        assert re.search(r"STATUS=\d+ service ports?, \d+ manifest errors?, rules ok",
                         ready_message), ready_message
        ready = netns.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                           "http://127.0.0.1:10266/readyz"], check=False)
        assert ready.stdout == "200"

        os.kill(proc.pid, signal.SIGTERM)
        # No open connections: it should stop well within any TimeoutStopSec (the settings test
        # checks that value); the watchdog/drain machinery must not hold the exit back.
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    log = proc.stdout.read().decode() if proc.stdout else ""
    assert "Traceback" not in log, log

"""`edgeproxy demo` as a user runs it: every step works, exit 0, nothing left behind; and
Ctrl-C while it is kept running cleans up too."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from edgeproxy.demo.netns import netns_unavailable_reason

pytestmark = [pytest.mark.slow, pytest.mark.netns]

# The demo of this checkout; the daemon it starts honours $EDGEPROXY_BIN.
DEMO = [sys.executable, "-m", "edgeproxy", "demo"]


@pytest.fixture(autouse=True)
def _root_only():
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)


def _demo_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("epdemo-")}


def _nat_rules_of_host() -> str:
    # Read-only look at the host's nat table: the demo must not have changed it.
    return subprocess.run(["iptables-save", "-t", "nat"], capture_output=True,
                          text=True).stdout


def _strip_counters(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith(("#", ":"))]


def test_demo_runs_every_step_and_leaves_nothing_behind():
    before_ns, before_nat = _demo_namespaces(), _strip_counters(_nat_rules_of_host())
    started = time.monotonic()
    result = subprocess.run(DEMO, capture_output=True, text=True,
                            timeout=90)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    out = result.stdout
    for expected in ("KUBE-PORTALS-CONTAINER", "web-1", "198.19.0.10", "node_up 1",
                     "new service answering", "# before", "# after", "exit code 0",
                     "All steps worked"):
        assert expected in out, expected
    assert "FAILED" not in out
    assert took < 60, f"demo took {took:.1f} s"
    assert _demo_namespaces() == before_ns
    assert _strip_counters(_nat_rules_of_host()) == before_nat


def test_ctrl_c_while_kept_running_cleans_up():
    before = _demo_namespaces()
    proc = subprocess.Popen([*DEMO, "--keep"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        deadline = time.monotonic() + 60
        for line in proc.stdout:  # type: ignore[union-attr]
            seen.append(line)
            if "Left running" in line or time.monotonic() > deadline:
                break
        assert any("Left running" in line for line in seen), "".join(seen)
        assert len(_demo_namespaces() - before) == 3
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert _demo_namespaces() == before

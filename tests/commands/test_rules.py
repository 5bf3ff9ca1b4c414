"""`edgeproxy rules`: prints the text for a manifest directory, as an unprivileged user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeproxy.model import DesiredState
from edgeproxy.rules.preview import preview_proxy_ports
from tests.rules import states

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "config" / "examples"

UNPRIVILEGED = "65534"


def _drop_privileges(argv: list[str], user: str) -> list[str]:
    return ["setpriv", "--reuid", user, "--regid", user, "--clear-groups", *argv]


def _rules(*args, user: str | None = None, cwd=None):
    argv = [sys.executable, "-m", "edgeproxy", "rules", *args]
    if user and os.geteuid() == 0 and shutil.which("setpriv"):
        argv = _drop_privileges(argv, user)
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=cwd)


def test_prints_restore_text_for_the_examples_without_root(tmp_path):
    if os.geteuid() == 0 and shutil.which("setpriv"):
        # A checkout under a 0700 directory (mktemp, /root) cannot be imported by nobody; that
        # says nothing about `edgeproxy rules`, so say so instead of failing.
        probe = subprocess.run(_drop_privileges([sys.executable, "-c", "import edgeproxy"],
                                                UNPRIVILEGED), capture_output=True, timeout=30)
        if probe.returncode != 0:
            pytest.skip(f"this checkout ({REPO}) is not readable by uid {UNPRIVILEGED}")
    out = _rules("--manifests", str(EXAMPLES), "--iptables-backend", "legacy",
                 "--state-dir", str(tmp_path), user=UNPRIVILEGED, cwd=REPO)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "*nat\n:KUBE-PORTALS-CONTAINER - [0:0]" in text
    assert ("-A KUBE-PORTALS-HOST -d 198.19.0.10/32 -p tcp -m comment --comment default/web:http "
            "-m tcp --dport 80 -j DNAT --to-destination 169.254.96.17:") in text
    assert "-p udp -m comment --comment kube-system/edge-dns:dns -m udp --dport 53" in text
    assert "198.19.0.30" not in text  # labelled for another proxy: skipped


def test_nftables_text_and_daemon_ports_are_used(tmp_path):
    (tmp_path / "ports.json").write_text(json.dumps(
        {"version": 1, "range": "61000-64999", "ports": {"default/web:http/TCP": 63333}}))
    out = _rules("--manifests", str(EXAMPLES), "--iptables-backend", "nftables",
                 "--state-dir", str(tmp_path), "--family", "4")
    assert out.returncode == 0, out.stderr
    assert "table ip edgeproxy {" in out.stdout
    assert 'ip daddr 198.19.0.10 tcp dport 80 dnat to 169.254.96.17:63333' in out.stdout


def test_missing_directory_is_a_clear_error(tmp_path):
    out = _rules("--manifests", str(tmp_path / "nope"), "--iptables-backend", "nft")
    assert out.returncode == 2
    assert "edgeproxy rules:" in out.stderr and "Traceback" not in out.stderr


def test_preview_ports_are_deterministic_and_follow_the_state_file(tmp_path):
    state = DesiredState(ports=states.example_ports())
    first = preview_proxy_ports(state, tmp_path)
    assert first == preview_proxy_ports(state, None)
    assert len(set(first.values())) == len(first)
    assert all(61000 <= p <= 64999 for p in first.values())
    (tmp_path / "ports.json").write_text(json.dumps(
        {"version": 1, "ports": {str(states.WEB): 64000}}))
    assert preview_proxy_ports(state, tmp_path)[states.WEB] == 64000

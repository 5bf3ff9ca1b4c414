"""Every watchdog release the lock and pyproject allow, under `edgeproxy run`'s monkey-patching:
the hub keeps running while events flow, and the real daemon starts, follows a change and
stops cleanly.

watchdog 7.1.1 once froze the daemon on every fresh machine (its observer waited on a C
SimpleQueue in a thread that patching had turned into a greenlet) while every older venv
passed. scripts/bootstrap installs each release of locks/watchdog-versions.txt under
.venv/watchdog-versions/<version>; each test puts one first on PYTHONPATH, which the watcher
process inherits, and checks that this release is the one that ran.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VERSIONS_DIR = REPO / ".venv" / "watchdog-versions"
LOCKED_VERSIONS = REPO / "locks" / "watchdog-versions.txt"


def _listed_versions() -> list[str]:
    return [line.split("==")[1].split()[0] for line in LOCKED_VERSIONS.read_text().splitlines()
            if line.startswith("watchdog==")]


VERSIONS = _listed_versions()


def _env_for(version: str) -> dict[str, str]:
    target = VERSIONS_DIR / version
    if not (target / "watchdog").is_dir():
        pytest.skip(f"watchdog {version} not installed under {VERSIONS_DIR} "
                    "(run scripts/bootstrap)")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(REPO)])
    return env


def test_the_locked_release_is_in_the_tested_list():
    from importlib.metadata import version

    assert version("watchdog") in VERSIONS, (
        "the lock installs a watchdog release the tests do not run: add it to "
        "locks/watchdog-versions.in and run scripts/update-locks")


_HUB_UNDER_EVENTS = r"""
from gevent import monkey; monkey.patch_all(queue=False)   # exactly as `edgeproxy run`
import json, subprocess, sys, time
from pathlib import Path
import gevent
from edgeproxy.daemon.watcher import DirectoryWatcher

root = Path(sys.argv[1]); files = int(sys.argv[2])
seen = []
watcher = DirectoryWatcher(root, lambda paths, writing=frozenset(): seen.append(paths))
ready = watcher.start(wait=15)
gaps = []
def tick():
    last = time.monotonic()
    while True:
        gevent.sleep(0.005)
        now = time.monotonic(); gaps.append(now - last); last = now
ticker = gevent.spawn(tick)
# The files are written by another process, so the hub has nothing to do but take events;
# into directories that exist already, so every file is an event of its own (a new directory
# would be a rescan, which says nothing about this release's event delivery).
writer = subprocess.Popen([sys.executable, "-c",
    "import sys; from pathlib import Path\n"
    "root = Path(sys.argv[1])\n"
    "for d in range(10):\n"
    "    for i in range(int(sys.argv[2]) // 10):\n"
    "        (root / f'd{d}' / f'f{i}.yaml').write_text('x: 1\\n')\n",
    str(root), str(files)])
while writer.poll() is None:
    gevent.sleep(0.01)
deadline = time.monotonic() + 10
def paths():
    return set().union(*(s for s in seen if s))
while time.monotonic() < deadline and len(paths()) < files:
    gevent.sleep(0.02)
gevent.sleep(0.2)
ticker.kill()
watcher.stop()
print(json.dumps({"ready": ready, "watchdog": watcher.watchdog_version,
                  "paths": len(paths()), "rescans": seen.count(None),
                  "max_gap": max(gaps), "ticks": len(gaps)}))
"""


@pytest.mark.parametrize("version", VERSIONS)
def test_hub_keeps_running_while_events_flow(version, tmp_path):
    env = _env_for(version)
    root = tmp_path / "manifests"
    root.mkdir()
    for d in range(10):
        (root / f"d{d}").mkdir()
    files = 2000
    result = subprocess.run([sys.executable, "-c", _HUB_UNDER_EVENTS, str(root), str(files)],
                            capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ready"] and report["watchdog"] == version, report
    # Every file arrived as an event of its own (no rescan but the one after the start).
    assert report["paths"] == files and report["rescans"] == 1, report
    # The hub ticked all along: no stall anywhere near a systemd watchdog period.
    assert report["max_gap"] < 0.5, report
    assert report["ticks"] > 50, report
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def _curl(ns, url: str) -> str:
    return ns.run(["curl", "-s", "-m", "2", url], check=False).stdout


@pytest.mark.netns
@pytest.mark.parametrize("version", VERSIONS)
def test_daemon_starts_follows_a_change_and_stops(version, netns, tmp_path):
    env = _env_for(version)
    from edgeproxy.resources import example_manifests

    manifests = tmp_path / "manifests"
    shutil.copytree(str(example_manifests()), manifests)
    proc = netns.popen([sys.executable, "-m", "edgeproxy", "run", "--manifests", str(manifests),
                        "--state-dir", str(tmp_path / "state"), "--allow-insecure-manifests",
                        "--drain-grace", "1s", "--iptables-backend", "nft"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 20
        while '"ready": true' not in _curl(netns, "http://127.0.0.1:10266/readyz"):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "daemon never became ready"
            time.sleep(0.1)
        (manifests / "echo.yaml").unlink()
        deadline = time.monotonic() + 10
        while True:
            status = json.loads(_curl(netns, "http://127.0.0.1:10266/status"))
            if "default/echo" not in {s["service"] for s in status["services"]}:
                break
            assert time.monotonic() < deadline, "the deleted file is still served"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        log = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"watchdog={version}" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]

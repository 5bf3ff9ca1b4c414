"""`edgeproxy run` as a process in a private network namespace: ready, serving, SIGTERM cleans."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]


def _curl(ns, url):
    return ns.run(["curl", "-s", "-m", "2", url], check=False).stdout


def test_run_ready_status_and_sigterm_removes_rules(netns, tmp_path):
    manifests = tmp_path / "manifests"
    shutil.copytree(REPO / "config" / "examples", manifests)
    proc = netns.popen([sys.executable, "-m", "edgeproxy", "run", "--manifests", str(manifests),
                        "--state-dir", str(tmp_path / "state"), "--allow-insecure-manifests",
                        "--drain-grace", "1s", "--iptables-backend", "nft"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(100):
            if '"ready": true' in _curl(netns, "http://127.0.0.1:10266/readyz"):
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        else:
            pytest.fail("daemon never became ready")
        status = json.loads(_curl(netns, "http://127.0.0.1:10266/status"))
        served = {s["service"] for s in status["services"]}
        assert "default/web:http" in served and "kube-system/edge-dns:dns" in served
        assert [s["reason"] for s in status["skipped"]] == ["label"]
        rules = netns.run(["iptables-nft", "-t", "nat", "-S"]).stdout
        assert "KUBE-PORTALS-HOST" in rules and "198.19.0.10/32" in rules
        metrics = _curl(netns, "http://127.0.0.1:10267/metrics")
        assert "edgeproxy_service_ports_proxied 4.0" in metrics
        # a deleted file is followed by the watcher
        (manifests / "echo.yaml").unlink()
        for _ in range(50):
            status = json.loads(_curl(netns, "http://127.0.0.1:10266/status"))
            if "default/echo" not in {s["service"] for s in status["services"]}:
                break
            time.sleep(0.1)
        else:
            pytest.fail("deleted file still served")
        proc.send_signal(signal.SIGHUP)  # full reload keeps serving
        time.sleep(0.5)
        assert '"ready": true' in _curl(netns, "http://127.0.0.1:10266/readyz")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        log = proc.stdout.read()
        assert "reload requested" in log and "Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "KUBE-PORTALS" not in netns.run(["iptables-nft", "-t", "nat", "-S"]).stdout

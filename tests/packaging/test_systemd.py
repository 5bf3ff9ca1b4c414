"""The bundle under a real systemd: install.sh in a booted Debian container, the hardened unit,
and every promise the unit makes, with traffic through a cluster IP inside the container.

One container for the module (booting and installing is most of the cost); the steps run in
order, each leaving the service running for the next. The container is a copy of a cached
debootstrap (tests/support/machine.py) with its own network namespace.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time

import pytest

from tests.packaging.test_bundle import unpack
from tests.support import machine as machine_module
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CONTAINER_PYTHON = "3.11"  # Debian 12's python3
UNIT = "edgeproxy.service"
VIP, POD = "198.19.7.10", "198.18.7.2"
WEB = f"""\
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: {VIP}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: web, namespace: default}}
subsets:
  - addresses: [{{ip: {POD}}}]
    ports: [{{name: http, port: 8080}}]
"""
GET = ("import sys, urllib.request\n"
       "try:\n"
       f"    print(urllib.request.urlopen('http://{VIP}/', timeout=3).read().decode())\n"
       "except Exception as exc:\n"
       "    print('failed:', exc); sys.exit(1)\n")


@pytest.fixture(scope="module")
def node(tmp_path_factory, built_bundle):
    reason = machine_module.unavailable_reason()
    if reason:
        pytest.skip(reason)
    bundle = unpack(built_bundle(platform.machine(), CONTAINER_PYTHON),
                    tmp_path_factory.mktemp("bundle"))
    m = machine_module.Machine(tmp_path_factory.mktemp("machine"))
    m.boot()
    try:
        subprocess.run(["cp", "-a", str(bundle), str(m.path("/root/bundle"))], check=True)
        # A pod on this node: an HTTP server on a pod address of the container's own.
        m.sh(f"ip link set lo up && ip addr add {POD}/32 dev lo && mkdir -p /srv/www && "
             "echo hello-from-the-pod > /srv/www/index.html")
        m.run(["systemd-run", "--unit=pod", "--property=Restart=always", "python3", "-m",
               "http.server", "8080", "--bind", POD, "--directory", "/srv/www"])
        yield m
    finally:
        m.shutdown()


def journal(m, *args: str) -> list[dict]:
    out = m.run(["journalctl", "-u", UNIT, "-o", "json", "--no-pager", *args]).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def messages(m) -> list[str]:
    return [str(e.get("MESSAGE", "")) for e in journal(m)]


def served(m) -> bool:
    return m.run(["python3", "-c", GET], check=False).stdout.strip() == "hello-from-the-pod"


def main_pid(m) -> int:
    return int(m.unit_property(UNIT, "MainPID"))


def test_install_starts_the_service_only_after_ready(node):
    m = node
    m.path("/etc/edgeproxy").mkdir(parents=True, exist_ok=True)
    (m.path("/etc/edgeproxy") / "web.yaml").write_text(WEB)
    # --journal-fields: Debian's python3-systemd (in the container) gives journal fields.
    result = m.run(["/root/bundle/install.sh", "--journal-fields"], timeout=180)
    assert "edgeproxy started" in result.stdout, result.stdout + result.stderr
    assert m.unit_property(UNIT, "ActiveState") == "active"
    assert m.unit_property(UNIT, "UnitFileState") == "enabled"
    # Installed where its paths exist, the unit verifies without a single remark.
    verify = m.run(["systemd-analyze", "verify", f"/etc/systemd/system/{UNIT}"], check=False)
    assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify
    # Type=notify: `systemctl start` (inside install.sh) returned once systemd got READY=1,
    # which the daemon sends after listeners and rules are in place: served at the first try.
    assert served(m)
    # With Type=simple activation would follow the fork at once; here it waited for the
    # daemon's start (interpreter, first sync, rules).
    began = int(m.unit_property(UNIT, "ExecMainStartTimestampMonotonic"))
    active = int(m.unit_property(UNIT, "ActiveEnterTimestampMonotonic"))
    ready_line = next(e for e in journal(m) if "msg=ready" in str(e.get("MESSAGE")))
    assert active - began > 100_000, (began, active)  # microseconds
    # `systemctl status` shows what is served (sd_notify STATUS=).
    assert m.unit_property(UNIT, "StatusText") == "1 service port, 0 manifest errors, rules ok"
    assert "ports=1" in ready_line["MESSAGE"]


def test_hardening_leaves_every_feature_working(node):
    m = node
    # The sandbox's holes are used: the sysctl we own was written, the xtables lock reached.
    reserved = m.run(["cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"]).stdout
    assert "61000-64999" in reserved
    assert "KUBE-PORTALS-HOST" in m.run(["iptables-nft-save", "-t", "nat"]).stdout
    status = json.loads(m.run(["edgeproxy", "status", "-o", "json"]).stdout)
    assert any(s["service"] == "default/web:http" for s in status["services"]), status
    # Both iptables flavours work inside the sandbox (legacy needs CAP_NET_RAW and the lock).
    config = m.path("/etc/edgeproxy.yaml")
    original = config.read_text()
    config.write_text(original.replace("iptablesBackend: auto", "iptablesBackend: legacy"))
    m.run(["systemctl", "restart", UNIT], timeout=90)
    wait_for(lambda: served(m), 20, "traffic with the legacy backend")
    assert "KUBE-PORTALS-HOST" in m.run(["iptables-legacy-save", "-t", "nat"]).stdout
    config.write_text(original)
    m.run(["systemctl", "restart", UNIT], timeout=90)
    wait_for(lambda: served(m), 20, "traffic with the auto backend again")
    text = "\n".join(messages(m))
    for sign in ("Operation not permitted", "Permission denied", "Read-only file system",
                 "Traceback", "Bad system call"):
        assert sign not in text, text[-4000:]


def test_reload_rereads_the_config_and_journal_keeps_priorities(node):
    m = node
    config = m.path("/etc/edgeproxy.yaml")
    original = config.read_text()
    pid = main_pid(m)
    config.write_text(original.replace("udpTimeout: 30s", "udpTimeout: 45s"))
    m.run(["systemctl", "reload", UNIT])
    wait_for(lambda: any("configuration reloaded" in t for t in messages(m)), 10, "the reload")
    config.write_text("kind: [not, a, config\n")
    m.run(["systemctl", "reload", UNIT])
    wait_for(lambda: any("config file invalid" in t for t in messages(m)), 10, "the refusal")
    assert main_pid(m) == pid and served(m)  # a reload never restarts, a bad file changes nothing
    config.write_text(original)
    m.run(["systemctl", "reload", UNIT])
    priorities = {}
    for entry in journal(m):
        text = str(entry.get("MESSAGE", ""))
        if "configuration reloaded" in text or "config file invalid" in text:
            priorities[text.split("msg=")[1][:25] if "msg=" in text else text[:25]] = \
                entry["PRIORITY"]
    assert "6" in priorities.values() and "3" in priorities.values(), priorities
    # Native journal entries: every field is a journal field (python3-systemd is there).
    entry = next(e for e in journal(m) if "configuration reloaded" in str(e.get("MESSAGE")))
    assert entry["EDGEPROXY_LOGGER"] == "edgeproxy.daemon"
    assert entry["EDGEPROXY_CHANGED"] == "udp_timeout", entry
    assert not str(entry["MESSAGE"]).startswith("<")


def test_sigkill_is_followed_by_a_restart_that_serves(node):
    m = node
    pid = main_pid(m)
    restarts = int(m.unit_property(UNIT, "NRestarts"))
    m.run(["systemctl", "kill", "--signal=KILL", UNIT])
    wait_for(lambda: main_pid(m) not in (0, pid) and
             m.unit_property(UNIT, "ActiveState") == "active", 30, "the restart")
    assert int(m.unit_property(UNIT, "NRestarts")) == restarts + 1
    wait_for(lambda: served(m), 20, "traffic after the restart")


def test_watchdog_restarts_a_hub_that_stops_pinging(node):
    m = node
    # The shipped WatchdogSec=20s, shortened by a drop-in so the test takes seconds; the
    # mechanism (pings from the hub, Restart=always) is the shipped one.
    dropin = m.path("/etc/systemd/system/edgeproxy.service.d")
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "watchdog.conf").write_text("[Service]\nWatchdogSec=3s\n")
    m.run(["systemctl", "daemon-reload"])
    m.run(["systemctl", "restart", UNIT], timeout=90)
    wait_for(lambda: served(m), 20, "traffic before the freeze")
    time.sleep(4)  # longer than WatchdogSec: a running hub keeps pinging
    pid = main_pid(m)
    assert m.unit_property(UNIT, "ActiveState") == "active"
    # The hub stops: no more WATCHDOG=1 (SIGSTOP to the main process only).
    m.run(["systemctl", "kill", "--signal=STOP", "--kill-whom=main", UNIT])
    wait_for(lambda: main_pid(m) not in (0, pid), 30, "the watchdog restart")
    assert any("Watchdog timeout" in t for t in messages(m))
    wait_for(lambda: served(m), 20, "traffic after the watchdog restart")
    (dropin / "watchdog.conf").unlink()
    m.run(["systemctl", "daemon-reload"])


def test_stop_removes_the_jumps_and_uninstall_cleans_up(node):
    m = node
    m.run(["systemctl", "stop", UNIT], timeout=90)
    for save in ("iptables-nft-save", "iptables-legacy-save"):
        assert "KUBE-PORTALS" not in m.run([save, "-t", "nat"], check=False).stdout
    assert "edgeproxy" not in m.run(["nft", "list", "tables"]).stdout
    assert not served(m)  # nothing captures the VIP any more
    result = m.run(["/opt/edgeproxy/uninstall.sh"], timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not m.path("/opt/edgeproxy").exists()
    assert not m.path("/etc/systemd/system/edgeproxy.service").exists()
    assert m.path("/etc/edgeproxy/web.yaml").is_file() and m.path("/etc/edgeproxy.yaml").exists()
    assert m.run(["systemctl", "is-enabled", UNIT], check=False).returncode != 0

"""The running daemon against hostile trees, faults and floods, with traffic flowing.

Each test starts the real `edgeproxy run` on the namespaced edge node, keeps requesting the
services it leaves unchanged (web over TCP, DNS over UDP) from the pod, does one bad thing,
and checks what the daemon does about it: the listen interface deleted, a second instance,
FIFOs, symlinks out of the root and insecure directories, a 60 MiB file, a UDP flood under a
low descriptor limit, a change held up by the xtables lock, a file written in chunks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from edgeproxy.demo.clients import http_get
from edgeproxy.demo.daemon import LISTEN_INTERFACE
from edgeproxy.demo.topology import DNS_VIP, Topology, WEB_BACKENDS, WEB_VIP
from tests.e2e import harness as h
from tests.support.node import Daemon, metric_value
from tests.support.wait import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(120)]
PERIOD = 0.3  # the harness's --iptables-sync-period


def _health(daemon: Daemon) -> tuple[int, dict]:
    try:
        code, body = daemon.get("/healthz", timeout=0.5)
    except OSError:
        return 0, {}
    try:
        return code, json.loads(body)
    except ValueError:
        return code, {}


def test_a_deleted_listen_interface_is_back_within_5s_and_health_says_so(topo, start_daemon,
                                                                         tmp_path):
    mirror = h.AtomicRenameMirror(tmp_path / "mirror")
    daemon = start_daemon(mirror.root)
    assert _health(daemon)[0] == 200
    seen: list[tuple[int, list]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            code, body = _health(daemon)
            seen.append((code, body.get("problems", [])))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    deleted_at = time.monotonic()
    topo.node.run(["ip", "link", "del", LISTEN_INTERFACE])
    back = wait_for(lambda: _probe_in(topo), 5.0, interval=0.05)
    took = time.monotonic() - deleted_at
    time.sleep(3 * PERIOD)
    stop.set()
    sampler.join(5)
    assert back, f"web not served again within 5 s of the interface's deletion\n" \
                 f"{daemon.log_tail(20)}"
    assert took < 5.0
    unhealthy = [problems for code, problems in seen if code == 503]
    assert unhealthy, "health never said anything was wrong"
    assert any("edgeproxy0" in p for problems in unhealthy for p in problems), unhealthy
    assert seen[-1][0] == 200, seen[-5:]
    assert "data path repaired" in daemon.log_tail(200)
    # The host path (needs the host routes on the interface) works again too.
    assert http_get(topo.node, WEB_VIP, timeout=2).strip() in ("web-1", "web-2")


def _probe_in(topo: Topology) -> bool:
    try:
        return http_get(topo.pod, WEB_VIP, timeout=0.5).strip() in ("web-1", "web-2")
    except OSError:
        return False


def test_a_second_instance_is_refused_and_the_first_keeps_serving(topo, start_daemon,
                                                                  tmp_path):
    mirror = h.AtomicRenameMirror(tmp_path / "mirror")
    first = start_daemon(mirror.root)
    client = h.standard_client(topo).start()
    client.wait_for_requests()
    second = Daemon(topo.node, mirror.root, tmp_path / "second",
                       extra_args=[*h.DAEMON_ARGS, "--state-dir",
                                   str(first.workdir / "state")])
    started = time.monotonic()
    second.start()
    code = second.wait(timeout=10)
    assert time.monotonic() - started < 10
    log = second.log_tail(20)
    assert code == 1 and f"PID {first.proc.pid}" in log, log
    client.wait_for_requests(10)
    client.stop()
    client.assert_no_failures()
    assert first.running()
    assert topo.node.run(["ip", "link", "show", LISTEN_INTERFACE],
                         check=False).returncode == 0
    h.assert_rules_once(topo.node)


def test_fifos_never_block_a_change_and_sigterm_still_exits(topo, start_daemon, tmp_path):
    mirror = h.AtomicRenameMirror(tmp_path / "mirror")
    os.mkfifo(mirror.root / "x.yaml")  # present at start
    daemon = start_daemon(mirror.root)
    client = h.standard_client(topo).start()
    assert wait_for(lambda: h.file_errors(daemon.status(), "x.yaml"), 6)
    assert "FIFO" in h.file_errors(daemon.status(), "x.yaml")[0]["message"]
    os.mkfifo(mirror.root / "y.yaml")  # added later, next to a real change
    mirror.write("api.yaml", h.api_manifest(WEB_BACKENDS["web-3"]))
    h.wait_api(topo, "web-3")
    client.stop()
    client.assert_no_failures()
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0
    assert time.monotonic() - started < 10


def test_symlinks_out_of_the_root_and_insecure_places_are_refused(topo, start_daemon,
                                                                   tmp_path):
    mirror = h.AtomicRenameMirror(tmp_path / "mirror")
    daemon = start_daemon(mirror.root)
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    (outside / "evil.yaml").write_text(h.api_manifest(WEB_BACKENDS["web-3"]))
    (mirror.root / "linked").symlink_to(outside)  # a directory symlink added after start
    (mirror.root / "shadow.yaml").symlink_to("/etc/shadow")
    (mirror.root / "open.yaml").write_text(h.api_manifest(WEB_BACKENDS["web-3"],
                                                          vip="198.19.0.41", name="open"))
    os.chmod(mirror.root / "open.yaml", 0o666)  # anyone could rewrite it
    mirror.write("touch.yaml", "# any change wakes the watcher\n")

    def refused() -> bool:
        status = daemon.status()
        text = json.dumps(status["errors"])
        return ("outside the manifest root" in text and "shadow.yaml" in text
                and "writable by group or other" in text)

    assert wait_for(refused, 8), daemon.status()["errors"]
    services = h.status_services(daemon.status())
    assert "default/api" not in services and "default/open" not in services
    assert h.api_answer(topo) is None
    # A root inside a world-writable parent without the sticky bit: refused at start.
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    os.chmod(unsafe, 0o777)
    other = h.AtomicRenameMirror(unsafe / "mirror")
    os.chmod(unsafe, 0o777)
    refused_daemon = Daemon(topo.node, other.root, tmp_path / "refused",
                               extra_args=list(h.DAEMON_ARGS))
    refused_daemon.start()
    assert refused_daemon.wait(timeout=10) == 1
    assert "writable by group or other" in refused_daemon.log_tail(), refused_daemon.log_tail()


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def test_a_60mib_file_is_refused_fast_with_bounded_memory_and_no_failed_request(
        topo, start_daemon, tmp_path):
    mirror = h.AtomicRenameMirror(tmp_path / "mirror")
    daemon = start_daemon(mirror.root)
    client = h.standard_client(topo).start()
    client.wait_for_requests()
    big = ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: huge}\ndata:\n  items:\n"
           + "  - 1\n" * 10_000_000)
    started = time.monotonic()
    mirror.write("huge.yaml", big)
    errors = wait_for(lambda: h.file_errors(daemon.status(), "huge.yaml"), 10, interval=0.1)
    took = time.monotonic() - started
    assert errors and took < 10, took
    assert "node limit" in errors[0]["message"] or "memory" in errors[0]["message"], errors
    client.wait_for_requests(10)
    client.stop()
    client.assert_no_failures()
    peak_mb = _vm_hwm_kb(daemon.proc.pid) / 1024
    assert peak_mb < 512, peak_mb
    mirror.delete("huge.yaml")
    assert wait_for(lambda: not h.file_errors(daemon.status(), "huge.yaml"), 6)


class _LowFdDaemon(Daemon):
    """The daemon under a descriptor limit lower than ours (ulimit -n before exec)."""

    def __init__(self, *args, limit: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limit = limit

    def command(self) -> list[str]:
        return ["prlimit", f"--nofile={self.limit}:{self.limit}", "--", *super().command()]


def _udp_flood(addr: str, port: int, *, sources: int) -> None:
    """One DNS query from each of `sources` source ports, in bursts of 100 with a short pause
    between them; no more than 500 sockets open at once (ours count against no one's budget,
    but keep the test's own use small)."""
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01"
    socks: list[socket.socket] = []
    try:
        for i in range(sources):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            socks.append(s)
            s.sendto(query, (addr, port))
            if len(socks) >= 500:
                for old in socks:
                    old.close()
                socks = []
            if i % 100 == 99:
                time.sleep(0.01)
    finally:
        for s in socks:
            s.close()


def test_a_udp_flood_under_a_low_fd_limit_leaves_health_and_tcp_unharmed(topo, tmp_path):
    mirror = h.AtomicRenameMirror(tmp_path / "mirror")
    daemon = _LowFdDaemon(topo.node, mirror.root, tmp_path / "daemon",
                          extra_args=[*h.DAEMON_ARGS, "--udp-timeout", "30s"], limit=1024)
    daemon.start()
    try:
        daemon.wait_ready(20)
        client = h.ClientLoop(topo.pod, {"web": h.web_probe()}).start()
        health: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                health.append(_health(daemon)[0])
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # A flood faster than the daemon drains its socket overflows the kernel's receive
        # buffer, and dropped datagrams make no session: on a slow machine one burst of 3,000
        # may leave fewer sessions than the budget. Sessions live 30 s, so flood in rounds of
        # bursts until the budget has been met (evictions counted), at most 6 rounds.
        evictions = 0.0
        for _round in range(6):
            with topo.pod.entered():
                _udp_flood(DNS_VIP, 53, sources=3000)
            evictions = metric_value(daemon.metrics(),
                                     "edgeproxy_descriptor_budget_udp_evictions_total") or 0
            if evictions > 0:
                break
            time.sleep(0.2)
        time.sleep(1.0)
        stop.set()
        sampler.join(5)
        client.wait_for_requests(10)
        client.stop()
        client.assert_no_failures()
        assert health and all(code == 200 for code in health), health
        metrics = daemon.metrics()
        # The flood met the descriptor budget: its idlest sessions made room.
        assert evictions > 0, [line for line in metrics.splitlines()
                               if not line.startswith("#") and ("udp" in line or "descriptor" in line
                                                                or "open_fds" in line)]
        assert (metric_value(metrics, "edgeproxy_udp_evicted_total") or 0) > 0
        log = Path(daemon.log_path).read_text(errors="replace")
        assert "Traceback" not in log and "Too many open files" not in log, log[-3000:]
    finally:
        daemon.stop()


@pytest.mark.parametrize("backend, waits", [("legacy", True), ("nft", False),
                                            ("nftables", False)])
def test_health_while_a_change_waits_for_the_xtables_lock(topo, start_daemon, tmp_path,
                                                          monkeypatch, backend, waits):
    """Another process holds the xtables lock for 4 s while a change comes in. iptables-legacy
    waits for it: /healthz turns 503 after two periods and back once applied. iptables-nft and
    nft do not take that lock: the change is applied at once and health stays 200."""
    lock = tmp_path / "xtables.lock"
    lock.touch()
    monkeypatch.setenv("XTABLES_LOCKFILE", str(lock))  # the daemon's iptables and ours
    mirror = h.AtomicRenameMirror(tmp_path / "mirror")
    daemon = start_daemon(mirror.root, extra_args=["--iptables-backend", backend])
    holder = subprocess.Popen(["flock", str(lock), "sleep", "4"])
    try:
        time.sleep(0.3)
        changed_at = time.monotonic()
        mirror.write("api.yaml", h.api_manifest(WEB_BACKENDS["web-3"]))
        codes: list[tuple[float, int, list]] = []
        while time.monotonic() - changed_at < 3.5:
            code, body = _health(daemon)
            codes.append((time.monotonic() - changed_at, code, body.get("problems", [])))
            time.sleep(0.05)
        if waits:
            bad = [c for c in codes if c[1] == 503]
            assert bad, codes
            assert bad[0][0] >= 2 * PERIOD - 0.05  # not before the change waited 2 periods
            assert any("waited" in p or "failed" in p for p in bad[-1][2]), bad[-1]
            assert h.api_answer(topo) is None  # not applied while the lock is held
        else:
            assert all(c[1] == 200 for c in codes), codes
            assert h.api_answer(topo) == "web-3"
    finally:
        holder.wait(10)
    h.wait_api(topo, "web-3", timeout=10)
    assert wait_for(lambda: _health(daemon)[0] == 200, 5)


def test_a_file_written_in_chunks_is_never_served_half_written(topo, start_daemon, tmp_path):
    mirror = h.AtomicRenameMirror(tmp_path / "mirror")
    daemon = start_daemon(mirror.root)
    client = h.standard_client(topo).start()
    text = h.api_manifest(WEB_BACKENDS["web-3"])
    path = mirror.root / "api.yaml"
    samples: list[dict] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        data = text.encode()
        cuts = [0, len(data) // 4, len(data) // 2, 3 * len(data) // 4, len(data)]
        for start, end in zip(cuts, cuts[1:]):
            os.write(fd, data[start:end])
            os.fsync(fd)
            for _ in range(5):  # ~250 ms between chunks, status sampled meanwhile
                samples.append(json.loads(daemon.get("/status")[1]))
                time.sleep(0.05)
    finally:
        os.close(fd)
    h.wait_api(topo, "web-3")
    client.stop()
    client.assert_no_failures()
    for status in samples:
        assert not h.file_errors(status, "api.yaml"), status["errors"]
        for service in status["services"]:
            if service["service"].startswith("default/api"):
                assert service["endpoints"], service  # never a Service without endpoints


def test_a_file_renamed_in_from_outside_is_served_at_once(topo, start_daemon, tmp_path):
    """`kubectl get ... > /tmp/x && mv /tmp/x /etc/edgeproxy/`: the rename brings a complete
    file (watchdog calls it "created", and no close follows): it must not be held as one
    still being written."""
    mirror = h.AtomicRenameMirror(tmp_path / "mirror")
    start_daemon(mirror.root)
    staged = tmp_path / "staging" / "api.yaml"
    staged.parent.mkdir(mode=0o755)
    staged.write_text(h.api_manifest(WEB_BACKENDS["web-3"]))
    os.chmod(staged, 0o644)
    os.rename(staged, mirror.root / "api.yaml")
    took = h.wait_api(topo, "web-3", timeout=8)
    assert took < 2.0, took  # well under the 10 s a held file could wait

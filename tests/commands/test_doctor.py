"""`edgeproxy doctor` inside a namespace: problems found with a fix each, and a clean node."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from edgeproxy.demo.kube_proxy import StandInKubeProxy
from edgeproxy.rules.backends import make_backend
from edgeproxy.rules.doctor import Doctor
from edgeproxy.rules.render import render_rules
from edgeproxy.tools import namespace_runner
from tests.rules import states

# Answers 200 to everything on 127.0.0.1:PORT: the daemon's /healthz, and the web listener.
SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b'{"services": {"default/web": {}}}')
    def log_message(self, *a): pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""


def _doctor(netns, *args):
    return netns.run([sys.executable, "-m", "edgeproxy", "doctor", "--healthz-bind-address",
                      "127.0.0.1:18266", *args], check=False)


def _wait_port(netns, port):
    deadline = time.monotonic() + 5
    while f":{port} " not in netns.run(["ss", "-ltnH"]).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_doctor_reports_missing_rules_and_kube_proxy_ahead(netns):
    out = _doctor(netns, "--iptables-backend", "nft")
    assert out.returncode == 1
    assert "FAIL no edgeproxy rules installed" in out.stdout
    assert "FAIL edgeproxy daemon not healthy" in out.stdout
    ports = states.example_ports()
    rs = render_rules(ports, states.proxy_ports_for(ports), states.LISTEN)
    make_backend("nft", namespace_runner(netns.name)).apply(rs)
    StandInKubeProxy(netns, "nft").install()
    out = _doctor(netns, "--iptables-backend", "nft")
    assert out.returncode == 1
    assert "PREROUTING: jumps after KUBE-SERVICES" in out.stdout
    assert "fix: " in out.stdout


def test_doctor_reports_rules_in_two_backends(netns):
    ports = states.example_ports()
    rs = render_rules(ports, states.proxy_ports_for(ports), states.LISTEN)
    for name in ("legacy", "nft"):
        make_backend(name, namespace_runner(netns.name)).apply(rs)
    out = _doctor(netns)
    assert "FAIL edgeproxy rules in several backends: legacy, nft" in out.stdout
    assert "edgeproxy cleanup" in out.stdout


def test_doctor_passes_on_a_healthy_node(netns):
    StandInKubeProxy(netns, "nft").install()
    netns.run(["ip", "addr", "add", "169.254.96.17/32", "dev", "lo"])
    netns.run(["ip", "route", "add", "198.19.0.0/16", "dev", "lo"])
    ports = {states.WEB: states.example_ports()[states.WEB]}
    pp = {states.WEB: 61001}
    make_backend("nft", namespace_runner(netns.name)).apply(render_rules(ports, pp, states.LISTEN))
    procs = [netns.popen([sys.executable, "-c", SERVER, "127.0.0.1", "18266"]),
             netns.popen([sys.executable, "-c", SERVER, "169.254.96.17", "61001"])]
    try:
        _wait_port(netns, 18266)
        _wait_port(netns, 61001)
        out = _doctor(netns)
        assert "ok   1 captured TCP services answer" in out.stdout, out.stdout
        assert "ok   backend nft matches the node" in out.stdout, out.stdout
        # The only findings allowed to fail here are about the host's own processes (/proc is
        # shared with the host) and the conntrack tool.
        fails = [line for line in out.stdout.splitlines() if line.startswith("FAIL")]
        assert all("EdgeMesh" in f or "Cilium" in f or "conntrack" in f for f in fails), fails
        if not fails:
            assert out.returncode == 0
        # Someone flushed our chain while the daemon reports a service: both are flagged.
        netns.run(["iptables-nft", "-t", "nat", "-F", "KUBE-PORTALS-CONTAINER"])
        out = _doctor(netns)
        assert out.returncode == 1
        assert "FAIL KUBE-PORTALS-CONTAINER is empty while 1 services" in out.stdout
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_other_proxies_are_found_in_proc(tmp_path: Path):
    for pid, comm in (("10", "edgemesh-agent"), ("11", "cilium-agent"), ("12", "bash")):
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "comm").write_text(comm[:15] + "\n")
        (tmp_path / pid / "cmdline").write_bytes(f"/usr/local/bin/{comm}\0--v=2\0".encode())
    findings = Doctor(proc=tmp_path).check_other_proxies()
    assert [f.ok for f in findings] == [False, False]
    assert "EdgeMesh" in findings[0].what and "Cilium" in findings[1].what
    (tmp_path / "10" / "comm").write_text("sleep\n")
    (tmp_path / "10" / "cmdline").write_bytes(b"sleep\0")
    (tmp_path / "11" / "comm").write_text("sleep\n")
    (tmp_path / "11" / "cmdline").write_bytes(b"sleep\0")
    assert all(f.ok for f in Doctor(proc=tmp_path).check_other_proxies())

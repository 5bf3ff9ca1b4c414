"""`edgeproxy doctor` checks: each finds one way traffic can miss edgeproxy, with a one-line fix.

Checks read the tables through the same backends and runner as the daemon (so a test can run
them inside a namespace with ``ip netns exec``), ask the daemon's health endpoint, try real TCP
connections to captured VIPs, and look at /proc for proxies that share or bypass our chains.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .backends import make_backend
from edgeproxy.tools import LocalRunner, Runner

from .backends.base import BackendError
from .backends.detect import detect
from .render import NFT_TABLE, PORTALS_CONTAINER

MAX_PROBES = 20  # VIP connections tried for "listeners answering"
PROBE_TIMEOUT = 1.0
HTTP_TIMEOUT = 2.0


@dataclass(frozen=True)
class Finding:
    ok: bool
    what: str
    fix: str = ""


def _processes(proc: Path = Path("/proc")) -> list[str]:
    """Command lines of running processes (bounded: only comm and argv[0])."""
    names = []
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            names.append((entry / "comm").read_text().strip())
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
            names.append(os.path.basename(argv0))
        except OSError:
            continue
    return names


def _http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:  # noqa: S310 (loopback)
            return resp.status, resp.read(1 << 20).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (OSError, ValueError) as exc:
        return 0, str(exc)


class Doctor:
    def __init__(self, backend_name: str = "auto", runner: Runner | None = None,
                 healthz: str = "127.0.0.1:10266", services: int | None = None,
                 proc: Path = Path("/proc"),
                 connect: Callable[[str, int], bool] | None = None) -> None:
        self.backend_name = backend_name
        self.run = runner or LocalRunner()
        self.healthz = healthz
        self.services = services  # services expected (from --manifests), None: ask the daemon
        self.proc = proc
        self.connect = connect or _tcp_connect

    def checks(self) -> list[Finding]:
        findings: list[Finding] = []
        findings.append(self.check_conntrack())
        detected, reason = detect(self.run)
        installed = self.installed_backends()
        findings.append(self.check_backend(detected, reason, installed))
        backend_name = (installed[0] if len(installed) == 1 else
                        detected if self.backend_name == "auto" else self.backend_name)
        backend = make_backend(backend_name, self.run)
        try:
            problems = backend.diagnose(None)
        except BackendError as exc:
            problems = [str(exc)]
        findings += [Finding(False, p, "start edgeproxy (it repairs within a second), or look "
                             "for another proxy removing its chains") for p in problems]
        if not problems:
            findings.append(Finding(True, f"{backend_name}: chains present, jumps before "
                                          "KUBE-SERVICES"))
        status = self.daemon_status()
        findings.append(status[0])
        expected = self.services if self.services is not None else status[1]
        captured = self.captured_vips(backend_name)
        if expected and not captured:
            findings.append(Finding(False, f"{PORTALS_CONTAINER} is empty while {expected} "
                                           "services are configured",
                                    "check `journalctl -u edgeproxy` for apply errors"))
        findings += self.check_listeners(captured)
        findings += self.check_other_proxies()
        return findings

    def check_conntrack(self) -> Finding:
        if self.run(["conntrack", "--version"]).returncode == 127 or not shutil.which("conntrack"):
            return Finding(False, "conntrack tool missing: existing UDP flows (DNS) keep their "
                                  "old destination after capture starts",
                           "apt-get install conntrack")
        return Finding(True, "conntrack tool present")

    def installed_backends(self) -> list[str]:
        found = []
        for flavor in ("legacy", "nft"):
            try:
                nat = make_backend(flavor, self.run).read(4, "nat")  # type: ignore[attr-defined]
            except BackendError:
                continue
            if nat is not None and PORTALS_CONTAINER in nat.chains:
                found.append(flavor)
        if self.run(["nft", "list", "table", "ip", NFT_TABLE]).returncode == 0:
            found.append("nftables")
        return found

    def check_backend(self, detected: str, reason: str, installed: list[str]) -> Finding:
        if not installed:
            return Finding(False, f"no edgeproxy rules installed (node uses {detected}: {reason})",
                           "start edgeproxy: `systemctl start edgeproxy`")
        if len(installed) > 1:
            return Finding(False, f"edgeproxy rules in several backends: {', '.join(installed)}",
                           "run `edgeproxy cleanup`, then restart edgeproxy")
        if installed[0] != detected:
            return Finding(False, f"edgeproxy rules are in {installed[0]} but the node's "
                                  f"kube-proxy uses {detected} ({reason})",
                           f"set --iptables-backend {detected} (or auto) and restart edgeproxy")
        return Finding(True, f"backend {detected} matches the node ({reason})")

    def daemon_status(self) -> tuple[Finding, int | None]:
        code, _ = _http_get(f"http://{self.healthz}/healthz")
        if code != 200:
            return (Finding(False, f"edgeproxy daemon not healthy at {self.healthz} "
                                   f"(/healthz: {code or 'no answer'})",
                            "systemctl status edgeproxy; journalctl -u edgeproxy"), None)
        code, body = _http_get(f"http://{self.healthz}/status")
        services = None
        if code == 200:
            try:
                data = json.loads(body)
                services = len(data.get("ports") or data.get("services") or ())
            except (ValueError, AttributeError):
                services = None
        return Finding(True, f"daemon healthy at {self.healthz}"), services

    def captured_vips(self, backend_name: str) -> list[tuple[str, int]]:
        """TCP VIP:port pairs of the live container chain (iptables backends)."""
        if backend_name not in ("legacy", "nft"):
            return []
        try:
            nat = make_backend(backend_name, self.run).read(4, "nat")  # type: ignore[attr-defined]
        except BackendError:
            return []
        pairs = []
        for rule in (nat.rules(PORTALS_CONTAINER) if nat else []):
            dst, port = rule.option("-d"), rule.option("--dport")
            if rule.option("-p") == "tcp" and dst and port and "physdev" not in rule.tokens \
                    and "addrtype" not in rule.tokens:
                pairs.append((dst.split("/")[0], int(port)))
        return list(dict.fromkeys(pairs))

    def check_listeners(self, captured: list[tuple[str, int]]) -> list[Finding]:
        dead = [f"{ip}:{port}" for ip, port in captured[:MAX_PROBES]
                if not self.connect(ip, port)]
        if dead:
            return [Finding(False, f"captured services not answering: {', '.join(dead)}",
                            "check the proxy listeners (`ss -ltnp | grep edgeproxy`) and "
                            "`edgeproxy status`")]
        if captured:
            return [Finding(True, f"{min(len(captured), MAX_PROBES)} captured TCP services "
                                  "answer")]
        return []

    def check_other_proxies(self) -> list[Finding]:
        names = set(_processes(self.proc))
        findings = []
        if names & {"edgemesh-agent", "edgemesh-agen"}:  # comm is cut at 15 characters
            findings.append(Finding(False, "an EdgeMesh agent runs: it uses the same "
                                           "KUBE-PORTALS-* chains and deletes them on exit",
                                    "stop edgemesh-agent on this node (or stop edgeproxy)"))
        cilium_lb = Path("/sys/fs/bpf/tc/globals/cilium_lb4_services_v2")
        if names & {"cilium-agent"} or cilium_lb.exists():
            findings.append(Finding(False, "Cilium runs: its socket-level load balancer rewrites "
                                           "host connects to ClusterIPs before nat OUTPUT",
                                    "set Cilium's socketLB.hostNamespaceOnly=true or "
                                    "bpf-lb-sock=false on this node"))
        if not findings:
            findings.append(Finding(True, "no EdgeMesh agent or Cilium socket LB running"))
        return findings


def _tcp_connect(ip: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(PROBE_TIMEOUT)
        try:
            sock.connect((ip, port))
            return True
        except OSError:
            return False

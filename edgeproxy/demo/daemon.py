"""The real `edgeproxy run` as a subprocess inside the node namespace, and what it needs there.

Its state dir and log live in a work directory; healthz and metrics bind 127.0.0.1 of the node
namespace (private to it, so several nodes can run side by side). ``$EDGEPROXY_BIN`` runs an
installed binary instead of this package's `python -m edgeproxy`.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from edgeproxy.demo.clients import http_request
from edgeproxy.demo.netns import NetNS
from edgeproxy.demo.topology import DNS_BACKEND, DNS_PORT

HEALTHZ = "127.0.0.1:10266"
METRICS = "127.0.0.1:10267"


class DaemonError(RuntimeError):
    """`edgeproxy run` did not start or answer; the message carries the end of its log."""


LISTEN_INTERFACE = "edgeproxy0"
_DUMMY_SUPPORT: dict[str, bool] = {}


def kernel_has_dummy(ns: NetNS) -> bool:
    """Whether `ip link add … type dummy` works (some VM kernels ship without the module)."""
    if ns.name not in _DUMMY_SUPPORT:
        probe = ns.run(["ip", "link", "add", "epprobe0", "type", "dummy"], check=False)
        _DUMMY_SUPPORT[ns.name] = probe.returncode == 0
        if probe.returncode == 0:
            ns.run(["ip", "link", "del", "epprobe0"], check=False)
    return _DUMMY_SUPPORT[ns.name]


def stand_in_listen_interface(node: NetNS) -> bool:
    """On a kernel without the dummy module, pre-create edgeproxy0 as a port-less bridge (it holds
    local addresses the same way) so the daemon finds its interface; True when it did so.
    edgeproxy itself needs the dummy module, as EdgeMesh does."""
    if kernel_has_dummy(node):
        return False
    if node.run(["ip", "link", "show", LISTEN_INTERFACE], check=False).returncode != 0:
        node.run(["ip", "link", "add", LISTEN_INTERFACE, "type", "bridge"])
    return True


def edgeproxy_argv() -> list[str]:
    """How to run edgeproxy: $EDGEPROXY_BIN when set (an installed package, a release binary),
    else this checkout's package with the running interpreter."""
    override = os.environ.get("EDGEPROXY_BIN")
    return [override] if override else [sys.executable, "-m", "edgeproxy"]


class Daemon:
    """The real `edgeproxy run` as a subprocess inside the node namespace.

    State dir and log live in `workdir`; healthz/metrics bind 127.0.0.1 of the node namespace
    (private to it, so several nodes can run side by side).
    """

    def __init__(self, node: NetNS, manifests: Path, workdir: Path,
                 extra_args: Sequence[str] = (), nofile: int | None = None) -> None:
        self.node = node
        self.manifests = manifests
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self.nofile = nofile
        self.log_path = workdir / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def command(self) -> list[str]:
        return [*edgeproxy_argv(), "run",
                "--manifests", str(self.manifests),
                "--state-dir", str(self.workdir / "state"),
                "--healthz-bind-address", HEALTHZ,
                "--metrics-bind-address", METRICS,
                # Names outside the cluster go to the topology's resolver, never to the
                # host's (the node namespace has no way out anyway).
                "--dns-upstreams", f"{DNS_BACKEND}:{DNS_PORT}",
                *self.extra_args]

    def start(self) -> "Daemon":
        self.workdir.mkdir(parents=True, exist_ok=True)
        stand_in_listen_interface(self.node)
        self._log = open(self.log_path, "ab")
        nofile = self.nofile

        def raise_nofile() -> None:
            # As LimitNOFILE= in the unit would; capped by our own hard limit (containers).
            if nofile:
                soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                want = nofile if hard == resource.RLIM_INFINITY else min(nofile, hard)
                resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))

        self.proc = self.node.popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, preexec_fn=raise_nofile)
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str, port_spec: str = HEALTHZ, timeout: float = 2.0) -> tuple[int, str]:
        """(status code, body) of a GET to the daemon's healthz (or metrics) address."""
        host, port = port_spec.rsplit(":", 1)
        code, _, body = http_request(self.node, host, int(port), path, timeout=timeout)
        return code, body

    def wait_ready(self, timeout: float = 20.0) -> float:
        """Seconds until /readyz answered 200; DaemonError (with the log) if it never does."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if not self.running():
                raise DaemonError(f"`edgeproxy run` exited with {self.proc.returncode if self.proc else '?'}"
                                  f" before it was ready; its log:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                if self.get("/readyz", timeout=0.5)[0] == 200:
                    return time.monotonic() - start
            time.sleep(0.05)
        raise DaemonError(f"`edgeproxy run` not ready after {timeout:.0f} s; its log:\n"
                          f"{self.log_tail()}")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # `ip netns exec` execs the command, so the pid is the daemon's own.
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the exit code (None if it was not running)."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            self.signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        if self._log:
            self._log.close()
            self._log = None
        return rc


def copy_examples(source: Path, target: Path) -> Path:
    """Copy a manifest directory to `target` with modes the daemon's ownership check accepts."""
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o755)
    for path in sorted(source.iterdir()):
        if path.is_file() and path.suffix in (".yaml", ".yml", ".json"):
            shutil.copyfile(path, target / path.name)
            os.chmod(target / path.name, 0o644)
    return target


def make_workdir(prefix: str = "edgeproxy-") -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    return path

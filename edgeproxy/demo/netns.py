"""Private network namespaces for `edgeproxy demo`, the end-to-end tests and the benchmarks.

`NetNS` creates ``ip netns add <prefix>-<random>`` with loopback up, runs commands inside it,
connects two namespaces with a veth pair and deletes it again (killing whatever still runs
inside), keeping a registry of live namespaces so a signal handler or atexit hook can remove
everything the process created. Nothing here touches the host's own network namespace: every
iptables/ip/sysctl call is prefixed with ``ip netns exec``, and veth pairs are created inside a
namespace. tests/support/netns.py re-exports it for the tests.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import threading
from typing import Iterator, Sequence

from edgeproxy.netns import enter_for_good, entered, netns_path

# Every namespace this process created and has not deleted yet (for emergency cleanup).
_LIVE: dict[str, "NetNS"] = {}
_LIVE_LOCK = threading.Lock()


def netns_unavailable_reason() -> str | None:
    """None when network namespaces can be created here, else why not (for a clear message)."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (run with sudo)"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed; run ./scripts/bootstrap"
    return None


class NetNS:
    """A named network namespace that exists between `create()` and `delete()`."""

    def __init__(self, prefix: str = "ep") -> None:
        self.name = f"{prefix}-{secrets.token_hex(3)}"
        self.path = netns_path(self.name)

    def create(self) -> "NetNS":
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        with _LIVE_LOCK:
            _LIVE[self.name] = self
        self.run(["ip", "link", "set", "lo", "up"])
        return self

    def delete(self) -> None:
        # Kill what is left inside first, else the namespace lingers while a process holds it.
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        for pid in pids.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        with _LIVE_LOCK:
            _LIVE.pop(self.name, None)

    def __enter__(self) -> "NetNS":
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 30.0,
            **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        result = subprocess.run(self.command(argv), timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"`{' '.join(argv)}` in namespace {self.name} failed "
                               f"(exit {result.returncode}): {(result.stderr or '').strip()}")
        return result

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.command(argv), **kwargs)

    @contextlib.contextmanager
    def entered(self) -> Iterator["NetNS"]:
        """Run the block with the calling thread inside this namespace (sockets made there stay
        there after the block ends)."""
        with entered(self.name):
            yield self

    def enter_for_good(self) -> None:
        """Move the calling thread into the namespace for the rest of its life (client threads)."""
        enter_for_good(self.name)


def veth_pair(left: NetNS, right: NetNS, left_addrs: Sequence[str], right_addrs: Sequence[str],
              left_if: str = "veth0", right_if: str = "veth1") -> None:
    """Connect two namespaces with a veth pair; addresses in CIDR form (198.18.x.y/24)."""
    tmp = f"v{secrets.token_hex(4)}"
    # Created in `left` directly, so not even a temporary interface appears on the host.
    left.run(["ip", "link", "add", left_if, "type", "veth", "peer", "name", tmp,
              "netns", right.name])
    right.run(["ip", "link", "set", tmp, "name", right_if])
    for ns, ifname, addrs in ((left, left_if, left_addrs), (right, right_if, right_addrs)):
        for addr in addrs:
            ns.run(["ip", "addr", "add", addr, "dev", ifname])
        ns.run(["ip", "link", "set", ifname, "up"])


def delete_all_live() -> None:
    """Delete every namespace this process still has (signal handler / atexit safety net)."""
    with _LIVE_LOCK:
        live = list(_LIVE.values())
    for ns in reversed(live):
        with contextlib.suppress(Exception):
            ns.delete()

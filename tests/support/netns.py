"""Private network namespaces for tests and benchmarks: never touch the host's own namespace.

`NetNS` creates ``ip netns add ep-<random>``, brings its loopback up and deletes it again.
Commands run inside with `NetNS.run` (``ip netns exec``); Python code of the test process itself
can enter the namespace temporarily with `NetNS.entered()` (setns on the calling thread, so
sockets created inside belong to the namespace). Addresses used by tests come from
198.18.0.0/15 (RFC 2544 benchmarking range).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import subprocess
from typing import Iterator, Sequence

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def netns_available() -> str | None:
    """None when namespaces can be used here, else the reason to skip."""
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return None


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class NetNS:
    """A named network namespace that exists between `create()` and `delete()`."""

    def __init__(self, prefix: str = "ep") -> None:
        self.name = f"{prefix}-{secrets.token_hex(4)}"
        self.path = f"/run/netns/{self.name}"

    def create(self) -> "NetNS":
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run(["ip", "link", "set", "lo", "up"])
        return self

    def delete(self) -> None:
        # Kill anything left inside first so the namespace really goes away.
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        for pid in pids.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def __enter__(self) -> "NetNS":
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        result = subprocess.run(self.command(argv), **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} in {self.name} failed ({result.returncode}): {result.stderr}"
            )
        return result

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.command(argv), **kwargs)

    @contextlib.contextmanager
    def entered(self) -> Iterator["NetNS"]:
        """Run the block with the calling thread inside this namespace."""
        with open("/proc/thread-self/ns/net") as original, open(self.path) as target:
            _setns(target.fileno())
            try:
                yield self
            finally:
                _setns(original.fileno())


def veth_pair(left: NetNS, right: NetNS, left_addr: str, right_addr: str,
              left_if: str = "veth0", right_if: str = "veth1") -> None:
    """Connect two namespaces with a veth pair; addresses in CIDR form (198.18.x.y/24)."""
    tmp = f"v{secrets.token_hex(4)}"
    subprocess.run(["ip", "link", "add", tmp, "type", "veth", "peer", "name", tmp + "p"], check=True)
    subprocess.run(["ip", "link", "set", tmp, "netns", left.name, "name", left_if], check=True)
    subprocess.run(["ip", "link", "set", tmp + "p", "netns", right.name, "name", right_if], check=True)
    for ns, ifname, addr in ((left, left_if, left_addr), (right, right_if, right_addr)):
        ns.run(["ip", "addr", "add", addr, "dev", ifname])
        ns.run(["ip", "link", "set", ifname, "up"])

"""Running the node's tools (iptables, nft, ip, conntrack): the one command-runner type.

Every command edgeproxy runs goes through a `Runner`, ``(argv, input=None) -> Result``, so tests
and benchmarks can run it inside a network namespace (`namespace_runner`) or record it. The
caller that builds a `LocalRunner` says there whether the gevent hub must keep serving while the
command runs: ``cooperative=True`` for the daemon and the forwarder (`edgeproxy.spawn`:
posix_spawn, no fork of a large process, the hub waits on pipes), plain ``subprocess`` for the
one-shot commands, which never import gevent. A missing program or a timeout is a `Result`
(127, 124) like any failure, never an exception.

Stdlib only at import time (the one-shot commands import this).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, TypeVar

T = TypeVar("T")

COMMAND_TIMEOUT = 30.0  # seconds; iptables waits at most -w 5 for the lock, restore is fast


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    def __call__(self, argv: Sequence[str], input: str | None = None) -> Result: ...


class LocalRunner:
    """Runs commands in this process's network namespace, or behind ``prefix`` (such as
    ``ip netns exec NAME``) in the named namespace ``netns``."""

    def __init__(self, prefix: Sequence[str] = (), netns: str | None = None,
                 cooperative: bool = False, timeout: float = COMMAND_TIMEOUT) -> None:
        self.prefix = list(prefix)
        # The named namespace the prefix enters (None: ours), for reads done in-process over
        # netlink (rules/nfnetlink.py) instead of through a command.
        self.netns = netns
        self.cooperative = cooperative
        self.timeout = timeout

    def __call__(self, argv: Sequence[str], input: str | None = None) -> Result:
        command = [*self.prefix, *argv]
        try:
            if self.cooperative:
                from edgeproxy import spawn

                proc = spawn.run(command, input=input, timeout=self.timeout)
            else:
                proc = subprocess.run(command, input=input, capture_output=True, text=True,
                                      timeout=self.timeout)
        except FileNotFoundError as exc:
            return Result(127, "", f"{argv[0]}: command not found ({exc})")
        except subprocess.TimeoutExpired:
            return Result(124, "", f"{argv[0]}: timed out after {self.timeout:.0f} s")
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def off_hub(self, func: Callable[..., T], *args: object) -> T:
        """``func(*args)`` in gevent's native thread pool when cooperative, so the hub keeps
        serving while an in-process kernel read runs (nfnetlink.py, xtables.py: the kernel's
        copy of 10 MB and the hashing release the GIL); directly otherwise."""
        if self.cooperative:
            import gevent

            return gevent.get_hub().threadpool.apply(func, args)
        return func(*args)


def namespace_runner(netns_name: str, cooperative: bool = False) -> LocalRunner:
    """Runs every command inside ``ip netns exec NAME`` (tests, benchmarks, demo)."""
    return LocalRunner(["ip", "netns", "exec", netns_name], netns=netns_name,
                       cooperative=cooperative)

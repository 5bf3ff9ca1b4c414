"""The backend interface and the command runner every backend shells out through.

A backend writes a `RuleSet` into the kernel, checks and repairs it, and removes it again.
All commands go through a `Runner` so tests and benchmarks can run them inside a network
namespace (``NamespaceRunner``) and the daemon runs them without blocking the gevent hub
(through `edgeproxy.spawn` once gevent is loaded).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, TypeVar

from ..render import RuleSet

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
    """Runs commands in this process's network namespace."""

    def __init__(self, prefix: Sequence[str] = (), netns: str | None = None) -> None:
        self.prefix = list(prefix)
        # The named namespace the prefix enters (None: ours), for reads done in-process over
        # netlink (nfnetlink.py) instead of through a command.
        self.netns = netns

    def __call__(self, argv: Sequence[str], input: str | None = None) -> Result:
        # Once gevent is loaded (the daemon, the keeper) edgeproxy.spawn: the hub keeps
        # serving while iptables runs, and no fork copies the daemon's memory. The one-shot
        # commands never import gevent.
        try:
            if "gevent" in sys.modules:
                from edgeproxy import spawn

                proc = spawn.run([*self.prefix, *argv], input=input, timeout=COMMAND_TIMEOUT)
            else:
                proc = subprocess.run([*self.prefix, *argv], input=input, capture_output=True,
                                      text=True, timeout=COMMAND_TIMEOUT)
        except FileNotFoundError as exc:
            return Result(127, "", f"{argv[0]}: command not found ({exc})")
        except subprocess.TimeoutExpired:
            return Result(124, "", f"{argv[0]}: timed out after {COMMAND_TIMEOUT:.0f} s")
        return Result(proc.returncode, proc.stdout, proc.stderr)


def off_hub(func: Callable[..., T], *args: object) -> T:
    """``func(*args)`` in gevent's native thread pool once gevent is loaded (the daemon), so
    the hub keeps serving while the in-process kernel reads run (nfnetlink.py, xtables.py: the
    kernel's copy of 10 MB and the hashing release the GIL); directly otherwise."""
    if "gevent" in sys.modules:
        import gevent

        return gevent.get_hub().threadpool.apply(func, args)
    return func(*args)


def netlink_target(runner: Runner) -> tuple[bool, str | None]:
    """(usable, namespace) for in-process netlink reads in the runner's namespace: only a
    `LocalRunner` says where its commands run; any other runner (a test fake) gets none."""
    if isinstance(runner, LocalRunner) and (not runner.prefix or runner.netns is not None):
        return True, runner.netns
    return False, None


def namespace_runner(netns_name: str) -> LocalRunner:
    """Runs every command inside ``ip netns exec NAME`` (tests, benchmarks, demo)."""
    return LocalRunner(["ip", "netns", "exec", netns_name], netns=netns_name)


class BackendError(RuntimeError):
    """A command of the backend failed; the message carries the command and its stderr."""


@dataclass
class CleanupReport:
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def extend(self, other: "CleanupReport") -> None:
        self.removed += other.removed
        self.errors += other.errors


def only_our_writes(before: int | None, after: int | None, writes: int) -> bool:
    """True when the nf_tables generation went from ``before`` to ``after`` by exactly our
    ``writes`` transactions (each bumps it by one; it is a 32-bit counter): nobody else
    wrote in between, so the kernel holds exactly what we wrote."""
    if before is None or after is None:
        return False
    return after == (before + writes) & 0xFFFFFFFF


class Backend(Protocol):
    name: str

    def apply(self, ruleset: RuleSet, previous: RuleSet | None = None) -> None:
        """Write ``ruleset``; ``previous`` is what this backend last wrote successfully
        (None: unknown), which lets a backend write only the difference."""

    def check_and_repair(self, ruleset: RuleSet) -> list[str]: ...

    def diagnose(self, ruleset: RuleSet | None) -> list[str]: ...

    def cleanup(self) -> CleanupReport: ...

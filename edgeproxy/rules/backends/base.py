"""The backend interface, and what both backends share around it.

A backend writes a `RuleSet` into the kernel, checks and repairs it, and removes it again.
All commands go through a `Runner` (`edgeproxy.tools`), so tests and benchmarks can run them
inside a network namespace (`namespace_runner`) and the daemon runs them without blocking the
gevent hub (a cooperative `LocalRunner`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from edgeproxy.tools import LocalRunner, Runner

from ..render import RuleSet
from .check import CheckReport

def netlink_target(runner: Runner) -> tuple[bool, str | None]:
    """(usable, namespace) for in-process netlink reads in the runner's namespace: only a
    `LocalRunner` says where its commands run; any other runner (a test fake) gets none."""
    if isinstance(runner, LocalRunner) and (not runner.prefix or runner.netns is not None):
        return True, runner.netns
    return False, None


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


class Backend(Protocol):
    name: str
    check: CheckReport  # how the periodic checks were answered (check.py)

    def apply(self, ruleset: RuleSet, previous: RuleSet | None = None) -> None:
        """Write ``ruleset``; ``previous`` is what this backend last wrote successfully
        (None: unknown), which lets a backend write only the difference."""

    def check_and_repair(self, ruleset: RuleSet) -> list[str]: ...

    def diagnose(self, ruleset: RuleSet | None) -> list[str]: ...

    def cleanup(self) -> CleanupReport: ...

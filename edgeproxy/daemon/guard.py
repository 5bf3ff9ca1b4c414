"""The mass-removal guard: a mirror gone wrong deletes everything; do not follow it blindly.

Pure decision. A sync is held (the last-good state keeps being served) when the manifest root
is missing, unreadable or holds no manifest files while services are being proxied, or when it
would remove more than ``max_ratio`` of the proxied service ports. It is applied only once an
operator confirms (``edgeproxy confirm-removal`` / SIGUSR1); a later sync that no longer trips
the guard (the mirror recovered) clears the hold by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection


@dataclass(frozen=True)
class GuardDecision:
    hold: bool
    reason: str = ""
    removed: int = 0
    current: int = 0


def evaluate(current: Collection, proposed: Collection, max_ratio: float,
             root_error: str | None = None, file_count: int | None = None,
             confirmed: bool = False) -> GuardDecision:
    """Whether to hold the change from ``current`` to ``proposed`` service-port keys."""
    removed = len([key for key in current if key not in proposed])
    total = len(current)
    if confirmed or total == 0:
        return GuardDecision(False, "", removed, total)
    if root_error:
        return GuardDecision(True, f"manifest root unusable: {root_error}", removed, total)
    if file_count == 0:
        return GuardDecision(True, "manifest root holds no manifest files", removed, total)
    if removed / total > max_ratio:
        return GuardDecision(
            True, f"sync would remove {removed} of {total} proxied service ports "
                  f"(more than {max_ratio:.0%})", removed, total)
    return GuardDecision(False, "", removed, total)

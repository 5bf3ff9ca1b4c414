"""Polling for tests that watch a real process or node change: one helper, bounded."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str | None = None,
             interval: float = 0.05) -> T | None:
    """The first truthy value ``predicate`` returns within ``timeout`` seconds. When it never
    does: AssertionError naming ``what`` if given, else None (for tests asserting on it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            if what is not None:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            return None
        time.sleep(interval)

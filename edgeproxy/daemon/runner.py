"""kube-proxy's BoundedFrequencyRunner as a greenlet: coalesce sync requests, bound their rate.

- ``run()`` requests a sync; requests arriving while one is pending merge into it. The first
  request waits ``debounce`` so a burst of file events (a mirror writing 50 files) is one sync.
- Two syncs start at least ``min_interval`` apart; without requests a sync still runs every
  ``max_interval`` (the periodic rescan).
- A sync that raises is retried after a back-off doubling from ``retry_initial`` up to
  ``retry_max``; a success resets it. The function gets a bool: True for a periodic run.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import gevent
import gevent.event

from edgeproxy.daemon.logs import log_event

log = logging.getLogger(__name__)


class BoundedFrequencyRunner:
    def __init__(self, fn: Callable[[bool], None], min_interval: float, max_interval: float,
                 debounce: float = 0.0, retry_initial: float = 0.5, retry_max: float = 30.0,
                 name: str = "sync") -> None:
        self.fn = fn
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.debounce = debounce
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.name = name
        self.runs_total = 0
        self.failures_total = 0
        self._requested = gevent.event.Event()
        self._last_start = float("-inf")
        self._retry_delay = 0.0
        self._greenlet: gevent.Greenlet | None = None

    def run(self) -> None:
        """Request a sync soon (cheap; safe to call from any greenlet, many times)."""
        self._requested.set()

    @property
    def pending(self) -> bool:
        return self._requested.is_set()

    def start(self) -> None:
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None

    def _loop(self) -> None:
        while True:
            since = time.monotonic() - self._last_start
            if self._retry_delay:
                wait = max(0.0, self._retry_delay - since)
            else:
                wait = max(0.0, self.max_interval - since) if self.max_interval > 0 else None
            requested = self._requested.wait(timeout=wait)
            periodic = not requested and not self._retry_delay
            if requested and self.debounce > 0:
                gevent.sleep(self.debounce)
            gap = self.min_interval - (time.monotonic() - self._last_start)
            if gap > 0:
                gevent.sleep(gap)
            self._requested.clear()
            self._last_start = time.monotonic()
            self.runs_total += 1
            try:
                self.fn(periodic)
            except gevent.GreenletExit:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed sync is retried, never fatal
                self.failures_total += 1
                self._retry_delay = min(self.retry_max,
                                        max(self.retry_initial, self._retry_delay * 2))
                log_event(log, logging.ERROR, "sync failed; retrying", runner=self.name,
                          error=f"{type(exc).__name__}: {exc}", retry_in=self._retry_delay)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("sync failure detail", exc_info=True)
            else:
                self._retry_delay = 0.0

"""kube-proxy's BoundedFrequencyRunner as a greenlet: coalesce sync requests, bound their rate.

- ``run()`` requests a sync; requests arriving while one is pending merge into it. The first
  request waits ``debounce`` so a burst of file events (a mirror writing 50 files) is one sync.
- Two syncs start at least ``min_interval`` apart; without requests a sync still runs every
  ``max_interval`` (the periodic rescan).
- A sync that raises is retried after a back-off doubling from ``retry_initial`` up to
  ``retry_max``; a success resets it. The function gets a bool: True for a periodic run.

Time comes from a `Clock` (kube-proxy's runner takes a ``timer`` for the same reason): the
daemon's is the monotonic clock and gevent's sleeps; tests pass a fake one they advance by
hand, so they check intervals exactly and never sleep.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Protocol

import gevent
import gevent.event

from edgeproxy.daemon.logs import log_event

log = logging.getLogger(__name__)


class Clock(Protocol):
    """What the runner needs of time: read it, sleep, and wait for an event with a timeout."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    def wait(self, event: gevent.event.Event, timeout: float | None) -> bool:
        """Block until ``event`` is set (True) or ``timeout`` seconds passed (False)."""


class GeventClock:
    """The monotonic clock, with gevent's cooperative sleep and wait."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        gevent.sleep(seconds)

    def wait(self, event: gevent.event.Event, timeout: float | None) -> bool:
        return event.wait(timeout=timeout)


class BoundedFrequencyRunner:
    def __init__(self, fn: Callable[[bool], None], min_interval: float, max_interval: float,
                 debounce: float = 0.0, retry_initial: float = 0.5, retry_max: float = 30.0,
                 name: str = "sync", clock: Clock | None = None) -> None:
        self.fn = fn
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.debounce = debounce
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.name = name
        self.clock: Clock = clock or GeventClock()
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

    def start(self, ran_at: float | None = None) -> None:
        """Start the loop. ``ran_at``: when a run the caller made itself started (the daemon's
        initial sync), so the first periodic run comes ``max_interval`` after it instead of at
        once (which was a second full rescan right after the start)."""
        if ran_at is not None:
            self._last_start = ran_at
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None

    def _next_wait(self) -> float | None:
        """Seconds until the next sync is due without a request (None: only on request)."""
        since = self.clock.now() - self._last_start
        if self._retry_delay:
            return max(0.0, self._retry_delay - since)
        return max(0.0, self.max_interval - since) if self.max_interval > 0 else None

    def _loop(self) -> None:
        clock = self.clock
        while True:
            requested = clock.wait(self._requested, self._next_wait())
            periodic = not requested and not self._retry_delay
            if requested and self.debounce > 0:
                clock.sleep(self.debounce)
            gap = self.min_interval - (clock.now() - self._last_start)
            if gap > 0:
                clock.sleep(gap)
            self._requested.clear()
            self._last_start = clock.now()
            self._run_once(periodic)

    def _run_once(self, periodic: bool) -> None:
        # Not counted here: every run is one Daemon.sync, whose own counters (syncs, errors,
        # duration) are exported, and count the initial sync this runner does not make.
        try:
            self.fn(periodic)
        except gevent.GreenletExit:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed sync is retried, never fatal
            self._retry_delay = min(self.retry_max,
                                    max(self.retry_initial, self._retry_delay * 2))
            log_event(log, logging.ERROR, "sync failed; retrying", runner=self.name,
                      error=f"{type(exc).__name__}: {exc}", retry_in=self._retry_delay)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("sync failure detail", exc_info=True)
        else:
            self._retry_delay = 0.0

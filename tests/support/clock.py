"""A fake `edgeproxy.daemon.runner.Clock` that only moves when a test says so.

Like kube-proxy's fake timer for its BoundedFrequencyRunner tests: the runner's greenlet sleeps
and waits on this clock; `advance` moves time forward, wakes every sleeper and waiter whose
deadline has come, and returns once the hub has nothing left to run, so the test then sees
exactly what the runner did by that time, without sleeping itself.
"""

from __future__ import annotations

import gevent
import gevent.event


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self._timers: list[tuple[float, gevent.event.Event]] = []

    def now(self) -> float:
        return self.t

    def _timer(self, seconds: float) -> gevent.event.Event:
        fired = gevent.event.Event()
        if seconds <= 0:
            fired.set()
        else:
            self._timers.append((self.t + seconds, fired))
        return fired

    def sleep(self, seconds: float) -> None:
        self._timer(seconds).wait()

    def wait(self, event: gevent.event.Event, timeout: float | None) -> bool:
        if timeout is None:
            return event.wait()
        fired = self._timer(timeout)
        gevent.wait([event, fired], count=1)
        return event.is_set()

    def settle(self) -> None:
        """Let every greenlet run until all of them wait again (on this clock or an event)."""
        for _ in range(3):
            gevent.idle()

    def advance(self, seconds: float) -> None:
        """Move time forward, firing due timers in deadline order (a woken greenlet may set a
        new timer that is due too)."""
        end = self.t + seconds
        self.settle()
        while True:
            due = sorted((d, i) for i, (d, _) in enumerate(self._timers) if d <= end)
            if not due:
                break
            deadline, index = due[0]
            self.t = max(self.t, deadline)
            _, fired = self._timers.pop(index)
            fired.set()
            self.settle()
        self.t = end

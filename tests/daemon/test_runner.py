"""BoundedFrequencyRunner on a fake clock: exact intervals, no sleeping (as kube-proxy's tests)."""

from __future__ import annotations

from edgeproxy.daemon.runner import BoundedFrequencyRunner, GeventClock
from tests.support.clock import FakeClock

START = 1000.0


def _started(fn, clock: FakeClock, **settings) -> BoundedFrequencyRunner:
    runner = BoundedFrequencyRunner(fn, clock=clock, **settings)
    runner.start()
    clock.settle()
    return runner


def test_first_run_is_due_at_once_then_a_burst_coalesces_after_the_debounce():
    calls: list[float] = []
    clock = FakeClock(START)
    runner = _started(lambda periodic: calls.append(clock.now()), clock,
                      min_interval=1.0, max_interval=60, debounce=0.5)
    assert calls == [START]  # no run before: the periodic one is due now
    for _ in range(100):
        runner.run()
    clock.advance(0.4)
    assert calls == [START]  # still debouncing
    # Debounced until START + 0.5, then held to min_interval after the first run.
    clock.advance(0.5)
    assert calls == [START]
    clock.advance(0.1)
    assert calls == [START, START + 1.0]
    runner.stop()


def test_min_interval_between_runs():
    calls: list[float] = []
    clock = FakeClock(START)
    runner = _started(lambda periodic: calls.append(clock.now()), clock,
                      min_interval=1.0, max_interval=60)
    clock.advance(0.3)
    runner.run()
    runner.run()
    clock.advance(0.6)
    assert calls == [START]
    clock.advance(0.1)
    assert calls == [START, START + 1.0]
    runner.stop()


def test_max_interval_runs_periodically_without_requests():
    calls: list[tuple[float, bool]] = []
    clock = FakeClock(START)
    runner = _started(lambda periodic: calls.append((clock.now(), periodic)), clock,
                      min_interval=0.0, max_interval=60)
    clock.advance(125)
    assert calls == [(START, True), (START + 60, True), (START + 120, True)]
    runner.run()
    clock.settle()
    assert calls[-1] == (START + 125, False)  # a request is not periodic
    runner.stop()


def test_failure_retried_with_doubling_back_off_up_to_the_maximum():
    calls: list[float] = []

    def flaky(periodic: bool) -> None:
        calls.append(clock.now())
        if len(calls) <= 4:
            raise RuntimeError("iptables-restore failed")

    clock = FakeClock(START)
    runner = _started(flaky, clock, min_interval=0.0, max_interval=60,
                      retry_initial=0.5, retry_max=2.0)
    clock.advance(10)
    assert calls == [START, START + 0.5, START + 1.5, START + 3.5, START + 5.5]
    clock.advance(60)  # success reset the back-off: the next run is the periodic one
    assert calls[5:] == [START + 65.5]
    runner.stop()


def test_gevent_clock_is_the_default_and_monotonic():
    runner = BoundedFrequencyRunner(lambda periodic: None, 0.1, 1.0)
    assert isinstance(runner.clock, GeventClock)
    first = runner.clock.now()
    assert runner.clock.now() >= first


def test_a_run_the_caller_made_delays_the_first_periodic_one():
    """The daemon syncs once itself before it starts the runner: that counts as a run, so no
    second full rescan follows at once."""
    calls: list[float] = []
    clock = FakeClock(START)
    runner = BoundedFrequencyRunner(lambda periodic: calls.append(clock.now()), 1.0, 60,
                                    clock=clock)
    runner.start(ran_at=START)
    clock.advance(59)
    assert calls == []
    clock.advance(1)
    assert calls == [START + 60]
    runner.stop()

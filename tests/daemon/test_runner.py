import time

import gevent

from edgeproxy.daemon.runner import BoundedFrequencyRunner


def test_burst_coalesces_into_one_run():
    calls = []
    runner = BoundedFrequencyRunner(lambda periodic: calls.append(time.monotonic()),
                                    min_interval=0.05, max_interval=60, debounce=0.05)
    runner.start()
    begin = time.monotonic()
    for _ in range(100):
        runner.run()
        gevent.sleep(0.001)
    burst = time.monotonic() - begin
    gevent.sleep(0.3)
    runner.stop()
    # 100 requests: at most one run per min_interval of the burst, plus the trailing one.
    assert 1 <= len(calls) <= burst / 0.05 + 2 and len(calls) < 10


def test_min_interval_between_runs():
    calls = []
    runner = BoundedFrequencyRunner(lambda periodic: calls.append(time.monotonic()),
                                    min_interval=0.1, max_interval=60)
    runner.start()
    for _ in range(10):
        runner.run()
        gevent.sleep(0.03)
    gevent.sleep(0.2)
    runner.stop()
    assert len(calls) >= 2
    assert all(b - a >= 0.095 for a, b in zip(calls, calls[1:]))


def test_max_interval_runs_periodically():
    calls = []
    runner = BoundedFrequencyRunner(lambda periodic: calls.append(periodic), min_interval=0.0,
                                    max_interval=0.05)
    runner.start()
    gevent.sleep(0.28)
    runner.stop()
    assert len(calls) >= 3 and all(calls)


def test_failure_retried_with_backoff():
    calls = []

    def flaky(periodic):
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise RuntimeError("iptables-restore failed")

    runner = BoundedFrequencyRunner(flaky, min_interval=0.0, max_interval=60,
                                    retry_initial=0.05, retry_max=1.0)
    runner.start()
    runner.run()
    gevent.sleep(0.4)
    runner.stop()
    assert len(calls) == 3 and runner.failures_total == 2
    assert calls[2] - calls[1] >= (calls[1] - calls[0]) * 1.5  # back-off doubles

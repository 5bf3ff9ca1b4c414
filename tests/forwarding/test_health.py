"""EndpointHealth: the state machine alone, on a clock the test moves (no sockets)."""

from __future__ import annotations

import random

from edgeproxy.forwarding.health import (EJECTED, HEALTHY, RECOVERING, STALE_DIAL,
                                         EndpointHealth, HealthSettings)
from edgeproxy.model import Endpoint

A, B = Endpoint("198.18.1.11", 80), Endpoint("198.18.1.12", 80)


def make(probes=True, **kw) -> tuple[EndpointHealth, list]:
    events: list = []
    settings = HealthSettings(**{"jitter": 0.0, **kw})
    h = EndpointHealth(settings, probes=probes, rng=random.Random(1),
                       on_change=lambda ep, old, new, why: events.append((ep, old, new)))
    h.update([A, B])
    return h, events


def fail(h, ep, now, n=1):
    for _ in range(n):
        h.dial_started(ep, now)
        h.dial_failed(ep, now, "timed out")


def test_consecutive_failures_eject_and_a_success_resets_the_count():
    h, events = make()
    fail(h, A, 0.0, 2)
    h.dial_started(A, 0.0)
    h.dial_succeeded(A, 0.0, 0.001)
    fail(h, A, 0.0, 2)
    assert h.usable(A) and events == []
    fail(h, A, 0.0)
    assert not h.usable(A) and h.ejected == {A}
    assert events == [(A, HEALTHY, EJECTED)] and h.ejections_total == 1
    assert h.usable(B)


def test_zero_failures_setting_never_ejects():
    h, _ = make(consecutive_failures=0)
    fail(h, A, 0.0, 50)
    assert h.usable(A)


def test_probe_answer_readmits_before_the_back_off_ends():
    h, events = make(probe_interval=1.0, base_ejection=10.0)
    fail(h, A, 0.0, 3)
    assert h.tick(0.5) == []  # first probe one interval after the ejection
    assert h.tick(1.0) == [A]
    assert h.tick(1.1) == []  # one probe at a time per endpoint
    h.probe_done(A, False, 1.2, "timed out")
    assert h.tick(2.0) == [A]
    h.probe_done(A, True, 2.01)
    assert h.usable(A) and events[-1] == (A, EJECTED, HEALTHY)
    assert (h.probes_total, h.probe_failures_total, h.readmissions_total) == (2, 1, 1)


def test_failed_probes_extend_the_ejection_with_a_doubled_back_off():
    h, _ = make(probe_interval=0.5, base_ejection=1.0, max_ejection=3.0)
    fail(h, A, 0.0, 3)
    assert h.view(A, 0.0).ejected_until == 1.0
    for now in (0.5, 1.0):
        assert h.tick(now) == [A]
        h.probe_done(A, False, now)
    h.tick(1.0)
    assert not h.usable(A) and h.view(A, 1.0).ejected_until == 3.0  # 2 s more
    for now in (1.5, 2.0, 2.5, 3.0):
        h.tick(now)
        h.probe_done(A, False, now)
    h.tick(3.0)
    assert h.view(A, 3.0).ejected_until == 6.0  # doubling capped at max_ejection (3 s)
    assert h.ejections_total == 1  # one ejection, extended


def test_back_off_ending_before_any_verdict_waits_for_one():
    h, _ = make(probe_interval=5.0, base_ejection=1.0)
    fail(h, A, 0.0, 3)
    assert h.tick(1.0) == [A]  # back-off over: a probe is asked for at once
    assert not h.usable(A)
    h.probe_done(A, True, 1.1)
    assert h.usable(A)


def test_without_probes_the_back_off_readmits_on_probation():
    h, events = make(probes=False, base_ejection=1.0)  # UDP
    fail(h, A, 0.0, 3)
    assert h.tick(0.9) == [] and not h.usable(A)
    h.tick(1.0)
    assert h.usable(A) and events[-1] == (A, EJECTED, RECOVERING)
    fail(h, A, 1.5)  # one failure on probation ejects again, for twice as long
    assert not h.usable(A) and h.view(A, 1.5).ejected_until == 3.5
    h.tick(3.5)
    h.reply(A)  # a datagram came back: healthy, back-off forgotten
    assert h.view(A, 4.0).state == HEALTHY
    fail(h, A, 4.0, 3)
    assert h.view(A, 4.0).ejected_until == 5.0


def test_back_off_is_jittered():
    settings = HealthSettings(base_ejection=10.0, max_ejection=100.0, jitter=0.2)
    ends = set()
    for seed in range(20):
        h = EndpointHealth(settings, rng=random.Random(seed))
        h.update([A])
        fail(h, A, 0.0, 3)
        ends.add(h.view(A, 0.0).ejected_until)
    assert len(ends) > 10 and all(8.0 <= e <= 12.0 for e in ends)


def test_a_dial_that_waits_too_long_makes_the_endpoint_slow_until_it_ends():
    h, _ = make(slow_dial_min=0.02)
    h.dial_started(A, 0.0)
    assert not h.slow(A, 0.01)
    assert h.slow(A, 0.03)
    h.dial_failed(A, 0.25, "timed out")
    assert not h.slow(A, 0.3) and h.usable(A)


def test_slow_threshold_follows_the_smoothed_connect_time():
    h, _ = make(slow_dial_min=0.02, slow_dial_max=0.25)
    for _ in range(30):
        h.dial_started(A, 0.0)
        h.dial_succeeded(A, 0.0, 0.05)  # a far endpoint: 50 ms to connect
    h.dial_started(A, 1.0)
    assert not h.slow(A, 1.15)  # 4 x 50 ms
    assert h.slow(A, 1.21)


def test_a_lost_report_never_keeps_an_endpoint_slow():
    h, _ = make()
    h.dial_started(A, 0.0)  # ...and nobody ever reports its end
    assert h.slow(A, 1.0)
    assert not h.slow(A, STALE_DIAL + 1)


def test_removed_endpoints_are_forgotten_and_return_healthy():
    h, _ = make()
    fail(h, A, 0.0, 3)
    h.update([B])
    assert h.ejected == frozenset()
    h.update([A, B])
    assert h.usable(A) and h.view(A, 0.0).consecutive_failures == 0


def test_monitor_is_told_about_the_first_ejection_only():
    h, _ = make()
    told = []
    h.on_ejected = told.append
    fail(h, A, 0.0, 3)
    fail(h, B, 0.0, 3)
    assert told == [h]


def test_a_dial_success_readmits_an_ejected_endpoint():
    # A dial made in panic mode (or in flight before the ejection) that connects proves it.
    h, _ = make()
    fail(h, A, 0.0, 3)
    h.dial_started(A, 0.1)
    h.dial_succeeded(A, 0.2, 0.001)
    assert h.view(A, 0.2).state == HEALTHY and h.readmissions_total == 1

"""Which endpoints of one service port answer: passive ejection, probe verdicts, slow dials.

Pure bookkeeping (no sockets; the clock and the jitter's randomness are injected): the TCP
and UDP forwarders report what their dials and sessions saw, `prober.HealthMonitor` runs the
probes this asks for, and the balancer asks `usable` / `slow` before it picks. It owns, per
endpoint address:

    healthy ──N consecutive failures──────────────► ejected (until now + back-off)
    ejected ──a probe answers, or a dial succeeds──► healthy
    ejected ──back-off over, the last probe failed─► ejected (next back-off; no client pays)
    ejected ──back-off over, nothing to probe──────► recovering (usable again, on probation)
    recovering ──a success──► healthy      recovering ──one failure──► ejected (next back-off)

* A failure is a dial refused, unreachable or timed out (TCP), or an ICMP error reported on a
  UDP session's connected socket. A success is an established connection, or a reply
  datagram. A success resets the count and the back-off.
* Back-off: ``base × 2^(k-1)`` for the k-th ejection without a success in between, jittered
  by ±``jitter`` (so endpoints ejected together do not return together), at most ``max``
  (Envoy's outlier detection, with haproxy's ``fall``/``rise`` spirit).
* Active probes (TCP only; ``probe_interval`` 0 disables them): while an endpoint is ejected
  it is due a connect probe every ``probe_interval``; an answer re-admits it at once, so
  recovery does not wait for the back-off. A probed endpoint is re-admitted by an answer
  only: when its back-off ends after a failed probe it stays out for the next one (a back-off
  ending before any verdict waits for one). Endpoints nothing can probe (UDP, probes off) go
  back on probation when the back-off ends.
* Slow dials: a dial still waiting for its SYN-ACK after ``slow_after`` (4 × the endpoint's
  smoothed connect time, at least ``slow_dial_min``, at most the first dial timeout) makes
  the endpoint *slow*: new connections prefer other endpoints of the same locality tier until
  that dial ends (round robin and random only: a hash policy's keys and an affinity pin stay
  where they are until the endpoint is ejected). Without this, a node opening 200 connections/s towards an endpoint whose
  SYNs vanish sends it ~25 more before the first 250 ms timeout can count a failure; with it,
  about as many as it takes to eject it. Slowness never ejects by itself and never moves
  traffic to another tier.

Counters: ejections, re-admissions, probes and failed probes (per service port, exported by
the daemon); `on_change` tells the caller when an endpoint goes and comes back (logs, UDP
sessions to move).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from edgeproxy.model import Endpoint

HEALTHY = "healthy"
EJECTED = "ejected"
RECOVERING = "recovering"

# A dial older than this must have ended (the four dial attempts take 3.75 s): an in-flight
# count that says otherwise is stale and reset, so no endpoint stays "slow" by a lost report.
STALE_DIAL = 5.0
SRTT_GAIN = 0.125  # RFC 6298's alpha for the smoothed connect time


@dataclass(frozen=True)
class HealthSettings:
    """Passive ejection and probe settings (flags/config: docs/endpoints.md)."""

    consecutive_failures: int = 3  # 0: never eject
    base_ejection: float = 1.0
    max_ejection: float = 30.0
    jitter: float = 0.2
    probe_interval: float = 1.0  # 0: no active probes
    probe_timeout: float = 1.0
    # A LAN endpoint connects in well under a millisecond; 10 ms of silence is already
    # unusual (a loaded hub may add a few ms: a false "slow" only shifts new connections to
    # the endpoint's peers for a moment). At 100 dials/s to one endpoint, about two dials go
    # out before it counts as slow, the third failure then ejects it.
    slow_dial_min: float = 0.01
    slow_dial_max: float = 0.25  # the first dial attempt's timeout

    @property
    def probing(self) -> bool:
        return self.probe_interval > 0 and self.consecutive_failures > 0


def error_text(exc: OSError) -> str:
    """What an endpoint's failure is recorded as: the errno's text (``Connection refused``),
    else the exception's own words."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


class _State:
    __slots__ = ("state", "failures", "level", "until", "probe_ok", "probing",
                 "next_probe", "inflight", "inflight_since", "srtt", "last_error")

    def __init__(self) -> None:
        self.state = HEALTHY
        self.failures = 0  # consecutive
        self.level = 0  # ejections since the last success (the back-off exponent)
        self.until = 0.0  # end of the back-off (monotonic)
        self.probe_ok: bool | None = None  # the last probe's verdict since the ejection
        self.probing = False  # a probe is in flight
        self.next_probe = 0.0
        self.inflight = 0  # dials waiting for an answer
        self.inflight_since = 0.0  # the oldest of them started (approximately) then
        self.srtt: float | None = None  # smoothed connect time
        self.last_error: str | None = None


@dataclass(frozen=True)
class EndpointHealthView:
    """One endpoint's state for status (times monotonic)."""

    state: str
    consecutive_failures: int
    ejections: int  # in a row, without a success in between
    ejected_until: float | None
    last_error: str | None
    slow: bool
    connect_seconds: float | None  # smoothed connect time


class EndpointHealth:
    """The health of one service port's endpoints (see the module docstring)."""

    def __init__(self, settings: HealthSettings | None = None, *, probes: bool = True,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None,
                 on_change: Callable[[Endpoint, str, str, str], None] | None = None) -> None:
        self.settings = settings or HealthSettings()
        self.probes = probes  # the protocol can be probed (TCP)
        self.clock = clock
        self.rng = rng or random.Random()
        self.on_change = on_change  # (endpoint, old state, new state, why)
        # Called when the first endpoint is ejected: the monitor starts ticking this.
        self.on_ejected: Callable[["EndpointHealth"], None] | None = None
        self._states: dict[Endpoint, _State] = {}
        self._ejected: set[Endpoint] = set()
        self.ejections_total = 0
        self.readmissions_total = 0
        self.probes_total = 0
        self.probe_failures_total = 0

    # -- the endpoint set ----------------------------------------------------------------------

    def update(self, endpoints: Iterable[Endpoint]) -> None:
        """Track exactly these endpoints: a new one starts healthy, a removed one is forgotten
        (if it comes back it starts afresh, like a new pod on a reused IP)."""
        wanted = set(endpoints)
        for ep in [ep for ep in self._states if ep not in wanted]:
            del self._states[ep]
            self._ejected.discard(ep)
        for ep in wanted:
            if ep not in self._states:
                self._states[ep] = _State()

    @property
    def probing(self) -> bool:
        """Ejected endpoints are probed (TCP with probes on)."""
        return self.probes and self.settings.probing

    @property
    def ejected(self) -> frozenset[Endpoint]:
        return frozenset(self._ejected)

    @property
    def any_ejected(self) -> bool:
        return bool(self._ejected)

    # -- what the balancer asks ----------------------------------------------------------------

    def usable(self, ep: Endpoint) -> bool:
        st = self._states.get(ep)
        return st is None or st.state != EJECTED

    def fine(self, ep: Endpoint, now: float) -> bool:
        """Usable and not slow: what the balancer prefers (one lookup, on every pick)."""
        st = self._states.get(ep)
        if st is None:
            return True
        if st.state == EJECTED:
            return False
        return not st.inflight or not self._slow(st, now)

    def slow(self, ep: Endpoint, now: float) -> bool:
        st = self._states.get(ep)
        return st is not None and bool(st.inflight) and self._slow(st, now)

    def _slow(self, st: _State, now: float) -> bool:
        """A dial to this endpoint has been in flight longer than its connects usually take
        (``st.inflight`` non-zero)."""
        age = now - st.inflight_since
        if age > STALE_DIAL:
            st.inflight = 0  # a lost report; see STALE_DIAL
            return False
        return age > self._slow_after(st)

    def _slow_after(self, st: _State) -> float:
        s = self.settings
        wanted = 4 * st.srtt if st.srtt is not None else s.slow_dial_min
        return min(s.slow_dial_max, max(s.slow_dial_min, wanted))

    # -- what the forwarders report ------------------------------------------------------------

    def dial_started(self, ep: Endpoint, now: float) -> None:
        st = self._states.get(ep)
        if st is None:
            return
        if not st.inflight or now - st.inflight_since > STALE_DIAL:
            st.inflight, st.inflight_since = 0, now
        st.inflight += 1

    def _ended(self, st: _State) -> None:
        if st.inflight:
            st.inflight -= 1

    def dial_succeeded(self, ep: Endpoint, now: float, seconds: float | None = None) -> None:
        st = self._states.get(ep)
        if st is None:
            return
        self._ended(st)
        if seconds is not None:
            st.srtt = seconds if st.srtt is None else st.srtt + SRTT_GAIN * (seconds - st.srtt)
        st.inflight_since = now  # it answers: dials still in flight are not "old" yet
        if st.failures or st.level or st.state != HEALTHY:
            self._success(ep, st, "connected")

    def dial_abandoned(self, ep: Endpoint) -> None:
        """A dial ended without a verdict (the client went away, the service stopped)."""
        st = self._states.get(ep)
        if st is not None:
            self._ended(st)

    def reply(self, ep: Endpoint) -> None:
        """UDP: a datagram came back from the endpoint."""
        st = self._states.get(ep)
        if st is not None and (st.failures or st.state != HEALTHY):
            self._success(ep, st, "replied")

    def dial_failed(self, ep: Endpoint, now: float, error: str) -> bool:
        """Count a failure; True when it ejected the endpoint."""
        st = self._states.get(ep)
        if st is None:
            return False
        self._ended(st)
        st.failures += 1
        st.last_error = error
        threshold = self.settings.consecutive_failures
        if threshold <= 0 or st.state == EJECTED:
            return False
        if st.state == RECOVERING or st.failures >= threshold:
            self._eject(ep, st, now, error)
            return True
        return False

    def _success(self, ep: Endpoint, st: _State, why: str) -> None:
        st.failures = 0
        st.level = 0
        if st.state != HEALTHY:
            old = st.state
            st.state = HEALTHY
            self._ejected.discard(ep)
            if old == EJECTED:
                self.readmissions_total += 1
            self._changed(ep, old, HEALTHY, why)

    def _backoff(self, level: int) -> float:
        s = self.settings
        base = s.base_ejection * (2 ** min(level - 1, 30))
        return min(s.max_ejection, base * self.rng.uniform(1 - s.jitter, 1 + s.jitter))

    def _eject(self, ep: Endpoint, st: _State, now: float, why: str) -> None:
        old = st.state
        st.state = EJECTED
        st.level += 1
        st.until = now + self._backoff(st.level)
        st.probe_ok = None
        st.next_probe = now + self.settings.probe_interval
        first = not self._ejected
        self._ejected.add(ep)
        self.ejections_total += 1
        self._changed(ep, old, EJECTED, why)
        if first and self.on_ejected is not None:
            self.on_ejected(self)

    def _changed(self, ep: Endpoint, old: str, new: str, why: str) -> None:
        if self.on_change is not None:
            self.on_change(ep, old, new, why)

    # -- what the monitor drives ---------------------------------------------------------------

    def tick(self, now: float) -> list[Endpoint]:
        """End back-offs that are over; returns the endpoints due a probe now (each marked as
        probing until `probe_done`)."""
        due = []
        for ep in list(self._ejected):
            st = self._states[ep]
            if now >= st.until:
                if not self.probing:
                    # Nothing can vouch for it: back on probation, the next failure ejects it
                    # again for a longer back-off.
                    st.state = RECOVERING
                    st.failures = 0
                    self._ejected.discard(ep)
                    self.readmissions_total += 1
                    self._changed(ep, EJECTED, RECOVERING, "back-off over")
                    continue
                if st.probe_ok is False:
                    # The probes say it is still down: the next back-off, and no client finds
                    # out the hard way. The next verdict decides again.
                    st.level += 1
                    st.until = now + self._backoff(st.level)
                    st.probe_ok = None
                elif not st.probing:
                    st.next_probe = now  # no verdict yet: ask for one now
            if self.probing and not st.probing and now >= st.next_probe:
                st.probing = True
                st.next_probe = now + self.settings.probe_interval
                due.append(ep)
        return due

    def probe_done(self, ep: Endpoint, ok: bool, now: float, error: str | None = None) -> None:
        st = self._states.get(ep)
        if st is None:
            return
        st.probing = False
        self.probes_total += 1
        if ok:
            if st.state == EJECTED:
                self._success(ep, st, "probe answered")
            return
        self.probe_failures_total += 1
        if st.state == EJECTED:
            st.probe_ok = False
            if error:
                st.last_error = error

    def probe_skipped(self, ep: Endpoint) -> None:
        """The monitor could not start a due probe (concurrency or descriptors): due again at
        the next interval."""
        st = self._states.get(ep)
        if st is not None:
            st.probing = False

    # -- status --------------------------------------------------------------------------------

    def view(self, ep: Endpoint, now: float) -> EndpointHealthView | None:
        st = self._states.get(ep)
        if st is None:
            return None
        return EndpointHealthView(st.state, st.failures, st.level,
                                  st.until if st.state == EJECTED else None, st.last_error,
                                  bool(st.inflight) and self._slow(st, now), st.srtt)

"""Active probes of ejected endpoints and the clock that ends back-offs: the shell around
`edgeproxy.forwarding.health`, one for all service ports.

* One greenlet. While some endpoint is ejected it wakes every ``TICK`` (0.1 s) and lets each
  port's `EndpointHealth` end the back-offs that are over and name the endpoints due a probe;
  while none is ejected it sleeps until the first ejection (no cost on a healthy node).
* A probe is a TCP connect to the endpoint with ``timeout``; an answer re-admits the endpoint
  at once. It is closed with RST (no TIME_WAIT on our side; the backend sees an aborted
  connection, as with haproxy's connect checks).
* Bounded: at most ``concurrency`` probes in flight for the whole process, each holding one
  descriptor of the forwarders' `SocketBudget` (a probe never evicts a client's UDP session
  to get one); a due probe that finds no room is skipped and due again one interval later.
"""

from __future__ import annotations

import _socket
import errno
import logging
import os
import time

import gevent
import gevent.event
from gevent import socket as gsocket

from edgeproxy.forwarding.budget import SocketBudget
from edgeproxy.forwarding.health import EndpointHealth, error_text
from edgeproxy.forwarding.tcp import reset_close
from edgeproxy.model import Endpoint

log = logging.getLogger(__name__)

TICK = 0.1
DEFAULT_CONCURRENCY = 16


class HealthMonitor:
    def __init__(self, concurrency: int = DEFAULT_CONCURRENCY, timeout: float = 1.0,
                 budget: SocketBudget | None = None, tick: float = TICK) -> None:
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        self.budget = budget or SocketBudget(1 << 30)
        self.tick = tick
        self.active: set[EndpointHealth] = set()  # ports with an ejected endpoint
        self.in_flight = 0
        self.skipped_total = 0  # due probes that found no room
        self._wake = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None

    def watch(self, health: EndpointHealth) -> None:
        health.on_ejected = self._activate
        if health.any_ejected:
            self._activate(health)

    def forget(self, health: EndpointHealth) -> None:
        health.on_ejected = None
        self.active.discard(health)

    def _activate(self, health: EndpointHealth) -> None:
        self.active.add(health)
        self._wake.set()

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self) -> None:
        while True:
            if not self.active:
                self._wake.clear()
                self._wake.wait()
            gevent.sleep(self.tick)
            try:
                self.run_once(time.monotonic())
            except Exception:  # the monitor must survive anything
                log.exception("endpoint health check failed")

    def run_once(self, now: float) -> None:
        for health in list(self.active):
            for ep in health.tick(now):
                self._probe(health, ep)
            if not health.any_ejected:
                self.active.discard(health)

    def _probe(self, health: EndpointHealth, ep: Endpoint) -> None:
        budget = self.budget
        if self.in_flight >= self.concurrency or budget.used >= budget.total:
            self.skipped_total += 1
            health.probe_skipped(ep)
            return
        budget.take(1, "probe")
        self.in_flight += 1
        gevent.spawn(self._connect, health, ep)

    def _connect(self, health: EndpointHealth, ep: Endpoint) -> None:
        ok, error = False, None
        sock = None
        try:
            sock = gsocket.socket(_socket.AF_INET6 if ":" in ep.ip else _socket.AF_INET,
                                  _socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect((ep.ip, ep.port))
            ok = True
        except (TimeoutError, gsocket.timeout):
            error = os.strerror(errno.ETIMEDOUT)
        except OSError as exc:
            error = error_text(exc)
        finally:
            if sock is not None:
                reset_close(sock)
            self.budget.give(1)
            self.in_flight -= 1
        health.probe_done(ep, ok, time.monotonic(), error)

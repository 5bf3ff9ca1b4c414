"""How many file descriptors the forwarders may hold, all services together.

Per-service bounds do not protect the process: 15,000 UDP source ports against two services
took the daemon to its descriptor limit, and then /healthz, the metrics endpoint, the rule
keeper's iptables-restore pipes and the parse worker all failed with EMFILE. So every client
socket, upstream socket and UDP session socket is counted against one `SocketBudget`, derived
from ``RLIMIT_NOFILE`` with headroom kept for everything else:

    budget = soft limit - headroom - 2 x splice pipes
    headroom = max(256, soft limit / 8)   (HTTP servers, rule commands, watcher, worker, logs)

A TCP connection costs 2 (client + upstream), a UDP session 1. When the budget is spent, the
least recently active UDP session of any service is evicted first (a DNS client's next query
opens a new one; like a full conntrack table dropping its oldest flows); when there is none,
new TCP connections wait in the kernel's backlog (accepting pauses) and new UDP clients are
dropped, until descriptors come back. Each of these is counted (`exhausted_total` per cause)
and logged at most once per rate-limit window.
"""

from __future__ import annotations

import logging
import resource
from typing import Callable, Protocol

log = logging.getLogger(__name__)

MIN_HEADROOM = 256
MAX_PIPES = 512


class _Evictable(Protocol):
    def idlest_activity(self) -> float | None: ...

    def evict_idlest(self) -> bool: ...


def soft_nofile() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def pipes_for(limit: int) -> int:
    """Splice pipes allowed at once: at most MAX_PIPES, and (two descriptors each) at most an
    eighth of the limit."""
    return max(0, min(MAX_PIPES, limit // 16))


class SocketBudget:
    def __init__(self, total: int) -> None:
        self.total = max(0, total)
        self.used = 0
        self.exhausted_total: dict[str, int] = {"tcp": 0, "udp": 0}
        self.evicted_total = 0
        self._udp: list[_Evictable] = []
        self._waiting: list[Callable[[], None]] = []

    @classmethod
    def from_rlimit(cls, limit: int | None = None) -> "SocketBudget":
        limit = soft_nofile() if limit is None else limit
        headroom = max(MIN_HEADROOM, limit // 8)
        return cls(limit - headroom - 2 * pipes_for(limit))

    # -- UDP services that can give descriptors back -------------------------------------------
    def register_udp(self, service: _Evictable) -> None:
        if service not in self._udp:
            self._udp.append(service)

    def unregister_udp(self, service: _Evictable) -> None:
        if service in self._udp:
            self._udp.remove(service)

    def _evict_one(self) -> bool:
        """Close the least recently active UDP session of any service."""
        oldest, victim = None, None
        for service in self._udp:
            activity = service.idlest_activity()
            if activity is not None and (oldest is None or activity < oldest):
                oldest, victim = activity, service
        if victim is None or not victim.evict_idlest():
            return False
        self.evicted_total += 1
        return True

    # -- taking and giving ---------------------------------------------------------------------
    def take(self, n: int, cause: str) -> bool:
        """Reserve ``n`` descriptors, evicting idle UDP sessions if that makes room."""
        while self.used + n > self.total:
            if not self._evict_one():
                self.exhausted_total[cause] = self.exhausted_total.get(cause, 0) + 1
                log.warning("descriptor budget spent (%d of %d in use): new %s traffic "
                            "waits", self.used, self.total, cause)
                return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)
        if self._waiting and self.used < self.total:
            waiting, self._waiting = self._waiting, []
            for resume in waiting:
                resume()

    def wait_for_room(self, resume: Callable[[], None]) -> None:
        """Call ``resume`` once descriptors come back (a paused TCP listener)."""
        if resume not in self._waiting:
            self._waiting.append(resume)

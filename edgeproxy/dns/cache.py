"""Forwarded answers, kept for their TTL and then, for serve-stale, for a while longer.

Pure state with an injected clock value (``now``, monotonic seconds), no I/O. Like CoreDNS's
*cache* plugin: a positive answer lives for its smallest TTL (at most 3600 s), a negative one
(NXDOMAIN, NODATA) for min(SOA TTL, SOA minimum) (at most 1800 s, RFC 2308; without an SOA it
is not cached); SERVFAIL, REFUSED and truncated answers are not cached. Bounded: at most
``capacity`` answers, the least recently used one goes first.

Serve-stale (RFC 8767, CoreDNS ``serve_stale``): an expired answer stays ``stale_for`` seconds
longer; `get` then returns it marked stale, and the server sends it, with TTL
`STALE_TTL`, only when the upstreams cannot answer (offline node).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable

from dnslib import DNSRecord

from .answer import NOERROR, NXDOMAIN
from .records import SOA

MAX_POSITIVE_TTL = 3600
MAX_NEGATIVE_TTL = 1800
STALE_TTL = 30  # RFC 8767 section 4's recommendation for the TTL of a stale answer


@dataclass
class Entry:
    message: DNSRecord  # the upstream's answer, as parsed
    stored: float
    ttl: int  # seconds it is fresh

    def age(self, now: float) -> int:
        return int(now - self.stored)

    def fresh(self, now: float) -> bool:
        return now < self.stored + self.ttl


def answer_ttl(message: DNSRecord) -> int | None:
    """How long an upstream answer may be cached (None: not at all)."""
    header = message.header
    if header.tc:
        return None
    if header.rcode == NOERROR and message.rr:
        return min(min(rr.ttl for rr in message.rr), MAX_POSITIVE_TTL)
    if header.rcode in (NOERROR, NXDOMAIN):
        soa = [rr for rr in message.auth if rr.rtype == SOA]
        if not soa:
            return None
        minimum = soa[0].rdata.times[-1]
        return min(soa[0].ttl, minimum, MAX_NEGATIVE_TTL)
    return None


class AnswerCache:
    def __init__(self, capacity: int = 10000, stale_for: float = 86400.0) -> None:
        self.capacity = max(1, capacity)
        self.stale_for = max(0.0, stale_for)
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, now: float) -> Entry | None:
        """The entry, fresh or (within ``stale_for`` of its expiry) stale; None otherwise."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.stored + entry.ttl + self.stale_for:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: Hashable, message: DNSRecord, now: float) -> Entry | None:
        ttl = answer_ttl(message)
        if ttl is None:
            return None
        entry = Entry(message, now, ttl)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return entry


"""Endpoint selection for one service port: pure, no sockets, injectable clock and randomness.

This owns *which endpoint* a new connection (or UDP session) goes to:

* ``ROUND_ROBIN`` — kube-proxy userspace's ``LoadBalancerRR``: round robin over a list shuffled
  whenever the endpoint *set* changes (an update with the same set keeps order and position);
* ``RANDOM`` — EdgeMesh's ``simple: RANDOM``;
* ``CONSISTENT_HASH_SOURCE_IP`` / ``CONSISTENT_HASH_HTTP_HEADER`` — EdgeMesh's ``consistentHash``
  (``useSourceIp`` hashes the client IP only, never the port; ``httpHeaderName`` hashes the header
  value the TCP forwarder peeked). A hash ring with virtual nodes, keyed on the endpoint string,
  so adding or removing one endpoint moves only about 1/n of the keys and the mapping survives
  restarts;
* ``sessionAffinity: ClientIP`` on top of any policy (kube-proxy semantics): the client IP stays
  on its endpoint while it keeps coming back within ``timeoutSeconds``; ``reset_affinity`` (a dial
  to the pinned endpoint failed) picks afresh and re-pins; an endpoint update keeps the pins of
  endpoints that still exist and drops the others.

Locality and health (docs/endpoints.md) come on top of every policy:

* the endpoints arrive in *tiers* (this node, this zone, the rest; `topology.select`); a
  connection goes to the first tier that has an endpoint not ejected by the port's
  `EndpointHealth`, and the policy picks within that tier (each tier its own shuffled
  round-robin list or hash ring);
* within the tier, endpoints with a slow dial in flight are passed over while another one is
  fine (round robin and random: a hash policy keeps its keys in place until an ejection);
  ejected endpoints are skipped; a hash policy walks on to the next usable endpoint of
  the ring, so only the keys of the ejected endpoint move;
* a pin (``sessionAffinity``) to an ejected endpoint moves: the client is picked afresh and
  pinned again;
* panic: when every endpoint of every tier is ejected, they are all tried, as if healthy
  (Envoy's panic threshold at 0 %) — better a slow answer than a refusal.

Times come from a monotonic clock: edge boxes without an RTC jump years at NTP sync, and a wall
clock would expire (or eternalise) every affinity at once.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import time
from typing import Callable, Collection, Iterable, Sequence

from edgeproxy.forwarding.health import EndpointHealth
from edgeproxy.model import (
    DEFAULT_AFFINITY_TIMEOUT_SECONDS,
    Endpoint,
    LoadBalancerKind,
    LoadBalancerPolicy,
)

# Affinity entries are bounded: a scan from many source addresses must not grow memory forever.
MAX_AFFINITY_ENTRIES = 65536
# Virtual nodes per endpoint on the hash ring: enough for an even spread with a handful of
# endpoints, capped so that a service with thousands of endpoints stays cheap to rebuild.
RING_POINTS_PER_ENDPOINT = 128
RING_MAX_POINTS = 65536


class NoEndpointsError(LookupError):
    """The service port has no ready endpoint: the client is refused."""


def _hash64(data: bytes) -> int:
    # blake2b is in hashlib's C core, stable across processes (unlike hash()), and fast for
    # the short keys used here (an IP address, a header value, "ip:port#n").
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    """A consistent-hash ring over endpoints; ``lookup(key, n)`` gives the n-th distinct endpoint
    clockwise from the key, so a retry after a failed dial moves to a different endpoint."""

    __slots__ = ("_points", "_owners", "_distinct")

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        pairs: list[tuple[int, Endpoint]] = []
        if endpoints:
            per = max(8, min(RING_POINTS_PER_ENDPOINT, RING_MAX_POINTS // len(endpoints)))
            for ep in endpoints:
                name = str(ep).encode()
                for i in range(per):
                    pairs.append((_hash64(name + b"#" + str(i).encode()), ep))
        pairs.sort(key=lambda p: (p[0], p[1]))
        self._points = [p[0] for p in pairs]
        self._owners = [p[1] for p in pairs]
        self._distinct = len(set(endpoints))

    def lookup(self, key: bytes, nth: int = 0,
               accept: Callable[[Endpoint], bool] | None = None) -> Endpoint:
        """The nth distinct endpoint clockwise from ``key`` among those ``accept`` takes
        (NoEndpointsError when it takes none)."""
        if not self._points:
            raise NoEndpointsError("no endpoints")
        nth %= self._distinct
        i = bisect.bisect_left(self._points, _hash64(key)) % len(self._points)
        seen: list[Endpoint] = []
        taken: list[Endpoint] = []
        # Walk clockwise until the nth distinct owner; bounded by the ring size.
        for step in range(len(self._points)):
            owner = self._owners[(i + step) % len(self._points)]
            if owner not in seen:
                seen.append(owner)
                if accept is None or accept(owner):
                    if len(taken) == nth:
                        return owner
                    taken.append(owner)
                if len(seen) == self._distinct:
                    break
        if not taken:
            raise NoEndpointsError("no endpoint accepted")
        return taken[nth % len(taken)]


def _usable_at(usable: Callable[[Endpoint], bool]) -> Callable[[Endpoint, float], bool]:
    return lambda ep, now: usable(ep)


class Balancer:
    """Chooses endpoints for one service port; update it in place when the desired state changes."""

    def __init__(
        self,
        endpoints: Iterable[Endpoint] = (),
        policy: LoadBalancerPolicy | None = None,
        session_affinity: bool = False,
        affinity_timeout: float = DEFAULT_AFFINITY_TIMEOUT_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        max_affinity_entries: int = MAX_AFFINITY_ENTRIES,
        tiers: Sequence[Sequence[Endpoint]] | None = None,
        health: EndpointHealth | None = None,
    ) -> None:
        self._clock = clock
        self._rng = rng or random.Random()
        self._max_affinity = max_affinity_entries
        # Without a tracker of its own (tests, a bare balancer) nothing is known about any
        # endpoint: every one is usable and fine, and the general pick path applies unchanged.
        self.health = health if health is not None else EndpointHealth(probes=False)
        self._tiers: list[list[Endpoint]] = []  # each shuffled
        self._index: list[int] = []  # round-robin position per tier
        self._rings: list[HashRing] | None = None
        self._endpoints: list[Endpoint] = []  # every tier, in order
        self.panic = False  # the last pick found every endpoint ejected
        # No endpoint here although the service has some elsewhere (a Local policy with none on
        # this node): connections are refused, and counted as such.
        self.refusing = False
        self.panic_picks_total = 0
        # client ip -> (endpoint, last used); dict order = least recently used first.
        self._affinity: dict[str, tuple[Endpoint, float]] = {}
        self.policy = policy or LoadBalancerPolicy()
        self.session_affinity = session_affinity
        self.affinity_timeout = float(affinity_timeout)
        self.update(endpoints, self.policy, session_affinity, affinity_timeout, tiers=tiers)

    # -- configuration -------------------------------------------------------------------------

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The endpoints in pick order: tier by tier, each in round-robin order (shuffled)."""
        return tuple(self._endpoints)

    @property
    def needs_http_header(self) -> bool:
        return self.policy.kind is LoadBalancerKind.CONSISTENT_HASH_HTTP_HEADER and bool(
            self.policy.http_header_name
        )

    def update(
        self,
        endpoints: Iterable[Endpoint],
        policy: LoadBalancerPolicy | None = None,
        session_affinity: bool | None = None,
        affinity_timeout: float | None = None,
        *,
        tiers: Sequence[Sequence[Endpoint]] | None = None,
    ) -> None:
        """Apply a new endpoint set / policy without disturbing what did not change.

        ``tiers`` (locality order, best first) replaces ``endpoints`` when given. Same sets as
        before: order, round-robin position and affinity are kept (kube-proxy compares the
        sets too). A different set: reshuffle, restart at the first endpoint, and drop only
        the affinity of clients whose endpoint disappeared.
        """
        if tiers is None:
            tiers = [list(endpoints)]
        seen: set[Endpoint] = set()
        new_tiers = []
        for tier in tiers:
            fresh = [ep for ep in dict.fromkeys(tier) if ep not in seen]  # dedupe, keep order
            seen.update(fresh)
            if fresh:
                new_tiers.append(fresh)
        if policy is not None:
            self.policy = policy
        if affinity_timeout is not None:
            self.affinity_timeout = float(affinity_timeout)
        if session_affinity is not None:
            if not session_affinity:
                self._affinity.clear()
            self.session_affinity = session_affinity
        if [set(t) for t in new_tiers] != [set(t) for t in self._tiers]:
            for ip in [ip for ip, (ep, _) in self._affinity.items() if ep not in seen]:
                del self._affinity[ip]
            for tier in new_tiers:
                self._rng.shuffle(tier)
            self._tiers = new_tiers
            self._index = [0] * len(new_tiers)
            self._endpoints = [ep for tier in new_tiers for ep in tier]
            self._rings = None
        if self._rings is None and self.policy.kind in (
            LoadBalancerKind.CONSISTENT_HASH_SOURCE_IP,
            LoadBalancerKind.CONSISTENT_HASH_HTTP_HEADER,
        ):
            # Ring order must not depend on the shuffle: sort so restarts map keys identically.
            self._rings = [HashRing(sorted(tier)) for tier in self._tiers]

    # -- selection -----------------------------------------------------------------------------

    def next_endpoint(
        self,
        client_ip: str = "",
        reset_affinity: bool = False,
        hash_key: bytes | None = None,
        attempt: int = 0,
        avoid: Collection[Endpoint] = (),
    ) -> Endpoint:
        """The endpoint for a new connection from ``client_ip``.

        ``reset_affinity``: the previous dial for this client failed, ignore its pin (kube-proxy's
        ``sessionAffinityReset``). ``attempt``: dial attempt number, so hash policies move to the
        next endpoint on the ring instead of retrying the dead one. ``hash_key``: the HTTP header
        value for the header policy (None: header absent, fall back to round robin).
        ``avoid``: endpoints this connection already failed on; another usable one is
        preferred (a failover must not land on the dead endpoint again because other clients
        moved the round-robin position meanwhile).
        """
        if not self._endpoints:
            raise NoEndpointsError("no endpoints")
        now = self._clock()
        health = self.health
        if self.session_affinity and not reset_affinity:
            pinned = self._affinity.pop(client_ip, None)
            if pinned is not None and now - pinned[1] < self.affinity_timeout and (
                    health.usable(pinned[0]) or self.all_ejected()):
                self._affinity[client_ip] = (pinned[0], now)  # re-insert: most recent last
                return pinned[0]
        endpoint = self._pick(client_ip, hash_key, attempt, now, avoid)
        if self.session_affinity:
            self._affinity.pop(client_ip, None)
            self._affinity[client_ip] = (endpoint, now)
            if len(self._affinity) > self._max_affinity:
                self._expire(now)
        return endpoint

    def all_ejected(self) -> bool:
        """Every endpoint is ejected (panic: picks then ignore health); False with none."""
        health = self.health
        return bool(self._endpoints) and all(not health.usable(ep) for ep in self._endpoints)

    def _pick(self, client_ip: str, hash_key: bytes | None, attempt: int, now: float,
              avoid: Collection[Endpoint] = ()) -> Endpoint:
        health = self.health
        if avoid:
            # The ring's next distinct endpoint is the first one not tried.
            attempt = 0
        fine, usable = health.fine, health.usable
        if self._rings is not None and (hash_key is not None or self.policy.kind is
                                        LoadBalancerKind.CONSISTENT_HASH_SOURCE_IP):
            fine = _usable_at(usable)  # a key stays on its endpoint while it is not ejected

        def good(ep: Endpoint) -> bool:
            return fine(ep, now) and ep not in avoid

        def fallback(ep: Endpoint) -> bool:
            return usable(ep) and ep not in avoid

        any_ejected = health.any_ejected
        for i, tier in enumerate(self._tiers):
            if not any_ejected or any(usable(ep) for ep in tier):
                self.panic = False
                # Preferred: not ejected, not slow, not already tried by this connection; then
                # slow ones; then (every other one is ejected) one it tried before.
                for accept in (good, fallback, usable):
                    try:
                        return self._pick_in(i, client_ip, hash_key, attempt, accept)
                    except NoEndpointsError:
                        continue
        # Panic: everything is ejected. Try them all rather than refuse everybody.
        self.panic = True
        self.panic_picks_total += 1
        flat = self._endpoints
        return flat[self._rng.randrange(len(flat))] if len(flat) > 1 else flat[0]

    def _pick_in(self, i: int, client_ip: str, hash_key: bytes | None, attempt: int,
                 accept: Callable[[Endpoint], bool] | None) -> Endpoint:
        """The policy's choice within tier ``i`` among the endpoints ``accept`` takes."""
        kind = self.policy.kind
        rings = self._rings
        if kind is LoadBalancerKind.CONSISTENT_HASH_SOURCE_IP and rings is not None:
            return rings[i].lookup(client_ip.encode(), attempt, accept)
        if (
            kind is LoadBalancerKind.CONSISTENT_HASH_HTTP_HEADER
            and rings is not None
            and hash_key is not None
        ):
            return rings[i].lookup(hash_key, attempt, accept)
        tier = self._tiers[i]
        if kind is LoadBalancerKind.RANDOM:
            endpoint = self._rng.choice(tier)
            if accept is None or accept(endpoint):
                return endpoint
            candidates = [ep for ep in tier if accept(ep)]
            if not candidates:
                raise NoEndpointsError("no endpoint accepted")
            return self._rng.choice(candidates)
        n = len(tier)
        index = self._index[i] if self._index[i] < n else 0
        for step in range(n):
            endpoint = tier[(index + step) % n]
            if accept is None or accept(endpoint):
                self._index[i] = (index + step + 1) % n
                return endpoint
        raise NoEndpointsError("no endpoint accepted")

    def _expire(self, now: float) -> None:
        """Drop expired pins (oldest first), then the least recently used beyond the bound."""
        for ip in list(self._affinity):
            if now - self._affinity[ip][1] < self.affinity_timeout:
                break
            del self._affinity[ip]
        while len(self._affinity) > self._max_affinity:
            del self._affinity[next(iter(self._affinity))]

    def expire_affinity(self) -> int:
        """Periodic housekeeping; returns how many pins remain."""
        self._expire(self._clock())
        return len(self._affinity)

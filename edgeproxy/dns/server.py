"""`DnsServer`: the cluster DNS on the node's DNS addresses, UDP and TCP, in the daemon's hub.

The thin shell around the pure parts (``answer``, ``wire``, ``cache``):

* UDP: one non-blocking socket per address, read in an io-watcher callback in batches (no
  greenlet per datagram). A query whose answer template is known (wire.py) is answered right
  there; one the zone answers is parsed, decided and encoded right there too (its template
  kept); one to forward runs in a greenlet of a bounded pool (``max_inflight``; beyond it:
  SERVFAIL at once, never a queue that grows).
* TCP: one listener per address, at most ``max_tcp_clients`` connections served at once (the
  rest wait in the backlog), each idle at most `TCP_IDLE` seconds, queries pipelined.
* Sockets are bound with ``IP_FREEBIND``: the DNS addresses live on the listen interface,
  which others may delete; ProxyServer.verify puts it back (forwarding/listen.py), and the
  sockets never stopped being bound.
* `update(zone)` swaps the zone and drops every template: the next query sees the records of
  the sync that built it. Forwarded answers live in the bounded `AnswerCache` (TTL,
  serve-stale) and their templates for at most one second (their TTLs count down).

Everything it counts is in `DnsStats` (daemon/metrics.py exports it).
"""

from __future__ import annotations

import _socket
import errno
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import gevent
import gevent.pool
from gevent import socket as gsocket
from gevent.server import StreamServer

from dnslib import DNSLabel, DNSRecord

from edgeproxy.model import format_host_port

from . import wire
from .answer import FORMERR, NOTIMP, SERVFAIL, Decision, decide
from .cache import STALE_TTL, AnswerCache
from .records import DEFAULT_TTL, Zone
from .upstream import RESOLV_CONF, Forwarder, choose_upstreams, new_query_id, read_exactly

log = logging.getLogger(__name__)

RECV_BATCH = 64  # datagrams handled per readiness callback before yielding
TCP_IDLE = 10.0  # seconds a TCP client may stay silent (RFC 7766 suggests some seconds)
TCP_MAX_QUERIES = 1000  # per connection
RCVBUF = 4 << 20  # a burst of queries waits in the kernel, not dropped
_IP_FREEBIND = 15
_SO_RCVBUFFORCE = 33  # Linux; not in Python's socket module
_READ = 1

TYPE_LABELS = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT",
               28: "AAAA", 33: "SRV", 64: "SVCB", 65: "HTTPS", 255: "ANY"}


def type_label(qtype: int) -> str:
    """A bounded label set for the metrics: the common types, else "other"."""
    return TYPE_LABELS.get(qtype, "other")


@dataclass(frozen=True)
class DnsSettings:
    domain: str = "cluster.local"
    ttl: int = DEFAULT_TTL
    upstreams: tuple[str, ...] = ()  # empty: the node's /etc/resolv.conf
    upstream_timeout: float = 2.0
    cache_size: int = 10000
    serve_stale: float = 86400.0  # 0 disables
    max_tcp_clients: int = 256
    max_inflight: int = 1000  # forwarded queries waiting for an upstream at once
    resolv_conf: Path = RESOLV_CONF


@dataclass
class DnsStats:
    """Plain numbers for /metrics and /status."""

    queries: Counter = field(default_factory=Counter)  # (type label, result) -> count
    cache_hits_total: int = 0  # forwarded names answered from the cache (fresh)
    stale_total: int = 0  # stale answers served (upstreams unreachable)
    truncated_total: int = 0  # UDP answers sent truncated (the client retries over TCP)
    tcp_connections_total: int = 0
    busy_total: int = 0  # forwarded queries refused: max_inflight reached


class DnsServer:
    def __init__(self, addresses: Sequence[tuple[str, int]], settings: DnsSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.addresses = list(addresses)
        self.settings = settings
        self.clock = clock
        self.stats = DnsStats()
        self.zone: Zone | None = None
        self.cache = AnswerCache(settings.cache_size, settings.serve_stale)
        self.forwarder = Forwarder([], settings.upstream_timeout, clock)
        self._templates: dict[bytes, tuple[bytes, float | None, tuple[str, str]]] = {}
        self._udp: list[tuple[_socket.socket, object]] = []
        self._tcp: list[StreamServer] = []
        self._pool = gevent.pool.Pool(settings.max_inflight)
        self.problems: list[str] = []
        self._choose_upstreams()

    # -- lifecycle -----------------------------------------------------------------------------

    def _choose_upstreams(self) -> None:
        self.forwarder.upstreams = choose_upstreams(self.settings.upstreams, self.addresses,
                                                    self.settings.resolv_conf)
        self.forwarder.timeout = self.settings.upstream_timeout

    @property
    def upstreams(self) -> list[str]:
        return [f"{h}:{p}" for h, p in self.forwarder.upstreams]

    def start(self) -> None:
        loop = gevent.get_hub().loop
        for host, port in self.addresses:
            family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
            try:
                udp = _bind(family, _socket.SOCK_DGRAM, host, port)
                tcp = _bind(family, _socket.SOCK_STREAM, host, port)
            except OSError as exc:
                self.problems.append(f"DNS cannot listen on {host}:{port}: {exc.strerror}")
                log.error("DNS server cannot listen on %s:%d: %s", host, port, exc)
                continue
            watcher = loop.io(udp.fileno(), _READ)
            watcher.start(self._on_datagram, udp)
            self._udp.append((udp, watcher))
            listener = gsocket.socket(fileno=tcp.detach())
            listener.listen(128)
            server = StreamServer(listener, self._serve_tcp,
                                  spawn=gevent.pool.Pool(self.settings.max_tcp_clients))
            server.start()
            self._tcp.append(server)
        log.info("DNS server for %s on %s, upstreams %s", self.settings.domain,
                 ", ".join(f"{h}:{p}" for h, p in self.addresses),
                 ", ".join(self.upstreams) or "none")

    def stop(self) -> None:
        for sock, watcher in self._udp:
            watcher.stop()
            watcher.close()
            sock.close()
        self._udp.clear()
        for server in self._tcp:
            server.stop(timeout=1)
        self._tcp.clear()
        self._pool.kill(block=False)

    def update(self, zone: Zone) -> None:
        """Serve ``zone`` from the next query on (called in the hub by the sync)."""
        if zone is self.zone:
            return
        self.zone = zone
        self._templates = {}

    def configure(self, settings: DnsSettings) -> None:
        """New settings (SIGHUP): upstreams, timeout, cache and stale bounds; not addresses."""
        if settings == self.settings:
            return
        self.settings = settings
        self.cache.capacity = max(1, settings.cache_size)
        self.cache.stale_for = settings.serve_stale
        self._pool = gevent.pool.Pool(settings.max_inflight)
        self._choose_upstreams()
        self._templates = {}

    def health_problems(self) -> list[str]:
        return list(self.problems)

    # -- queries -------------------------------------------------------------------------------

    def _on_datagram(self, sock: _socket.socket) -> None:
        recv, send = sock.recvfrom, sock.sendto
        for _ in range(RECV_BATCH):
            try:
                data, client = recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue  # an ICMP error about an earlier answer
                log.warning("DNS UDP receive failed: %s", exc)
                return
            key = wire.question_key(data, False)
            if key is not None:
                reply = self._from_template(key, data)
                if reply is not None:
                    _send(send, reply, client)
                    continue
            try:
                answer = self._answer(data, key, False,
                                      lambda reply, c=client: _send(send, reply, c))
            except Exception:  # noqa: BLE001 - one bad query must not stop the server
                log.exception("DNS query failed")
                continue
            if answer is not None:
                _send(send, answer, client)

    def _answer(self, data: bytes, key: wire.Key | None, tcp: bool,
                later: Callable[[bytes], None]) -> bytes | None:
        """The answer to ``data`` now, or None: dropped, or sent by ``later`` when an
        upstream answered."""
        try:
            query = DNSRecord.parse(data)
        except Exception:  # noqa: BLE001 - whatever the network sends
            self.stats.queries[("other", "formerr")] += 1
            return wire.header_error(data, FORMERR)
        if query.header.qr:
            return None
        if query.header.opcode != 0:
            self.stats.queries[("other", "notimp")] += 1
            return wire.error(query, NOTIMP, tcp)
        if len(query.questions) != 1:
            self.stats.queries[("other", "formerr")] += 1
            return wire.error(query, FORMERR, tcp)
        opt = wire.edns_of(query)
        if opt is not None and (opt.ttl >> 16) & 0xFF:
            self.stats.queries[("other", "badvers")] += 1
            return wire.error(query, wire.BADVERS, tcp)
        q = query.q
        qname = str(q.qname).lower().rstrip(".")
        decision = decide(self.zone, qname, q.qtype, q.qclass)
        labels = (type_label(q.qtype), decision.result)
        if decision.forward or decision.chase:
            if tcp:
                return self._forward(query, qname, decision, key, tcp)
            if self._pool.full():
                self.stats.busy_total += 1
                self.stats.queries[(labels[0], "servfail")] += 1
                return wire.error(query, SERVFAIL, tcp)
            self._pool.spawn(lambda: later(self._forward(query, qname, decision, key, tcp)))
            return None
        reply = wire.encode(query, decision, tcp)
        self._note(reply, tcp)
        self.stats.queries[labels] += 1
        if key is not None:
            self._remember(key.key, reply, None, labels)
        return reply

    def _remember(self, key: bytes, reply: bytes, expires: float | None,
                  labels: tuple[str, str]) -> None:
        templates = self._templates
        if len(templates) >= self.settings.cache_size:
            templates.pop(next(iter(templates)))  # the oldest: bounded, O(1)
        templates[key] = (reply, expires, labels)

    def _note(self, reply: bytes, tcp: bool) -> None:
        if not tcp and len(reply) > 2 and reply[2] & 0x02:
            self.stats.truncated_total += 1

    def _resolve(self, qname: DNSLabel, lowered: str, qtype: int, qclass: int, do: bool,
                 cd: bool):
        """(upstream answer, its age in s, how: cached|forwarded|stale) or (None, 0, servfail)."""
        cache_key = (lowered, qtype, qclass, do, cd)
        now = self.clock()
        entry = self.cache.get(cache_key, now)
        if entry is not None and entry.fresh(now):
            self.stats.cache_hits_total += 1
            return entry, entry.age(now), "cached"
        answer = self.forwarder.ask(wire.upstream_query(qname, qtype, qclass, do, cd,
                                                        new_query_id()))
        if answer is not None:
            fresh = self.cache.put(cache_key, answer, self.clock())
            return fresh or answer, 0, "forwarded"
        if entry is not None:
            self.stats.stale_total += 1
            return entry, None, "stale"
        return None, 0, "servfail"

    def _forward(self, query: DNSRecord, qname: str, decision: Decision,
                 key: wire.Key | None, tcp: bool) -> bytes:
        q = query.q
        do, cd = wire.cache_key_flags(query)
        label = type_label(q.qtype)
        if decision.chase:  # an ExternalName: its CNAME, then what its target resolves to
            target = decision.chase
            found, _, how = self._resolve(DNSLabel(target), target, q.qtype, q.qclass, do, cd)
            message = getattr(found, "message", found)
            self.stats.queries[(label, "answer")] += 1
            if message is None:
                return wire.encode(query, decision, tcp)
            return wire.encode(query, decision, tcp, extra_answers=message.rr,
                               rcode=message.header.rcode)
        found, age, how = self._resolve(q.qname, qname, q.qtype, q.qclass, do, cd)
        self.stats.queries[(label, how)] += 1
        if found is None:
            return wire.error(query, SERVFAIL, tcp)
        message = getattr(found, "message", found)
        if how == "stale":
            reply = wire.relay(query, message, 0, tcp, ttl=STALE_TTL)
        else:
            reply = wire.relay(query, message, age, tcp)
            stored = getattr(found, "stored", None)
            if key is not None and stored is not None:
                now = self.clock()
                # A template lives until the TTLs it carries would count down (1 s) and never
                # past the answer's own expiry.
                self._remember(key.key, reply, min(now + 1.0, stored + found.ttl),
                               (label, "cached"))
        self._note(reply, tcp)
        return reply

    def _from_template(self, key: wire.Key, data: bytes) -> bytes | None:
        """The answer from a still-valid template for this question (counted), else None."""
        found = self._templates.get(key.key)
        if found is None or (found[1] is not None and found[1] <= self.clock()):
            return None
        self.stats.queries[found[2]] += 1
        return wire.patch(found[0], data, key.qend)

    def _serve_tcp(self, conn, client) -> None:
        self.stats.tcp_connections_total += 1
        conn.settimeout(TCP_IDLE)
        try:
            for _ in range(TCP_MAX_QUERIES):
                try:
                    data = read_exactly(conn, int.from_bytes(read_exactly(conn, 2), "big"))
                except EOFError:
                    return
                key = wire.question_key(data, True)
                reply = self._from_template(key, data) if key is not None else None
                if reply is None:
                    reply = self._answer(data, key, True, lambda r: None)
                if reply is None:
                    continue
                conn.sendall(len(reply).to_bytes(2, "big") + reply)
        except (OSError, gsocket.timeout):
            return
        finally:
            conn.close()

    # -- observation ---------------------------------------------------------------------------

    def status(self) -> dict:
        zone = self.zone
        return {
            "listen": [format_host_port(h, p) for h, p in self.addresses],
            "domain": self.settings.domain,
            "upstreams": self.upstreams,
            "upstreamsDown": self.forwarder.down,
            "names": len(zone.names) if zone is not None else 0,
            "services": zone.service_count if zone is not None else 0,
            "serial": zone.serial if zone is not None else None,
            "cacheEntries": len(self.cache),
            "staleTotal": self.stats.stale_total,
        }


def _send(send, reply: bytes, client) -> None:
    try:
        send(reply, client)
    except OSError as exc:  # a full socket buffer or an unreachable client: its loss
        log.debug("DNS answer to %s not sent: %s", client, exc)


def _bind(family: int, kind: int, host: str, port: int) -> _socket.socket:
    sock = _socket.socket(family, kind)
    try:
        if family == _socket.AF_INET6:
            sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
        # The address may be gone for a moment (the interface deleted and not yet restored):
        # bound all the same, the socket serves again as soon as the address is back.
        sock.setsockopt(_socket.IPPROTO_IP, _IP_FREEBIND, 1)
        if kind == _socket.SOCK_STREAM:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        else:
            try:
                sock.setsockopt(_socket.SOL_SOCKET, _SO_RCVBUFFORCE, RCVBUF)
            except OSError:
                sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, RCVBUF)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


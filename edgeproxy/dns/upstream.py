"""Where names outside the cluster are asked: the upstream resolvers, and asking them.

* `parse_resolv_conf` reads ``nameserver`` lines as the C library does (at most 3, an IPv6
  zone index kept), `choose_upstreams` takes the configured list or the node's
  /etc/resolv.conf and drops our own DNS addresses (never forward to ourselves: a loop);
* `Forwarder.ask` sends one query (gevent sockets) and returns the upstream's answer, or
  None: every attempt is bounded (``timeout`` in all, split over up to `MAX_ATTEMPTS`
  attempts across the upstreams in turn, so one lost datagram costs a retry, not the query),
  answers are checked (source, ID, question: no spoofed or stray answer is taken), a
  truncated UDP answer is asked again over TCP.
* When a whole query failed (no upstream answered), the upstreams are taken as down for
  `RECHECK` seconds: queries then fail at once (served stale by the server, when it can)
  instead of each waiting for the timeout: an offline node answers its pods without delay.
  The first query after that tries again.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket as _stdsocket
import time
from pathlib import Path
from typing import Iterable, Sequence

from gevent import socket

from dnslib import DNSRecord

log = logging.getLogger(__name__)

RESOLV_CONF = Path("/etc/resolv.conf")
MAXNS = 3  # glibc's MAXNS
MAX_ATTEMPTS = 4
RECHECK = 5.0  # seconds an unreachable set of upstreams is not asked again
MAX_MESSAGE = 65535

Upstream = tuple[str, int]


def parse_upstream(text: str, default_port: int = 53) -> Upstream:
    """``1.2.3.4``, ``1.2.3.4:5353``, ``fd00::1``, ``[fd00::1]:5353``, ``fe80::1%eth0``."""
    value = text.strip()
    port = default_port
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"{text!r} is not IP, IP:PORT or [IPv6]:PORT")
            port = int(rest[1:])
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"{text!r} is not IP, IP:PORT or [IPv6]:PORT")
        port = int(port_text)
    else:
        host = value
    ipaddress.ip_address(host.split("%", 1)[0])  # raises ValueError naming the address
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1-65535")
    return host, port


def parse_resolv_conf(text: str) -> list[Upstream]:
    found: list[Upstream] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                found.append(parse_upstream(words[1]))
            except ValueError:
                continue
        if len(found) == MAXNS:
            break
    return found


def choose_upstreams(configured: Sequence[str], own: Iterable[Upstream],
                     resolv_conf: Path = RESOLV_CONF) -> list[Upstream]:
    """The configured upstreams, else the node's resolv.conf; never one of ``own`` (our own
    (address, port)s)."""
    if configured:
        candidates = [parse_upstream(u) for u in configured]
    else:
        try:
            candidates = parse_resolv_conf(resolv_conf.read_text(errors="replace"))
        except OSError as exc:
            log.warning("cannot read %s (%s): no upstream resolvers", resolv_conf, exc)
            candidates = []
    mine = {(str(ipaddress.ip_address(a)), p) for a, p in own if a}
    chosen = []
    for host, port in candidates:
        if (str(ipaddress.ip_address(host.split("%", 1)[0])), port) in mine:
            log.warning("upstream %s:%d is edgeproxy's own DNS address: left out (a loop)",
                        host, port)
            continue
        chosen.append((host, port))
    return chosen


def _same_question(query: DNSRecord, answer: DNSRecord) -> bool:
    if not answer.header.qr or answer.header.id != query.header.id or len(answer.questions) != 1:
        return False
    q, a = query.q, answer.q
    return a.qtype == q.qtype and a.qclass == q.qclass and a.qname == q.qname  # case-folding


class Forwarder:
    def __init__(self, upstreams: Sequence[Upstream], timeout: float = 2.0,
                 clock=time.monotonic) -> None:
        self.upstreams = list(upstreams)
        self.timeout = timeout
        self.clock = clock
        self.down_until = 0.0
        self.errors_total: dict[str, int] = {}  # "host:port" -> failed attempts
        self._next = 0

    @property
    def down(self) -> bool:
        return not self.upstreams or self.clock() < self.down_until

    def _error(self, upstream: Upstream, why: str) -> None:
        name = f"{upstream[0]}:{upstream[1]}"
        self.errors_total[name] = self.errors_total.get(name, 0) + 1
        log.debug("upstream %s: %s", name, why)

    def ask(self, query: DNSRecord) -> DNSRecord | None:
        """The upstreams' answer to ``query`` (one question, our ID in it), or None."""
        if self.down:
            return None
        query_wire = query.pack()
        deadline = self.clock() + self.timeout
        attempts = min(MAX_ATTEMPTS, max(2, len(self.upstreams)))
        per_attempt = self.timeout / attempts
        start = self._next
        self._next = (self._next + 1) % len(self.upstreams)
        for attempt in range(attempts):
            left = deadline - self.clock()
            if left <= 0:
                break
            upstream = self.upstreams[(start + attempt) % len(self.upstreams)]
            answer = self._udp(upstream, query, query_wire, min(per_attempt, left))
            if answer is not None and answer.header.tc:
                answer = self._tcp(upstream, query, query_wire, max(0.05, deadline -
                                                                    self.clock()))
            if answer is not None:
                self.down_until = 0.0
                return answer
        self.down_until = self.clock() + RECHECK
        log.info("no upstream resolver answered within %.1fs; failing fast for %.0fs "
                 "(stale answers are served meanwhile)", self.timeout, RECHECK)
        return None

    def _family(self, host: str) -> int:
        return _stdsocket.AF_INET6 if ":" in host else _stdsocket.AF_INET

    def _udp(self, upstream: Upstream, query: DNSRecord, wire: bytes,
             timeout: float) -> DNSRecord | None:
        sock = socket.socket(self._family(upstream[0]), _stdsocket.SOCK_DGRAM)
        try:
            sock.settimeout(timeout)
            sock.connect(upstream)  # the kernel drops datagrams from anywhere else
            sock.send(wire)
            end = self.clock() + timeout
            while True:
                sock.settimeout(max(0.001, end - self.clock()))
                data = sock.recv(MAX_MESSAGE)
                try:
                    answer = DNSRecord.parse(data)
                except Exception:  # noqa: BLE001 - garbage from the network
                    continue
                if _same_question(query, answer):
                    return answer
        except (OSError, _stdsocket.timeout) as exc:
            self._error(upstream, f"udp: {exc or type(exc).__name__}")
            return None
        finally:
            sock.close()

    def _tcp(self, upstream: Upstream, query: DNSRecord, wire: bytes,
             timeout: float) -> DNSRecord | None:
        sock = socket.socket(self._family(upstream[0]), _stdsocket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(upstream)
            sock.sendall(len(wire).to_bytes(2, "big") + wire)
            length = int.from_bytes(read_exactly(sock, 2), "big")
            answer = DNSRecord.parse(read_exactly(sock, length))
            return answer if _same_question(query, answer) else None
        except (OSError, _stdsocket.timeout, EOFError) as exc:
            self._error(upstream, f"tcp: {exc or type(exc).__name__}")
            return None
        except Exception as exc:  # noqa: BLE001 - an unparsable answer
            self._error(upstream, f"tcp: bad answer: {exc}")
            return None
        finally:
            sock.close()


def read_exactly(sock, count: int) -> bytes:
    """``count`` bytes from a stream socket; EOFError when the peer closes first."""
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


def new_query_id() -> int:
    return random.SystemRandom().randrange(65536)



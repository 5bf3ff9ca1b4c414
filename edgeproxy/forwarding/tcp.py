"""TCP forwarding for one service port: listeners, dialing with failover, the byte relay.

Shape (and why):

* Accept runs as an io-watcher callback in the gevent hub: it accepts everything pending and
  starts a `Dialer` per connection (non-blocking connect + write watcher + timeout timer; the
  header-hash policy first peeks the request in a short-lived greenlet). A slow or dead
  endpoint therefore never blocks accepting other clients (kube-proxy and EdgeMesh dial inside
  the accept loop).
* Dial: kube-proxy's attempt timeouts (250 ms, 500 ms, 1 s, 2 s), each attempt asking the
  balancer again with ``reset_affinity`` so a dead endpoint is skipped; when every attempt fails
  the client is closed with RST (SO_LINGER 0) and counted.
* The relay is a state machine driven by io watchers, one read watcher per socket (write
  watchers only while a peer is slow): no greenlet, no buffer and no pipe is held by an idle
  connection. A wake-up moves a small message with one recv and one send through a shared
  buffer; a burst that fills it continues zero-copy with splice through a pooled pipe.
* Half-close: EOF from one side becomes shutdown(SHUT_WR) on the other once the bytes in flight
  are delivered; the other direction keeps flowing. A reset on either side closes both, passing
  the reset on.
* Limits: at most ``max_connections`` connections (accepting pauses, the kernel backlog queues
  the rest: back-pressure instead of failure); EMFILE/ENFILE on accept pauses accepting with an
  increasing back-off instead of spinning; an optional idle timeout checked by `sweep` with the
  monotonic clock.
"""

from __future__ import annotations

import _socket
import errno
import logging
import os
import struct
import time
import gevent
from gevent.socket import wait_read

from edgeproxy.forwarding.balancer import Balancer, NoEndpointsError
from edgeproxy.forwarding.budget import SocketBudget
from edgeproxy.forwarding.service import PortService
from edgeproxy.forwarding.splice import SPLICE_FLAGS, PipePool
from edgeproxy.forwarding.stats import ServiceStats

log = logging.getLogger(__name__)

DIAL_TIMEOUTS = (0.25, 0.5, 1.0, 2.0)  # kube-proxy userspace EndpointDialTimeouts
ACCEPT_BATCH = 64
ACCEPT_BACKOFF_MIN = 0.05
ACCEPT_BACKOFF_MAX = 1.0
PEEK_LIMIT = 8192        # bytes of request head examined for the hash header
PEEK_TIMEOUT = 1.0       # the client must send its request head within this time
RELAY_ROUNDS = 4         # chunks moved per readiness callback before yielding to others
FALLBACK_CHUNK = 256 * 1024

_LINGER_RST = struct.pack("ii", 1, 0)
_FATAL_ACCEPT = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# Dial errors that say nothing about the endpoint (no local port or memory left).
_LOCAL_DIAL_ERRORS = frozenset((errno.EADDRNOTAVAIL, errno.EAGAIN, errno.ENOBUFS, errno.ENOMEM,
                                errno.EMFILE, errno.ENFILE))
_READ = 1
_WRITE = 2
_fallback_buffer = bytearray(FALLBACK_CHUNK)
_fallback_view = memoryview(_fallback_buffer)
_splice = getattr(os, "splice", None)
SMALL_CHUNK = 16384
BULK_HINT = 4096
_small_buffer = bytearray(SMALL_CHUNK)
_small_view = memoryview(_small_buffer)
_monotonic = time.monotonic
_SOCK_STREAM_NONBLOCK = _socket.SOCK_STREAM | getattr(_socket, "SOCK_NONBLOCK", 0)


def reset_close(sock: _socket.socket) -> None:
    """Close with RST: the peer gets ECONNRESET at once instead of a polite FIN."""
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    sock.close()


def peek_http_header(sock: _socket.socket, name: str, limit: int = PEEK_LIMIT,
                     timeout: float = PEEK_TIMEOUT) -> bytes | None:
    """The value of header ``name`` in the client's first request, read with MSG_PEEK so the
    bytes are still forwarded; None when absent, not HTTP, or not sent in time (bounded)."""
    deadline = time.monotonic() + timeout
    wanted = name.lower().encode() + b":"
    data = b""
    while len(data) < limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            wait_read(sock.fileno(), remaining)
        except Exception:  # gevent's timeout: the client is silent (server-speaks-first)
            return None
        try:
            new = sock.recv(limit, _socket.MSG_PEEK)
        except BlockingIOError:
            continue
        except OSError:
            return None
        if not new or len(new) == len(data):
            if not new:
                return None
            # Nothing new arrived yet: wait for more (the watcher fires again only on new data
            # for a level-triggered socket that still has unread bytes, so sleep briefly).
            gevent.sleep(0.005)
            continue
        data = new
        end = data.find(b"\r\n\r\n")
        head = data if end < 0 else data[:end]
        for line in head.split(b"\r\n")[1:]:
            if line.lower().startswith(wanted):
                return line[len(wanted):].strip()
        if end >= 0:
            return None
    return None


class Half:
    """One direction of a relay: bytes read from ``src`` are written to ``dst``."""

    __slots__ = ("conn", "src", "dst", "src_fd", "dst_fd", "rw", "ww", "pipe", "inflight",
                 "pending", "eof", "done", "use_splice", "pool", "stats", "upstream", "bulk")

    def __init__(self, conn: "Connection", src: _socket.socket, dst: _socket.socket,
                 loop, use_splice: bool) -> None:
        self.conn = conn
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.rw = loop.io(self.src_fd, _READ)
        self.ww = None
        self.pipe = None
        self.inflight = 0        # bytes in self.pipe not yet written to dst
        self.pending = b""       # fallback mode: bytes not yet written to dst
        self.eof = False
        self.done = False
        self.use_splice = use_splice
        self.bulk = False  # streaming: skip the small-message copy and splice directly
        self.pool = conn.service.pipes
        self.stats = conn.service.stats
        self.upstream = src is conn.client  # client -> endpoint direction

    def count(self, n: int) -> None:
        if self.upstream:
            self.stats.bytes_in += n
        else:
            self.stats.bytes_out += n

    def start(self) -> None:
        self.rw.start(self.on_readable)

    def stop(self) -> None:
        self.rw.stop()
        self.rw.close()
        if self.ww is not None:
            self.ww.stop()
            self.ww.close()
        if self.pipe is not None:
            # Bytes may remain in the pipe on abort: never hand such a pipe to someone else.
            pool = self.conn.service.pipes
            if self.inflight:
                pool.discard(self.pipe)
            else:
                pool.put(self.pipe)
            self.pipe = None

    # -- events --------------------------------------------------------------------------------

    def on_readable(self) -> None:
        # The hot path of every request: kept flat, locals only, positional splice arguments.
        try:
            if not self.use_splice:
                self._copy_rounds()
                return
            # Small messages (requests, responses, DNS) are cheapest as one recv + one send:
            # no pipe to borrow and return. A read of BULK_HINT bytes or more marks a stream,
            # which from then on goes through a pipe with splice (copying a fast stream in
            # small reads would cost a core).
            if not self.bulk:
                n = self._copy_once(_small_buffer, _small_view)
                if n < BULK_HINT:
                    if n > 0:
                        self._eof_right_behind()
                    return  # a small message (or nothing, EOF, a full dst: all handled)
                # A stream: splice from now on. Sticky on purpose: flipping back on every short
                # read would send 16 KiB pieces with TCP_NODELAY in the middle of a stream.
                self.bulk = True
            pipe = self.pipe
            if pipe is None:
                pipe = self.pool.get()
                if pipe is None:
                    self._copy_rounds()  # pool exhausted: copy through the shared buffer
                    return
                self.pipe = pipe
            self.conn.last_active = _monotonic()
            src, pw, size = self.src_fd, pipe.w, pipe.size
            for _ in range(RELAY_ROUNDS):
                try:
                    n = _splice(src, pw, size, None, None, SPLICE_FLAGS)
                except BlockingIOError:
                    break
                if n == 0:
                    self.eof = True
                    break
                self.inflight = n
                if not self._drain_pipe():
                    return  # dst is slow: keep the pipe, wait for writability
                if n < size:
                    break  # the socket queue is (very likely) empty now: skip an EAGAIN round
            self.pipe = None
            self.pool.put(pipe)
            if self.eof:
                self.rw.stop()
                self._finish()
        except OSError as exc:
            if self.use_splice and exc.errno == errno.EINVAL and not self.inflight:
                self.use_splice = False  # e.g. a socket type splice cannot handle
                self.on_readable()
                return
            self.conn.abort(exc)

    def on_writable(self) -> None:
        try:
            if self.pipe is not None and self.inflight:
                self._drain_pipe()
            elif self.pending:
                sent = self.dst.send(self.pending)
                self.pending = self.pending[sent:]
                self.count(sent)
            if self.inflight or self.pending:
                return
            self.ww.stop()
            if self.pipe is not None:
                self.conn.service.pipes.put(self.pipe)
                self.pipe = None
            if self.eof:
                self._finish()
            else:
                self.rw.start(self.on_readable)
        except BlockingIOError:
            return
        except OSError as exc:
            self.conn.abort(exc)

    # -- splice path ---------------------------------------------------------------------------

    def _drain_pipe(self) -> bool:
        """Write the pipe's bytes to dst; False (and writer armed) if dst would block."""
        pr, dst = self.pipe.r, self.dst_fd
        while self.inflight:
            try:
                m = _splice(pr, dst, self.inflight, None, None, SPLICE_FLAGS)
            except BlockingIOError:
                m = 0
            if m == 0:
                self._wait_writable()
                return False
            self.inflight -= m
            self.count(m)
        return True

    # -- copy fallback -------------------------------------------------------------------------

    def _copy_once(self, buffer: bytearray, view: memoryview) -> int:
        """One recv into ``buffer`` and one send of it. Returns the bytes relayed, or -1 when
        the relay must stop for now: nothing to read, EOF (dst half-closed), or dst full
        (the rest kept in ``pending`` and the writer armed)."""
        try:
            n = self.src.recv_into(buffer)
        except BlockingIOError:
            return -1
        self.conn.last_active = _monotonic()
        if n == 0:
            self.eof = True
            self.rw.stop()
            self._finish()
            return -1
        try:
            sent = self.dst.send(view[:n])
        except BlockingIOError:
            sent = 0
        self.count(sent)
        if sent < n:
            self.pending = bytes(view[sent:n])
            self._wait_writable()
            return -1
        return n

    def _eof_right_behind(self) -> None:
        """After relaying a small message: if src's FIN is already queued behind it, pass it
        on now, right behind the data, instead of at the next readable event.

        A backend that answers and closes (HTTP/1.0, Connection: close) sends the response and
        its FIN back to back. Relayed one loop iteration apart, the client has read the whole
        response before our FIN comes and closes first, so *its* side of every connection sits
        in TIME_WAIT for 60 s: at a few thousand connections a second the client's ephemeral
        ports fill with TIME_WAIT for the service address and each of its connect() calls has
        to search past them (measured: wrk's request left 22 ms after its SYN instead of
        0.5 ms, 7,000 -> 700 req/s from the second round on). With the FIN right behind the
        data the client sees both at once, as through kernel DNAT, and closes second; the
        TIME_WAIT stays on our accepted socket, where it costs nobody a port."""
        try:
            peeked = self.src.recv(1, _socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return  # nothing more queued (the usual case on a keep-alive connection)
        except OSError:
            return  # reset: the next readable event handles it
        if not peeked and not self.pending and not self.done:
            self.eof = True
            self.rw.stop()
            self._finish()

    def _copy_rounds(self) -> None:
        self.conn.last_active = _monotonic()
        for _ in range(RELAY_ROUNDS):
            n = self._copy_once(_fallback_buffer, _fallback_view)
            if n < FALLBACK_CHUNK:
                return  # stopped, or the socket queue is (very likely) empty: skip EAGAIN

    def _wait_writable(self) -> None:
        self.rw.stop()
        if self.ww is None:
            self.ww = self.conn.service.loop.io(self.dst_fd, _WRITE)
        self.ww.start(self.on_writable)

    def _finish(self) -> None:
        """src reached EOF and everything was delivered: half-close dst."""
        self.done = True
        try:
            self.dst.shutdown(_socket.SHUT_WR)
        except OSError:
            pass
        self.conn.half_done()


class Connection:
    """A relayed client <-> endpoint pair (after a successful dial)."""

    __slots__ = ("service", "client", "upstream", "up", "down", "last_active", "closed")

    def __init__(self, service: "TcpService", client: _socket.socket,
                 upstream: _socket.socket) -> None:
        self.service = service
        self.client = client
        self.upstream = upstream
        use_splice = service.pipes.enabled
        self.up = Half(self, client, upstream, service.loop, use_splice)
        self.down = Half(self, upstream, client, service.loop, use_splice)
        self.last_active = time.monotonic()
        self.closed = False

    def start(self) -> None:
        self.up.start()
        self.down.start()

    def half_done(self) -> None:
        if self.up.done and self.down.done:
            self.close()

    def abort(self, exc: BaseException | None = None) -> None:
        """Tear down both sides with RST so neither peer mistakes it for a clean end."""
        if self.closed:
            return
        if exc is not None and not isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("%s: relay error: %s", self.service.name, exc)
        self._teardown(reset=True)

    def close(self) -> None:
        if not self.closed:
            self._teardown(reset=False)

    def _teardown(self, reset: bool) -> None:
        self.closed = True
        self.up.stop()
        self.down.stop()
        if reset:
            reset_close(self.client)
            reset_close(self.upstream)
        else:
            self.client.close()
            self.upstream.close()
        self.service.connection_closed(self)


class Dialer:
    """Connects to an endpoint for one client without a greenlet: non-blocking connect, a write
    watcher for completion and a timer for kube-proxy's per-attempt timeout; each failure asks
    the balancer again (affinity reset) until the attempts run out."""

    __slots__ = ("service", "client", "client_ip", "hash_key", "attempt", "sock", "watcher",
                 "timer", "endpoint", "balancer", "started", "tried")

    def __init__(self, service: "TcpService", client: _socket.socket, client_ip: str,
                 hash_key: bytes | None, balancer: Balancer | None = None) -> None:
        self.service = service
        self.client = client
        self.client_ip = client_ip
        self.hash_key = hash_key
        self.attempt = 0
        self.sock = None
        self.watcher = None
        self.timer = None
        self.endpoint = None
        # The second listener's balancer for external paths that use the other endpoint set.
        self.balancer = balancer or service.balancer
        self.started = 0.0
        self.tried: list | None = None  # endpoints this connection dialed (failover avoids them)

    def next(self) -> None:
        service = self.service
        try:
            while self.attempt < len(service.dial_timeouts):
                attempt = self.attempt
                self.attempt += 1
                try:
                    ep = self.balancer.next_endpoint(self.client_ip, attempt > 0,
                                                     self.hash_key, attempt,
                                                     self.tried or ())
                except NoEndpointsError:
                    if self.balancer.refusing:
                        service.stats.refused_no_local_total += 1
                    break
                self.endpoint = ep
                if self.tried is None:
                    self.tried = [ep]
                else:
                    self.tried.append(ep)
                family = _socket.AF_INET6 if ":" in ep.ip else _socket.AF_INET
                try:
                    # SOCK_NONBLOCK at creation: one system call less than setblocking().
                    sock = _socket.socket(family, _SOCK_STREAM_NONBLOCK)
                except OSError as exc:  # EMFILE/ENFILE: no retry can succeed right now
                    service.stats.dial_failures_total += 1
                    if exc.errno in _FATAL_ACCEPT:
                        # Out of descriptors: stop accepting for a while too, or we would just
                        # accept and reset every client in a tight loop.
                        service._accept_backoff(exc)
                    break
                self.started = now = _monotonic()
                service.health.dial_started(ep, now)
                err = sock.connect_ex((ep.ip, ep.port))
                if err == errno.EINPROGRESS:
                    self.sock = sock
                    loop = service.loop
                    self.watcher = loop.io(sock.fileno(), _WRITE)
                    self.watcher.start(self._on_ready)
                    self.timer = loop.timer(service.dial_timeouts[attempt])
                    self.timer.start(self._on_timeout)
                    return
                if err == 0:
                    self._done(sock)
                    return
                sock.close()
                self._failed(err)
        except Exception:
            log.exception("%s: dial failed", service.name)
        service._dialed(self.client, None)

    def _disarm(self) -> None:
        self.watcher.stop()
        self.watcher.close()
        self.timer.stop()
        self.timer.close()
        self.watcher = self.timer = None

    def _on_ready(self) -> None:
        self._disarm()
        sock, self.sock = self.sock, None
        try:
            err = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        except OSError as exc:
            err = exc.errno or errno.EIO
        if err == 0:
            self._done(sock)
            return
        sock.close()
        self._failed(err)
        self.next()

    def _on_timeout(self) -> None:
        self._disarm()
        sock, self.sock = self.sock, None
        sock.close()
        self._failed(errno.ETIMEDOUT)
        self.next()

    def _failed(self, err: int) -> None:
        service = self.service
        service.stats.dial_failures_total += 1
        if err in _LOCAL_DIAL_ERRORS:  # our side ran out of something: not the endpoint's fault
            service.health.dial_abandoned(self.endpoint)
        else:
            service.health.dial_failed(self.endpoint, _monotonic(), os.strerror(err))
        log.info("%s: dial %s failed (attempt %d): %s", service.name, self.endpoint,
                 self.attempt, os.strerror(err))

    def _done(self, sock: _socket.socket) -> None:
        now = _monotonic()
        self.service.health.dial_succeeded(self.endpoint, now, now - self.started)
        try:
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.service._dialed(self.client, sock)


class TcpService(PortService):
    """Listeners and connections of one TCP service port. Each connection holds two
    descriptors (client, upstream) of the process-wide budget."""

    def __init__(self, name: str, balancer: Balancer, stats: ServiceStats, pipes: PipePool,
                 max_connections: int = 10000, idle_timeout: float | None = None,
                 dial_timeouts: tuple[float, ...] = DIAL_TIMEOUTS,
                 budget: SocketBudget | None = None) -> None:
        super().__init__(name, balancer, stats, budget, self._on_accept)
        self.pipes = pipes
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.dial_timeouts = dial_timeouts
        self.connections: set[Connection] = set()
        self.pending = 0  # connections accepted, still dialing
        self._paused = False
        self._backoff = 0.0
        self._backoff_timer = None
        self.accepting = False

    # -- listeners -----------------------------------------------------------------------------

    def add_listener(self, sock: _socket.socket, second: bool = False) -> None:
        self.listeners.add(sock, watch=self.accepting and not self._paused, second=second)

    def start(self) -> None:
        self.accepting = True
        self._resume()

    def _resume(self) -> None:
        self._paused = False
        self.listeners.watch()

    def _pause(self) -> None:
        self._paused = True
        self.listeners.unwatch()

    def close_listeners(self) -> None:
        """Stop accepting at once (removed service); open connections keep running."""
        self.accepting = False
        if self._backoff_timer is not None:
            self._backoff_timer.stop()
            self._backoff_timer.close()
            self._backoff_timer = None
        self.listeners.close()

    def close_family(self, family: int) -> int:
        """Stop accepting on the listeners of one address family (the service lost its last
        VIP of that family); connections already accepted keep running. Returns how many
        listeners were closed."""
        return len(self.listeners.remove_family(family))

    def close_second(self) -> int:
        """Close the second listener (its port no longer needs one); connections stay."""
        self.second_balancer = None
        return len(self.listeners.remove_second())

    @property
    def active(self) -> int:
        return len(self.connections) + self.pending

    # -- accept --------------------------------------------------------------------------------

    def _on_accept(self, lsock: _socket.socket) -> None:
        family = lsock.family
        balancer = self.second_balancer if self.listeners.is_second(lsock) else None
        for _ in range(ACCEPT_BATCH):
            if self.active >= self.max_connections:
                self._pause()  # back-pressure: the kernel backlog holds the rest
                self.stats.accept_paused_total += 1
                return
            if not self.budget.take(2, "tcp"):
                self._pause()  # the same back-pressure, until descriptors come back
                self.stats.accept_paused_total += 1
                self.budget.wait_for_room(self._maybe_resume)
                return
            try:
                fd, addr = lsock._accept()
            except BlockingIOError:
                self.budget.give(2)
                return
            except OSError as exc:
                self.budget.give(2)
                if exc.errno in _FATAL_ACCEPT:
                    self._accept_backoff(exc)
                    return
                continue  # ECONNABORTED and friends: that client is gone, keep going
            client = _socket.socket(family, _socket.SOCK_STREAM, 0, fd)
            self.pending += 1
            self.stats.connections_total += 1
            self._setup(client, addr[0], balancer)

    def _accept_backoff(self, exc: OSError) -> None:
        self.stats.accept_errors_total += 1
        if self._backoff_timer is not None:
            return  # already backing off
        first = self._backoff == 0.0
        self._backoff = min(ACCEPT_BACKOFF_MAX, max(ACCEPT_BACKOFF_MIN, self._backoff * 2))
        # Log the first failure of a series; the counter tells the rest.
        (log.warning if first else log.debug)("%s: accept failed (%s); pausing accepts for %.2fs",
                    self.name, os.strerror(exc.errno or 0), self._backoff)
        self._pause()
        timer = self._backoff_timer = self.loop.timer(self._backoff)
        timer.start(self._backoff_over)

    def _backoff_over(self) -> None:
        if self._backoff_timer is not None:
            self._backoff_timer.close()
            self._backoff_timer = None
        if self.accepting and self.active < self.max_connections:
            self._resume()

    # -- setup: peek + dial --------------------------------------------------------------------

    def _setup(self, client: _socket.socket, client_ip: str,
               balancer: Balancer | None = None) -> None:
        """Runs in the accept callback: no greenlet unless the policy must peek the request."""
        try:
            client.setblocking(False)
            client.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        except OSError:
            self._dialed(client, None)
            return
        if self.balancer.needs_http_header:
            gevent.spawn_raw(self._peek_then_dial, client, client_ip, balancer)
        else:
            Dialer(self, client, client_ip, None, balancer).next()

    def _peek_then_dial(self, client: _socket.socket, client_ip: str,
                        balancer: Balancer | None = None) -> None:
        try:
            name = self.balancer.policy.http_header_name or ""
            hash_key = peek_http_header(client, name)
        except Exception:
            log.exception("%s: peeking the request failed", self.name)
            hash_key = None
        Dialer(self, client, client_ip, hash_key, balancer).next()

    def _dialed(self, client: _socket.socket, upstream: _socket.socket | None) -> None:
        self.pending -= 1
        if upstream is None:
            reset_close(client)
            self.stats.connections_reset_total += 1
            self.budget.give(2)
            self._maybe_resume()
            return
        if self.stats.draining_closed:
            # the service was removed and its drain already ended while we dialed
            reset_close(client)
            reset_close(upstream)
            self.budget.give(2)
            return
        self._backoff = 0.0  # a connection got through: descriptors are available again
        conn = Connection(self, client, upstream)
        self.connections.add(conn)
        conn.start()

    # -- bookkeeping ---------------------------------------------------------------------------

    def connection_closed(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.budget.give(2)
        self._maybe_resume()

    def _maybe_resume(self) -> None:
        if (self._paused and self.accepting and self._backoff_timer is None
                and self.active < self.max_connections):
            self._resume()  # the next accept asks the budget again

    def sweep(self, now: float) -> int:
        """Close connections idle longer than the idle timeout; returns how many."""
        if not self.idle_timeout:
            return 0
        idle = [c for c in self.connections if now - c.last_active > self.idle_timeout]
        for conn in idle:
            conn.abort()
        self.stats.idle_closed_total += len(idle)
        return len(idle)

    def abort_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()


__all__ = ["TcpService", "Connection", "Dialer", "DIAL_TIMEOUTS", "peek_http_header", "reset_close"]

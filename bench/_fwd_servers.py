"""Backend servers for bench/forwarding.py, run inside the benchmark's "backend" namespace.

Usage (one server per process; the benchmark starts them with ``ip netns exec``)::

    python bench/_fwd_servers.py udp-echo ADDR PORT        # echo every datagram back
    python bench/_fwd_servers.py sink ADDR PORT            # TCP: echo bytes, hold idle conns
    python bench/_fwd_servers.py http ADDR PORT [WORKERS]  # fallback static HTTP responder

Protocol with the parent: the server binds, prints ``ready`` on stdout (one line) and then
serves until it is killed (SIGTERM/SIGKILL). Nothing else is printed on stdout.

Why plain ``select.epoll`` loops and no gevent: each of these must stay far below the proxies'
cost per packet, so that the benchmark measures the proxy and not the backend. An epoll loop
does no per-connection greenlet switch. The HTTP responder is only a fallback: the benchmark
prefers haproxy's ``http-request return`` (C, static response from memory) when haproxy is
installed, because a Python responder on 2 shared cores is close to a proxy's cost.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import sys
from typing import Callable

HTTP_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                 b"\r\nok\n")
HTTP_CLOSE_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                       b"Connection: close\r\n\r\nok\n")
MAX_REQUEST_BYTES = 16384  # a request head bigger than this is a client bug: close


def raise_nofile() -> None:
    """Idle-connection runs hold 5,000+ sockets: lift the soft limit to the hard one."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


def udp_echo(addr: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((addr, port))
    ready()
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while True:
        data, peer = recvfrom(65535)
        sendto(data, peer)


def _listener(addr: str, port: int, reuseport: bool = False) -> socket.socket:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    lsock.bind((addr, port))
    lsock.listen(8192)
    lsock.setblocking(False)
    return lsock


def _accept_all(lsock: socket.socket, ep: "select.epoll", conns: dict[int, socket.socket],
                nodelay: bool = False) -> list[int]:
    """Accept every pending connection, non-blocking and registered for reading; returns
    their fds. On EMFILE the rest stay in the backlog for the next event."""
    accepted = []
    while True:
        try:
            conn, _ = lsock.accept()
        except OSError:  # EAGAIN/EINTR: done for now; EMFILE: retry on the next event
            return accepted
        conn.setblocking(False)
        if nodelay:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conns[conn.fileno()] = conn
        ep.register(conn.fileno(), select.EPOLLIN)
        accepted.append(conn.fileno())


def _serve(lsock: socket.socket, handle: Callable[[socket.socket, bytes], bool],
           nodelay: bool = False, on_close: Callable[[int], object] | None = None) -> None:
    """The epoll loop of both TCP servers: accept everything, hand each read to
    ``handle(conn, data)`` and close the connection when it returns False, the peer closed or
    a socket error happened (then ``on_close(fd)``)."""
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    conns: dict[int, socket.socket] = {}
    lfd = lsock.fileno()
    while True:
        for fd, _ in ep.poll():
            if fd == lfd:
                _accept_all(lsock, ep, conns, nodelay)
                continue
            conn = conns[fd]
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data or not handle(conn, data):
                ep.unregister(fd)
                del conns[fd]
                conn.close()
                if on_close is not None:
                    on_close(fd)


def _echo(conn: socket.socket, data: bytes) -> bool:
    try:
        conn.send(data)
    except OSError:
        return False
    return True


def sink(addr: str, port: int) -> None:
    """Accept everything, echo what arrives (the idle client's one-byte handshake), keep the
    connection until the peer closes."""
    raise_nofile()
    lsock = _listener(addr, port)
    ready()
    _serve(lsock, _echo)


def _http_worker(lsock: socket.socket) -> None:
    bufs: dict[int, bytes] = {}

    def answer(conn: socket.socket, data: bytes) -> bool:
        buf = bufs.get(conn.fileno(), b"") + data
        # Answer every complete request head (pipelining included).
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head, buf = buf[:end].lower(), buf[end + 4:]
            if b"connection: close" in head:
                conn.send(HTTP_CLOSE_RESPONSE)
                return False
            conn.send(HTTP_RESPONSE)
        if len(buf) > MAX_REQUEST_BYTES:
            return False
        bufs[conn.fileno()] = buf
        return True

    _serve(lsock, answer, nodelay=True, on_close=lambda fd: bufs.pop(fd, None))


def http(addr: str, port: int, workers: int) -> None:
    raise_nofile()
    socks = [_listener(addr, port, reuseport=True) for _ in range(workers)]
    for lsock in socks[1:]:
        if os.fork() == 0:
            _http_worker(lsock)
            os._exit(0)
    ready()
    _http_worker(socks[0])


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        sys.stderr.write(__doc__ or "")
        return 2
    mode, addr, port = argv[0], argv[1], int(argv[2])
    if mode == "udp-echo":
        udp_echo(addr, port)
    elif mode == "sink":
        sink(addr, port)
    elif mode == "http":
        http(addr, port, int(argv[3]) if len(argv) > 3 else 2)
    else:
        sys.stderr.write(f"unknown mode {mode!r}\n")
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(0)

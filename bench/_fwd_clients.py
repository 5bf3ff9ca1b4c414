"""Clients for bench/forwarding.py that iperf3 and wrk do not cover, run inside a namespace.

Usage::

    python bench/_fwd_clients.py udp-rr ADDR PORT SECONDS SOCKETS
    python bench/_fwd_clients.py idle ADDR PORT COUNT

``udp-rr``: SOCKETS connected UDP sockets (so SOCKETS client addresses, i.e. SOCKETS proxy
sessions), each with one 64-byte request outstanding; a reply triggers the next request on that
socket. A request without reply after 200 ms counts as lost and is re-sent. Runs SECONDS
seconds, then prints one JSON line ``{"pairs": n, "lost": n, "seconds": s, "rate": n/s}``.

``idle``: opens COUNT TCP connections one after another, each proven end to end by a one-byte
round trip (so the proxy has dialed the backend), then prints one JSON line
``{"established": n, "failed": n, "seconds": s, "first_error": str|null}`` and holds every
connection open, idle, until its stdin reaches EOF; then it closes them and exits.
"""

from __future__ import annotations

import json
import resource
import select
import socket
import sys
import time

UDP_PAYLOAD = b"x" * 64
UDP_RETRY = 0.2
CONNECT_TIMEOUT = 3.0
MAX_IDLE_FAILURES = 50  # stop early: a broken path would otherwise cost COUNT x timeout


def udp_rr(addr: str, port: int, seconds: float, nsocks: int) -> dict:
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    sent_at: dict[int, float] = {}
    for _ in range(nsocks):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((addr, port))
        s.setblocking(False)
        socks[s.fileno()] = s
        ep.register(s.fileno(), select.EPOLLIN)
    start = time.monotonic()
    end = start + seconds
    pairs = lost = 0
    for fd, s in socks.items():
        s.send(UDP_PAYLOAD)
        sent_at[fd] = start
    next_check = start + UDP_RETRY
    now = start
    while now < end:
        for fd, _ in ep.poll(0.05):
            s = socks[fd]
            try:
                while True:
                    s.recv(2048)
                    pairs += 1
            except BlockingIOError:
                pass
            except ConnectionRefusedError:  # ICMP port unreachable: count and go on
                lost += 1
            s.send(UDP_PAYLOAD)
            sent_at[fd] = time.monotonic()
        now = time.monotonic()
        if now >= next_check:
            for fd, t in sent_at.items():
                if now - t > UDP_RETRY:
                    lost += 1
                    socks[fd].send(UDP_PAYLOAD)
                    sent_at[fd] = now
            next_check = now + UDP_RETRY
    elapsed = time.monotonic() - start
    return {"pairs": pairs, "lost": lost, "seconds": round(elapsed, 3),
            "rate": round(pairs / elapsed, 1)}


def idle(addr: str, port: int, count: int) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    conns: list[socket.socket] = []
    failed = 0
    first_error: str | None = None
    start = time.monotonic()
    while len(conns) < count and failed < MAX_IDLE_FAILURES:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(CONNECT_TIMEOUT)
        try:
            s.connect((addr, port))
            s.sendall(b"!")
            if s.recv(1) != b"!":
                raise OSError("no echo from the backend")
        except OSError as exc:
            failed += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
            s.close()
            continue
        conns.append(s)
    report = {"established": len(conns), "failed": failed,
              "seconds": round(time.monotonic() - start, 3), "first_error": first_error}
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    sys.stdin.read()  # hold until the benchmark has measured and closes our stdin
    for s in conns:
        s.close()


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        sys.stderr.write(__doc__ or "")
        return 2
    mode, addr, port = argv[0], argv[1], int(argv[2])
    if mode == "udp-rr":
        result = udp_rr(addr, port, float(argv[3]), int(argv[4]) if len(argv) > 4 else 16)
        sys.stdout.write(json.dumps(result) + "\n")
    elif mode == "idle":
        idle(addr, port, int(argv[3]))
    else:
        sys.stderr.write(f"unknown mode {mode!r}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

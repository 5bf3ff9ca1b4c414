"""Backend and client of bench/endpoint_outage.py, each run in a benchmark namespace.

    python bench/_outage_helpers.py backend ADDR PORT NAME
        A TCP server that writes NAME to every connection it accepts and closes it (the
        server speaks first, so the client's "first byte" is the endpoint's answer). Prints
        ``ready`` once listening. A plain epoll loop: it must cost far less than any proxy.

    python bench/_outage_helpers.py client ADDR PORT RATE SECONDS TIMEOUT
        Opens RATE new connections per second for SECONDS, open loop (each on its own
        schedule, whatever the others are doing), each waiting at most TIMEOUT for the first
        byte. Prints ``started T0`` (its CLOCK_MONOTONIC origin, shared with the parent) when
        the first connection is due, then one JSON line when all are done:
        ``[[start, seconds_to_first_byte or null, answer or error], ...]`` (start relative to
        T0).
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time


def backend(addr: str, port: int, name: str) -> None:
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((addr, port))
    lsock.listen(4096)
    lsock.setblocking(False)
    payload = name.encode()
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    print("ready", flush=True)
    while True:
        for _fd, _ in ep.poll():
            while True:
                try:
                    conn, _ = lsock.accept()
                except BlockingIOError:
                    break
                try:
                    conn.send(payload)
                except OSError:
                    pass
                conn.close()


def client(addr: str, port: int, rate: float, seconds: float, timeout: float) -> None:
    from gevent import monkey

    monkey.patch_all()
    import gevent

    n = int(rate * seconds)
    results: list = [None] * n
    t0 = time.monotonic() + 0.2

    def one(i: int) -> None:
        start = time.monotonic()
        s = socket.socket()
        s.settimeout(timeout)
        try:
            s.connect((addr, port))
            data = s.recv(64)
            took = time.monotonic() - start
            results[i] = [start - t0, took, data.decode() or "closed"] if data else \
                [start - t0, None, "closed without an answer"]
        except OSError as exc:  # timeouts included
            results[i] = [start - t0, None, type(exc).__name__]
        finally:
            s.close()

    print(f"started {t0!r}", flush=True)
    tasks = []
    for i in range(n):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        tasks.append(gevent.spawn(one, i))
    gevent.joinall(tasks)
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "backend":
        backend(args[0], int(args[1]), args[2])
    elif mode == "client":
        client(args[0], int(args[1]), float(args[2]), float(args[3]), float(args[4]))
    else:
        sys.exit(f"unknown mode {mode}")

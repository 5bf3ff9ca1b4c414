"""The listening sockets of one service port, each watched for readability by a libev watcher.

`TcpService` and `UdpService` keep their listeners here (one per address family the service
has VIPs in, all on the service's proxy port). The service decides when watching starts and
stops: TCP pauses accepting at its connection limit and after EMFILE, UDP watches as long as
it serves.

A port with a second listener (externalTrafficPolicy: Local's external paths) keeps it here
too, marked, so that accepts know which balancer to use and a removal closes the right ones.
"""

from __future__ import annotations

import _socket
from typing import Callable, Iterator

_READ = 1  # libev EV_READ


class Listeners:
    def __init__(self, loop: object, on_readable: Callable[[_socket.socket], None]) -> None:
        self.loop = loop
        self.on_readable = on_readable
        self._items: list[tuple[_socket.socket, object]] = []
        # The second listener's sockets (the objects: a closed one's number may be reused).
        self._second: set[_socket.socket] = set()

    def __iter__(self) -> Iterator[tuple[_socket.socket, object]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, sock: _socket.socket, watch: bool, second: bool = False) -> None:
        sock.setblocking(False)
        if second:
            self._second.add(sock)
        watcher = self.loop.io(sock.fileno(), _READ)  # type: ignore[attr-defined]
        self._items.append((sock, watcher))
        if watch:
            watcher.start(self.on_readable, sock)

    def watch(self) -> None:
        for sock, watcher in self._items:
            watcher.start(self.on_readable, sock)

    def unwatch(self) -> None:
        for _, watcher in self._items:
            watcher.stop()

    def is_second(self, sock: _socket.socket) -> bool:
        return sock in self._second

    def families(self, second: bool) -> set[int]:
        """The address families listened on, by the main or the second listener (open ones:
        what is really there, not what a spec asked for)."""
        return {sock.family for sock, _ in self._items
                if sock.fileno() >= 0 and (sock in self._second) == second}

    def remove_family(self, family: int) -> list[_socket.socket]:
        """Close the listeners of one address family; returns the closed sockets, for the
        service to let go of what answered through them."""
        return self._remove(lambda sock: sock.family == family)

    def remove_second(self) -> list[_socket.socket]:
        """Close the second listener's sockets; returns them, as `remove_family`."""
        return self._remove(lambda sock: sock in self._second)

    def _remove(self, which: Callable[[_socket.socket], bool]) -> list[_socket.socket]:
        gone = [item for item in self._items if which(item[0])]
        self._items = [item for item in self._items if not which(item[0])]
        for sock, watcher in gone:
            watcher.stop()
            watcher.close()
            self._second.discard(sock)
            sock.close()
        return [sock for sock, _ in gone]

    def close(self) -> None:
        self._remove(lambda sock: True)

"""The listening sockets of one service port, each watched for readability by a libev watcher.

`TcpService` and `UdpService` keep their listeners here (one per address family the service
has VIPs in, all on the service's proxy port). The service decides when watching starts and
stops: TCP pauses accepting at its connection limit and after EMFILE, UDP watches as long as
it serves.
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

    def __iter__(self) -> Iterator[tuple[_socket.socket, object]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, sock: _socket.socket, watch: bool) -> None:
        sock.setblocking(False)
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

    def remove_family(self, family: int) -> list[_socket.socket]:
        """Stop watching the listeners of one address family and drop them; their sockets are
        returned still open, for the service to close once it let go of them."""
        return self.remove_where(lambda sock: sock.family == family)

    def remove_where(self, which: Callable[[_socket.socket], bool]) -> list[_socket.socket]:
        """`remove_family` for the listeners ``which`` selects (a second listener's)."""
        gone = [item for item in self._items if which(item[0])]
        self._items = [item for item in self._items if not which(item[0])]
        for _, watcher in gone:
            watcher.stop()
            watcher.close()
        return [sock for sock, _ in gone]

    def close(self) -> None:
        for sock, watcher in self._items:
            watcher.stop()
            watcher.close()
            sock.close()
        self._items = []

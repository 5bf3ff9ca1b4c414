"""Proxy ports: the configured range, stable allocation across restarts, kernel reservation.

* `PortRange.parse` reads kube-proxy's ``--proxy-port-range`` syntax: ``"61000-64999"``,
  ``"61000+3999"`` (base plus count *beyond* the base, as in k8s.io/apimachinery's PortRange),
  a single ``"61000"``, or ``""`` for kernel-chosen ports.
* `PortAllocator` gives each service port key the same proxy port on every run: the previous
  port from ``state_dir/ports.json`` if still free, else a deterministic probe starting at a hash
  of the key. Stable ports mean a restart re-renders identical nat rules instead of churning
  them (and keeps conntrack entries of established flows pointing at a live listener).
* `reserve_ports` adds the range to ``net.ipv4.ip_local_reserved_ports`` so ephemeral
  ``connect()``/``bind(0)`` ports never land inside it. The file is per network namespace; the
  existing entries are merged, never overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)

RESERVED_PORTS_PATH = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")
STATE_FILE_NAME = "ports.json"
STATE_VERSION = 1


def second_listener_name(key: object) -> str:
    """The allocation name of a service port's second listener (docs/endpoints.md): kept in
    ports.json like the main one, so it is as stable across restarts."""
    return f"{key} second"


@dataclass(frozen=True)
class PortRange:
    """An inclusive port range; ``size == 0`` means "let the kernel choose"."""

    base: int = 0
    size: int = 0

    @classmethod
    def parse(cls, text: str) -> "PortRange":
        """kube-proxy's syntax; raises ValueError naming the bad value."""
        value = (text or "").strip()
        if not value:
            return cls()
        try:
            if "-" in value:
                low_s, high_s = value.split("-", 1)
                low, high = int(low_s), int(high_s)
            elif "+" in value:
                low_s, count_s = value.split("+", 1)
                low = int(low_s)
                high = low + int(count_s)
            else:
                low = high = int(value)
        except ValueError:
            raise ValueError(
                f"invalid port range {text!r}: expected 'low-high', 'base+count' or '' "
                "(kernel-chosen)"
            ) from None
        if not (1 <= low <= 65535 and 1 <= high <= 65535):
            raise ValueError(f"invalid port range {text!r}: ports must be within 1-65535")
        if high < low:
            raise ValueError(f"invalid port range {text!r}: end {high} is below start {low}")
        return cls(low, high - low + 1)

    @property
    def kernel_chosen(self) -> bool:
        return self.size == 0

    @property
    def last(self) -> int:
        return self.base + self.size - 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.size > 0 and self.base <= port <= self.last

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.base, self.base + self.size))

    def __len__(self) -> int:
        return self.size

    def __str__(self) -> str:
        return "" if self.kernel_chosen else f"{self.base}-{self.last}"


DEFAULT_PORT_RANGE = PortRange(61000, 4000)  # 61000-64999: above ip_local_port_range's 60999


class PortExhaustedError(RuntimeError):
    """No port of the range could be bound for a new service port."""


# try_bind(port) binds every listener a service port needs on `port` (0: kernel's choice) and
# returns the port actually bound, or None when the port is taken (EADDRINUSE).
TryBind = Callable[[int], "int | None"]


class PortAllocator:
    """Assigns proxy ports to keys; persisted in ``state_file`` when one is given."""

    def __init__(self, port_range: PortRange, state_file: Path | None = None) -> None:
        self.port_range = port_range
        self.state_file = state_file
        self._active: dict[str, int] = {}
        self._taken: set[int] = set()  # the ports of _active, kept alongside for O(1) lookups
        self._remembered: dict[str, int] = {}  # from earlier runs / removed keys: preferred only
        self._remembered_owner: dict[int, str] = {}  # port -> the key that remembers it
        self._dirty = True  # the state file lags behind _remembered (first save always writes)
        if state_file is not None:
            for key, port in self._load(state_file).items():
                self._remember(key, port)

    def _remember(self, key: str, port: int) -> None:
        old = self._remembered.get(key)
        if old is not None and self._remembered_owner.get(old) == key:
            del self._remembered_owner[old]
        previous_owner = self._remembered_owner.get(port)
        if previous_owner is not None and previous_owner != key:
            del self._remembered[previous_owner]  # that key's port went to someone else
            self._dirty = True
        if self._remembered.get(key) != port:
            self._dirty = True
        self._remembered[key] = port
        self._remembered_owner[port] = key

    def _load(self, path: Path) -> dict[str, int]:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable proxy port state %s: %s", path, exc)
            return {}
        ports = data.get("ports") if isinstance(data, dict) else None
        if not isinstance(ports, dict):
            log.warning("ignoring proxy port state %s: no 'ports' mapping", path)
            return {}
        result = {}
        for key, port in ports.items():
            if isinstance(key, str) and isinstance(port, int) and 1 <= port <= 65535:
                if self.port_range.kernel_chosen or port in self.port_range:
                    result[key] = port
        return result

    @property
    def active(self) -> dict[str, int]:
        return dict(self._active)

    def allocate(self, key: str, try_bind: TryBind) -> int:
        """The port for ``key``, bound by ``try_bind``; raises PortExhaustedError.

        Costs O(1) set lookups per probed port (10,000 services are allocated in well under a
        second): a key starts probing at a hash of its name, so in a range that is far from
        full the first or second candidate is free."""
        if key in self._active:
            raise ValueError(f"{key} already has port {self._active[key]}")
        taken = self._taken
        previous = self._remembered.get(key)
        if previous is not None and previous not in taken:
            got = try_bind(previous)
            if got is not None:
                return self._commit(key, got)
        if self.port_range.kernel_chosen:
            for _ in range(16):  # bind(0) can still race with another family's socket
                got = try_bind(0)
                if got is not None:
                    return self._commit(key, got)
            raise PortExhaustedError(f"no kernel-chosen port could be bound for {key}")
        base, size = self.port_range.base, self.port_range.size
        start = zlib.crc32(key.encode()) % size
        owner = self._remembered_owner
        # First pass keeps ports other (currently absent) keys used before, so a service that
        # comes back gets its old port; second pass reclaims them when the range is full.
        for avoid_remembered in (True, False):
            for i in range(size):
                port = base + (start + i) % size
                if port in taken:
                    continue
                if avoid_remembered and owner.get(port, key) != key:
                    continue
                got = try_bind(port)
                if got is not None:
                    return self._commit(key, got)
        raise PortExhaustedError(
            f"no free port in proxy port range {self.port_range} for {key} "
            f"({len(taken)} in use)"
        )

    def _commit(self, key: str, port: int) -> int:
        self._active[key] = port
        self._taken.add(port)
        self._remember(key, port)
        return port

    def release(self, key: str) -> None:
        """The key's listener is gone; its port stays remembered (preferred if it returns)."""
        port = self._active.pop(key, None)
        if port is not None:
            self._taken.discard(port)

    def save(self) -> None:
        """Write the state atomically (write + rename) so a crash never leaves half a file."""
        if self.state_file is None or not self._dirty:
            return  # with 10,000 services an unchanged file is 400 KB not worth rewriting
        # Remembered entries are bounded by the range size (each holds a distinct port, except
        # in kernel-chosen mode where we keep at most 65535 of them).
        data = {
            "version": STATE_VERSION,
            "range": str(self.port_range),
            "ports": dict(sorted(self._remembered.items())[:65535]),
        }
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.state_file)
        self._dirty = False


# -- ip_local_reserved_ports ------------------------------------------------------------------


def parse_port_list(text: str) -> list[tuple[int, int]]:
    """``"1000,61000-64999"`` -> ``[(1000, 1000), (61000, 64999)]`` (the kernel's format)."""
    ranges = []
    for part in text.replace("\n", "").split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        ranges.append((int(low), int(high or low)))
    return ranges


def merge_port_list(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def format_port_list(ranges: list[tuple[int, int]]) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def reserve_ports(port_range: PortRange, path: Path = RESERVED_PORTS_PATH) -> bool:
    """Add the range to the reserved ports (merged with what is there). True if written."""
    if port_range.kernel_chosen:
        return False
    current = parse_port_list(path.read_text())
    wanted = merge_port_list(current + [(port_range.base, port_range.last)])
    if wanted == merge_port_list(current):
        return False
    path.write_text(format_port_list(wanted) + "\n")
    return True

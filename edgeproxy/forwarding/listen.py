"""edgeproxy's own interface and the routes an offline node needs (a thin shell around `ip`).

* `ensure_interface` creates the dummy interface ``edgeproxy0`` holding the listen addresses
  (169.254.96.17/32 and fd65:6467:6570::1/128 ``nodad``) and the DNS server's
  (169.254.96.53/32 and fd65:6467:6570::53/128 by default, ``ListenAddresses.dns``),
  idempotently, and marks it ours
  (``ip link set edgeproxy0 alias edgeproxy``). Both nat paths DNAT to these addresses, so
  listeners bind only there and are no second way into the node. An interface of that name
  found at start is adopted when it carries our mark or is a dummy/bridge holding nothing but
  our addresses (what a killed run of ours leaves; the instance lock says no other edgeproxy
  runs); anything else is used but never removed.
* `data_path_problems` is the live check behind /healthz and the periodic repair: interface
  present and up, listen addresses local. System calls only (``if_nametoindex``, an ioctl, a
  ``bind``), no process, so it can run on every health request.
* `RouteKeeper.sync` covers captured VIPs on a node with no route to them: a host process's
  packet is routed *before* nat OUTPUT runs, so without any route ``connect()`` to a VIP fails
  with ENETUNREACH and never reaches the DNAT rule. A host route ``VIP dev edgeproxy0`` is added
  only when ``ip route get VIP`` fails, with ``ip route add`` (never ``replace``: an existing
  route is never overridden), and removed when the VIP is no longer captured. All lookups and
  changes of one sync run in a single `ip -batch` process.

`ip` runs through a cooperative `edgeproxy.tools.LocalRunner` (the forwarder always runs under
the gevent hub); tests pass a recording `Runner` instead.
"""

from __future__ import annotations

import _socket
import errno
import fcntl
import functools
import ipaddress
import json
import logging
import re
import struct
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from edgeproxy.model import ListenAddresses
from edgeproxy.tools import LocalRunner, Result, Runner

log = logging.getLogger(__name__)

IP = LocalRunner(cooperative=True, timeout=10)  # one `ip` command
IP_BATCH = LocalRunner(cooperative=True, timeout=60)  # `ip -batch`: 10,000 lookups take ~60 ms


class InterfaceError(RuntimeError):
    pass


def _check(result: Result, what: str) -> None:
    if result.returncode != 0:
        raise InterfaceError(f"{what} failed: {result.stderr.strip() or result.returncode}")


OWNER_ALIAS = "edgeproxy"  # `ip link set NAME alias edgeproxy`: created or adopted by us
ADOPTABLE_KINDS = ("dummy", "bridge")


@dataclass(frozen=True)
class InterfaceInfo:
    kind: str | None
    alias: str | None
    addresses: frozenset[str]  # "ip/prefixlen", link-local IPv6 left out


def interface_info(name: str, run: Runner = IP) -> InterfaceInfo | None:
    """What `ip -d -j addr show dev NAME` says, or None when there is no such interface."""
    result = run(["ip", "-d", "-j", "addr", "show", "dev", name])
    if result.returncode != 0:
        return None
    try:
        entry = json.loads(result.stdout or "[]")[0]
    except (ValueError, IndexError, TypeError):
        return InterfaceInfo(None, None, frozenset())
    addresses = frozenset(f"{a.get('local')}/{a.get('prefixlen')}" for a in entry.get("addr_info", ())
                          if not str(a.get("local", "")).startswith("fe80:"))
    return InterfaceInfo((entry.get("linkinfo") or {}).get("info_kind"), entry.get("ifalias"),
                         addresses)


def _host_prefixes(listen: ListenAddresses) -> set[str]:
    wanted = {f"{listen.ipv4}/32"} | ({f"{listen.ipv6}/128"} if listen.ipv6 else set())
    return wanted | {_host_prefix(a) for a in listen.dns}


def _ours(info: InterfaceInfo, listen: ListenAddresses) -> bool:
    wanted = _host_prefixes(listen)
    return info.alias == OWNER_ALIAS or (info.kind in ADOPTABLE_KINDS and info.addresses <= wanted)


@dataclass(frozen=True)
class InterfaceSetup:
    ipv6: bool  # the IPv6 listen address could be configured
    owned: bool  # created or adopted: removed again on exit


def ensure_interface(listen: ListenAddresses, run: Runner = IP) -> InterfaceSetup:
    """Create or adopt the listen interface and put the listen addresses on it."""
    name = listen.interface
    info = interface_info(name, run)
    if info is None:
        result = run(["ip", "link", "add", name, "type", "dummy"])
        if result.returncode != 0:
            # Kernels built without the dummy driver (some minimal VM/edge kernels): an empty
            # bridge holds addresses and routes the same way and forwards nothing by itself.
            log.warning("cannot create dummy interface %s (%s); using an empty bridge instead",
                        name, result.stderr.strip())
            _check(run(["ip", "link", "add", name, "type", "bridge"]),
                   f"ip link add {name} type dummy|bridge")
        owned = True
    else:
        owned = _ours(info, listen)
        if not owned:
            log.warning("interface %s exists and is not edgeproxy's (%s, addresses %s): using "
                        "it for the listen addresses, never removing it", name,
                        info.kind or "unknown kind", ", ".join(sorted(info.addresses)) or "none")
    if owned:
        run(["ip", "link", "set", name, "alias", OWNER_ALIAS])
    _check(run(["ip", "link", "set", name, "up"]), f"ip link set {name} up")
    _check(run(["ip", "addr", "replace", f"{listen.ipv4}/32", "dev", name]),
           f"ip addr replace {listen.ipv4}/32 dev {name}")
    ipv6 = False
    if listen.ipv6:
        result = run(["ip", "-6", "addr", "replace", f"{listen.ipv6}/128", "dev", name,
                      "nodad"])
        ipv6 = result.returncode == 0
        if not ipv6:
            log.warning("IPv6 listen address %s not configured (%s); IPv6 services are not "
                        "proxied", listen.ipv6, result.stderr.strip())
    for address in listen.dns:
        v6 = ":" in address
        result = run(["ip", *(["-6"] if v6 else []), "addr", "replace", _host_prefix(address),
                      "dev", name, *(["nodad"] if v6 else [])])
        if result.returncode != 0:
            log.warning("DNS address %s not configured on %s (%s)", address, name,
                        result.stderr.strip())
    return InterfaceSetup(ipv6, owned)


def remove_interface(listen: ListenAddresses, run: Runner = IP) -> bool:
    """Delete the interface if it is still ours (it may have been replaced meanwhile)."""
    info = interface_info(listen.interface, run)
    if info is None or info.alias != OWNER_ALIAS:
        return False
    run(["ip", "link", "del", listen.interface])
    return True


_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1


def data_path_problems(listen: ListenAddresses, ipv6: bool) -> list[str]:
    """Why captured traffic cannot reach our listeners right now ([] when it can)."""
    name = listen.interface
    try:
        _socket.if_nametoindex(name)
    except OSError:
        return [f"listen interface {name} is missing"]
    problems = []
    probe = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        request = struct.pack("16sH14x", name.encode()[:15], 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(probe.fileno(), _SIOCGIFFLAGS, request))[1]
        if not flags & _IFF_UP:
            problems.append(f"listen interface {name} is down")
    except OSError:
        pass
    finally:
        probe.close()
    wanted = [(_socket.AF_INET, listen.ipv4)] + ([(_socket.AF_INET6, listen.ipv6)]
                                                 if ipv6 and listen.ipv6 else [])
    wanted += [(_socket.AF_INET6 if ":" in a else _socket.AF_INET, a) for a in listen.dns
               if ipv6 or ":" not in a]
    for family, address in wanted:
        sock = _socket.socket(family, _socket.SOCK_DGRAM)
        try:
            sock.bind((address, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                problems.append(f"listen address {address} is not on the node")
        finally:
            sock.close()
    return problems


def _host_prefix(vip: str) -> str:
    return f"{vip}/128" if ipaddress.ip_address(vip).version == 6 else f"{vip}/32"


BatchRunner = Callable[[Sequence[Sequence[str]]], list[str | None]]

# `ip -batch` reports a failed line as "Command failed -:N" (1-based) after its error message.
_FAILED_LINE = re.compile(r"^Command failed -:(\d+)\s*$")


def run_ip_batch(commands: Sequence[Sequence[str]], run: Runner = IP_BATCH) -> list[str | None]:
    """Run many `ip` commands in one process (``ip -force -batch -``): 10,000 route lookups
    take ~60 ms this way instead of ~20 s as separate processes. Returns, per command, None
    on success or its error message. Batch lines cannot carry ``-6``: ip infers the family
    from the address."""
    if not commands:
        return []
    text = "".join(" ".join(argv) + "\n" for argv in commands)
    result = run(["ip", "-force", "-batch", "-"], input=text)
    outcome: list[str | None] = [None] * len(commands)
    message: list[str] = []
    for line in result.stderr.splitlines():
        failed = _FAILED_LINE.match(line)
        if failed is None:
            message.append(line.strip())
            continue
        index = int(failed.group(1)) - 1
        if 0 <= index < len(outcome):
            outcome[index] = "; ".join(m for m in message if m) or "failed"
        message = []
    if result.returncode != 0 and all(o is None for o in outcome):
        # ip itself failed (not a single line): treat every command as failed.
        error = result.stderr.strip() or f"ip -batch exited {result.returncode}"
        outcome = [error] * len(commands)
    return outcome


class RouteKeeper:
    """Adds and removes host routes for captured VIPs on edgeproxy's interface.

    Cheap enough to call on every sync with 10,000 VIPs: a VIP is looked up only when it is
    new, and all lookups and changes of one sync go through one `ip -batch` process. Every
    ``recheck_interval`` seconds the node's routing is looked at again as a whole: VIPs
    routable before are looked up again (the default route may have gone), and routes we
    added but someone removed are added again.
    """

    def __init__(self, listen: ListenAddresses, run: Runner = IP,
                 run_batch: BatchRunner | None = None, recheck_interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.listen = listen
        self.run = run
        self.run_batch = run_batch or functools.partial(run_ip_batch, run=IP_BATCH)
        self.recheck_interval = recheck_interval
        self.clock = clock
        self.added: set[str] = set()
        self.routable: set[str] = set()  # looked up and routed by the node itself
        self._last_recheck = float("-inf")  # the first sync looks at everything

    def _routes_on_interface(self) -> set[str] | None:
        """The host routes on our interface (None when they cannot be listed)."""
        found: set[str] = set()
        for family in ("-4", "-6"):
            result = self.run(["ip", family, "-o", "route", "show", "dev", self.listen.interface])
            if result.returncode != 0:
                return None
            for line in result.stdout.splitlines():
                dest = line.split(" ", 1)[0]
                if "/" in dest or " proto kernel" in line:
                    continue  # not a host route we add (e.g. the kernel's own for our address)
                try:
                    found.add(str(ipaddress.ip_address(dest)))
                except ValueError:
                    continue
        return found

    def _recheck(self) -> None:
        self.routable.clear()  # look every VIP up again
        present = self._routes_on_interface()
        if present is not None:
            for vip in self.added - present:
                log.warning("route %s dev %s disappeared; checking again", _host_prefix(vip),
                            self.listen.interface)
            # Host routes on our own interface are ours, also those of a run that was killed
            # before it could remove them: adopt them so they are removed when not wanted.
            self.added = present

    def sync(self, vips: Iterable[str]) -> set[str]:
        """Make routes match ``vips``; returns the VIPs that have a route added by us."""
        # IPv6 text has many spellings and `ip route` prints the compressed one; validated
        # IPv4 text has one, and parsing 10,000 of them on every sync cost 70 ms.
        wanted = {v if ":" not in v else str(ipaddress.ip_address(v)) for v in vips}
        now = self.clock()
        if now - self._last_recheck >= self.recheck_interval:
            self._last_recheck = now
            self._recheck()
        self.routable &= wanted
        stale = sorted(self.added - wanted)
        self.added -= set(stale)
        unknown = sorted(wanted - self.added - self.routable)
        # Removals and lookups share one batch; the adds need the lookups' answers.
        commands = [["route", "del", _host_prefix(v), "dev", self.listen.interface]
                    for v in stale] + [["route", "get", vip] for vip in unknown]
        outcome = self.run_batch(commands)[len(stale):] if commands else []
        unroutable = [vip for vip, error in zip(unknown, outcome) if error is not None]
        self.routable |= {vip for vip, error in zip(unknown, outcome) if error is None}
        adds = [["route", "add", _host_prefix(v), "dev", self.listen.interface]
                for v in unroutable]
        for vip, error in zip(unroutable, self.run_batch(adds) if adds else []):
            if error is None:
                self.added.add(vip)
            else:
                log.warning("cannot add route for %s: %s", vip, error)
        if unroutable:
            log.info("no route to %d VIP(s): added host routes dev %s (first: %s)",
                     len(unroutable), self.listen.interface, unroutable[0])
        return set(self.added)

    def clear(self) -> None:
        self.sync(())

    def recheck_soon(self) -> None:
        """Look at the node's routing as a whole at the next sync (the interface and with it
        every route on it may have been deleted)."""
        self._last_recheck = float("-inf")

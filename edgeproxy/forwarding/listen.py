"""edgeproxy's own interface and the routes an offline node needs (a thin shell around `ip`).

* `ensure_interface` creates the dummy interface ``edgeproxy0`` holding the listen addresses
  (169.254.96.17/32 and fd65:6467:6570::1/128 ``nodad``), idempotently. Both nat paths DNAT to
  these addresses, so listeners bind only there and are no second way into the node.
* `RouteKeeper.sync` covers captured VIPs on a node with no route to them: a host process's
  packet is routed *before* nat OUTPUT runs, so without any route ``connect()`` to a VIP fails
  with ENETUNREACH and never reaches the DNAT rule. A host route ``VIP dev edgeproxy0`` is added
  only when ``ip route get VIP`` fails, with ``ip route add`` (never ``replace``: an existing
  route is never overridden), and removed when the VIP is no longer captured.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
from typing import Callable, Iterable, Sequence

from edgeproxy.model import ListenAddresses

log = logging.getLogger(__name__)

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run_ip(argv: Sequence[str]) -> "subprocess.CompletedProcess[str]":
    """Run `ip`; under gevent this must not block the hub, so use gevent's subprocess."""
    try:
        from gevent import subprocess as gsubprocess
        return gsubprocess.run(["ip", *argv], capture_output=True, text=True, timeout=10)
    except ImportError:  # pragma: no cover - gevent is a dependency
        return subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=10)


class InterfaceError(RuntimeError):
    pass


def _check(result: "subprocess.CompletedProcess[str]", what: str) -> None:
    if result.returncode != 0:
        raise InterfaceError(f"{what} failed: {result.stderr.strip() or result.returncode}")


def ensure_interface(listen: ListenAddresses, run: Runner = run_ip) -> bool:
    """Create/refresh the dummy interface; returns whether IPv6 could be configured."""
    name = listen.interface
    if run(["link", "show", "dev", name]).returncode != 0:
        result = run(["link", "add", name, "type", "dummy"])
        if result.returncode != 0:
            # Kernels built without the dummy driver (some minimal VM/edge kernels): an empty
            # bridge holds addresses and routes the same way and forwards nothing by itself.
            log.warning("cannot create dummy interface %s (%s); using an empty bridge instead",
                        name, result.stderr.strip())
            _check(run(["link", "add", name, "type", "bridge"]),
                   f"ip link add {name} type dummy|bridge")
    _check(run(["link", "set", name, "up"]), f"ip link set {name} up")
    _check(run(["addr", "replace", f"{listen.ipv4}/32", "dev", name]),
           f"ip addr replace {listen.ipv4}/32 dev {name}")
    if not listen.ipv6:
        return False
    result = run(["-6", "addr", "replace", f"{listen.ipv6}/128", "dev", name, "nodad"])
    if result.returncode != 0:
        log.warning("IPv6 listen address %s not configured (%s); IPv6 services are not proxied",
                    listen.ipv6, result.stderr.strip())
        return False
    return True


def remove_interface(listen: ListenAddresses, run: Runner = run_ip) -> None:
    if run(["link", "show", "dev", listen.interface]).returncode == 0:
        run(["link", "del", listen.interface])


def _host_prefix(vip: str) -> str:
    return f"{vip}/128" if ipaddress.ip_address(vip).version == 6 else f"{vip}/32"


class RouteKeeper:
    """Adds and removes host routes for captured VIPs on edgeproxy's interface."""

    def __init__(self, listen: ListenAddresses, run: Runner = run_ip) -> None:
        self.listen = listen
        self.run = run
        self.added: set[str] = set()

    def sync(self, vips: Iterable[str]) -> set[str]:
        """Make routes match ``vips``; returns the VIPs that have a route added by us."""
        wanted = {str(ipaddress.ip_address(v)) for v in vips}
        for vip in sorted(self.added - wanted):
            self.run(["route", "del", _host_prefix(vip), "dev", self.listen.interface])
            self.added.discard(vip)
        for vip in sorted(wanted - self.added):
            if self.run(["route", "get", vip]).returncode == 0:
                continue  # the node already routes it (default route or more specific)
            result = self.run(["route", "add", _host_prefix(vip), "dev", self.listen.interface])
            if result.returncode == 0:
                self.added.add(vip)
                log.info("no route to %s: added %s dev %s", vip, _host_prefix(vip),
                         self.listen.interface)
            else:
                log.warning("cannot add route for %s: %s", vip, result.stderr.strip())
        return set(self.added)

    def clear(self) -> None:
        self.sync(())

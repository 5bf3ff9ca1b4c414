"""What the TCP and the UDP forwarder of one service port share: the name, the balancer and
its health tracker (one per port, the second listener's balancer reads it too), the
process-wide descriptor budget, the counters and the listeners. tcp.py and udp.py build on
`PortService`; what each does with a readable listener is theirs."""

from __future__ import annotations

import _socket
from typing import Callable

import gevent

from edgeproxy.forwarding.balancer import Balancer
from edgeproxy.forwarding.budget import SocketBudget
from edgeproxy.forwarding.listeners import Listeners
from edgeproxy.forwarding.stats import ServiceStats


class PortService:
    def __init__(self, name: str, balancer: Balancer, stats: ServiceStats,
                 budget: SocketBudget | None,
                 on_readable: Callable[[_socket.socket], None]) -> None:
        self.name = name
        # Every client, upstream and session socket counts against the one budget of the
        # process (budget.py), unbounded for a service built alone (tests).
        self.budget = budget or SocketBudget(1 << 30)
        self.balancer = balancer
        # What every dial, ICMP error and probe reports to: the balancer's tracker.
        self.health = balancer.health
        self.second_balancer: Balancer | None = None  # for the second listener's sockets
        self.stats = stats
        self.loop = gevent.get_hub().loop
        self.listeners = Listeners(self.loop, on_readable)

"""Delete UDP conntrack entries whose original destination edgeproxy now captures.

NAT is decided on a flow's first packet: a UDP client (a resolver's DNS socket above all) that
talked to VIP:53 before capture started keeps being NATed to its old destination (kube-proxy's
endpoint, or a proxy port that no longer exists) until the entry expires. Deleting the entry
makes the next datagram a new flow that meets our rules. Uses the ``conntrack`` tool
(conntrack-tools), which exits 1 with "0 flow entries have been deleted" when nothing matched:
that is not an error.
"""

from __future__ import annotations

import logging
import re
from typing import Iterable

from edgeproxy.tools import LocalRunner, Runner

log = logging.getLogger(__name__)

_DELETED = re.compile(r"(\d+) flow entries have been deleted")
MAX_TARGETS = 100_000  # bound one flush; a larger state is flushed in the next call


def flush_udp_flows(targets: Iterable[tuple[str | None, int]],
                    runner: Runner | None = None) -> int:
    """Delete UDP entries to each (ip, port); ip None means any address (NodePorts).

    Returns the number of entries deleted; failures are logged, never raised, because a
    missing conntrack tool must not stop the rules from being applied."""
    run = runner or LocalRunner()
    deleted = 0
    for n, (ip, port) in enumerate(dict.fromkeys(targets)):
        if n >= MAX_TARGETS:
            log.warning("conntrack flush capped at %d targets", MAX_TARGETS)
            break
        argv = ["conntrack", "-D", "-p", "udp"]
        if ip is not None:
            if ":" in ip:
                argv += ["-f", "ipv6"]
            argv += ["--orig-dst", ip]
        argv += ["--orig-port-dst", str(port)]
        res = run(argv)
        match = _DELETED.search(res.stderr + res.stdout)
        if match:
            deleted += int(match.group(1))
        elif res.returncode == 127:
            log.warning("conntrack is not installed: existing UDP flows to %s:%s keep their "
                        "old destination until they expire", ip or "*", port)
            break
        elif res.returncode != 0:
            log.warning("%s failed (%d): %s", " ".join(argv), res.returncode, res.stderr.strip())
    if deleted:
        log.info("deleted %d UDP conntrack entries of newly captured destinations", deleted)
    return deleted

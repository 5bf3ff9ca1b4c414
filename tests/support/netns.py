"""Private network namespaces for tests: the demo's `edgeproxy.demo.netns`, under test names.

Tests and benchmarks never touch the host's own namespace; they create ``ip netns add
ep-<random>`` namespaces through `NetNS` (loopback up, deleted afterwards) and connect them with
`veth_pair`. Addresses used by tests come from 198.18.0.0/15 (RFC 2544 benchmarking range).
The implementation lives in the package because `edgeproxy demo` needs it too.
"""

from edgeproxy.demo.netns import NetNS, veth_pair
from edgeproxy.demo.netns import netns_unavailable_reason as netns_available

__all__ = ["NetNS", "netns_available", "veth_pair"]

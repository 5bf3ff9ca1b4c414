"""The data path: listeners on proxy ports, TCP and UDP relays, and endpoint selection.

`server.ProxyServer` is the entry point (see TEAM.md for its contract); `balancer` is the pure
load-balancing core; `tcp`, `splice` and `udp` move bytes; `ports` allocates and reserves proxy
ports; `listen` manages the edgeproxy0 interface and offline-node routes.
"""

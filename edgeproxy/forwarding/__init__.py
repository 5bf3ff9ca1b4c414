"""The data path: listeners on proxy ports, TCP and UDP relays, and endpoint selection.

`server.ProxyServer` is the entry point (its docstring says what it promises); `balancer` is the pure
load-balancing core; `tcp`, `splice` and `udp` move bytes; `ports` allocates and reserves proxy
ports; `listen` manages the edgeproxy0 interface and offline-node routes.
"""

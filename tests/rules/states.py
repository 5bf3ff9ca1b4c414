"""Hand-built desired states for the rules tests (the examples of config/examples plus the
address kinds they lack: dual stack, NodePort, externalIPs, load-balancer ingress)."""

from __future__ import annotations

from edgeproxy.model import Endpoint, ListenAddresses, Protocol, ServicePort, ServicePortKey

LISTEN = ListenAddresses()

WEB = ServicePortKey("default", "web", "", Protocol.TCP)
ECHO = ServicePortKey("default", "echo", "", Protocol.TCP)
DNS_UDP = ServicePortKey("kube-system", "edge-dns", "dns", Protocol.UDP)
DNS_TCP = ServicePortKey("kube-system", "edge-dns", "dns-tcp", Protocol.TCP)
GW = ServicePortKey("ingress", "gateway", "https", Protocol.TCP)
SCTP = ServicePortKey("default", "sig", "", Protocol.SCTP)


def example_ports() -> dict[ServicePortKey, ServicePort]:
    return {
        WEB: ServicePort(WEB, 80, ("198.19.0.10",), endpoints=(Endpoint("198.18.1.11", 8080),)),
        ECHO: ServicePort(ECHO, 7, ("198.19.0.20",), session_affinity=True),
        DNS_UDP: ServicePort(DNS_UDP, 53, ("198.19.0.53",)),
        DNS_TCP: ServicePort(DNS_TCP, 53, ("198.19.0.53",)),
    }


def full_ports() -> dict[ServicePortKey, ServicePort]:
    ports = example_ports()
    ports[GW] = ServicePort(GW, 443, ("198.19.0.40", "fd00:198:19::40"), node_port=30443,
                            external_ips=("198.18.0.1", "198.18.9.9"),
                            load_balancer_ips=("198.18.200.1",))
    ports[SCTP] = ServicePort(SCTP, 3868, ("198.19.0.50",))
    return ports


def proxy_ports_for(ports) -> dict[ServicePortKey, int]:
    """Deterministic ports, 61000 upwards in key order (SCTP keys get none)."""
    keys = [k for k in sorted(ports) if k.protocol is not Protocol.SCTP]
    return {k: 61000 + i for i, k in enumerate(keys)}

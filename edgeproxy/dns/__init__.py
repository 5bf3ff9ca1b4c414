"""edgeproxy's cluster DNS: the names of the mirrored Services, answered on the node, offline.

    objects (after cluster-IP allocation) ──► records.build_zone ──► Zone (pure, per sync)
                                                                       │
    query ──► server (UDP/TCP sockets, gevent) ──► wire (template fast path) ──► answer
                        │                                                    (pure decision)
                        └── not ours ──► cache (TTL, serve-stale) ──► upstream (forwarder)

* `records`: Services + EndpointSlices/Endpoints -> the zone's names and records (pure);
* `answer`: one question against a `Zone` -> rcode and sections, or "forward" (pure);
* `wire`: the question key of a raw query and answer templates patched per query (pure);
* `cache`: forwarded answers kept for their TTL, stale ones kept for serve-stale (pure state);
* `upstream`: /etc/resolv.conf and the forwarder (timeouts, retries, TCP on truncation);
* `server`: the sockets, the greenlets, the counters (the thin shell).

docs/dns.md says what is answered and why.
"""

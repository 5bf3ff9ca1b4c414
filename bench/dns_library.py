#!/usr/bin/env python3
"""The DNS wire-format library, measured on the DNS server's hot path (docs/dns.md).

For each candidate (dnslib, dnspython) and in the same run, interleaved, best of ``--repeat``
(the machine is shared; the best run is the least disturbed):

  parse   the query a client sends (``web.default.svc.cluster.local. A``, with an EDNS0 OPT
          record of 1232 bytes, as dig sends it) from wire format;
  answer  parse it, build the authoritative answer (one A record, TTL 5) and encode it;
  relay   parse an upstream answer of 8 A records (what the forwarder reads for its TTLs)
          and encode it again.

    .venv/bin/python bench/dns_library.py [--count 20000] [--repeat 5]

Both come with the dev lock (dnspython is the tests' second resolver). The server does not
pay this on most queries: answers are kept as wire templates (edgeproxy/dns/wire.py), so the
library runs once per name and record-set generation (or once per second for a cached
forwarded name) and for queries the template path does not take.
"""

from __future__ import annotations

import argparse
import time

import dnslib
import dns.flags
import dns.message
import dns.rrset
import dns.version

NAME = "web.default.svc.cluster.local."


def _query_wire() -> bytes:
    return dns.message.make_query(NAME, "A", use_edns=0, payload=1232).to_wire()


def _upstream_wire() -> bytes:
    q = dns.message.make_query("example.org.", "A")
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("example.org.", 300, "IN", "A",
                                        *[f"192.0.2.{i}" for i in range(1, 9)]))
    return r.to_wire()


def candidates(query: bytes, upstream: bytes) -> dict[str, dict]:
    def dnslib_parse():
        dnslib.DNSRecord.parse(query)

    def dnslib_answer():
        q = dnslib.DNSRecord.parse(query)
        a = q.reply()
        a.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.A, rdata=dnslib.A("198.19.0.10"), ttl=5))
        a.add_ar(dnslib.EDNS0(udp_len=1232))
        return a.pack()

    def dnslib_relay():
        return dnslib.DNSRecord.parse(upstream).pack()

    def dnspython_parse():
        dns.message.from_wire(query)

    def dnspython_answer():
        q = dns.message.from_wire(query)
        a = dns.message.make_response(q)  # keeps EDNS like the dnslib variant adds it
        a.flags |= dns.flags.AA
        a.answer.append(dns.rrset.from_text(q.question[0].name, 5, "IN", "A", "198.19.0.10"))
        return a.to_wire()

    def dnspython_relay():
        return dns.message.from_wire(upstream).to_wire()

    return {"dnslib": {"parse": dnslib_parse, "answer": dnslib_answer, "relay": dnslib_relay},
            "dnspython": {"parse": dnspython_parse, "answer": dnspython_answer,
                          "relay": dnspython_relay}}


def _time(fn, count: int) -> float:
    for _ in range(200):
        fn()
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - start) / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    libs = candidates(_query_wire(), _upstream_wire())
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeat):
        for lib, paths in libs.items():
            for what, fn in paths.items():
                took = _time(fn, args.count)
                best[(lib, what)] = min(best.get((lib, what), took), took)
    print(f"dnslib {dnslib.version}, dnspython {dns.version.version}; "
          f"µs per operation, best of {args.repeat} x {args.count}")
    print(f"{'operation':10} {'dnslib':>10} {'dnspython':>10} {'ratio':>8}")
    for what in ("parse", "answer", "relay"):
        a, b = best[("dnslib", what)], best[("dnspython", what)]
        print(f"{what:10} {a:10.1f} {b:10.1f} {b / a:7.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

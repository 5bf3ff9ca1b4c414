#!/usr/bin/env python3
"""DNS benchmark (issue 14): dnsperf against edgeproxy's DNS and against dnsmasq, same run.

The demo's edge node in namespaces (edgeproxy.demo.topology): the real `edgeproxy run` serves
``--services`` Services (explicit cluster IPs, 100 per file) and forwards other names to the
topology's upstream (dnsmasq on 198.18.1.21:5353); a second dnsmasq in the node namespace
serves the same cluster names from a hosts file and forwards to the same upstream. dnsperf
runs in the pod namespace. Measured, interleaved edgeproxy/dnsmasq, best of ``--repeat``:

  cluster   queries/s and latency over cluster names (1000 distinct, answered from the
            manifests / the hosts file: no cache involved);
  forwarded the same for one outside name (cached after the first query, TTL 60 s);
  p99       of each, from ``dnsperf -v`` (every response's latency);
  reload    dnsperf at ``--reload-rate`` queries/s against edgeproxy while every manifest file
            (all ``--services`` Services) is rewritten: queries lost (timeouts) must be 0.

Targets: edgeproxy >= 0.5x dnsmasq queries/s on cluster names; no query lost during the
reload. Exit 1 when one is missed. The machine is shared (2 cores): compare the two servers
within one run, not across runs.

    sudo .venv/bin/python bench/dns.py [--services 10000] [--seconds 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeproxy.demo.daemon import Daemon, make_workdir  # noqa: E402
from edgeproxy.demo.topology import (DNS_BACKEND, DNS_PORT, NODE_POD_SIDE,  # noqa: E402
                                     UPSTREAM_RECORD, Topology, start_dnsmasq)

EDGEPROXY_DNS = "169.254.96.53"
DNSMASQ = NODE_POD_SIDE  # the comparison dnsmasq listens on the node's pod-side address


def vip(i: int) -> str:
    return f"198.19.{100 + i // 250}.{i % 250 + 1}"


def write_manifests(root: Path, services: int, generation: int = 0) -> None:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    for start in range(0, services, 100):
        docs = []
        for i in range(start, min(start + 100, services)):
            docs.append(f"""apiVersion: v1
kind: Service
metadata:
  name: svc-{i}
  namespace: default
  annotations: {{generation: "{generation}"}}
spec:
  clusterIP: {vip(i)}
  ports: [{{name: http, port: 80}}]
""")
        path = root / f"services-{start // 100:04d}.yaml"
        tmp = root / f".{path.name}.tmp"
        tmp.write_text("---\n".join(docs))
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)


def dnsperf(topo: Topology, server: str, queries: Path, seconds: float,
            rate: int | None = None, verbose: bool = True) -> dict:
    argv = ["dnsperf", "-s", server, "-d", str(queries), "-l", str(seconds), "-c", "4",
            "-q", "200", "-t", "2"]
    if rate:
        argv += ["-Q", str(rate)]
    if verbose:
        argv.append("-v")
    out = topo.pod.run(argv, check=False, timeout=seconds + 30).stdout
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    completed = re.search(r"Queries completed:\s+(\d+)", out)
    latencies = sorted(float(m) for m in re.findall(r"^> \S+ .* ([\d.]+)$", out, re.M))
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else None
    avg = re.search(r"Average Latency \(s\):\s+([\d.]+)", out)
    return {"qps": float(qps.group(1)) if qps else 0.0, "lost": int(lost.group(1)) if lost else -1,
            "completed": int(completed.group(1)) if completed else 0,
            "p99_ms": p99, "avg_ms": float(avg.group(1)) * 1000 if avg else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reload-rate", type=int, default=2000)
    args = parser.parse_args()
    for tool in ("dnsperf", "dnsmasq"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: run ./scripts/bootstrap", file=sys.stderr)
            return 2
    work = make_workdir("edgeproxy-bench-dns-")
    names = min(1000, args.services)
    cluster_q = work / "cluster.txt"
    cluster_q.write_text("".join(f"svc-{i}.default.svc.cluster.local A\n"
                                 for i in range(0, args.services, max(1, args.services // names))))
    forward_q = work / "forwarded.txt"
    forward_q.write_text(f"{UPSTREAM_RECORD[0]} A\n")
    hosts = work / "hosts"
    hosts.write_text("".join(f"{vip(i)} svc-{i}.default.svc.cluster.local\n"
                             for i in range(args.services)))
    os.chmod(work, 0o755)
    for p in (cluster_q, forward_q, hosts):
        os.chmod(p, 0o644)
    manifests = work / "manifests"
    write_manifests(manifests, args.services)
    dnsmasq = None
    with Topology("epbdns") as topo:
        daemon = Daemon(topo.node, manifests, work / "daemon").start()
        try:
            took = daemon.wait_ready(timeout=600)
            print(f"edgeproxy ready with {args.services} services after {took:.1f} s")
            dnsmasq = start_dnsmasq(topo.node, DNSMASQ, 53,
                                    [f"--addn-hosts={hosts}", f"--server={DNS_BACKEND}#{DNS_PORT}",
                                     "--local-ttl=5", "--cache-size=10000"],
                                    log_facility="/dev/null")
            results: dict[tuple[str, str], dict] = {}
            for _ in range(args.repeat):
                for what, queries in (("cluster", cluster_q), ("forwarded", forward_q)):
                    for name, server in (("edgeproxy", EDGEPROXY_DNS), ("dnsmasq", DNSMASQ)):
                        r = dnsperf(topo, server, queries, args.seconds)
                        best = results.get((name, what))
                        if best is None or r["qps"] > best["qps"]:
                            results[(name, what)] = r
            # Reload: every file rewritten while queries flow.
            reload_result: dict = {}

            def load() -> None:
                reload_result.update(dnsperf(topo, EDGEPROXY_DNS, cluster_q, 20,
                                             rate=args.reload_rate, verbose=False))

            thread = threading.Thread(target=load)
            thread.start()
            time.sleep(3)
            started = time.monotonic()
            write_manifests(manifests, args.services, generation=1)
            rewrite = time.monotonic() - started
            thread.join()
        finally:
            if dnsmasq is not None:
                dnsmasq.terminate()
                dnsmasq.wait(5)
            daemon.stop()
    print(f"\n{args.services} services; dnsperf -c 4 -q 200, {args.seconds:g} s, best of "
          f"{args.repeat}; machine shared: compare within this run")
    print(f"{'names':10} {'server':10} {'queries/s':>10} {'avg ms':>8} {'p99 ms':>8} "
          f"{'lost':>6} {'ratio':>7}")
    ok = True
    for what in ("cluster", "forwarded"):
        base = results[("dnsmasq", what)]["qps"] or 1.0
        for name in ("edgeproxy", "dnsmasq"):
            r = results[(name, what)]
            p99 = f"{r['p99_ms']:.2f}" if r["p99_ms"] is not None else "n/a"
            avg = f"{r['avg_ms']:.2f}" if r["avg_ms"] is not None else "n/a"
            print(f"{what:10} {name:10} {r['qps']:10.0f} {avg:>8} {p99:>8} {r['lost']:>6} "
                  f"{r['qps'] / base:6.2f}x")
    ratio = results[("edgeproxy", "cluster")]["qps"] / (results[("dnsmasq", "cluster")]["qps"]
                                                          or 1.0)
    verdict = "PASS" if ratio >= 0.5 else "FAIL"
    ok &= ratio >= 0.5
    print(f"target edgeproxy >= 0.5x dnsmasq on cluster names: {ratio:.2f}x {verdict}")
    lost = reload_result.get("lost", -1)
    print(f"reload of {args.services} services (files rewritten in {rewrite * 1000:.0f} ms) under "
          f"{args.reload_rate} queries/s for 20 s: {reload_result.get('completed', 0)} answered, "
          f"{lost} lost {'PASS' if lost == 0 else 'FAIL'}")
    ok &= lost == 0
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Endpoint outage benchmark (issue 13): one of two endpoints stops answering while clients
keep opening connections; edgeproxy against haproxy with health checks and kernel DNAT.

Run (root; the benchmark creates and deletes its own network namespaces)::

    sudo .venv/bin/python bench/endpoint_outage.py [--rate 200] [--seconds 20]
                                                   [--outage-at 5] [--outage-for 10]
                                                   [--variants edgeproxy,haproxy,dnat]
                                                   [--json out.json] [--verbose]

Topology: the demo's edge node (``edgeproxy.demo.topology``, pod / node / backends
namespaces, addresses from 198.18.0.0/15, the host's own namespace untouched) without the
demo's servers. Two endpoints of one service, web-1 198.18.1.11:8080 and web-2
198.18.1.12:8080, each a tiny server that writes its name to every connection it accepts
(bench/_outage_helpers.py). The client runs in the pod namespace and opens ``--rate`` new
connections per second, open loop, through the variant's cluster IP, each timing connect ->
first byte (the endpoint's name) with a 3 s limit.

After ``--outage-at`` seconds web-2 becomes unreachable: an iptables DROP in the backends
namespace swallows its SYNs (a cloud pod behind a dead uplink: no RST, no ICMP). After
``--outage-for`` more seconds the rule goes and web-2 can answer again.

Variants, measured one after another on the same namespaces, each on its own cluster IP:

* ``edgeproxy`` the real ProxyServer and its nat rules (bench/_edgeproxy_node.py) with the
  default endpoint health settings: eject after 3 failed dials, probes every 1 s;
* ``haproxy``   tcp mode, ``balance roundrobin``, ``check inter 1s fall 3 rise 2``,
  ``timeout connect 250ms`` (kube-proxy's and edgeproxy's first attempt), ``retries 3`` with
  ``option redispatch 1`` (each retry on another server); the cluster IP is DNATed to it;
* ``dnat``      kube-proxy iptables mode: KUBE-SVC -> statistic random 1/2 -> KUBE-SEP ->
  DNAT; nothing notices the dead endpoint.

Printed per variant: failed connections and connect-to-first-byte p50/p99/max before, during
and after the outage, how many took over 100 ms, and how long after web-2 came back the first
connection was served by it. edgeproxy's targets (docs/benchmarks.md) are marked PASS/FAIL:
zero failed connections; p99 during the outage at most 2x its p99 before; web-2 back in
service within the probe interval + 1 s; fewer failed connections and a lower p99 during the
outage than haproxy. All figures come from one run on the same machine; the machine is shared
(2 cores here), so compare variants of the same run only.

Everything started here is stopped and every namespace deleted at exit, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from edgeproxy.demo import topology  # noqa: E402
from edgeproxy.demo.netns import netns_unavailable_reason  # noqa: E402
from forwarding import (BenchError, Procs, launch_edgeproxy_driver, launch_haproxy,  # noqa: E402
                        wait_line, wait_listening)

VARIANTS = ("edgeproxy", "haproxy", "dnat")
VIPS = {"edgeproxy": "198.19.0.41", "haproxy": "198.19.0.42", "dnat": "198.19.0.43"}
SERVICE_PORT = 80
BACKEND_PORT = 8080
HAPROXY_PORT = 10081
LIVE, DOOMED = topology.WEB_BACKENDS["web-1"], topology.WEB_BACKENDS["web-2"]
NAMES = {LIVE: "web-1", DOOMED: "web-2"}
CLIENT_TIMEOUT = 3.0
SLOW_MS = 100.0
PROBE_INTERVAL = 1.0  # edgeproxy's default --health-probe-interval
HELPER = str(REPO / "bench" / "_outage_helpers.py")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class OutageBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="ep-bench-outage-"))
        self.procs = Procs(self.tmp)
        self.topo: topology.Topology | None = None
        self.failed: dict[str, str] = {}
        self.edgeproxy_popen: subprocess.Popen | None = None

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    # -- setup ---------------------------------------------------------------------------------

    def setup(self) -> None:
        self.topo = topology.Topology("epbo", servers=False).start()
        self.pod, self.node, self.backend = self.topo.pod, self.topo.node, self.topo.backends
        self.node.run(["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=5"],
                      check=False)
        for variant in ("dnat", "haproxy"):  # an offline node: no default route (see topology)
            self.node.run(["ip", "route", "add", f"{VIPS[variant]}/32", "dev",
                           topology.NODE_BACKEND_IF])
        for ip, name in NAMES.items():
            popen = self.procs.start(f"backend {name}", self.backend,
                                     [sys.executable, HELPER, "backend", ip,
                                      str(BACKEND_PORT), name])
            wait_line(popen, f"backend {name}", 15)
        self.install_dnat()
        if "haproxy" in self.args.variants:
            self.start_haproxy()
        if "edgeproxy" in self.args.variants:
            self.start_edgeproxy()

    def install_dnat(self) -> None:
        svc, seps = "KUBE-SVC-BENCH-OUTAGE", ("KUBE-SEP-BENCH-WEB1", "KUBE-SEP-BENCH-WEB2")
        lines = ["*nat", ":KUBE-SERVICES - [0:0]", f":{svc} - [0:0]",
                 *[f":{sep} - [0:0]" for sep in seps],
                 f"-A KUBE-SERVICES -d {VIPS['dnat']}/32 -p tcp -m tcp --dport {SERVICE_PORT} "
                 f"-j {svc}",
                 f"-A {svc} -m statistic --mode random --probability 0.5 -j {seps[0]}",
                 f"-A {svc} -j {seps[1]}",
                 *[f"-A {sep} -p tcp -m tcp -j DNAT --to-destination {ip}:{BACKEND_PORT}"
                   for sep, ip in zip(seps, (LIVE, DOOMED))],
                 f"-A KUBE-SERVICES -d {VIPS['haproxy']}/32 -p tcp -m tcp --dport "
                 f"{SERVICE_PORT} -j DNAT --to-destination {topology.NODE_POD_SIDE}:"
                 f"{HAPROXY_PORT}",
                 "-A PREROUTING -j KUBE-SERVICES", "-A OUTPUT -j KUBE-SERVICES", "COMMIT"]
        text = "\n".join(lines) + "\n"
        result = self.node.run(["iptables-restore", "--noflush"], input=text, check=False)
        if result.returncode:
            raise BenchError(f"iptables-restore (dnat rules) failed: {result.stderr.strip()}")
        if self.args.verbose:
            print(f"# node nat rules of the dnat and haproxy variants\n{text}")

    def haproxy_config(self) -> str:
        servers = "\n".join(f"    server {name} {ip}:{BACKEND_PORT} check inter 1s fall 3 rise 2"
                            for ip, name in NAMES.items())
        return textwrap.dedent(f"""\
            global
                maxconn 5000
            defaults
                mode tcp
                timeout connect 250ms
                timeout client 10s
                timeout server 10s
                retries 3
                option redispatch 1
            listen web
                bind {topology.NODE_POD_SIDE}:{HAPROXY_PORT}
                balance roundrobin
            """) + servers + "\n"

    def start_haproxy(self) -> None:
        try:
            launch_haproxy(self.procs, self.node, self.tmp / "haproxy.cfg",
                           self.haproxy_config(), self.args.verbose)
            wait_listening(self.node, topology.NODE_POD_SIDE, HAPROXY_PORT, "haproxy")
        except BenchError as exc:
            self.failed["haproxy"] = str(exc)

    def start_edgeproxy(self) -> None:
        spec = {"state_dir": str(self.tmp / "edgeproxy-state"),
                "iptables_restore": "iptables-restore",
                "services": [{"name": "web", "protocol": "TCP", "vip": VIPS["edgeproxy"],
                              "port": SERVICE_PORT,
                              "endpoints": [[LIVE, BACKEND_PORT], [DOOMED, BACKEND_PORT]]}]}
        try:
            self.edgeproxy_popen, answer = launch_edgeproxy_driver(
                self.procs, self.node, spec, self.tmp / "edgeproxy-spec.json")
        except BenchError as exc:
            self.failed["edgeproxy"] = str(exc)
            return
        if not answer.get("ok"):
            self.failed["edgeproxy"] = answer.get("error", "driver failed")

    # -- one variant ---------------------------------------------------------------------------

    def outage(self, on: bool) -> None:
        self.backend.run(["iptables", "-I" if on else "-D", "INPUT", "-d", DOOMED, "-p", "tcp",
                          "--dport", str(BACKEND_PORT), "-j", "DROP"])

    def run_variant(self, variant: str) -> dict:
        a = self.args
        client = self.procs.start(f"client {variant}", self.pod,
                                  [sys.executable, HELPER, "client", VIPS[variant],
                                   str(SERVICE_PORT), str(a.rate), str(a.seconds),
                                   str(CLIENT_TIMEOUT)])
        t0 = float(wait_line(client, f"client {variant}", 20).split()[1])
        time.sleep(max(0.0, t0 + a.outage_at - time.monotonic()))
        self.outage(True)
        dropped = time.monotonic() - t0
        time.sleep(max(0.0, t0 + a.outage_at + a.outage_for - time.monotonic()))
        self.outage(False)
        restored = time.monotonic() - t0
        results = json.loads(wait_line(client, f"client {variant}",
                                       a.seconds + CLIENT_TIMEOUT + 30))
        Procs.stop(client)
        return self.analyse(variant, results, dropped, restored)

    def analyse(self, variant: str, results: list, dropped: float, restored: float) -> dict:
        phases = {"before": (0.0, dropped), "during": (dropped, restored),
                  "after": (restored, float("inf"))}
        out: dict = {"variant": variant, "phases": {}}
        for phase, (lo, hi) in phases.items():
            chosen = [r for r in results if lo <= r[0] < hi]
            ok = [r[1] * 1000 for r in chosen if r[1] is not None]
            out["phases"][phase] = {
                "connections": len(chosen), "failed": len(chosen) - len(ok),
                "p50_ms": percentile(ok, 50), "p99_ms": percentile(ok, 99),
                "max_ms": max(ok) if ok else None,
                "slow": sum(1 for v in ok if v > SLOW_MS),
                "errors": dict(sorted(Counter(r[2] for r in chosen if r[1] is None).items())),
            }
        back = [r[0] + r[1] - restored for r in results
                if r[1] is not None and r[2] == NAMES[DOOMED] and r[0] + r[1] >= restored]
        out["back_in_service_s"] = min(back) if back else None
        out["served_by"] = dict(Counter(r[2] for r in results if r[1] is not None))
        return out

    # -- report --------------------------------------------------------------------------------

    def report(self, rows: list[dict]) -> list[tuple[str, bool]]:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        print(f"\nendpoint outage: {self.args.rate:g} new connections/s for "
              f"{self.args.seconds:g} s; web-2's SYNs dropped from {self.args.outage_at:g} s "
              f"for {self.args.outage_for:g} s; connect -> first byte, ms\n")
        print(f"{'variant':<10} {'phase':<7} {'conns':>6} {'failed':>7} {'p50':>7} {'p99':>8} "
              f"{'max':>8} {'>100ms':>7}")
        for row in rows:
            for i, (phase, p) in enumerate(row["phases"].items()):
                print(f"{row['variant'] if i == 0 else '':<10} {phase:<7} {p['connections']:>6} "
                      f"{p['failed']:>7} {ms(p['p50_ms']):>7} {ms(p['p99_ms']):>8} "
                      f"{ms(p['max_ms']):>8} {p['slow']:>7}")
            back = row["back_in_service_s"]
            print(f"{'':<10} web-2 serves again {back:.2f} s after it returned"
                  if back is not None else f"{'':<10} web-2 never served again in the run")
        for variant, why in self.failed.items():
            print(f"{variant:<10} not measured: {why}")
        return self.targets(rows)

    def targets(self, rows: list[dict]) -> list[tuple[str, bool]]:
        by = {r["variant"]: r for r in rows}
        ep = by.get("edgeproxy")
        if ep is None:
            return []
        before, during = ep["phases"]["before"], ep["phases"]["during"]
        failed = sum(p["failed"] for p in ep["phases"].values())
        checks = [("edgeproxy: zero failed connections", failed == 0),
                  ("edgeproxy: p99 during the outage <= 2x p99 before",
                   during["p99_ms"] is not None and before["p99_ms"] is not None
                   and during["p99_ms"] <= 2 * before["p99_ms"]),
                  (f"edgeproxy: web-2 back within the probe interval + 1 s "
                   f"({PROBE_INTERVAL + 1:g} s)",
                   ep["back_in_service_s"] is not None
                   and ep["back_in_service_s"] <= PROBE_INTERVAL + 1)]
        hap = by.get("haproxy")
        if hap is not None:
            hd = hap["phases"]["during"]
            hap_failed = sum(p["failed"] for p in hap["phases"].values())
            checks.append(("edgeproxy: fewer failed connections than haproxy (or both 0)",
                           failed < hap_failed or failed == hap_failed == 0))
            checks.append(("edgeproxy: lower p99 during the outage than haproxy",
                           (during["p99_ms"] or 0) < (hd["p99_ms"] or float("inf"))))
        print()
        for what, ok in checks:
            print(f"{'PASS' if ok else 'FAIL'}  {what}")
        return checks

    def cleanup(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if self.edgeproxy_popen is not None and self.edgeproxy_popen.stdin:
            try:
                self.edgeproxy_popen.stdin.close()
            except OSError:
                pass
        self.procs.stop_all()
        if self.topo is not None:
            self.topo.stop()
        if not self.args.keep_logs:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            print(f"logs kept in {self.tmp}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=200.0, help="new connections per second")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each variant's run")
    p.add_argument("--outage-at", type=float, default=5.0, help="when web-2 goes away")
    p.add_argument("--outage-for", type=float, default=10.0, help="how long it stays away")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   type=lambda s: [v for v in s.split(",") if v])
    p.add_argument("--json", type=Path, help="write the figures to this file")
    p.add_argument("--verbose", action="store_true", help="print rules and configs")
    p.add_argument("--keep-logs", action="store_true", help="keep the helpers' logs")
    args = p.parse_args(argv)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants: {', '.join(sorted(unknown))}")
    if args.outage_at + args.outage_for >= args.seconds:
        p.error("the outage must end before the run does")
    reason = netns_unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    bench = OutageBench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows = []
    try:
        bench.setup()
        for variant in args.variants:
            if variant in bench.failed:
                continue
            bench.log(f"{variant}: {args.seconds:g} s at {args.rate:g} connections/s")
            rows.append(bench.run_variant(variant))
            time.sleep(2.5)  # every proxy sees web-2 healthy again before the next run
        checks = bench.report(rows)
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "failed": bench.failed,
                                             "targets": dict(checks)}, indent=2))
        return 0 if all(ok for _, ok in checks) else 1
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())

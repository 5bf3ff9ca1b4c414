"""`edgeproxy demo`: the main job shown end to end on a throw-away edge node in namespaces.

Builds the edge node (pod, node and backend namespaces, see `topology`), installs the
stand-in kube-proxy, runs the real `edgeproxy run` on a copy of the shipped example manifests and
walks through what a user cares about, printing plain words plus the real
`iptables -t nat -nvL`, curl and dig output:

1. traffic to the cluster IPs from a pod (nat PREROUTING) and from the node itself (OUTPUT);
2. the labelled service left to kube-proxy;
   a pod resolving services by name through edgeproxy's DNS (cluster names from the
   manifests, an outside name forwarded to the upstream and cached);
3. a hot reload: a new manifest file is written and its service answers (time measured);
4. kube-proxy re-inserting its jump at position 1 and edgeproxy putting its own back in front;
5. SIGTERM: edgeproxy hands the traffic back (its rules are gone) and exits 0.

Nothing on the host changes. Everything is removed again at the end, on an error, and on
Ctrl-C/SIGTERM (signal handlers + finally + atexit). Exit 0 only when every step worked.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from edgeproxy.demo.clients import (echo_line, http_get, pod_resolv_conf, run_with_resolv_conf,
                                    wait_until)
from edgeproxy.demo.daemon import (Daemon, DaemonError, copy_examples, edgeproxy_argv,
                                   kernel_has_dummy, make_workdir)
from edgeproxy.demo.kube_proxy import Iptables, StandInKubeProxy
from edgeproxy.demo.netns import delete_all_live, netns_unavailable_reason
from edgeproxy.demo.topology import (DNS_BACKEND, DNS_RECORD, DNS_VIP, ECHO_VIP, METRICS_PORT,
                                     METRICS_VIP, POD_ADDR, UPSTREAM_RECORD, WEB_BACKENDS,
                                     WEB_PORT, WEB_VIP, Topology, TopologyError)

NEW_SERVICE_FILE = "api.yaml"
API_VIP = "198.19.0.40"
API_MANIFEST = f"""\
# Written by `edgeproxy demo` while edgeproxy runs: a new service, served without a restart.
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: default
spec:
  clusterIP: {API_VIP}
  ports:
    - port: 80
      protocol: TCP
      targetPort: 8080
---
apiVersion: v1
kind: Endpoints
metadata:
  name: api
  namespace: default
subsets:
  - addresses:
      - ip: {WEB_BACKENDS["web-3"]}
    ports:
      - port: 8080
        protocol: TCP
"""
# kube-proxy's own (stale) idea of web: a pod IP that no longer exists. While edgeproxy's jump
# comes first this rule is never reached; when kube-proxy jumps ahead, web breaks.
STALE_WEB_POD = "198.18.1.99"
KUBE_PROXY_SERVICES = [
    (METRICS_VIP, METRICS_PORT, WEB_BACKENDS["web-1"], METRICS_PORT),
    (WEB_VIP, 80, STALE_WEB_POD, WEB_PORT),
]
CLUSTER_DNS = "169.254.96.53"  # edgeproxy's --dns-listen-address default
REPAIR_WAIT = 10.0  # seconds; the daemon checks the chain order every --iptables-sync-period


class DemoFailure(Exception):
    """A step did not show what it should; the message says what was expected and seen."""


def default_manifests() -> Path:
    """The example manifests shipped in the package (config/examples of the repository)."""
    from edgeproxy.resources import example_manifests

    return Path(str(example_manifests()))  # installed wheels are unpacked: a real directory


@dataclass
class Printer:
    """Plain-words output: step titles, explanations, commands and their real output."""

    out: Callable[[str], None] = field(default=lambda text: print(text, flush=True))
    step_no: int = 0

    def step(self, title: str) -> None:
        self.step_no += 1
        self.out(f"\n=== {self.step_no}. {title}")

    def say(self, text: str) -> None:
        self.out(f"    {text}")

    def command(self, shown: str, output: str) -> None:
        self.out(f"    $ {shown}")
        for line in output.rstrip("\n").splitlines():
            self.out(f"      {line}")

    def ok(self, text: str) -> None:
        self.out(f"    ok: {text}")

    def fail(self, text: str) -> None:
        self.out(f"    FAILED: {text}")


class Demo:
    """One run of the walkthrough; `run()` returns the exit code."""

    def __init__(self, manifests: Path, keep: bool = False, printer: Printer | None = None,
                 daemon_args: Sequence[str] = ()) -> None:
        self.manifests = manifests
        self.keep = keep
        self.p = printer or Printer()
        self.daemon_args = list(daemon_args)
        self.topo: Topology | None = None
        self.kube_proxy: StandInKubeProxy | None = None
        self.iptables: Iptables | None = None  # the node's, as a user would run it
        self.daemon: Daemon | None = None
        self.workdir: Path | None = None
        self.failures: list[str] = []

    # -- helpers

    def _ns_cmd(self, ns, argv: Sequence[str], label: str) -> str:
        """Run a real command in a namespace and print it as a user would type it."""
        result = ns.run(argv, check=False, timeout=15)
        text = result.stdout + (result.stderr if result.returncode else "")
        self.p.command(f"ip netns exec {label} {shlex.join(argv)}", text)
        if result.returncode != 0:
            raise DemoFailure(f"`{' '.join(argv)}` exited {result.returncode}")
        return result.stdout

    def _check(self, what: str, fn: Callable[[], None]) -> None:
        """Run one check; a failure is reported and counted but the demo goes on."""
        try:
            fn()
        except (DemoFailure, OSError, RuntimeError) as exc:
            self.failures.append(f"{what}: {exc}")
            self.p.fail(f"{what}: {exc}")

    def _curl(self, ns, label: str, url: str, *extra: str) -> str:
        return self._ns_cmd(ns, ["curl", "-sS", "--max-time", "3", *extra, url], label).strip()

    def _iptables(self) -> Iptables:
        assert self.iptables is not None
        return self.iptables

    def _show_nat(self, *chains: str, note: str = "") -> None:
        """Print `iptables -t nat -nvL CHAIN` of the node for each chain, as a user runs it."""
        for chain in chains:
            self.p.command(f"ip netns exec node iptables -t nat -nvL {chain}{note}",
                           self._iptables().listing(chain))

    def _nat_targets(self, chain: str) -> list[str]:
        return self._iptables().targets(chain)

    # -- the walkthrough

    def run(self) -> int:
        reason = netns_unavailable_reason()
        if reason:
            print(f"edgeproxy demo: {reason}", file=sys.stderr)
            return 1
        missing = [t for t in ("iptables", "iptables-save", "curl", "dig", "dnsmasq", "ss")
                   if shutil.which(t) is None]
        if missing:
            print(f"edgeproxy demo: missing tools: {', '.join(missing)} "
                  "(run ./scripts/bootstrap)", file=sys.stderr)
            return 1
        if not self.manifests.is_dir():
            print(f"edgeproxy demo: manifest directory {self.manifests} not found "
                  "(pass --manifests DIR)", file=sys.stderr)
            return 1
        started = time.monotonic()
        try:
            self._setup()
            self._start_daemon()
            self._show_rules()
            self._check("pod to cluster IPs", self._pod_traffic)
            self._check("node to cluster IPs", self._node_traffic)
            self._check("labelled service left to kube-proxy", self._labelled_service)
            self._check("pod resolves services by name", self._cluster_dns)
            self._check("hot reload", self._hot_reload)
            self._check("chain order repair", self._chain_repair)
            self._check("status", self._status)
            if self.keep:
                self._keep_running()
            self._check("SIGTERM hands traffic back", self._stop_daemon)
        except DemoFailure as exc:
            self.failures.append(str(exc))
            self.p.fail(str(exc))
        finally:
            self.cleanup()
        took = time.monotonic() - started
        if self.failures:
            print(f"\nedgeproxy demo: {len(self.failures)} step(s) failed ({took:.1f} s):",
                  file=sys.stderr)
            for failure in self.failures:
                print(f"  - {failure}", file=sys.stderr)
            return 1
        self.p.out(f"\nAll steps worked ({took:.1f} s). Namespaces and processes removed; "
                   "the host was not changed.")
        return 0

    def _setup(self) -> None:
        self.p.step("A throw-away edge node in private network namespaces")
        self.topo = Topology("epdemo")
        try:
            self.topo.start()
        except (TopologyError, RuntimeError) as exc:
            raise DemoFailure(f"could not build the namespaces: {exc}") from None
        t = self.topo
        self.p.say(f"node     {t.node.name}: runs edgeproxy; no default route (offline node)")
        self.p.say(f"pod      {t.pod.name}: a client, {POD_ADDR}, routed via the node")
        self.p.say(f"backends {t.backends.name}: web-1/2/3 {', '.join(WEB_BACKENDS.values())}"
                   f" :8080 (answer with their name), echo :7000, metrics :9100, "
                   f"dnsmasq {DNS_BACKEND}:5353")
        self.iptables = Iptables(t.node)
        self.kube_proxy = StandInKubeProxy(t.node).install(KUBE_PROXY_SERVICES)
        self.p.say("stand-in kube-proxy: KUBE-SERVICES jumped to from PREROUTING and OUTPUT,")
        self.p.say(f"  serving the labelled {METRICS_VIP}:9100, and a stale rule sending "
                   f"web ({WEB_VIP}:80) to a pod that is gone ({STALE_WEB_POD}).")

    def _start_daemon(self) -> None:
        assert self.topo is not None
        self.p.step("Start `edgeproxy run` on a copy of " + str(self.manifests))
        self.workdir = make_workdir("edgeproxy-demo-")
        manifests = copy_examples(self.manifests, self.workdir / "manifests")
        self.daemon = Daemon(self.topo.node, manifests, self.workdir,
                                extra_args=self.daemon_args)
        self.p.say("$ ip netns exec node " + " ".join(
            ["edgeproxy", *self.daemon.command()[len(edgeproxy_argv()):]]))
        self.daemon.start()
        if not kernel_has_dummy(self.topo.node):
            self.p.say("note: this kernel has no dummy interface module; the demo pre-created "
                       "edgeproxy0 as an empty bridge")
        try:
            took = self.daemon.wait_ready(timeout=30)
        except DaemonError as exc:
            raise DemoFailure(str(exc)) from None
        self.p.ok(f"/readyz answered 200 after {took:.2f} s "
                  f"({len(list(manifests.iterdir()))} manifest files)")

    def _show_rules(self) -> None:
        assert self.topo is not None
        self.p.step("The rules edgeproxy installed (nat table of the node)")
        self.p.say("edgeproxy's jumps come first, ahead of kube-proxy's KUBE-SERVICES; each service")
        self.p.say("port is DNATed to edgeproxy's listener on 169.254.96.17 (its edgeproxy0 interface).")
        self._show_nat("PREROUTING", "OUTPUT", "KUBE-PORTALS-CONTAINER")

    def _pod_traffic(self) -> None:
        assert self.topo is not None
        pod = self.topo.pod
        self.p.step("From a pod: cluster IPs answered through edgeproxy (nat PREROUTING)")
        seen = set()
        for user in ("alice", "bob", "carol", "dave"):
            body = self._curl(pod, "pod", f"http://{WEB_VIP}/", "-H", f"X-User: {user}")
            seen.add(body)
        if not seen <= {"web-1", "web-2"} or not seen:
            raise DemoFailure(f"web answered {sorted(seen)}, expected web-1/web-2")
        again = {self._curl(pod, "pod", f"http://{WEB_VIP}/", "-H", "X-User: alice")
                 for _ in range(3)}
        self.p.ok(f"web {WEB_VIP}:80 answered by {', '.join(sorted(seen))}; the same X-User "
                  f"always lands on the same backend ({', '.join(sorted(again))}: the "
                  "DestinationRule's consistent hash)")
        if len(again) != 1:
            raise DemoFailure(f"X-User: alice went to {sorted(again)}")
        echoes = {echo_line(pod, ECHO_VIP, 7, f"hello {i}").split(":")[0]
                  for i in range(4)}
        self.p.say(f"echo {ECHO_VIP}:7 (sessionAffinity: ClientIP): 4 connections all went to "
                   f"{', '.join(sorted(echoes))}")
        if len(echoes) != 1:
            raise DemoFailure(f"ClientIP affinity broken: {sorted(echoes)}")
        name, addr = DNS_RECORD
        udp = self._ns_cmd(pod, ["dig", "+short", "+time=2", "+tries=1", f"@{DNS_VIP}", name],
                           "pod").strip()
        tcp = self._ns_cmd(pod, ["dig", "+short", "+tcp", "+time=2", "+tries=1",
                                 f"@{DNS_VIP}", name], "pod").strip()
        if udp != addr or tcp != addr:
            raise DemoFailure(f"DNS via {DNS_VIP} answered {udp!r} (udp) / {tcp!r} (tcp)")
        self.p.ok(f"DNS {DNS_VIP}:53 over UDP and TCP reached dnsmasq on {DNS_BACKEND}:5353")

    def _node_traffic(self) -> None:
        assert self.topo is not None
        node = self.topo.node
        self.p.step("From the node itself (host network, nat OUTPUT)")
        self.p.say("The node has no default route: edgeproxy routes the cluster IPs it captures")
        self.p.say("on edgeproxy0 only because `ip route get` found no route for them.")
        self._ns_cmd(node, ["ip", "route", "get", WEB_VIP], "node")
        body = self._curl(node, "node", f"http://{WEB_VIP}/")
        if body not in ("web-1", "web-2"):
            raise DemoFailure(f"web from the node answered {body!r}")
        name, addr = DNS_RECORD
        udp = self._ns_cmd(node, ["dig", "+short", "+time=2", "+tries=1", f"@{DNS_VIP}", name],
                           "node").strip()
        if udp != addr:
            raise DemoFailure(f"DNS from the node answered {udp!r}")
        self.p.ok("web and DNS answer from the node too")

    def _labelled_service(self) -> None:
        assert self.topo is not None and self.daemon is not None
        self.p.step("The labelled service is left to kube-proxy")
        self.p.say(f"monitoring/node-metrics carries service.edgemesh.kubeedge.io/service-proxy-name:"
                   f" edgeproxy skips it, so {METRICS_VIP}:9100 falls through to KUBE-SERVICES.")
        body = self._curl(self.topo.pod, "pod", f"http://{METRICS_VIP}:9100/")
        if "node_up 1" not in body:
            raise DemoFailure(f"{METRICS_VIP}:9100 answered {body!r}")
        self._show_nat("KUBE-SERVICES")
        portals = self._iptables().save("nat")
        if any(METRICS_VIP in line and "KUBE-PORTALS" in line for line in portals.splitlines()):
            raise DemoFailure(f"edgeproxy has a rule for {METRICS_VIP}")
        self.p.ok("answered by kube-proxy's DNAT; edgeproxy has no rule for it")

    def _pod_with_dns(self, argv: list[str]) -> str:
        """Run ``argv`` in the pod with the resolv.conf kubelet writes (clusterDNS: edgeproxy)."""
        assert self.topo is not None
        result = run_with_resolv_conf(self.topo.pod, pod_resolv_conf(CLUSTER_DNS), argv)
        self.p.command(f"ip netns exec pod {shlex.join(argv)}", result.stdout +
                       (result.stderr if result.returncode else ""))
        if result.returncode != 0:
            raise DemoFailure(f"`{' '.join(argv)}` exited {result.returncode}")
        return result.stdout

    def _cluster_dns(self) -> None:
        assert self.topo is not None
        self.p.step("A pod finds services by name: edgeproxy's DNS, from the manifests")
        self.p.say("The node is offline: the cluster's CoreDNS is out of reach. edgeproxy answers")
        self.p.say(f"the cluster names itself on {CLUSTER_DNS}:53 (kubelet's clusterDNS); the pod's")
        self.p.say("resolv.conf is the one kubelet writes:")
        for line in pod_resolv_conf(CLUSTER_DNS).splitlines():
            self.p.say(f"  {line}")
        hosts = self._pod_with_dns(["getent", "hosts", "web"])
        if WEB_VIP not in hosts:
            raise DemoFailure(f"`web` resolved to {hosts.strip()!r}, expected {WEB_VIP}")
        body = self._pod_with_dns(["curl", "-sS", "--max-time", "3", "http://web/"]).strip()
        if body not in ("web-1", "web-2"):
            raise DemoFailure(f"http://web/ answered {body!r}")
        self._pod_with_dns(["dig", "+noall", "+answer", "+authority", "SRV",
                            "_http._tcp.web.default.svc.cluster.local"])
        name, addr = UPSTREAM_RECORD
        first = self._pod_with_dns(["getent", "hosts", name])
        if addr not in first:
            raise DemoFailure(f"{name} was not forwarded: {first.strip()!r}")
        self.p.ok(f"`web` is {WEB_VIP} (curl http://web/ answered {body}); {name} was "
                  f"forwarded to the upstream ({DNS_BACKEND}:5353) and is now cached")

    def _hot_reload(self) -> None:
        assert self.topo is not None and self.daemon is not None
        self.p.step("Hot reload: a new manifest file appears")
        target = self.daemon.manifests / NEW_SERVICE_FILE
        tmp = self.daemon.manifests / f".{NEW_SERVICE_FILE}.tmp"
        self.p.say(f"Writing {NEW_SERVICE_FILE} (Service default/api {API_VIP}:80 -> web-3) the way "
                   "rsync does: temp file, then rename.")
        started = time.monotonic()
        tmp.write_text(API_MANIFEST)
        os.chmod(tmp, 0o644)
        os.rename(tmp, target)
        took = wait_until(lambda: http_get(self.topo.pod, API_VIP, timeout=0.5)
                          .strip() == "web-3", timeout=10, interval=0.01)
        if took is None:
            raise DemoFailure(f"{API_VIP}:80 did not answer within 10 s of the file appearing")
        took = time.monotonic() - started
        self._curl(self.topo.pod, "pod", f"http://{API_VIP}/")
        self.p.ok(f"new service answering {took * 1000:.0f} ms after the file was written "
                  "(no restart, other services untouched)")
        self._show_nat("KUBE-PORTALS-CONTAINER")

    def _chain_repair(self) -> None:
        assert self.topo is not None and self.kube_proxy is not None
        self.p.step("kube-proxy jumps ahead; edgeproxy repairs the order")
        self.p.say("kube-proxy restarts after a flush and re-inserts its jump at position 1.")
        self.p.say("Now its stale rule for web would win: web goes to the gone pod.")
        self.kube_proxy.jump_ahead()
        self._show_nat("PREROUTING", note="   # before")
        started = time.monotonic()
        took = wait_until(
            lambda: self._nat_targets("PREROUTING")[0] != "KUBE-SERVICES"
            and self._nat_targets("OUTPUT")[0] != "KUBE-SERVICES",
            timeout=REPAIR_WAIT, interval=0.05)
        if took is None:
            raise DemoFailure(f"KUBE-SERVICES still first after {REPAIR_WAIT:.0f} s")
        self._show_nat("PREROUTING", note="   # after")
        order = self._nat_targets("PREROUTING")
        if order.index("KUBE-SERVICES") < min(
                (i for i, t in enumerate(order) if t.startswith("KUBE-PORTALS")), default=99):
            raise DemoFailure(f"PREROUTING order after repair: {order}")
        pod = self.topo.pod
        back = wait_until(lambda: http_get(pod, WEB_VIP, timeout=0.5).strip()
                          in ("web-1", "web-2"), timeout=5)
        if back is None:
            raise DemoFailure("web did not answer after the repair")
        self.p.ok(f"edgeproxy's jump is in front again {time.monotonic() - started:.2f} s later "
                  "(it checks every --iptables-sync-period) and web answers")

    def _status(self) -> None:
        assert self.topo is not None
        self.p.step("What the daemon reports: `edgeproxy status`")
        self._ns_cmd(self.topo.node, [*edgeproxy_argv(), "status"], "node")

    def _keep_running(self) -> None:
        assert self.topo is not None
        self.p.step("Left running (--keep); press Ctrl-C to clean up")
        self.p.say(f"try: ip netns exec {self.topo.pod.name} curl http://{WEB_VIP}/")
        self.p.say(f"     ip netns exec {self.topo.node.name} edgeproxy status")
        self.p.say(f"     manifests: {self.daemon.manifests if self.daemon else '?'}")
        with contextlib.suppress(KeyboardInterrupt):
            while self.daemon is not None and self.daemon.running():
                time.sleep(0.5)

    def _stop_daemon(self) -> None:
        assert self.topo is not None and self.daemon is not None
        self.p.step("SIGTERM: edgeproxy hands the traffic back and exits")
        rc = self.daemon.stop(timeout=40)
        order = self._nat_targets("PREROUTING")
        self._show_nat("PREROUTING")
        if rc != 0:
            raise DemoFailure(f"edgeproxy exited {rc} on SIGTERM; log:\n{self.daemon.log_tail()}")
        leftovers = [t for t in order if t.startswith("KUBE-PORTALS")]
        if leftovers:
            raise DemoFailure(f"rules left after exit: {leftovers}")
        self.p.ok("exit code 0; only kube-proxy's jump is left")

    def cleanup(self) -> None:
        """Kill the daemon and backends, delete namespaces and the temp dir. Idempotent."""
        with _signals_ignored():
            if self.daemon is not None:
                with contextlib.suppress(Exception):
                    self.daemon.stop(timeout=5)
            if self.topo is not None:
                with contextlib.suppress(Exception):
                    self.topo.stop()
            delete_all_live()
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None


@contextlib.contextmanager
def _signals_ignored():
    """A second Ctrl-C must not interrupt the cleanup half-way."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, signal.SIG_IGN)
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_demo(manifests: Path, keep: bool = False, daemon_args: Sequence[str] = ()) -> int:
    demo = Demo(manifests, keep=keep, daemon_args=daemon_args)
    # Ctrl-C must raise KeyboardInterrupt even when started with SIGINT ignored (a background
    # job of a non-interactive shell); SIGTERM and SIGHUP behave the same way. All unwind
    # through the finally blocks that clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    atexit.register(demo.cleanup)
    try:
        return demo.run()
    except KeyboardInterrupt:
        demo.cleanup()
        print("\nedgeproxy demo: interrupted; namespaces and processes removed.", file=sys.stderr)
        return 130
    finally:
        atexit.unregister(demo.cleanup)

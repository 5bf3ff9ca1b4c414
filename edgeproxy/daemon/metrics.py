"""Prometheus metrics from plain counters: a custom collector read at scrape time.

The forwarder, the rule keeper and the daemon keep plain ints; nothing but this module knows
prometheus-client. A private registry (not the global one) so tests can build several daemons;
it also carries prometheus-client's own ``process_*``, ``python_*`` and ``python_gc_*``
collectors, like every Go exporter's ``process_*``/``go_*``. Served by prometheus-client's WSGI
app (http.py), which does content negotiation (text or OpenMetrics) and gzip.

Names say what they count and follow kube-proxy's where it has the same thing
(``edgeproxy_sync_proxy_rules_last_timestamp_seconds`` is kube-proxy's
``kubeproxy_sync_proxy_rules_last_timestamp_seconds``). Per service port, metrics that only
mean something for one protocol are exported only for it (TCP connections for TCP ports, UDP
sessions for UDP ports). monitoring/ has a Grafana dashboard and alert rules built on them.
"""

from __future__ import annotations

import platform
from collections import Counter
from typing import Iterator

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, InfoMetricFamily)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from edgeproxy.daemon.views import SYNC_BUCKETS, DaemonView, DnsView
from edgeproxy.rules.backends.check import CheckCounts


def _build_info() -> InfoMetricFamily:
    from edgeproxy import __version__
    from edgeproxy.buildinfo import build_commit

    info = InfoMetricFamily("edgeproxy_build", "The running edgeproxy's version and commit")
    info.add_metric([], {"version": __version__, "commit": build_commit(),
                         "python_version": platform.python_version()})
    return info


MAX_ERROR_FILES = 50  # files with their own edgeproxy_manifest_errors series
OTHER_FILES = "(other files)"


class DaemonCollector(Collector):
    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon
        self.build_info = _build_info()  # looked up once: an editable checkout asks git

    def collect(self) -> Iterator:
        yield self.build_info
        yield from self._sync()
        yield from self._manifests()
        yield from self._rules()
        yield from self._watcher_and_worker()
        yield from self._data_path()
        yield from self._service_ports()
        yield from _allocation_metrics(self.daemon)
        if self.daemon.dns is not None:
            yield from _dns_metrics(self.daemon.dns)

    def _sync(self) -> Iterator:
        d, c = self.daemon, self.daemon.counters
        buckets = [(repr(bound), count) for bound, count in zip(SYNC_BUCKETS,
                                                                c.sync_duration_buckets)]
        buckets.append(("+Inf", c.syncs_total))  # the daemon's counts are cumulative already
        yield HistogramMetricFamily("edgeproxy_sync_duration_seconds",
                                    "Time of one manifests-to-rules sync",
                                    buckets=buckets, sum_value=c.sync_duration_sum)
        yield CounterMetricFamily("edgeproxy_sync_errors", "Syncs that failed (retried)",
                                  value=c.sync_errors_total)
        yield GaugeMetricFamily("edgeproxy_sync_proxy_rules_last_timestamp_seconds",
                                "When the last sync was applied successfully (Unix time; "
                                "kube-proxy's kubeproxy_sync_proxy_rules_last_timestamp_seconds)",
                                value=d.last_applied_wall or 0)
        yield GaugeMetricFamily("edgeproxy_ready", "1 once serving", value=1 if d.ready else 0)
        try:
            healthy = not d.health_problems()
        except Exception:  # noqa: BLE001 - a scrape must answer
            healthy = False
        yield GaugeMetricFamily("edgeproxy_healthy",
                                "1 while /healthz is 200 (captured traffic can be served)",
                                value=1 if healthy else 0)
        yield GaugeMetricFamily("edgeproxy_mass_removal_held",
                                "1 while a mass removal waits for confirmation",
                                value=1 if d.held else 0)
        yield CounterMetricFamily("edgeproxy_mass_removal_holds", "Syncs held by the guard",
                                  value=c.holds_total)
        yield CounterMetricFamily("edgeproxy_config_reloads",
                                  "SIGHUPs that re-read and applied the config file",
                                  value=c.config_reloads_total)
        yield CounterMetricFamily("edgeproxy_config_errors",
                                  "SIGHUPs whose config file was invalid (running one kept)",
                                  value=c.config_errors_total)

    def _manifests(self) -> Iterator:
        d = self.daemon
        yield GaugeMetricFamily("edgeproxy_service_ports_proxied",
                                "Service ports (service, port, protocol) captured and forwarded",
                                value=len(d.applied.ports))
        skipped = GaugeMetricFamily("edgeproxy_services_skipped",
                                    "Services not proxied, by reason", labels=["reason"])
        for reason, n in sorted(Counter(v.reason.value for v in d.applied.services
                                        if v.verdict.value == "skip" and v.reason).items()):
            skipped.add_metric([reason], n)
        yield skipped
        errors = GaugeMetricFamily(
            "edgeproxy_manifest_errors",
            f"Manifest errors currently reported, by file (the {MAX_ERROR_FILES} files with "
            f"most; the rest summed as file=\"{OTHER_FILES}\")", labels=["file"])
        computed = d.last_computed
        by_file = Counter(e.file for e in (computed.errors if computed else ()))
        # Bounded: a tree of 100,000 broken files must not become 100,000 series.
        top = sorted(by_file.items(), key=lambda kv: (-kv[1], kv[0]))
        for file, n in sorted(top[:MAX_ERROR_FILES]):
            errors.add_metric([file], n)
        rest = sum(n for _, n in top[MAX_ERROR_FILES:])
        if rest:
            errors.add_metric([OTHER_FILES], rest)
        yield errors

    def _rules(self) -> Iterator:
        keeper = self.daemon.keeper
        yield CounterMetricFamily("edgeproxy_chain_repairs", "Rule/chain repairs made",
                                  value=keeper.repairs_total if keeper else 0)
        yield CounterMetricFamily("edgeproxy_rule_apply_errors", "Failed rule applies/checks",
                                  value=keeper.apply_errors_total if keeper else 0)
        yield CounterMetricFamily("edgeproxy_rule_checks", "Periodic checks of every rule",
                                  value=keeper.checks_total if keeper else 0)
        yield CounterMetricFamily("edgeproxy_rule_check_seconds",
                                  "Time spent in periodic rule checks and their repairs",
                                  value=keeper.check_seconds_total if keeper else 0.0)
        # Which stage answered each check: a node where most checks need "full" (a table read)
        # spends far more CPU on them, and something keeps writing where edgeproxy looks.
        answered = CounterMetricFamily(
            "edgeproxy_rule_checks_answered",
            "Periodic rule checks by the cheapest stage that could vouch for the rules "
            "(generation: nothing written since; digests: raw rules unchanged or repaired; "
            "full: the tables were read)", labels=["by"])
        counts = keeper.backend.check.counts if keeper else CheckCounts()
        for stage in ("generation", "digests", "full"):
            answered.add_metric([stage], getattr(counts, stage))
        yield answered
        yield CounterMetricFamily("edgeproxy_conntrack_deleted",
                                  "UDP conntrack entries deleted so flows follow new capture",
                                  value=keeper.conntrack_deleted_total if keeper else 0)

    def _watcher_and_worker(self) -> Iterator:
        watcher = self.daemon.watcher
        yield GaugeMetricFamily("edgeproxy_watcher_up",
                                "1 while the manifest watcher watches (else only the periodic "
                                "rescan sees changes)", value=1 if watcher and watcher.running
                                else 0)
        yield CounterMetricFamily("edgeproxy_watcher_events",
                                  "Changed paths and rescans the watcher reported",
                                  value=watcher.events_total if watcher else 0)
        yield CounterMetricFamily("edgeproxy_watcher_restarts",
                                  "Watcher processes started again after one exited",
                                  value=watcher.restarts_total if watcher else 0)
        if watcher is not None and watcher.watchdog_version:
            info = InfoMetricFamily("edgeproxy_watcher", "The watcher's watchdog library")
            info.add_metric([], {"watchdog": watcher.watchdog_version})
            yield info
        computer = self.daemon.computer
        worker = computer.worker if computer is not None else None
        restarts = CounterMetricFamily(
            "edgeproxy_parse_worker_restarts",
            "Parse worker processes replaced, by why (killed: a file over its time or memory "
            "budget, or a crash; recycled: grown too big, its memory given back)",
            labels=["why"])
        restarts.add_metric(["killed"], worker.kills_total if worker else 0)
        restarts.add_metric(["recycled"], worker.recycles_total if worker else 0)
        yield restarts

    def _data_path(self) -> Iterator:
        proxy = self.daemon.proxy
        yield CounterMetricFamily("edgeproxy_data_path_repairs",
                                  "Listen interface, address, route or listener repairs",
                                  value=proxy.repairs_total if proxy else 0)
        budget = proxy.budget if proxy else None
        descriptors = GaugeMetricFamily(
            "edgeproxy_descriptor_budget",
            "File descriptors the forwarders may hold in total, and hold now",
            labels=["state"])
        descriptors.add_metric(["total"], budget.total if budget else 0)
        descriptors.add_metric(["used"], budget.used if budget else 0)
        yield descriptors
        exhausted = CounterMetricFamily(
            "edgeproxy_descriptor_budget_exhausted",
            "New connections or UDP clients that found the descriptor budget spent",
            labels=["protocol"])
        for protocol in ("tcp", "udp"):
            exhausted.add_metric([protocol.upper()],
                                 budget.exhausted_total.get(protocol, 0) if budget else 0)
        yield exhausted
        yield CounterMetricFamily("edgeproxy_descriptor_budget_udp_evictions",
                                  "Idlest UDP sessions (any service) closed to make room",
                                  value=budget.evicted_total if budget else 0)

    def _service_ports(self) -> Iterator:
        proxy = self.daemon.proxy
        stats = proxy.stats() if proxy is not None else {}
        labels_ = ["service", "protocol"]
        bytes_ = CounterMetricFamily("edgeproxy_bytes", "Payload bytes relayed",
                                     labels=[*labels_, "direction"])
        dials = CounterMetricFamily("edgeproxy_dial_failures",
                                    "Failed connection attempts to endpoints (TCP dials, UDP "
                                    "sessions that could not reach their endpoint)",
                                    labels=labels_)
        active = GaugeMetricFamily("edgeproxy_active_connections", "Open TCP connections",
                                   labels=labels_)
        conns = CounterMetricFamily("edgeproxy_connections", "TCP connections accepted",
                                    labels=labels_)
        resets = CounterMetricFamily("edgeproxy_connections_reset",
                                     "TCP connections reset because no endpoint answered",
                                     labels=labels_)
        udp = GaugeMetricFamily("edgeproxy_udp_sessions", "Open UDP client sessions",
                                labels=labels_)
        udp_total = CounterMetricFamily("edgeproxy_udp_sessions_opened",
                                        "UDP client sessions opened", labels=labels_)
        udp_dropped = CounterMetricFamily(
            "edgeproxy_udp_dropped", "UDP datagrams dropped (no endpoint, errors)",
            labels=labels_)
        udp_evicted = CounterMetricFamily(
            "edgeproxy_udp_evicted",
            "Idlest UDP sessions of this service closed to make room (its session bound or "
            "the descriptor budget)", labels=labels_)
        # Endpoint health (docs/endpoints.md): what passive ejection and the probes decided.
        ejections = CounterMetricFamily(
            "edgeproxy_endpoint_ejections", "Endpoints ejected after consecutive failed dials "
            "(or ICMP errors for UDP)", labels=labels_)
        readmissions = CounterMetricFamily(
            "edgeproxy_endpoint_readmissions", "Ejected endpoints back in service (a probe or "
            "a dial answered, or the back-off ended)", labels=labels_)
        probes = CounterMetricFamily("edgeproxy_endpoint_probes",
                                     "Connect probes of ejected endpoints, by result",
                                     labels=[*labels_, "result"])
        ejected = GaugeMetricFamily("edgeproxy_endpoints_ejected", "Endpoints ejected now",
                                    labels=labels_)
        panic = GaugeMetricFamily("edgeproxy_endpoints_panic",
                                  "1 while every endpoint is ejected and all are tried",
                                  labels=labels_)
        refused = CounterMetricFamily(
            "edgeproxy_no_local_endpoints_refused",
            "Clients refused because a Local traffic policy has no endpoint on this node",
            labels=labels_)
        for key in sorted(stats):
            s = stats[key]
            labels = [key.comment, key.protocol.value]
            ejections.add_metric(labels, s.endpoint_ejections_total)
            readmissions.add_metric(labels, s.endpoint_readmissions_total)
            probes.add_metric(labels + ["ok"], s.probes_total - s.probe_failures_total)
            probes.add_metric(labels + ["failed"], s.probe_failures_total)
            ejected.add_metric(labels, s.endpoints_ejected)
            panic.add_metric(labels, s.panic)
            refused.add_metric(labels, s.refused_no_local_total)
            bytes_.add_metric(labels + ["in"], s.bytes_in)
            bytes_.add_metric(labels + ["out"], s.bytes_out)
            dials.add_metric(labels, s.dial_failures_total)
            if key.protocol.value == "TCP":
                active.add_metric(labels, s.active_connections)
                conns.add_metric(labels, s.connections_total)
                resets.add_metric(labels, s.connections_reset_total)
            elif key.protocol.value == "UDP":
                udp.add_metric(labels, s.udp_sessions)
                udp_total.add_metric(labels, s.udp_sessions_total)
                udp_dropped.add_metric(labels, s.udp_dropped_total)
                udp_evicted.add_metric(labels, s.udp_evicted_total)
        yield from (bytes_, dials, active, conns, resets, udp, udp_total, udp_dropped,
                    udp_evicted)
        yield from (ejections, readmissions, probes, ejected, panic, refused)


def _allocation_metrics(d: DaemonView) -> Iterator:
    computed = d.last_computed
    yield GaugeMetricFamily("edgeproxy_cluster_ips_allocated",
                            "Services given a cluster IP from --service-cidr",
                            value=len(computed.allocated) if computed else 0)
    yield GaugeMetricFamily("edgeproxy_cluster_ips_unallocated",
                            "Services without a clusterIP that --service-cidr could not serve "
                            "(family not configured, range full)",
                            value=len(computed.unallocated) if computed else 0)
    yield CounterMetricFamily("edgeproxy_cluster_ip_changes",
                              "Allocated cluster IPs that moved to another address (collision)",
                              value=d.counters.cluster_ip_changes_total)


def _dns_metrics(dns: DnsView) -> Iterator:
    stats = dns.stats
    queries = CounterMetricFamily(
        "edgeproxy_dns_queries", "DNS queries by type and result (answer, nodata, nxdomain, "
        "refused: from the cluster zone; forwarded, cached, stale, servfail: names outside it; "
        "formerr, notimp, badvers)", labels=["type", "result"])
    for (qtype, result), n in sorted(stats.queries.items()):
        queries.add_metric([qtype, result], n)
    yield queries
    yield CounterMetricFamily("edgeproxy_dns_cache_hits",
                              "Forwarded names answered from the cache", value=stats.cache_hits_total)
    yield GaugeMetricFamily("edgeproxy_dns_cache_entries", "Forwarded answers in the cache",
                            value=len(dns.cache))
    yield CounterMetricFamily("edgeproxy_dns_stale_answers",
                              "Expired answers served because no upstream answered",
                              value=stats.stale_total)
    errors = CounterMetricFamily("edgeproxy_dns_upstream_errors",
                                 "Failed attempts to ask an upstream resolver (timeouts, "
                                 "refusals, bad answers)", labels=["upstream"])
    for upstream, n in sorted(dns.forwarder.errors_total.items()):
        errors.add_metric([upstream], n)
    yield errors
    yield GaugeMetricFamily("edgeproxy_dns_upstreams_down",
                            "1 while no upstream answered lately (queries fail fast, stale "
                            "answers are served)", value=1 if dns.forwarder.down else 0)
    yield CounterMetricFamily("edgeproxy_dns_truncated",
                              "UDP answers sent truncated (the client asks again over TCP)",
                              value=stats.truncated_total)
    yield CounterMetricFamily("edgeproxy_dns_busy",
                              "Forwarded queries refused with SERVFAIL: too many in flight",
                              value=stats.busy_total)
    yield CounterMetricFamily("edgeproxy_dns_tcp_connections", "DNS connections over TCP",
                              value=stats.tcp_connections_total)


def make_registry(daemon: DaemonView) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry

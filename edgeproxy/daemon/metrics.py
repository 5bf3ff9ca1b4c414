"""Prometheus metrics from plain counters: a custom collector read at scrape time.

The forwarder, the rule keeper and the daemon keep plain ints; nothing but this module knows
prometheus-client. A private registry (not the global one) so tests can build several daemons.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, InfoMetricFamily)
from prometheus_client.registry import Collector, CollectorRegistry

from edgeproxy.daemon.views import SYNC_BUCKETS, DaemonView
from edgeproxy.rules.backends.check import CheckCounts


class DaemonCollector(Collector):
    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator:
        d = self.daemon
        c = d.counters
        buckets = []  # the daemon's counts are already cumulative (le semantics)
        for bound, count in zip(SYNC_BUCKETS, c.sync_duration_buckets):
            buckets.append((repr(bound), count))
        buckets.append(("+Inf", c.syncs_total))
        yield HistogramMetricFamily("edgeproxy_sync_duration_seconds",
                                    "Time of one manifests-to-rules sync",
                                    buckets=buckets, sum_value=c.sync_duration_sum)
        yield CounterMetricFamily("edgeproxy_sync_errors", "Syncs that failed (retried)",
                                  value=c.sync_errors_total)
        yield GaugeMetricFamily("edgeproxy_ready", "1 once serving", value=1 if d.ready else 0)
        yield GaugeMetricFamily("edgeproxy_services_proxied", "Service ports proxied",
                                value=len(d.applied.ports))
        skipped = GaugeMetricFamily("edgeproxy_services_skipped", "Services skipped, by reason",
                                    labels=["reason"])
        for reason, n in sorted(Counter(v.reason.value for v in d.applied.services
                                        if v.verdict.value == "skip" and v.reason).items()):
            skipped.add_metric([reason], n)
        yield skipped
        errors = GaugeMetricFamily("edgeproxy_manifest_errors",
                                   "Manifest errors currently reported, by file", labels=["file"])
        computed = d.last_computed
        for file, n in sorted(Counter(e.file for e in (computed.errors if computed else ())
                                      ).items()):
            errors.add_metric([file], n)
        yield errors
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
        keeper = d.keeper
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
        watcher = d.watcher
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
        stats = d.proxy.stats() if d.proxy is not None else {}
        active = GaugeMetricFamily("edgeproxy_active_connections", "Open TCP connections",
                                   labels=["service", "protocol"])
        conns = CounterMetricFamily("edgeproxy_connections", "TCP connections accepted",
                                    labels=["service", "protocol"])
        bytes_ = CounterMetricFamily("edgeproxy_bytes", "Payload bytes relayed",
                                     labels=["service", "protocol", "direction"])
        dials = CounterMetricFamily("edgeproxy_dial_failures", "Failed dial attempts",
                                    labels=["service", "protocol"])
        udp = GaugeMetricFamily("edgeproxy_udp_sessions", "Open UDP client sessions",
                                labels=["service", "protocol"])
        udp_dropped = CounterMetricFamily(
            "edgeproxy_udp_dropped", "UDP datagrams dropped (no endpoint, errors)",
            labels=["service", "protocol"])
        udp_evicted = CounterMetricFamily(
            "edgeproxy_udp_evicted", "Idlest UDP sessions closed to make room at the bound",
            labels=["service", "protocol"])
        # Endpoint health (docs/endpoints.md): what passive ejection and the probes decided.
        ejections = CounterMetricFamily(
            "edgeproxy_endpoint_ejections", "Endpoints ejected after consecutive failed dials "
            "(or ICMP errors for UDP)", labels=["service", "protocol"])
        readmissions = CounterMetricFamily(
            "edgeproxy_endpoint_readmissions", "Ejected endpoints back in service (a probe or "
            "a dial answered, or the back-off ended)", labels=["service", "protocol"])
        probes = CounterMetricFamily("edgeproxy_endpoint_probes",
                                     "Connect probes of ejected endpoints, by result",
                                     labels=["service", "protocol", "result"])
        ejected = GaugeMetricFamily("edgeproxy_endpoints_ejected", "Endpoints ejected now",
                                    labels=["service", "protocol"])
        panic = GaugeMetricFamily("edgeproxy_endpoints_panic",
                                  "1 while every endpoint is ejected and all are tried",
                                  labels=["service", "protocol"])
        refused = CounterMetricFamily(
            "edgeproxy_no_local_endpoints_refused",
            "Clients refused because a Local traffic policy has no endpoint on this node",
            labels=["service", "protocol"])
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
            active.add_metric(labels, s.active_connections)
            conns.add_metric(labels, s.connections_total)
            bytes_.add_metric(labels + ["in"], s.bytes_in)
            bytes_.add_metric(labels + ["out"], s.bytes_out)
            dials.add_metric(labels, s.dial_failures_total)
            udp.add_metric(labels, s.udp_sessions)
            if key.protocol.value == "UDP":
                udp_dropped.add_metric(labels, s.udp_dropped_total)
                udp_evicted.add_metric(labels, s.udp_evicted_total)
        yield from (active, conns, bytes_, dials, udp, udp_dropped, udp_evicted)
        yield from (ejections, readmissions, probes, ejected, panic, refused)


def make_registry(daemon: DaemonView) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    return registry

"""The Daemon with fakes that follow the interfaces of its parts (tests/daemon/fakes.py)."""

import json
import re
import time

import gevent

from edgeproxy.daemon.compute import Computed
from edgeproxy.daemon.config import build_config
from edgeproxy.daemon.core import Daemon
from edgeproxy.daemon.http import healthz_app, metrics_app
from edgeproxy.daemon.status import build_status, render_text
from edgeproxy.forwarding.stats import ServiceStats
from edgeproxy.model import ManifestError, Protocol, ServicePortKey
from tests.daemon.fakes import (FakeComputer, FakeDns, FakeKeeper, FakeProxy, FakeWatcher,
                                state)


def test_start_order_listeners_before_rules_then_ready(daemon):
    calls = daemon.proxy.calls
    assert calls[0] == "start"
    assert calls.index(("rules", set(daemon.applied.ports))) > [
        i for i, c in enumerate(calls) if isinstance(c, tuple) and c[0] == "reconcile"][0]
    assert calls.index("keeper-start") > calls.index("routes")
    assert daemon.ready and len(daemon.proxy_ports) == 4


def test_removal_rules_before_listeners_close(daemon):
    daemon.computer.next = Computed(state("a", "b", "c"), None, 4)
    daemon.sync()
    tail = daemon.proxy.calls[-4:]
    # union reconcile keeps "d" listening while the rules without it are applied
    assert tail[0][0] == "reconcile" and len(tail[0][1]) == 4
    assert tail[1][0] == "rules" and len(tail[1][1]) == 3
    assert tail[2] == ("reconcile", set(daemon.applied.ports)) and len(daemon.applied.ports) == 3


def test_mass_removal_held_until_confirmed(daemon):
    daemon.computer.next = Computed(state("a"), None, 1)
    daemon.sync()
    assert daemon.held is not None and len(daemon.applied.ports) == 4
    doc = build_status(daemon)
    assert doc["guard"]["held"] and "3 of 4" in doc["guard"]["reason"]
    assert "HELD" in render_text(doc)
    assert daemon.confirm_removal()
    daemon.sync()
    assert daemon.held is None and len(daemon.applied.ports) == 1
    assert not daemon.confirm_removal()


def test_empty_root_held(daemon):
    daemon.computer.next = Computed(state(), "manifest root /x does not exist", 0)
    daemon.sync()
    assert daemon.held is not None and len(daemon.applied.ports) == 4


def test_status_lists_services_skipped_and_errors(daemon):
    err = ManifestError("/m/bad.yaml", "0", "Service", "default", "x", "spec.ports[0].port",
                        "must be 1-65535")
    daemon.computer.next = Computed(state("a", "b", "c", "d", errors=[err]), None, 4, errors=(err,))
    daemon.sync()
    text = render_text(build_status(daemon))
    assert re.search(r"default/a 198\.19\.0\.10:80/TCP -> :610\d\d -> 198\.18\.1\.11:8080", text)
    assert "monitoring/metrics: label" in text
    assert "/m/bad.yaml document 0 Service default/x spec.ports[0].port: must be 1-65535" in text


def _call(app, path, method="GET"):
    out = {}

    def start_response(status, headers):
        out["status"] = status

    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": method}, start_response))
    return out["status"], body.decode()


def test_http_endpoints(daemon):
    app = healthz_app(daemon)
    assert _call(app, "/readyz")[0].startswith("200")
    status, body = _call(app, "/healthz")
    assert status.startswith("200") and "lastUpdated" in body and "currentTime" in body
    assert _call(app, "/confirm-removal")[0].startswith("405")
    assert _call(app, "/confirm-removal", "POST")[0].startswith("409")


def test_healthz_503_when_change_waits_too_long(daemon):
    app = healthz_app(daemon)
    daemon.queued_since = time.monotonic() - 0.5  # within 2 x the 1 s sync period
    assert _call(app, "/healthz")[0].startswith("200")
    daemon.queued_since = time.monotonic() - 3
    status, body = _call(app, "/healthz")
    assert status.startswith("503") and "has waited 3" in body
    assert _call(app, "/readyz")[0].startswith("503")
    daemon.queued_since = None
    assert _call(app, "/healthz")[0].startswith("200")


def test_health_says_what_keeps_traffic_from_being_served(daemon):
    app = healthz_app(daemon)
    daemon.proxy.problems = ["listen interface edgeproxy0 is missing"]
    daemon.keeper.problem = "applying rules with backend fake failed: lock held"
    status, body = _call(app, "/healthz")
    assert status.startswith("503")
    assert json.loads(body)["problems"] == ["listen interface edgeproxy0 is missing",
                                            "applying rules with backend fake failed: lock held"]
    status, body = _call(app, "/readyz")
    assert status.startswith("503") and json.loads(body)["ready"] is False
    daemon.proxy.problems, daemon.keeper.problem = [], None
    assert _call(app, "/readyz")[0].startswith("200")


def test_the_data_path_is_verified_every_period(daemon, caplog):
    daemon.proxy.repairs = ["listen interface edgeproxy0 is missing"]
    deadline = time.monotonic() + 3 * daemon.config.sync_period
    while daemon.proxy.repairs and time.monotonic() < deadline:
        gevent.sleep(0.05)
    assert daemon.proxy.repairs_total == 1
    (record,) = [r for r in caplog.records if r.getMessage() == "data path repaired"]
    assert "edgeproxy0 is missing" in record.edgeproxy_fields["what"]


def test_metrics_from_plain_counters(daemon):
    status, body = _call(metrics_app(daemon), "/metrics")
    assert status.startswith("200")
    assert "edgeproxy_service_ports_proxied 4.0" in body
    assert 'edgeproxy_services_skipped{reason="label"} 1.0' in body
    assert 'edgeproxy_active_connections{protocol="TCP",service="default/a"} 2.0' in body
    assert "edgeproxy_chain_repairs_total 1.0" in body
    assert "edgeproxy_rule_checks_total 12.0" in body
    assert "edgeproxy_rule_check_seconds_total 0.5" in body
    assert 'edgeproxy_sync_duration_seconds_bucket{le="+Inf"}' in body
    for stage, n in (("generation", 7), ("digests", 3), ("full", 2)):
        assert f'edgeproxy_rule_checks_answered_total{{by="{stage}"}} {n}.0' in body
    assert "edgeproxy_conntrack_deleted_total 4.0" in body
    assert "edgeproxy_watcher_up 0.0" in body  # this daemon does not watch
    assert "edgeproxy_watcher_info" not in body


def test_watcher_exported_in_metrics_and_status(daemon):
    daemon.watcher = FakeWatcher(running=True, events_total=5, restarts_total=1)
    body = _call(metrics_app(daemon), "/metrics")[1]
    assert "edgeproxy_watcher_up 1.0" in body
    assert "edgeproxy_watcher_events_total 5.0" in body
    assert "edgeproxy_watcher_restarts_total 1.0" in body
    assert 'edgeproxy_watcher_info{watchdog="6.0.0"} 1.0' in body
    assert build_status(daemon)["watcher"] == {"running": True, "eventsTotal": 5,
                                               "restartsTotal": 1, "watchdog": "6.0.0"}
    daemon.watcher = None
    assert build_status(daemon)["watcher"] is None


def test_udp_drops_and_evictions_exported_per_udp_service(daemon):
    dns = ServicePortKey("kube-system", "dns", "dns", Protocol.UDP)
    daemon.proxy.stats = lambda: {dns: ServiceStats(udp_sessions=3, udp_dropped_total=5,
                                                    udp_evicted_total=7)}
    body = _call(metrics_app(daemon), "/metrics")[1]
    labels = '{protocol="UDP",service="kube-system/dns:dns"}'
    assert f"edgeproxy_udp_dropped_total{labels} 5.0" in body
    assert f"edgeproxy_udp_evicted_total{labels} 7.0" in body
    assert f"edgeproxy_udp_sessions{labels} 3.0" in body


def test_shutdown_hands_traffic_back_first(daemon):
    daemon.shutdown("SIGTERM")
    assert daemon._done.wait(5)
    calls = daemon.proxy.calls
    assert calls.index(("keeper-stop", True)) < calls.index("stop")
    assert daemon.exit_code == 0


def test_sd_notify_ready_watchdog_and_stopping(tmp_path):
    import os
    import socket

    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(2)
    config = build_config({"config": None, "healthz_bind_address": "127.0.0.1:0",
                           "metrics_bind_address": "127.0.0.1:0", "drain_grace": "0s"})
    proxy = FakeProxy()
    d = Daemon(config, factories={"computer": FakeComputer, "proxy": lambda: proxy,
                                  "keeper": lambda: FakeKeeper(proxy.calls),
                                  "render": lambda: lambda ports, pp, listen: dict(pp),
                                  "dns": FakeDns},
               watch=False,
               environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000",
                        "WATCHDOG_PID": str(os.getpid())})
    d.start()
    gevent.sleep(0.12)  # pings every 50 ms (half of WATCHDOG_USEC)
    d.shutdown("SIGTERM")
    assert d._done.wait(5)
    messages = []
    server.settimeout(0.2)
    try:
        while True:
            messages.append(server.recv(100).decode())
    except socket.timeout:
        pass
    server.close()
    assert messages[0].startswith("READY=1")
    assert messages.count("WATCHDOG=1") >= 2
    assert messages[-1] == "STOPPING=1"


def test_sighup_rereads_the_config_file_live_and_restart_only_settings(daemon, tmp_path):
    config_file = tmp_path / "edgeproxy.yaml"

    def reread():
        return build_config({"config": str(config_file), "healthz_bind_address": "127.0.0.1:0",
                             "metrics_bind_address": "127.0.0.1:0",
                             "manifests": "/nonexistent"})

    daemon.reread_config = reread
    daemon.computer.filter_mode = None
    daemon.keeper.check_period = 1.0
    config_file.write_text("iptablesSyncPeriod: 3s\nudpTimeout: 45s\n"
                           "serviceFilterMode: FilterIfLabelDoesNotExists\n"
                           "proxyPortRange: 40000-40999\n")
    daemon.reload()
    assert daemon.keeper.check_period == 3.0
    assert daemon.proxy.udp_timeout == 45.0
    assert daemon.computer.filter_mode.value == "FilterIfLabelDoesNotExists"
    assert daemon.config.sync_period == 3.0
    assert daemon.config.proxy_port_range != "40000-40999"  # bound already: next start
    assert daemon.counters.config_reloads_total == 1

    config_file.write_text("iptablesSyncPeriod: soon\n")  # invalid: the running one stays
    daemon.reload()
    assert daemon.config.sync_period == 3.0
    assert daemon.counters.config_errors_total == 1


def test_metrics_an_operator_expects(daemon):
    """Build info, kube-proxy's last-sync timestamp, process/python collectors, health, the
    descriptor budget and the parse worker, and per-protocol series only where they apply."""
    from edgeproxy.buildinfo import build_commit

    tcp = ServicePortKey("default", "a", "", Protocol.TCP)
    udp = ServicePortKey("kube-system", "dns", "dns", Protocol.UDP)
    daemon.proxy.stats = lambda: {tcp: ServiceStats(active_connections=2),
                                  udp: ServiceStats(udp_sessions=3)}
    body = _call(metrics_app(daemon), "/metrics")[1]
    assert f'commit="{build_commit()}"' in body and "edgeproxy_build_info{" in body
    stamp = re.search(r"^edgeproxy_sync_proxy_rules_last_timestamp_seconds (\S+)$", body, re.M)
    assert stamp and abs(float(stamp.group(1)) - time.time()) < 60
    for family in ("process_resident_memory_bytes", "process_open_fds", "python_info",
                   "python_gc_collections_total"):
        assert family in body, family
    assert "edgeproxy_healthy 1.0" in body
    assert 'edgeproxy_descriptor_budget{state="total"} 1000.0' in body
    assert 'edgeproxy_descriptor_budget_exhausted_total{protocol="UDP"} 3.0' in body
    assert 'edgeproxy_parse_worker_restarts_total{why="recycled"} 2.0' in body
    tcp_labels = '{protocol="TCP",service="default/a"}'
    udp_labels = '{protocol="UDP",service="kube-system/dns:dns"}'
    assert f"edgeproxy_active_connections{tcp_labels}" in body
    assert f"edgeproxy_udp_sessions{tcp_labels}" not in body  # TCP ports have no sessions
    assert f"edgeproxy_active_connections{udp_labels}" not in body
    assert f"edgeproxy_udp_sessions{udp_labels} 3.0" in body
    assert "edgeproxy_services_proxied" not in body  # it counted service ports: renamed


def test_metrics_are_served_by_prometheus_client_with_negotiation_and_gzip(daemon):
    import gzip

    app = metrics_app(daemon)
    headers = {}

    def start_response(status, response_headers):
        headers["status"] = status
        headers.update(response_headers)

    environ = {"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET", "QUERY_STRING": "",
               "HTTP_ACCEPT": "application/openmetrics-text; version=1.0.0",
               "HTTP_ACCEPT_ENCODING": "gzip"}
    data = b"".join(app(environ, start_response))
    assert headers["status"].startswith("200")
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert headers.get("Content-Encoding") == "gzip"
    text = gzip.decompress(data).decode()
    assert text.rstrip().endswith("# EOF") and "edgeproxy_service_ports_proxied 4" in text
    assert _call(app, "/other")[0].startswith("404")


def test_livez_and_kube_proxy_healthz_fields(daemon):
    app = healthz_app(daemon)
    assert _call(app, "/livez")[0].startswith("200")
    body = json.loads(_call(app, "/healthz")[1])
    assert set(body) >= {"lastUpdated", "currentTime", "nodeEligible", "problems"}


def test_the_dns_zone_follows_the_manifests_in_the_same_sync_and_only_when_applied(daemon):
    from edgeproxy.dns.records import build_zone
    from edgeproxy.state.allocation import AddressChange

    zone = build_zone([])
    change = AddressChange(("default", "web"), ("198.19.128.1",), ("198.19.128.2",),
                           "198.19.128.1 is the home of default/aaa")
    daemon.computer.next = Computed(state("a", "b", "c", "d"), None, 4, zone=zone,
                                    allocated={("default", "a"): ("198.19.0.10",)},
                                    address_changes=(change,))
    daemon.sync()
    assert daemon.dns.zones[-1] is zone  # same services, new records: still updated
    assert daemon.counters.cluster_ip_changes_total == 1
    doc = build_status(daemon)
    assert doc["allocatedClusterIPs"] == [{"service": "default/a",
                                           "clusterIPs": ["198.19.0.10"]}]
    assert [s["allocated"] for s in doc["services"] if s["service"] == "default/a"] == [True]
    assert doc["dns"]["domain"] == "cluster.local" and "allocated" in render_text(doc)
    body = _call(metrics_app(daemon), "/metrics")[1]
    assert "edgeproxy_cluster_ip_changes_total 1.0" in body
    assert 'edgeproxy_dns_queries_total{result="answer",type="A"} 3.0' in body
    assert 'edgeproxy_dns_upstream_errors_total{upstream="192.0.2.53:53"} 2.0' in body
    # A held mass removal keeps the last good zone too.
    held_zone = build_zone([])
    daemon.computer.next = Computed(state("a"), None, 1, zone=held_zone)
    daemon.sync()
    assert daemon.held is not None and daemon.dns.zones[-1] is zone


def test_manifest_error_series_are_bounded(daemon):
    from edgeproxy.daemon.metrics import MAX_ERROR_FILES, OTHER_FILES

    errors = tuple(ManifestError(f"f{i:03d}.yaml", None, None, None, None, "", "bad")
                   for i in range(MAX_ERROR_FILES + 10) for _ in range(1 + (i < 5)))
    daemon.last_computed = Computed(state("a"), None, 1, errors=errors)
    body = _call(metrics_app(daemon), "/metrics")[1]
    series = [line for line in body.splitlines() if line.startswith("edgeproxy_manifest_errors{")]
    assert len(series) == MAX_ERROR_FILES + 1
    assert f'edgeproxy_manifest_errors{{file="{OTHER_FILES}"}} 10.0' in body
    assert 'edgeproxy_manifest_errors{file="f000.yaml"} 2.0' in body  # the worst are kept


def test_sighup_applies_node_identity_and_endpoint_health_settings(daemon, tmp_path):
    config_file = tmp_path / "edgeproxy.yaml"
    daemon.reread_config = lambda: build_config({
        "config": str(config_file), "healthz_bind_address": "127.0.0.1:0",
        "metrics_bind_address": "127.0.0.1:0", "manifests": "/nonexistent"})
    config_file.write_text("zone: zone-b\nnodeName: edge-7\nlocalityAware: false\n"
                           "outlierConsecutiveFailures: 5\n")
    daemon.reload()
    node_calls = [c for c in daemon.proxy.calls if c[0] == "configure_endpoints"]
    assert len(node_calls) == 1
    _, node, locality = node_calls[0]
    assert (node.name, node.zone, locality) == ("edge-7", "zone-b", False)
    assert build_status(daemon)["node"] == {"name": "edge-7", "zone": "zone-b",
                                            "localityAware": False}
    config_file.write_text("zone: zone-b\nnodeName: edge-7\nlocalityAware: false\n"
                           "outlierConsecutiveFailures: 5\nudpTimeout: 9s\n")
    daemon.reload()  # nothing of the endpoint settings changed: not re-applied
    assert len([c for c in daemon.proxy.calls if c[0] == "configure_endpoints"]) == 1

"""Every setting of `edgeproxy run` in one table: flag, config-file field, type, default, help.

The table is the single source for the argparse flags, for merging the config file (flags win),
and for the test that keeps schemas/config.schema.json in step with the flags. Stdlib only: it
is imported while the CLI parser is built, before gevent monkey-patches anything.

Flag names follow kube-proxy where kube-proxy has the setting (`--healthz-bind-address`,
`--iptables-sync-period`, `--udp-timeout`, `--proxy-port-range`, ...).
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from edgeproxy.daemon.durations import DurationError, parse_duration
from edgeproxy.model import BACKEND_CHOICES, DEFAULT_UDP_TIMEOUT_SECONDS, FILTER_MODES

LOG_FORMATS = ("text", "json")


class OptionError(ValueError):
    """A setting has a bad value; the message names the setting."""


def parse_host_port(text: str) -> tuple[str, int]:
    """'127.0.0.1:10266', '[::1]:10266' or ':10266' (all addresses) -> (host, port)."""
    value = str(text).strip()
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:10266)")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "":
        host = "0.0.0.0"
    ipaddress.ip_address(host)  # raises ValueError naming the address
    return host, port


def _port_range(text: str) -> str:
    """kube-proxy syntax 'A-B' or 'A+N' (or '' for kernel-chosen); checked here, parsed later."""
    value = str(text).strip()
    if value == "":
        return value
    for sep in ("-", "+"):
        if sep in value:
            left, _, right = value.partition(sep)
            if left.isdigit() and right.isdigit():
                first = int(left)
                last = int(right) if sep == "-" else first + int(right)
                if 1 <= first <= last <= 65535:
                    return value
    raise ValueError(f"{text!r} is not a port range (e.g. 61000-64999 or 61000+3999)")


def _within(convert: Callable[[Any], float], low: float,
            high: float | None = None) -> Callable[[Any], Any]:
    """``convert``, refusing values below ``low`` or above ``high`` (None: no upper bound)."""

    def check(value: Any) -> Any:
        number = convert(value)
        if number < low or (high is not None and number > high):
            bound = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
            raise ValueError(f"{value!r} is not {bound}")
        return number

    return check


_ratio = _within(float, 0.0, 1.0)
_positive_int = _within(int, 1)
_verbosity = _within(int, 0, 10)


def _ipv4(value: Any) -> str:
    return str(ipaddress.IPv4Address(str(value)))


def _ipv6_or_empty(value: Any) -> str:
    return "" if str(value) == "" else str(ipaddress.IPv6Address(str(value)))


def _ipv4_or_empty(value: Any) -> str:
    return "" if str(value) == "" else _ipv4(value)


def _service_cidr(value: Any) -> str:
    """One CIDR per family, comma-separated (or a list); '' turns allocation off."""
    from edgeproxy.state.allocation import ServiceCIDRs

    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return str(ServiceCIDRs.parse([str(i) for i in items]))


def _upstreams(value: Any) -> tuple[str, ...]:
    """IP, IP:PORT or [IPv6]:PORT, comma-separated (or a list); empty: /etc/resolv.conf."""
    from edgeproxy.dns.upstream import parse_upstream

    items = value if isinstance(value, (list, tuple)) else \
        [part for part in str(value).split(",") if part.strip()]
    for item in items:
        parse_upstream(str(item))
    return tuple(str(item).strip() for item in items)


def _domain(value: Any) -> str:
    text = str(value).strip().rstrip(".").lower()
    labels = text.split(".")
    if not text or len(text) > 200 or not all(
            label and len(label) < 64 and label.replace("-", "").isalnum() for label in labels):
        raise ValueError(f"{value!r} is not a domain name (e.g. cluster.local)")
    return text


def _ttl_seconds(value: Any) -> int:
    seconds = parse_duration(value)
    if not 0 <= seconds <= 3600:
        raise ValueError(f"{value!r} is not between 0s and 1h")
    return int(seconds)


def _paths(value: Any) -> tuple[str, ...]:
    """A list of directories (config file) or a comma-separated one (flag); absolute only."""
    items = value if isinstance(value, (list, tuple)) else \
        [part for part in str(value).split(",") if part.strip()]
    out = []
    for item in items:
        text = str(item).strip()
        if not text.startswith("/"):
            raise ValueError(f"{text!r} is not an absolute path")
        out.append(text)
    return tuple(out)


_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ZONE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")  # a label value


def _node_name(value: Any) -> str:
    """'' (the host name, looked up at start) or a node name, lowercased like kube-proxy's
    --hostname-override."""
    text = str(value).strip().lower()
    if text and (len(text) > 253 or not _NODE_NAME.match(text)):
        raise ValueError(f"{value!r} is not a node name (a lowercase DNS subdomain)")
    return text


def _zone(value: Any) -> str:
    text = str(value).strip()
    if len(text) > 63 or not _ZONE.match(text):
        raise ValueError(f"{value!r} is not a zone (a label value, e.g. eu-west-1a)")
    return text


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"{value!r} is not true or false")


@dataclass(frozen=True)
class Option:
    """One setting. ``convert`` turns a flag string, a config value or the default (written as a
    user would write it) into the typed value."""

    dest: str  # attribute name on DaemonConfig and argparse namespace
    flag: str  # long flag
    key: str  # config-file field (camelCase, like KubeProxyConfiguration)
    default: Any
    convert: Callable[[Any], Any]
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    is_bool: bool = False

    def parse(self, value: Any, origin: str) -> Any:
        """Typed value, or OptionError naming the flag or field the value came from."""
        if self.choices is not None and value not in self.choices:
            raise OptionError(f"{origin}: {value!r} is not one of {', '.join(self.choices)}")
        try:
            return self.convert(value)
        except (ValueError, TypeError, DurationError) as exc:
            raise OptionError(f"{origin}: {exc}") from None


def _duration_option(dest: str, flag: str, key: str, default: str, help: str) -> Option:
    return Option(dest, flag, key, default, parse_duration,
                  f"{help} (Go duration, e.g. 100ms, 1s, 5m; default {default})", "DURATION")


OPTIONS: tuple[Option, ...] = (
    Option("manifests", "--manifests", "manifests", "/etc/edgeproxy", str,
           "directory of Service/Endpoints/EndpointSlice manifests to serve "
           "(default /etc/edgeproxy)", "DIR"),
    Option("service_filter_mode", "--service-filter-mode", "serviceFilterMode",
           "FilterIfLabelExists", str,
           "EdgeMesh label filter: skip services carrying the service-proxy-name label "
           "(FilterIfLabelExists, default) or proxy only those (FilterIfLabelDoesNotExists)",
           choices=FILTER_MODES),
    Option("iptables_backend", "--iptables-backend", "iptablesBackend", "auto", str,
           "rule backend: auto (detect like kube-proxy), legacy, nft or nftables",
           choices=BACKEND_CHOICES),
    Option("proxy_port_range", "--proxy-port-range", "proxyPortRange", "61000-64999",
           _port_range,
           "local ports for the proxy listeners, A-B or A+N; '' lets the kernel choose "
           "(default 61000-64999, outside ip_local_port_range)", "RANGE"),
    _duration_option("udp_timeout", "--udp-timeout", "udpTimeout",
                     f"{DEFAULT_UDP_TIMEOUT_SECONDS:g}s",
                     "idle time after which a UDP client session is closed"),
    _duration_option("tcp_idle_timeout", "--tcp-idle-timeout", "tcpIdleTimeout", "0s",
                     "close TCP connections idle this long; 0 means never"),
    _duration_option("sync_period", "--iptables-sync-period", "iptablesSyncPeriod", "1s",
                     "how often the chains are checked and repaired (order behind kube-proxy, "
                     "missing chains); /healthz fails when a change waits twice this long"),
    _duration_option("min_sync_period", "--iptables-min-sync-period", "iptablesMinSyncPeriod",
                     "100ms", "minimum time between two syncs of manifests to rules"),
    _duration_option("watch_debounce", "--watch-debounce", "watchDebounce", "50ms",
                     "wait this long after a file event for more events before syncing"),
    _duration_option("rescan_period", "--rescan-period", "rescanPeriod", "30s",
                     "full rescan of the manifest directory as a safety net for missed events"),
    Option("healthz_bind_address", "--healthz-bind-address", "healthzBindAddress",
           "127.0.0.1:10266", parse_host_port,
           "HOST:PORT for /healthz, /readyz, /status and POST /confirm-removal "
           "(default 127.0.0.1:10266; kube-proxy uses 10256); port 0 disables", "HOST:PORT"),
    Option("metrics_bind_address", "--metrics-bind-address", "metricsBindAddress",
           "127.0.0.1:10267", parse_host_port,
           "HOST:PORT for /metrics (default 127.0.0.1:10267, clear of the Kubernetes ports: "
           "kube-proxy uses 10249, kube-scheduler 10259); "
           "port 0 disables", "HOST:PORT"),
    Option("log_format", "--log-format", "logFormat", "text", str,
           "text (key=value) or json, one line per event", choices=LOG_FORMATS),
    Option("verbosity", "--v", "verbosity", 0, _verbosity,
           "log verbosity: 0 info, 1+ debug (also -v, -vv)", "N"),
    Option("allow_insecure_manifests", "--allow-insecure-manifests", "allowInsecureManifests",
           False, _bool,
           "run as root even when the manifest directory is writable by group/other or owned "
           "by another user (anyone who can write there steers this node's traffic)",
           is_bool=True),
    Option("trusted_manifest_roots", "--trusted-manifest-roots", "trustedManifestRoots", [],
           _paths,
           "directories outside the manifest directory that its symlinks may lead into "
           "(comma-separated; default none: a symlink out of the manifest root is refused)",
           "DIR[,DIR...]"),
    Option("cleanup_on_exit", "--cleanup-on-exit", "cleanupOnExit", True, _bool,
           "remove the rules on SIGTERM so kube-proxy takes the traffic back "
           "(--no-cleanup-on-exit keeps them)", is_bool=True),
    _duration_option("drain_grace", "--drain-grace", "drainGrace", "30s",
                     "on removal of a service and on exit, let open TCP connections finish "
                     "for this long"),
    Option("max_removal_ratio", "--max-removal-ratio", "maxRemovalRatio", 0.5, _ratio,
           "hold a sync that would remove more than this share of the proxied service ports "
           "until an operator runs `edgeproxy confirm-removal` (default 0.5; 1 disables)",
           "RATIO"),
    Option("state_dir", "--state-dir", "stateDir", "/run/edgeproxy", str,
           "where proxy-port allocations are kept across restarts (default /run/edgeproxy)",
           "DIR"),
    Option("max_connections_per_service", "--max-connections-per-service",
           "maxConnectionsPerService", 10000, _positive_int,
           "concurrent TCP connections per service port before new ones wait (default 10000)",
           "N"),
    Option("listen_address", "--listen-address", "listenAddress", "169.254.96.17", _ipv4,
           "IPv4 address on the edgeproxy interface the listeners bind and the rules DNAT to",
           "IP"),
    Option("listen_address_v6", "--listen-address-v6", "listenAddressV6", "fd65:6467:6570::1",
           _ipv6_or_empty, "IPv6 listen address ('' disables IPv6 capture)", "IP"),
    Option("listen_interface", "--listen-interface", "listenInterface", "edgeproxy0", str,
           "dummy interface holding the listen addresses (default edgeproxy0)", "NAME"),
    Option("service_cidr", "--service-cidr", "serviceCIDR", "", _service_cidr,
           "give Services without a clusterIP an address from this range (one CIDR per "
           "family, comma-separated, primary family first; default '': such Services are "
           "skipped); the address is a hash of namespace/name, the same on every node",
           "CIDR[,CIDR]"),
    Option("dns", "--dns", "dns", True, _bool,
           "answer the cluster's DNS names from the manifests and forward the rest "
           "(--no-dns turns the DNS server off)", is_bool=True),
    Option("dns_listen_address", "--dns-listen-address", "dnsListenAddress", "169.254.96.53",
           _ipv4_or_empty,
           "IPv4 address of the DNS server, put on the listen interface (kubelet's / "
           "edgecore's clusterDNS); '' for none", "IP"),
    Option("dns_listen_address_v6", "--dns-listen-address-v6", "dnsListenAddressV6",
           "fd65:6467:6570::53", _ipv6_or_empty, "IPv6 address of the DNS server ('' for none)",
           "IP"),
    Option("dns_port", "--dns-port", "dnsPort", 53, _within(int, 1, 65535),
           "port of the DNS server (default 53)", "PORT"),
    Option("cluster_domain", "--cluster-domain", "clusterDomain", "cluster.local", _domain,
           "the cluster's DNS domain, as kubelet's --cluster-domain (default cluster.local)",
           "DOMAIN"),
    Option("dns_ttl", "--dns-ttl", "dnsTTL", "5s", _ttl_seconds,
           "TTL of the cluster records (Go duration, 0s to 1h; default 5s, as CoreDNS)",
           "DURATION"),
    Option("dns_upstreams", "--dns-upstreams", "dnsUpstreams", [], _upstreams,
           "resolvers for names outside the cluster domain, IP[:PORT] comma-separated "
           "(default: the nameservers of /etc/resolv.conf, never edgeproxy itself)",
           "IP[:PORT][,...]"),
    _duration_option("dns_upstream_timeout", "--dns-upstream-timeout", "dnsUpstreamTimeout",
                     "2s", "how long one forwarded query may wait for the upstreams, retries "
                     "included"),
    Option("dns_cache_size", "--dns-cache-size", "dnsCacheSize", 10000, _positive_int,
           "forwarded answers kept (default 10000, as CoreDNS's cache)", "N"),
    _duration_option("dns_serve_stale", "--dns-serve-stale", "dnsServeStale", "24h",
                     "serve an expired forwarded answer for this long after its TTL when no "
                     "upstream answers (RFC 8767); 0 disables"),
    Option("dns_max_tcp_clients", "--dns-max-tcp-clients", "dnsMaxTcpClients", 256,
           _positive_int, "DNS clients served over TCP at once (default 256)", "N"),
    # Which endpoints this node uses, and remembering which answer (docs/endpoints.md).
    Option("node_name", "--hostname-override", "nodeName", "", _node_name,
           "this node's name as EndpointSlices' nodeName spell it (default: the host name, "
           "lowercased, as kube-proxy)", "NAME"),
    Option("zone", "--zone", "zone", "", _zone,
           "this node's topology.kubernetes.io/zone, for zone hints and locality (default "
           "none)", "ZONE"),
    Option("locality_aware", "--locality-aware", "localityAware", True, _bool,
           "prefer endpoints on this node, then in this zone, then the rest "
           "(--no-locality-aware balances over all of them)", is_bool=True),
    Option("outlier_consecutive_failures", "--outlier-consecutive-failures",
           "outlierConsecutiveFailures", 3, _within(int, 0, 1000),
           "eject an endpoint after this many failed dials in a row (0: never eject; "
           "default 3)", "N"),
    _duration_option("outlier_base_ejection_time", "--outlier-base-ejection-time",
                     "outlierBaseEjectionTime", "1s",
                     "first ejection's back-off, doubled for each ejection in a row"),
    _duration_option("outlier_max_ejection_time", "--outlier-max-ejection-time",
                     "outlierMaxEjectionTime", "30s", "longest ejection back-off"),
    _duration_option("health_probe_interval", "--health-probe-interval", "healthProbeInterval",
                     "1s", "how often an ejected TCP endpoint is probed with a connect "
                     "(0 disables probes)"),
    _duration_option("health_probe_timeout", "--health-probe-timeout", "healthProbeTimeout",
                     "1s", "how long a probe waits for the endpoint's answer"),
    Option("health_probe_concurrency", "--health-probe-concurrency", "healthProbeConcurrency",
           16, _within(int, 1, 1024), "probes in flight at once, all services together "
           "(default 16)", "N"),
)

OPTIONS_BY_DEST = {option.dest: option for option in OPTIONS}
OPTIONS_BY_KEY = {option.key: option for option in OPTIONS}


def add_flag(parser: argparse.ArgumentParser, option: Option, help_text: str) -> None:
    """``option`` as a flag of ``parser`` (default None, so merging can tell 'not given'); the
    one spelling `edgeproxy run` and every subcommand share."""
    if option.is_bool:
        parser.add_argument(option.flag, dest=option.dest, default=None,
                            action=argparse.BooleanOptionalAction, help=help_text)
    else:
        parser.add_argument(option.flag, dest=option.dest, default=None,
                            choices=option.choices, metavar=option.metavar, help=help_text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option as a flag. Defaults stay None so merging can tell 'not given'."""
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="YAML configuration file (schemas/config.schema.json); flags win "
                             "over it. Must not be inside the manifest directory.")
    for option in OPTIONS:
        if option.dest == "verbosity":
            parser.add_argument("-v", dest="verbosity", action="count", default=None,
                                help="more verbose logs (repeatable)")
            parser.add_argument(option.flag, dest="verbosity", type=int, default=None,
                                metavar=option.metavar, help=option.help)
        else:
            add_flag(parser, option, option.help)


def merge_values(options: Iterable[Option], given: Mapping[str, Any],
                 file_values: Mapping[str, Any], config_label: str | None) -> dict[str, Any]:
    """Each option's typed value: flag > config file > default. OptionError names the
    setting and where the bad value came from (``config_label``: the file as the user named
    it)."""
    values: dict[str, Any] = {}
    for option in options:
        flag_value = given.get(option.dest)
        if flag_value is not None:
            values[option.dest] = option.parse(flag_value, option.flag)
        elif option.key in file_values:
            values[option.dest] = option.parse(file_values[option.key],
                                               f"config file {config_label}: {option.key}")
        else:
            values[option.dest] = option.parse(option.default, f"default of {option.flag}")
    return values


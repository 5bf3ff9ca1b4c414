"""`edgeproxy run` settings: defaults < config file < flags, into one immutable `DaemonConfig`.

The config file is YAML validated against schemas/config.schema.json (through the same
validation entry point as the manifests), so a typo'd or mistyped field is an error naming the
file and the field instead of a silently ignored setting. The config file must live outside the
manifest directory: the manifest loader reads every *.yaml there, and a config file inside it
would at best be counted as an ignored kind and at worst be edited by the mirror that feeds the
manifests. We refuse that layout at start rather than guess.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from edgeproxy.daemon.options import OPTIONS, OptionError, merge_values

CONFIG_SCHEMA = "config.schema.json"
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes; refuse surprises


class ConfigError(Exception):
    """The configuration cannot be used; str() is the complete message for the user."""


@dataclass(frozen=True)
class DaemonConfig:
    manifests: Path
    service_filter_mode: str
    iptables_backend: str
    proxy_port_range: str
    udp_timeout: float
    tcp_idle_timeout: float  # 0 = no idle timeout
    sync_period: float
    min_sync_period: float
    watch_debounce: float
    rescan_period: float
    healthz_bind_address: tuple[str, int]
    metrics_bind_address: tuple[str, int]
    log_format: str
    verbosity: int
    allow_insecure_manifests: bool
    trusted_manifest_roots: tuple[str, ...]
    cleanup_on_exit: bool
    drain_grace: float
    max_removal_ratio: float
    state_dir: Path
    max_connections_per_service: int
    listen_address: str
    listen_address_v6: str
    listen_interface: str
    service_cidr: str = ""
    dns: bool = True
    dns_listen_address: str = "169.254.96.53"
    dns_listen_address_v6: str = "fd65:6467:6570::53"
    dns_port: int = 53
    cluster_domain: str = "cluster.local"
    dns_ttl: int = 5
    dns_upstreams: tuple[str, ...] = ()
    dns_upstream_timeout: float = 2.0
    dns_cache_size: int = 10000
    dns_serve_stale: float = 86400.0
    dns_max_tcp_clients: int = 256
    # Which endpoints this node uses (docs/endpoints.md); build_config fills in the host name.
    node_name: str = ""
    zone: str = ""
    locality_aware: bool = True
    outlier_consecutive_failures: int = 3
    outlier_base_ejection_time: float = 1.0
    outlier_max_ejection_time: float = 30.0
    health_probe_interval: float = 1.0
    health_probe_timeout: float = 1.0
    health_probe_concurrency: int = 16
    config_file: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view for /status (flags spelled as in the config file)."""
        out: dict[str, Any] = {}
        for option in OPTIONS:
            value = getattr(self, option.dest)
            if option.dest.endswith("_bind_address"):
                value = f"{value[0]}:{value[1]}"
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Path):
                value = str(value)
            out[option.key] = value
        out["configFile"] = str(self.config_file) if self.config_file else None
        return out


def _validate(document: Any) -> list[tuple[str, str]]:
    from edgeproxy.manifests.validation import validate_instance

    return list(validate_instance(CONFIG_SCHEMA, document))


def read_config_file(path: Path) -> dict[str, Any]:
    """The validated mapping of a config file; ConfigError naming file and field otherwise."""
    import yaml

    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        documents = [doc for doc in yaml.load_all(data, Loader=getattr(yaml, "CSafeLoader",
                                                                          yaml.SafeLoader))
                     if doc is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}") from None
    if not documents:
        return {}
    if len(documents) > 1:
        raise ConfigError(f"config file {path}: expected one YAML document, found "
                          f"{len(documents)}")
    document = documents[0]
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings, found "
                          f"{type(document).__name__}")
    problems = _validate(document)
    if problems:
        lines = [f"config file {path}: {field or '(top level)'}: {message}"
                 for field, message in problems]
        raise ConfigError("\n".join(lines))
    return document


def default_node_name() -> str:
    """The host name, lowercased and trimmed: kube-proxy's default node name (and the
    kubelet's, so EndpointSlices' nodeName says the same unless a name was overridden)."""
    import socket

    return socket.gethostname().strip().lower()


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
    except ValueError:
        return False
    return True


def build_config(args: argparse.Namespace | Mapping[str, Any]) -> DaemonConfig:
    """Merge defaults, the config file named by ``--config`` and the given flags (flags win)."""
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    config_path = Path(given["config"]) if given.get("config") else None
    file_values: dict[str, Any] = read_config_file(config_path) if config_path else {}
    try:
        values = merge_values(OPTIONS, given, file_values,
                              str(config_path) if config_path else None)
    except OptionError as exc:
        raise ConfigError(str(exc)) from None
    values["manifests"] = Path(values["manifests"])
    if not values["node_name"]:
        values["node_name"] = default_node_name()
    if values["outlier_base_ejection_time"] <= 0 or \
            values["outlier_max_ejection_time"] < values["outlier_base_ejection_time"]:
        raise ConfigError("--outlier-base-ejection-time must be greater than 0 and at most "
                          "--outlier-max-ejection-time")
    if values["health_probe_timeout"] <= 0:
        raise ConfigError("--health-probe-timeout must be greater than 0")
    values["state_dir"] = Path(values["state_dir"])
    if values["min_sync_period"] > values["rescan_period"] > 0:
        raise ConfigError("--iptables-min-sync-period must not exceed --rescan-period")
    if values["sync_period"] <= 0:
        raise ConfigError("--iptables-sync-period must be greater than 0")
    if values["dns"] and not (values["dns_listen_address"] or values["dns_listen_address_v6"]):
        raise ConfigError("--dns needs --dns-listen-address or --dns-listen-address-v6 "
                          "(or turn it off with --no-dns)")
    if values["dns_upstream_timeout"] <= 0:
        raise ConfigError("--dns-upstream-timeout must be greater than 0")
    if config_path is not None:
        resolved_config = config_path.resolve()
        resolved_root = values["manifests"].resolve()
        if _inside(resolved_config, resolved_root) or _inside(
                config_path.absolute(), values["manifests"].absolute()):
            raise ConfigError(
                f"config file {config_path} is inside the manifest directory "
                f"{values['manifests']}: everything there is read as manifests and may be "
                "rewritten by the mirror that feeds them; put it elsewhere, e.g. "
                "/etc/edgeproxy.yaml")
    known = {f.name for f in fields(DaemonConfig)}
    return DaemonConfig(config_file=config_path, **{k: v for k, v in values.items() if k in known})

"""What a changed configuration means for a running daemon (SIGHUP re-reads the config file).

`plan_reconfigure` is pure: it compares the running `DaemonConfig` with a freshly built one and
sorts every changed setting into "applied now" or "needs a restart". Settings that name a
socket, a port range, a directory or the iptables backend are baked into what is already
bound, reserved or written; changing them under running connections would strand them, so they
wait for a restart and the log says so. Everything else (sync timing, filter mode, timeouts,
logging, the removal guard) takes effect at once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from edgeproxy.daemon.config import DaemonConfig

# Changing these means re-binding, re-reserving or moving state: only at the next start.
RESTART_ONLY = frozenset({
    "manifests", "iptables_backend", "proxy_port_range", "healthz_bind_address",
    "metrics_bind_address", "state_dir", "listen_address", "listen_address_v6",
    "listen_interface", "allow_insecure_manifests", "trusted_manifest_roots", "config_file",
    "dns", "dns_listen_address", "dns_listen_address_v6", "dns_port", "dns_max_tcp_clients",
})


@dataclass(frozen=True)
class ReconfigurePlan:
    live: tuple[str, ...]           # changed and applied now
    needs_restart: tuple[str, ...]  # changed, kept as running until the next start
    config: DaemonConfig            # the running config after the live part is applied

    @property
    def changed(self) -> bool:
        return bool(self.live or self.needs_restart)


def plan_reconfigure(running: DaemonConfig, new: DaemonConfig) -> ReconfigurePlan:
    live: list[str] = []
    restart: list[str] = []
    merged = {}
    for field in fields(DaemonConfig):
        old_value, new_value = getattr(running, field.name), getattr(new, field.name)
        if old_value == new_value:
            merged[field.name] = old_value
        elif field.name in RESTART_ONLY:
            restart.append(field.name)
            merged[field.name] = old_value
        else:
            live.append(field.name)
            merged[field.name] = new_value
    return ReconfigurePlan(tuple(live), tuple(restart), DaemonConfig(**merged))

"""The rule set a one-shot command shows or checks: manifests -> state -> proxy ports -> rules.

Proxy ports come from the daemon's own allocation file (``STATE_DIR/ports.json``) when it is
readable, so `edgeproxy rules` on a running node prints the ports actually in use; keys the file
does not know get the allocator's deterministic first choice (a hash of the key within the
range), which is what the daemon picks too unless that port is taken. Nothing is bound.
"""

from __future__ import annotations

from pathlib import Path

from edgeproxy.forwarding.ports import (DEFAULT_PORT_RANGE, STATE_FILE_NAME, PortAllocator,
                                        PortRange, second_listener_name)
from edgeproxy.model import DesiredState, FilterMode, ListenAddresses

from .render import RuleSet, render_rules


class PreviewError(RuntimeError):
    pass


def load_desired_state(manifests: Path, filter_mode: FilterMode) -> DesiredState:
    from edgeproxy.manifests import load_state

    if not manifests.exists():
        raise PreviewError(f"manifest directory {manifests} does not exist")
    return load_state([manifests], filter_mode=filter_mode)


def _allocator(state_dir: Path | None, port_range: PortRange) -> PortAllocator:
    state_file = state_dir / STATE_FILE_NAME if state_dir is not None else None
    try:
        if state_file is not None and not state_file.is_file():
            state_file = None
    except OSError:  # not readable by this (unprivileged) user: show first choices
        state_file = None
    return PortAllocator(port_range, state_file)


def preview_proxy_ports(state: DesiredState, state_dir: Path | None,
                        port_range: PortRange = DEFAULT_PORT_RANGE,
                        allocator: PortAllocator | None = None) -> dict:
    allocator = allocator or _allocator(state_dir, port_range)
    if port_range.kernel_chosen:  # nothing deterministic to show: use a visible placeholder
        return {key: 0 for key in state.ports}
    return {key: allocator.allocate(str(key), lambda port: port) for key in sorted(state.ports)}


def preview_second_ports(state: DesiredState, allocator: PortAllocator,
                         port_range: PortRange = DEFAULT_PORT_RANGE) -> dict:
    """The second listeners' ports (ports whose traffic policies need one), allocated after
    the main ones as the daemon does."""
    keys = sorted(k for k, sp in state.ports.items() if sp.second_listener)
    if port_range.kernel_chosen:
        return {key: 0 for key in keys}
    return {key: allocator.allocate(second_listener_name(key), lambda port: port)
            for key in keys}


def preview_ruleset(state: DesiredState, listen: ListenAddresses, state_dir: Path | None,
                    port_range: PortRange = DEFAULT_PORT_RANGE) -> RuleSet:
    allocator = _allocator(state_dir, port_range)
    main = preview_proxy_ports(state, state_dir, port_range, allocator)
    return render_rules(state.ports, main, listen,
                        second_ports=preview_second_ports(state, allocator, port_range))

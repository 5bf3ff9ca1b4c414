"""Which changed settings a SIGHUP applies at once and which wait for the next start."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgeproxy.daemon.config import build_config
from edgeproxy.daemon.reconfigure import RESTART_ONLY, plan_reconfigure


def base():
    return build_config({"config": None, "manifests": "/srv/manifests"})


def test_unchanged_config_plans_nothing():
    plan = plan_reconfigure(base(), base())
    assert not plan.changed and plan.config == base()


def test_live_settings_apply_and_bound_ones_wait_for_restart():
    running = base()
    fresh = replace(running, udp_timeout=45.0, sync_period=5.0, manifests=Path("/elsewhere"),
                    healthz_bind_address=("127.0.0.1", 9999))
    plan = plan_reconfigure(running, fresh)
    assert set(plan.live) == {"udp_timeout", "sync_period"}
    assert set(plan.needs_restart) == {"manifests", "healthz_bind_address"}
    assert plan.config.udp_timeout == 45.0 and plan.config.sync_period == 5.0
    assert plan.config.manifests == running.manifests
    assert plan.config.healthz_bind_address == running.healthz_bind_address


def test_restart_only_names_real_fields():
    assert RESTART_ONLY <= set(vars(base()).keys()) | {"config_file"}

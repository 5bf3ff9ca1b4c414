"""Manifest changes through each mirror style while a client keeps requesting.

Issue 5 "Done when": add, change, break, fix and delete manifest files in each mirror style
(atomic rename, symlink swap of the whole directory like git-sync, the ConfigMap `..data` swap,
in-place rewrite in several chunks) while a client keeps requesting: no request to an unchanged
service fails; status and metrics reflect what happened; the mass-removal guard holds when the
directory is emptied.
"""

from __future__ import annotations

import time

import pytest

from edgeproxy.demo.clients import wait_until
from edgeproxy.demo.kube_proxy import StandInKubeProxy
from edgeproxy.demo.topology import METRICS_PORT, METRICS_VIP, WEB_BACKENDS
from tests.e2e import harness as h

pytestmark = [pytest.mark.slow, pytest.mark.netns]

LABELLED = (METRICS_VIP, METRICS_PORT, WEB_BACKENDS["web-1"], METRICS_PORT)
WEB = WEB_BACKENDS


@pytest.mark.parametrize("style", list(h.MIRRORS))
def test_add_change_break_fix_delete(style, topo, start_daemon, tmp_path):
    StandInKubeProxy(topo.node).install([LABELLED])
    mirror = h.MIRRORS[style](tmp_path / "mirror")
    daemon = start_daemon(mirror.root)
    client = h.standard_client(topo).start()
    try:
        client.wait_for_requests(2)

        mirror.write("api.yaml", h.api_manifest(WEB["web-3"]))  # add
        h.wait_api(topo, "web-3")
        assert "default/api" in h.status_services(daemon.status())

        mirror.write("api.yaml", h.api_manifest(WEB["web-2"]))  # change the endpoint
        h.wait_api(topo, "web-2")

        mirror.write("api.yaml", h.BROKEN_MANIFEST)  # break: last-good keeps serving
        assert wait_until(lambda: h.file_errors(daemon.status(), "api.yaml"),
                             timeout=5) is not None, daemon.status()
        assert h.api_answer(topo) == "web-2"
        assert h.manifest_error_metric(daemon.metrics(), "api.yaml") >= 1
        client.wait_for_requests(3)
        assert h.api_answer(topo) == "web-2"

        mirror.write("api.yaml", h.api_manifest(WEB["web-1"]))  # fix
        h.wait_api(topo, "web-1")
        assert wait_until(lambda: not h.file_errors(daemon.status(), "api.yaml"),
                             timeout=5) is not None, daemon.status()

        mirror.delete("api.yaml")  # delete: its service goes, nothing else does
        h.wait_api(topo, None)
        assert "default/api" not in h.status_services(daemon.status())
        client.wait_for_requests(3)
    finally:
        client.stop()
    client.assert_no_failures()
    h.assert_rules_once(topo.node)
    assert {"default/web", "default/echo", "kube-system/edge-dns"} <= \
        h.status_services(daemon.status())


@pytest.mark.parametrize("style", ["atomic-rename", "symlink-swap"])
def test_emptied_directory_is_held_by_the_mass_removal_guard(style, topo, start_daemon,
                                                             tmp_path):
    mirror = h.MIRRORS[style](tmp_path / "mirror")
    daemon = start_daemon(mirror.root)
    client = h.standard_client(topo).start()
    try:
        client.wait_for_requests(2)
        mirror.delete_all()
        assert wait_until(lambda: h.removal_held(daemon.status()), timeout=5) is not None, \
            daemon.status()
        time.sleep(1.0)  # several sync periods: it must stay held, not flap
        client.wait_for_requests(5)
        assert h.removal_held(daemon.status())
        assert h.guard_metric(daemon.metrics()) >= 1
    finally:
        client.stop()
    client.assert_no_failures()
    h.assert_rules_once(topo.node)
    assert {"default/web", "kube-system/edge-dns"} <= h.status_services(daemon.status())

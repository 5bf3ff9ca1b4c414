"""`edgeproxy run` refusals that happen before anything is touched (no namespace needed)."""

import os
import subprocess
import sys

import pytest


def _run(*argv):
    return subprocess.run([sys.executable, "-m", "edgeproxy", "run", *argv],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership check applies only to root")
def test_refuses_group_writable_manifests_as_root(tmp_path):
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "web.yaml").write_text("kind: Service\n")
    os.chmod(manifests, 0o775)
    result = _run("--manifests", str(manifests), "--healthz-bind-address", "127.0.0.1:0")
    assert result.returncode == 1
    assert "refusing to serve" in result.stderr and "--allow-insecure-manifests" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_config_is_a_usage_error_naming_the_field(tmp_path):
    cfg = tmp_path / "edgeproxy.yaml"
    cfg.write_text("drainGrace: forever\n")
    result = _run("--config", str(cfg))
    assert result.returncode == 2
    assert "drainGrace" in result.stderr and "Traceback" not in result.stderr

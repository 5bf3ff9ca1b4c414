"""What the tests and benchmarks read of the demo's edge node beyond what the demo needs:
`edgeproxy status -o json` and /metrics of the daemon, and one metric's value."""

from __future__ import annotations

import json

from edgeproxy.demo import daemon as demo_daemon
from edgeproxy.demo.daemon import METRICS, DaemonError, edgeproxy_argv


class Daemon(demo_daemon.Daemon):
    """The demo's `edgeproxy run` subprocess, plus the reads the tests assert on."""

    def status(self) -> dict:
        """`edgeproxy status -o json` run inside the node namespace, as an operator would."""
        result = self.node.run([*edgeproxy_argv(), "status", "-o", "json"], check=False)
        # Exit 1 with a document means "the guard holds a change": still a status.
        try:
            return json.loads(result.stdout)
        except ValueError:
            raise DaemonError(f"edgeproxy status failed ({result.returncode}): "
                              f"{result.stderr.strip()}") from None

    def metrics(self) -> str:
        code, body = self.get("/metrics", METRICS)
        if code != 200:
            raise DaemonError(f"/metrics answered {code}")
        return body

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)


def metric_value(metrics_text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """Sum of the samples of `name` whose labels include `labels` (None when there is none)."""
    total, found = 0.0, False
    for line in metrics_text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        metric, _, value = line.rpartition(" ")
        base, _, label_text = metric.partition("{")
        if base != name:
            continue
        if labels and not all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            continue
        total += float(value)
        found = True
    return total if found else None

"""The daemon's two small HTTP servers (WSGI, served by gevent.pywsgi on 127.0.0.1).

healthz server: ``/livez`` (200 while the process answers), ``/healthz`` (kube-proxy's JSON
``{"lastUpdated", "currentTime", "nodeEligible"}`` plus ``"problems"``; 503 while captured traffic cannot be served as the manifests say: a
change waiting more than twice --iptables-sync-period, the listen interface or an address
gone, a listener closed, rules that could not be applied), ``/readyz`` (200 once the first
sync was applied and everything started, and nothing of /healthz's list is wrong), ``/status`` (JSON for
`edgeproxy status`), ``POST /confirm-removal`` (apply a held mass removal).
metrics server: ``/metrics`` (prometheus-client's WSGI app: text or OpenMetrics, gzip).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from prometheus_client import make_wsgi_app

from edgeproxy.daemon.metrics import make_registry
from edgeproxy.daemon.status import build_status
from edgeproxy.daemon.views import DaemonView

_REASONS = {200: "200 OK", 404: "404 Not Found", 405: "405 Method Not Allowed",
            409: "409 Conflict", 503: "503 Service Unavailable"}


def _iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def _json(start_response: Callable, code: int, body: Any) -> Iterable[bytes]:
    data = (json.dumps(body, indent=None, default=str) + "\n").encode()
    start_response(_REASONS[code], [("Content-Type", "application/json"),
                                    ("Content-Length", str(len(data)))])
    return [data]


def healthz_app(daemon: DaemonView) -> Callable:
    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/livez":
            # The process answers: its hub runs (systemd's watchdog says the same).
            return _json(start_response, 200, {"alive": True})
        if path == "/healthz":
            problems = daemon.health_problems()
            # kube-proxy's fields (lastUpdated, currentTime, nodeEligible), then ours.
            return _json(start_response, 503 if problems else 200,
                         {"lastUpdated": _iso(daemon.last_applied_wall),
                          "currentTime": _iso(time.time()), "nodeEligible": True,
                          "problems": problems})
        if path == "/readyz":
            problems = daemon.health_problems() if daemon.ready else ["starting"]
            ready = daemon.ready and not problems
            return _json(start_response, 200 if ready else 503,
                         {"ready": ready, "problems": problems})
        if path == "/status":
            return _json(start_response, 200, build_status(daemon))
        if path == "/confirm-removal":
            if method != "POST":
                return _json(start_response, 405, {"error": "use POST"})
            if daemon.confirm_removal():
                return _json(start_response, 200, {"confirmed": True})
            return _json(start_response, 409, {"confirmed": False,
                                               "error": "no removal is being held"})
        return _json(start_response, 404, {"error": f"no such path {path}"})

    return app


def metrics_app(daemon: DaemonView) -> Callable:
    """prometheus-client's own WSGI app (text or OpenMetrics by Accept, gzip by
    Accept-Encoding, ``?name[]=`` filtering) on /metrics; 404 elsewhere."""
    exposition = make_wsgi_app(make_registry(daemon))

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") not in ("/metrics", "/metrics/"):
            return _json(start_response, 404, {"error": "see /metrics"})
        return exposition(environ, start_response)

    return app

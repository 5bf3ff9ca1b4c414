"""The daemon's two small HTTP servers (WSGI, served by gevent.pywsgi on 127.0.0.1).

healthz server: ``/healthz`` (kube-proxy compatible JSON ``{"lastUpdated", "currentTime"}``
plus ``"problems"``; 503 while captured traffic cannot be served as the manifests say: a
change waiting more than twice --iptables-sync-period, the listen interface or an address
gone, a listener closed, rules that could not be applied), ``/readyz`` (200 once the first
sync was applied and everything started, and nothing of /healthz's list is wrong), ``/status`` (JSON for
`edgeproxy status`), ``POST /confirm-removal`` (apply a held mass removal).
metrics server: ``/metrics`` (Prometheus text format).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

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
        if path == "/healthz":
            problems = daemon.health_problems()
            return _json(start_response, 503 if problems else 200,
                         {"lastUpdated": _iso(daemon.last_applied_wall),
                          "currentTime": _iso(time.time()), "problems": problems})
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
    registry = make_registry(daemon)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") not in ("/metrics", "/metrics/"):
            return _json(start_response, 404, {"error": "see /metrics"})
        data = generate_latest(registry)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST),
                                  ("Content-Length", str(len(data)))])
        return [data]

    return app

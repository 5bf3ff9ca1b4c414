"""The edgeproxy daemon: wires the manifest catalog, the rule keeper and the proxy server together.

Modules (one responsibility each):

- `options`   the table of every setting: flag name, config-file field, type, default, help.
- `durations` Go-style duration strings ("100ms", "1m30s") to seconds.
- `config`    reads the YAML config file, validates it against schemas/config.schema.json and
              merges it with the flags (flags win) into a `DaemonConfig`.
- `logs`      one-line key=value / JSON logging, journald-aware, rate-limited per message.
- `sdnotify`  the systemd NOTIFY_SOCKET datagram protocol (READY=1, WATCHDOG=1, STOPPING=1).
- `runner`    kube-proxy's bounded-frequency runner as a greenlet, on an injectable clock.
- `watcher`   supervises the watchdog process (`watch_process`) and hands its events to the hub.
- `guard`     the mass-removal guard (pure decision).
- `compute`   loading + validating + building the desired state off the hub (the parse worker
              process reads and parses, the thread pool builds), with the catalog and the
              builder cache it keeps.
- `instance`  one daemon per node: an exclusive lock held for the life of `edgeproxy run`.
- `views`     what status, metrics and http read of the daemon (Protocols) and its counters.
- `status`    the /status document and its text rendering (pure).
- `metrics`   the prometheus-client collector reading plain counters.
- `http`      the healthz/status and metrics WSGI apps.
- `core`      the `Daemon` itself: start order, sync, signals, shutdown.

Only `options` and `durations` (stdlib-only, like `edgeproxy.model` they read) may be imported
by command modules at parser-building time: the rest pulls in gevent and must be imported after
`edgeproxy run` monkey-patched.
"""

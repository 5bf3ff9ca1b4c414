"""Watch the manifest directory and hand changes to the gevent hub.

The watchdog observer runs in a child process without gevent
(`edgeproxy.daemon.watch_process`, which says why); this module is the daemon's side of it.
A greenlet reads the child's JSON lines from a pipe, the one hand-off between watchdog's
threads and the hub, and calls ``on_change(paths, writing)`` (``writing``: those of the
paths a writer still has open). ``on_change(None)`` means "rescan
everything": the root moved, a hidden entry changed (a ConfigMap volume's ``..data`` swap),
events overflowed, or the watcher (re)started and may have missed something.

The child is supervised: when it exits, the daemon logs why (with its last output), relies on
the periodic rescan meanwhile, and starts a new one after a back-off (1 s doubling to 60 s,
reset once one has run for a minute). It exits by itself when the daemon does: its stdin is a
pipe from us, and end of file ends it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable

import gevent
import gevent.event

from edgeproxy import spawn
from edgeproxy.daemon.logs import log_event

log = logging.getLogger(__name__)

RESTART_INITIAL = 1.0
RESTART_MAX = 60.0
STABLE_AFTER = 60.0  # seconds up after which a crash counts as the first again
KEPT_OUTPUT_LINES = 20  # non-protocol lines (a traceback) kept to log when the child dies
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


class DirectoryWatcher:
    def __init__(self, root: Path, on_change: Callable[..., None],
                 command: list[str] | None = None) -> None:
        self.root = Path(root).absolute()
        self.on_change = on_change
        # -P: the current directory is not put on sys.path (the daemon may be started from
        # anywhere, as root: nothing found there may run in the watcher).
        self.command = command or [sys.executable, "-P", "-m", "edgeproxy.daemon.watch_process"]
        self.events_total = 0     # changed paths and rescans received
        self.restarts_total = 0   # children started after the first
        self.target: Path | None = None
        self.watchdog_version: str | None = None
        self._child: spawn.Child | None = None
        self._greenlet: gevent.Greenlet | None = None
        self._ready = gevent.event.Event()
        self._stopping = False

    @property
    def running(self) -> bool:
        """A child is up and has its watches in place."""
        return self._child is not None and self._ready.is_set()

    def start(self, wait: float = 5.0) -> bool:
        """Start supervising; True when the first child was watching within ``wait``."""
        self._stopping = False
        self._greenlet = gevent.spawn(self._supervise)
        return self._ready.wait(wait)

    def reschedule(self) -> None:
        """Re-resolve the root now (the daemon asks on every full rescan)."""
        if self._child is not None:
            self._child.send(b"reschedule\n")

    def stop(self) -> None:
        self._stopping = True
        if self._greenlet is not None:  # first: it may be waiting on the child's pipe
            self._greenlet.kill()
            self._greenlet = None
        child, self._child = self._child, None
        if child is not None:
            child.stop()

    # -- supervision ---------------------------------------------------------------------------
    def _supervise(self) -> None:
        delay = RESTART_INITIAL
        first = True
        while not self._stopping:
            started = time.monotonic()
            output: deque[str] = deque(maxlen=KEPT_OUTPUT_LINES)
            try:
                self._child = spawn.Child([*self.command, str(self.root)])
            except OSError as exc:
                code: int | None = None
                output.append(f"cannot start {self.command[0]}: {exc}")
            else:
                if not first:
                    self.restarts_total += 1
                self._read(self._child, output)
                child, self._child = self._child, None
                code = child.stop(grace=1.0) if child is not None else None
            first = False
            self._ready.clear()
            if self._stopping:
                return
            if time.monotonic() - started > STABLE_AFTER:
                delay = RESTART_INITIAL
            log_event(log, logging.WARNING, "manifest watcher exited; relying on the periodic "
                      "rescan until it is back", exit_code=code, restart_in=delay,
                      output=" | ".join(output) or None)
            gevent.sleep(delay)
            delay = min(RESTART_MAX, delay * 2)

    def _read(self, child: spawn.Child, output: deque[str]) -> None:
        while True:
            line = child.readline()
            if line is None:
                return
            try:
                message = json.loads(line)
                event = message["event"]
            except (ValueError, KeyError, TypeError):
                output.append(line.decode(errors="replace").rstrip())
                continue
            try:
                self._handle(event, message)
            except Exception as exc:  # noqa: BLE001 - a bad callback must not end watching
                log_event(log, logging.ERROR, "handling a watcher event failed", event=event,
                          error=f"{type(exc).__name__}: {exc}")

    def _handle(self, event: str, message: dict) -> None:
        if event == "changed":
            paths = {Path(p) for p in message.get("paths", ())}
            writing = frozenset(Path(p) for p in message.get("writing", ()))
            self.events_total += len(paths)
            if paths:
                self.on_change(paths, writing)
        elif event == "rescan":
            self.events_total += 1
            self.on_change(None)
        elif event == "ready":
            target = message.get("target")
            self.target = Path(target) if target else None
            self.watchdog_version = message.get("watchdog")
            log_event(log, logging.INFO, "watching manifest directory", root=str(self.root),
                      target=target, watchdog=self.watchdog_version)
            # Anything may have changed while no watch was in place (before the first start,
            # during a restart, between two targets): read everything once.
            self._ready.set()
            self.on_change(None)
        elif event == "log":
            fields = {k: v for k, v in message.items() if k not in ("event", "level", "message")}
            log_event(log, _LEVELS.get(message.get("level", ""), logging.WARNING),
                      str(message.get("message", "watcher")), **fields)

"""Watch the manifest directory with watchdog and hand changes to the gevent hub.

watchdog reads inotify in its own thread (an OS thread, or a greenlet once threading is
monkey-patched). Either way the handler only appends to a deque and wakes the hub through a
gevent async watcher (``loop.async_().send()`` is the one thread-safe call into a gevent loop);
the hub drains the deque and calls ``on_change(paths)``. ``paths is None`` means "rescan
everything": the root itself moved, a hidden entry changed (a ConfigMap volume's ``..data``
swap changes what every visible symlink points to), or events overflowed.

A root that is a symlink (git-sync swaps it atomically) is watched through its parent: watching
the link's target goes blind after the first swap, so on any event naming the link we re-resolve
it and re-schedule the recursive watch on the new target.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from pathlib import Path
from typing import Callable, Iterable

import gevent

from edgeproxy.daemon.logs import log_event

log = logging.getLogger(__name__)
MAX_QUEUED = 10_000  # more paths than this before the hub drains: rescan everything instead


def _hidden(path: Path, root: Path) -> bool:
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return False
    return any(part.startswith(".") for part in parts)


class DirectoryWatcher:
    def __init__(self, root: Path, on_change: Callable[[set[Path] | None], None]) -> None:
        self.root = Path(root).absolute()
        self.on_change = on_change
        self._queue: deque = deque()
        self._lock = threading.Lock()
        self._overflow = False
        self._observer = None
        self._target_watch = None
        self._parent_watch = None
        self._target: Path | None = None
        self._async = None
        self.events_total = 0

    # -- thread side ---------------------------------------------------------------------------
    def _enqueue(self, paths: Iterable[str]) -> None:
        with self._lock:
            if len(self._queue) >= MAX_QUEUED:
                self._overflow = True
            else:
                self._queue.extend(paths)
        self._async.send()

    def _handler(self):
        from watchdog.events import FileSystemEventHandler

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:  # noqa: D401 - watchdog's callback
                if event.event_type in ("opened", "closed_no_write"):
                    return
                if event.is_directory and event.event_type == "modified":
                    return  # the file event that caused it names the file itself
                paths = [os.fsdecode(event.src_path)]
                if getattr(event, "dest_path", ""):
                    paths.append(os.fsdecode(event.dest_path))
                if event.is_directory:
                    paths.append("")  # a directory moved or appeared: rescan everything
                watcher._enqueue(paths)

        return Handler()

    # -- hub side ------------------------------------------------------------------------------
    def _drain(self) -> None:
        with self._lock:
            raw = list(self._queue)
            self._queue.clear()
            overflow, self._overflow = self._overflow, False
        if not raw and not overflow:
            return
        self.events_total += len(raw)
        full = overflow
        changed: set[Path] = set()
        for text in raw:
            if text == "":
                full = True
                continue
            path = Path(text)
            if path == self.root or path.parent == self.root.parent and path.name == self.root.name:
                self.reschedule()
                full = True
            elif self._target is not None and (_hidden(path, self._target) or path == self._target):
                full = True
            elif self._target is not None and path.parent == self.root.parent:
                continue  # a sibling of the root in the parent directory: not ours
            else:
                changed.add(self._visible(path))
        if full or changed:
            self.on_change(None if full else changed)

    def _visible(self, path: Path) -> Path:
        """Map a path under the resolved target back under the configured root."""
        if self._target is not None and self._target != self.root:
            try:
                return self.root / path.relative_to(self._target)
            except ValueError:
                pass
        return path

    def start(self) -> None:
        from watchdog.observers import Observer

        self._async = gevent.get_hub().loop.async_()
        # The async callback runs inside the loop, where nothing may block or switch; the
        # drain (which may re-schedule watches, taking locks) runs in its own greenlet.
        self._async.start(lambda: gevent.spawn(self._drain))
        self._observer = Observer()
        self._observer.daemon = True
        self._handler_obj = self._handler()
        if self.root.parent.is_dir():
            self._parent_watch = self._observer.schedule(self._handler_obj, str(self.root.parent),
                                                         recursive=False)
        self.reschedule(start=False)
        self._observer.start()

    def reschedule(self, start: bool = True) -> None:
        """(Re-)resolve the root and watch its current target recursively."""
        if self._observer is None:
            return
        try:
            target = self.root.resolve(strict=True)
        except OSError:
            target = None
        if target == self._target and (target is None or self._target_watch is not None):
            return
        if self._target_watch is not None:
            try:
                self._observer.unschedule(self._target_watch)
            except (KeyError, ValueError):
                pass
            self._target_watch = None
        self._target = target
        if target is not None and target.is_dir():
            try:
                self._target_watch = self._observer.schedule(self._handler_obj, str(target),
                                                             recursive=True)
                log_event(log, logging.INFO, "watching manifest directory", root=str(self.root),
                          target=str(target))
            except OSError as exc:
                log_event(log, logging.WARNING, "cannot watch manifest directory",
                          root=str(self.root), error=str(exc))
        if self._parent_watch is None and self.root.parent.is_dir():
            self._parent_watch = self._observer.schedule(self._handler_obj, str(self.root.parent),
                                                         recursive=False)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer = None
        if self._async is not None:
            self._async.stop()
            self._async.close()
            self._async = None

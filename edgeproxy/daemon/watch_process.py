"""The watchdog observer, in a process of its own: ``python -m edgeproxy.daemon.watch_process ROOT``.

Why a process: the daemon monkey-patches threading, select and time for gevent, and watchdog's
observer is built from exactly those (threads, locks, queues, ``select.poll``). Whether it then
runs depends on watchdog's internals: 7.1.1 waits on a C ``queue.SimpleQueue`` in a thread that
patching turned into a greenlet, which puts the daemon's only OS thread to sleep in a futex for
good. Here nothing imports gevent, so watchdog runs on real OS threads exactly as its authors
test it, whatever its version does inside; the daemon reads our stdout like any other pipe
(edgeproxy/daemon/watcher.py).

Protocol, one JSON object per line on stdout:
  {"event": "ready", "target": "/resolved/root", "watchdog": "7.1.1"}
                                                    watches are in place (again, after a swap)
  {"event": "changed", "paths": ["/root/a.yaml"], "writing": ["/root/b.yaml"]}
                                                    these files changed (under ROOT as given);
                                                    "writing": modified and not closed yet
  {"event": "rescan", "reason": "..."}             something changed that needs a full rescan
  {"event": "log", "level": "warning", "message": "...", ...}
stdin: a line ``reschedule`` re-resolves the root now; end of file (the daemon exited or closed
the pipe) ends this process.

A root that is a symlink (git-sync swaps it atomically) is watched through its parent: watching
the link's target goes blind after the first swap, so on any event naming the link the root is
re-resolved and the recursive watch moved to the new target. ``classify`` is that decision, as
a pure function.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Iterable

MAX_QUEUED = 10_000  # more paths than this between two writes: rescan everything instead
BATCH_WINDOW = 0.01  # seconds: events of one burst (a mirror writing 50 files) share a line


def _hidden_parts(path: Path, root: Path) -> tuple[str, ...]:
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return ()
    return tuple(part for part in parts if part.startswith("."))


def classify(raw: Iterable[str], root: Path, target: Path | None) -> tuple[str | None, set[Path]]:
    """What a batch of watchdog paths means: ``(reason for a full rescan or None, changed)``.

    ``""`` in ``raw`` marks a directory event (moved or created: rescan). The root itself or its
    link changing, and a ``..`` entry (a ConfigMap volume's ``..data`` swap changes what every
    visible symlink points to) mean a rescan. Other hidden entries are a writer's temporaries
    (rsync's ``.name.XXXXXX``, ``.name.tmp``): never read, and the rename that publishes one
    names its visible destination too. Siblings of the root in its parent are not ours.
    Changed paths are mapped back under ``root`` as configured."""
    reason: str | None = None
    changed: set[Path] = set()
    for text in raw:
        if text == "":
            reason = reason or "directory changed"
            continue
        path = Path(text)
        if path == root or (path.parent == root.parent and path.name == root.name):
            reason = "root replaced"
        elif path.parent == root.parent:
            continue  # a sibling of the root in the parent directory
        elif target is not None and path == target:
            reason = reason or "root target changed"
        elif target is not None and (hidden := _hidden_parts(path, target)):
            if any(part.startswith("..") for part in hidden):
                reason = reason or "hidden entry changed"
        else:
            changed.add(_visible(path, root, target))
    return reason, changed


def _visible(path: Path, root: Path, target: Path | None) -> Path:
    """Map a path under the resolved target back under the configured root."""
    if target is not None and target != root:
        try:
            return root / path.relative_to(target)
        except ValueError:
            pass
    return path


class _Output:
    """One JSON line at a time on stdout (watchdog's threads and ours all write here)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def send(self, **message) -> None:
        line = json.dumps(message, separators=(",", ":")) + "\n"
        with self._lock:
            try:
                sys.stdout.write(line)
                sys.stdout.flush()
            except (BrokenPipeError, ValueError):  # the daemon is gone: so are we
                os._exit(0)


class WatchProcess:
    def __init__(self, root: Path, out: _Output) -> None:
        from watchdog.observers import Observer

        self.root = Path(root).absolute()
        self.out = out
        self.observer = Observer()
        self.observer.daemon = True
        self.handler = self._make_handler()
        self.target: Path | None = None
        self.target_watch = None
        self.parent_watch = None
        self.queue: deque[str] = deque()
        self.open_for_write: set[str] = set()  # bounded by MAX_QUEUED like the queue
        self.overflow = False
        self.lock = threading.Lock()
        self.wake = threading.Event()
        # reschedule() runs in the pump (on a root swap) and in the command reader.
        self.schedule_lock = threading.Lock()

    # -- watchdog's threads --------------------------------------------------------------------
    def _make_handler(self):
        from watchdog.events import FileSystemEventHandler

        process = self

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
                    paths.append("")
                # A writer at work: written to and not closed yet. inotify's IN_CLOSE_WRITE
                # ("closed") or a rename ends it. Not "created": a file renamed in from
                # elsewhere (kubectl get > /tmp/x && mv /tmp/x /etc/edgeproxy/), a symlink
                # or a hard link is created complete, and no close follows.
                writing = not event.is_directory and event.event_type == "modified"
                process.enqueue(paths, writing)

        return Handler()

    def enqueue(self, paths: list[str], writing: bool = False) -> None:
        with self.lock:
            if len(self.queue) >= MAX_QUEUED:
                self.overflow = True
            else:
                self.queue.extend(paths)
                if writing:
                    self.open_for_write.add(paths[0])
                else:
                    self.open_for_write.difference_update(paths)
        self.wake.set()

    # -- our main thread -----------------------------------------------------------------------
    def start(self) -> None:
        if self.root.parent.is_dir():
            self.parent_watch = self.observer.schedule(self.handler, str(self.root.parent),
                                                       recursive=False)
        self.reschedule(announce=False)
        self.observer.start()
        self._announce()

    def _announce(self) -> None:
        from watchdog.version import VERSION_STRING

        self.out.send(event="ready", target=str(self.target) if self.target else None,
                      watchdog=VERSION_STRING)

    def reschedule(self, announce: bool = True) -> None:
        """(Re-)resolve the root and watch its current target recursively."""
        with self.schedule_lock:
            self._reschedule(announce)

    def _reschedule(self, announce: bool) -> None:
        try:
            target = self.root.resolve(strict=True)
        except OSError:
            target = None
        if target == self.target and (target is None or self.target_watch is not None):
            return
        if self.target_watch is not None:
            try:
                self.observer.unschedule(self.target_watch)
            except (KeyError, ValueError):
                pass
            self.target_watch = None
        self.target = target
        if target is not None and target.is_dir():
            try:
                self.target_watch = self.observer.schedule(self.handler, str(target),
                                                           recursive=True)
            except OSError as exc:
                self.out.send(event="log", level="warning",
                              message="cannot watch manifest directory", root=str(self.root),
                              error=str(exc))
        if self.parent_watch is None and self.root.parent.is_dir():
            self.parent_watch = self.observer.schedule(self.handler, str(self.root.parent),
                                                       recursive=False)
        if announce:
            self._announce()

    def pump(self, stop: threading.Event) -> None:
        """Turn queued watchdog paths into protocol lines until ``stop`` is set."""
        while not stop.is_set():
            if not self.wake.wait(timeout=1.0):
                continue
            stop.wait(BATCH_WINDOW)
            with self.lock:
                raw = list(self.queue)
                self.queue.clear()
                overflow, self.overflow = self.overflow, False
                self.wake.clear()
                if len(self.open_for_write) > MAX_QUEUED:
                    self.open_for_write.clear()
                writing = {p for p in raw if p in self.open_for_write}
            reason, changed = classify(raw, self.root, self.target)
            if reason == "root replaced" or (reason and self.target is None):
                self.reschedule()
            if overflow:
                reason = "more than %d queued events" % MAX_QUEUED
            if reason:
                self.out.send(event="rescan", reason=reason)
            elif changed:
                _, open_now = classify(writing, self.root, self.target)
                self.out.send(event="changed", paths=sorted(str(p) for p in changed),
                              writing=sorted(str(p) for p in open_now & changed))

    def stop(self) -> None:
        self.observer.stop()


def _read_commands(process: WatchProcess, stop: threading.Event) -> None:
    for line in sys.stdin:
        if line.strip() == "reschedule":
            process.reschedule()
    stop.set()  # end of file: the daemon is gone or wants us to stop
    process.wake.set()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m edgeproxy.daemon.watch_process ROOT", file=sys.stderr)
        return 2
    out = _Output()
    process = WatchProcess(Path(argv[0]), out)
    stop = threading.Event()
    try:
        process.start()
    except OSError as exc:  # e.g. inotify instance limit reached
        out.send(event="log", level="error", message="cannot start watching",
                 root=argv[0], error=str(exc))
        return 1
    threading.Thread(target=_read_commands, args=(process, stop), daemon=True,
                     name="commands").start()
    try:
        process.pump(stop)
    finally:
        process.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

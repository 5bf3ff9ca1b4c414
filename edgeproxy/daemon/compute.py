"""Load, validate and build the desired state off the gevent hub.

The catalog keeps per-file caches and last-good objects, and the state builder's cache keeps
what it derived from them (``BuildCache``), so both live as long as the daemon. Reading,
parsing and validating changed files happens in the parse worker process
(edgeproxy/manifests/worker.py: a memory and a time budget per file, memory given back); the
rest of a refresh (stat, merging, `build_state`) runs in gevent's native thread pool, so the
hub keeps serving connections and watchdog pings meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from edgeproxy.model import DesiredState, FilterMode, ManifestError


@dataclass(frozen=True)
class Computed:
    """One computation: the state, and what the catalog said about the manifests."""

    state: DesiredState
    root_error: str | None
    file_count: int
    files: Mapping[str, Any] = field(default_factory=dict)
    errors: tuple[ManifestError, ...] = ()
    retry: tuple[Path, ...] = ()  # probably half-written: refresh again shortly


class StateComputer:
    """The catalog and the builder's cache of one daemon; one computation at a time (the
    daemon's syncs are serial), so the cache needs no lock."""

    def __init__(self, root: Path, filter_mode: FilterMode, policy: Any = None,
                 use_worker: bool = True) -> None:
        from edgeproxy.manifests.catalog import DEFAULT_SETTLE, ManifestCatalog
        from edgeproxy.state.builder import BuildCache

        self.root = root
        self.filter_mode = filter_mode
        self.cache = BuildCache()
        self.worker = None
        loader = None
        if use_worker:
            from edgeproxy.manifests.worker import ParseWorker

            self.worker = ParseWorker()
            loader = self.worker.load
        self.catalog = ManifestCatalog(root, keep_last_good=True, policy=policy, loader=loader,
                                       settle=DEFAULT_SETTLE)

    def compute_blocking(self, changed: Iterable[Path] | None,
                         writing: Iterable[Path] = ()) -> Computed:
        from edgeproxy.state import build_state

        snapshot = self.catalog.refresh(None if changed is None else list(changed), writing)
        state = build_state(snapshot.objects, self.filter_mode, snapshot.errors,
                            cache=self.cache)
        files = dict(snapshot.files)
        return Computed(state=state, root_error=snapshot.root_error, file_count=len(files),
                        files=files, errors=tuple(snapshot.errors), retry=tuple(snapshot.retry))

    def compute(self, changed: Iterable[Path] | None, writing: Iterable[Path] = ()) -> Computed:
        import gevent

        changed_list = None if changed is None else list(changed)
        return gevent.get_hub().threadpool.apply(self.compute_blocking,
                                                 (changed_list, list(writing)))

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()

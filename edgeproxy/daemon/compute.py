"""Load, validate and build the desired state off the gevent hub.

The catalog keeps per-file caches and last-good objects, and the state builder's cache keeps
what it derived from them (``BuildCache``), so both live as long as the daemon. Parsing
thousands of documents is seconds of CPU: `StateComputer.compute` runs it in gevent's native
thread pool, so the hub keeps serving connections and watchdog pings while it runs (the GIL is
still shared; the interpreter's 5 ms switch interval lets the hub in).
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


class StateComputer:
    """The catalog and the builder's cache of one daemon; one computation at a time (the
    daemon's syncs are serial), so the cache needs no lock."""

    def __init__(self, root: Path, filter_mode: FilterMode) -> None:
        from edgeproxy.manifests.catalog import ManifestCatalog
        from edgeproxy.state.builder import BuildCache

        self.root = root
        self.filter_mode = filter_mode
        self.catalog = ManifestCatalog(root, keep_last_good=True)
        self.cache = BuildCache()

    def compute_blocking(self, changed: Iterable[Path] | None) -> Computed:
        from edgeproxy.state import build_state

        snapshot = self.catalog.refresh(None if changed is None else list(changed))
        state = build_state(snapshot.objects, self.filter_mode, snapshot.errors,
                            cache=self.cache)
        files = dict(snapshot.files)
        return Computed(state=state, root_error=snapshot.root_error, file_count=len(files),
                        files=files, errors=tuple(snapshot.errors))

    def compute(self, changed: Iterable[Path] | None) -> Computed:
        import gevent

        changed_list = None if changed is None else list(changed)
        return gevent.get_hub().threadpool.apply(self.compute_blocking, (changed_list,))

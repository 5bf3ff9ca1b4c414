"""The incremental manifest catalog: a directory's files, parsed once each, served as objects.

Owns the per-file cache keyed by ``(st_dev, st_ino, st_size, st_mtime_ns)``: a refresh stats
every file (or just the paths it is told about) and re-parses only files whose key changed, so
one changed file in a thousand costs one parse. Unchanged files keep serving the very same
``KubeObject`` instances, which lets the state builder reuse its work too.

``keep_last_good`` (what the daemon uses): a file that fails as a whole (YAML error, size cap,
unreadable) keeps serving the objects of its last good version; an object (kind, namespace,
name) that is invalid in the new version of its file keeps its previous valid version. The
errors are reported either way, and ``FileInfo.served_from_last_good`` says it happened. A
deleted file removes its objects. The root is not resolved once: it is stat'ed on every refresh,
so a root that is a symlink swapped by git-sync is followed.

What is read, and how, is `reader.py`'s (containment, regular files only, ownership); parsing
and validation are `loading.load_file`, run in-process or, for the daemon, by a parse worker
process (`loader`). Files that changed are loaded as one batch per refresh.

Half-written files: a file whose load failed in a way a writer still at work explains (it
changed while read, vanished, or does not parse) and whose mtime is younger than ``settle``
seconds, and a file the watcher says is still open for writing (written to in the last
``WRITING_HOLD`` seconds), are not believed yet: the
last good version keeps serving (a new file serves nothing), ``snapshot.retry`` names them,
and the daemon refreshes them again shortly. Only a failure that outlives the window is
reported. (``settle=0``, for ``validate``: every file is judged as it is now.)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from edgeproxy.model import KubeObject, LoadLimits, ManifestError
from edgeproxy.state.builder import ChunkedObjects
from edgeproxy.state.gcpause import gc_paused

from .discovery import discover, is_manifest_name
from .loading import LoadResult, StatKey, file_error, load_file, stat_key
from .reader import TrustContext, TrustPolicy

# loader(paths, root, policy, limits) -> {path: LoadResult}; see worker.ParseWorker.load
Loader = Callable[[list[Path], Path, TrustPolicy, LoadLimits], Mapping[Path, LoadResult]]
DEFAULT_SETTLE = 2.0  # seconds a failing file may still be "being written" (the daemon's)
# How long a file the watcher sees open for writing is held, counted from its last write: a
# writer that pauses longer mid-file is read as it is (a stuck writer must not freeze a file).
WRITING_HOLD = 10.0


def load_in_process(paths: list[Path], root: Path, policy: TrustPolicy,
                    limits: LoadLimits) -> dict[Path, LoadResult]:
    context = TrustContext(root, policy)
    return {path: load_file(path, context, limits) for path in paths}


@dataclass(frozen=True)
class FileInfo:
    """What one file contributed to a snapshot."""

    path: Path
    stat_key: StatKey | None
    objects: tuple[KubeObject, ...]
    errors: tuple[ManifestError, ...]
    served_from_last_good: bool = False  # some objects come from an earlier version
    rejected: bool = False  # the latest version failed as a whole
    # identity -> last valid object, for keep_last_good
    last_good: Mapping[tuple[str, str, str], KubeObject] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class CatalogSnapshot:
    objects: tuple[KubeObject, ...]
    errors: tuple[ManifestError, ...]
    files: Mapping[Path, FileInfo]
    root_error: str | None = None
    retry: tuple[Path, ...] = ()  # probably half-written: refresh these again shortly


_file_error = file_error


class ManifestCatalog:
    """Incremental loader of one manifest root (a directory, or a single file)."""

    def __init__(self, root: Path, limits: LoadLimits | None = None,
                 keep_last_good: bool = False, policy: TrustPolicy | None = None,
                 loader: Loader | None = None, settle: float = 0.0) -> None:
        self.root = Path(root)
        self.limits = limits or LoadLimits()
        self.keep_last_good = keep_last_good
        self.policy = policy or TrustPolicy()
        self.loader: Loader = loader or load_in_process
        self.settle = settle
        self._to_load: dict[Path, FileInfo | None] = {}
        self._retry: list[Path] = []
        self._writing: set[Path] = set()
        self._files: dict[Path, FileInfo] = {}
        self._root_problems: tuple[ManifestError, ...] = ()
        self._order: list[Path] | None = None  # sorted keys of _files, see _snapshot
        self._order_set: set[Path] = set()
        self.parses_total = 0  # files parsed since creation (a counter for metrics and tests)

    # -- public -----------------------------------------------------------------------------

    def refresh(self, changed_paths: Iterable[Path] | None = None,
                writing: Iterable[Path] = ()) -> CatalogSnapshot:
        """Bring the catalog up to date and return a snapshot (None = rescan everything).
        ``writing``: files the watcher saw modified and not yet closed."""
        with gc_paused():
            return self._refresh(changed_paths, set(map(Path, writing)))

    def _refresh(self, changed_paths: Iterable[Path] | None,
                 writing: set[Path]) -> CatalogSnapshot:
        self._to_load, self._retry, self._writing = {}, [], writing
        try:
            os.stat(self.root)
        except OSError as exc:
            self._files.clear()
            self._root_problems = ()
            reason = "does not exist" if isinstance(exc, FileNotFoundError) else \
                f"cannot be read: {exc.strerror or exc}"
            return CatalogSnapshot((), (), {}, f"manifest root {self.root} {reason}")
        context = TrustContext(self.root, self.policy)
        insecure = context.root_problems(self.root)
        if insecure:
            # Every file below would be refused; hold what is served (the guard keeps the last
            # good state on a root error) and say why once.
            return CatalogSnapshot((), (), {}, f"manifest root {self.root} is not safe: "
                                               f"{'; '.join(insecure)}; whoever can write "
                                               "there steers this node's traffic "
                                               "(--allow-insecure-manifests overrides)")
        if changed_paths is None or not self.root.is_dir():
            found = discover(self.root, self.limits, context)
            self._root_problems = tuple(_file_error(Path(p), m) for p, m in found.problems)
            wanted = set(found.files)
            for gone in [p for p in self._files if p not in wanted]:
                del self._files[gone]
            for path in found.files:
                self._update(path)
        else:
            for path in changed_paths:
                self._update_changed(Path(path), context)
        self._load_pending()
        return self._snapshot()

    # -- internals --------------------------------------------------------------------------

    def _under_root(self, path: Path) -> Path | None:
        """``path`` as a path below the root as given, or None when it is outside."""
        for base in (self.root, Path(os.path.realpath(self.root))):
            try:
                rel = path.relative_to(base)
            except ValueError:
                continue
            return self.root / rel
        if not path.is_absolute():
            return self.root / path
        return None

    def _update_changed(self, path: Path, context: TrustContext) -> None:
        mapped = self._under_root(path)
        if mapped is None:
            return
        rel_parts = mapped.relative_to(self.root).parts
        if any(part.startswith(".") for part in rel_parts):
            # A change inside a hidden directory (a ConfigMap's ..2024_x) shows through the
            # visible symlinks: re-stat every known file, which is cheap, instead of guessing.
            for known in list(self._files):
                self._update(known)
            return
        if mapped.is_dir():
            found = discover(mapped, self.limits, context)
            wanted = set(found.files)
            prefix = mapped.parts
            for known in [p for p in self._files if p.parts[:len(prefix)] == prefix]:
                if known not in wanted:
                    del self._files[known]
            for p in found.files:
                self._update(p)
            return
        if not os.path.lexists(mapped):
            prefix = mapped.parts  # a file or a whole directory went away
            for known in [p for p in self._files if p.parts[:len(prefix)] == prefix]:
                del self._files[known]
            return
        if is_manifest_name(mapped.name):
            self._update(mapped)

    def _update(self, path: Path) -> None:
        """Note ``path`` for loading when its stat key changed (loaded in `_load_pending`)."""
        previous = self._files.get(path)
        try:
            st = os.stat(path)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and not os.path.lexists(path):
                self._files.pop(path, None)
                return
            self._store(path, None, previous, [], [_file_error(path, f"cannot read: "
                                                                     f"{exc.strerror or exc}")],
                        rejected=True)
            return
        if previous is not None and previous.stat_key == stat_key(st):
            return
        if path in self._writing and self.settle and time.time() - st.st_mtime < WRITING_HOLD:
            self._retry.append(path)  # still open for writing: wait for its close
            return
        self._to_load[path] = previous

    def _load_pending(self) -> None:
        if not self._to_load:
            return
        paths = list(self._to_load)
        self.parses_total += len(paths)
        results = self.loader(paths, self.root, self.policy, self.limits)
        now = time.time()
        for path in paths:
            previous = self._to_load[path]
            result = results.get(path)
            if result is None:
                result = LoadResult(None, (), (_file_error(path, "not loaded"),), rejected=True)
            if self._probably_half_written(result, path, now):
                self._retry.append(path)
                continue
            self._store(path, result.stat_key, previous, list(result.objects),
                        list(result.errors), result.rejected)

    def _probably_half_written(self, result: LoadResult, path: Path, now: float) -> bool:
        """A failure a writer at work explains, on a file changed less than ``settle`` ago."""
        if result.retry:
            mtime = result.mtime
            if not mtime:
                try:
                    mtime = os.stat(path).st_mtime
                except OSError:
                    return False  # gone for good: a deleted file is handled as such
            return now - mtime < self.settle
        failed = result.rejected or bool(result.errors)
        return failed and result.stat_key is not None and now - result.mtime < self.settle

    def _store(self, path: Path, key: StatKey | None, previous: FileInfo | None,
               objects: list[KubeObject], errors: list[ManifestError], rejected: bool) -> None:
        served_old = False
        last_good: dict = {o.identity: o for o in objects}
        if self.keep_last_good and previous is not None:
            if rejected:
                objects = list(previous.objects)
                last_good = dict(previous.last_good)
                served_old = bool(objects)
            else:
                for err in errors:
                    if err.kind and err.name:
                        identity = (err.kind, err.namespace or "default", err.name)
                        old = previous.last_good.get(identity)
                        if old is not None and identity not in last_good:
                            objects.append(old)
                            last_good[identity] = old
                            served_old = True
        self._files[path] = FileInfo(path, key, tuple(objects), tuple(errors), served_old,
                                     rejected, last_good)

    def _snapshot(self) -> CatalogSnapshot:
        # Sorting Path objects is Python code per comparison; sort the set of names only when
        # it changed (a file added or removed), not on every one-file reload.
        names = self._files.keys()
        if self._order is None or len(self._order) != len(names) or not names == self._order_set:
            self._order = sorted(names, key=str)
            self._order_set = set(self._order)
        files = {path: self._files[path] for path in self._order}
        errors: list[ManifestError] = list(self._root_problems)
        for info in files.values():
            errors.extend(info.errors)
        # One chunk per file, the same tuple while the file is unchanged: build_state reuses
        # its work per chunk (see ChunkedObjects).
        objects = ChunkedObjects(info.objects for info in files.values() if info.objects)
        return CatalogSnapshot(objects, tuple(errors), files, None, tuple(self._retry))


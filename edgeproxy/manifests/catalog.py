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
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from edgeproxy.model import KubeObject, LoadLimits, ManifestError
from edgeproxy.state.builder import ChunkedObjects
from edgeproxy.state.gcpause import gc_paused

from .discovery import discover, is_manifest_name
from .validation import validate_document
from .yaml_loader import parse_bytes

StatKey = tuple  # (st_dev, st_ino, st_size, st_mtime_ns)


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


def _stat_key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _file_error(path: Path, message: str) -> ManifestError:
    return ManifestError(str(path), None, None, None, None, "", message)


class ManifestCatalog:
    """Incremental loader of one manifest root (a directory, or a single file)."""

    def __init__(self, root: Path, limits: LoadLimits | None = None,
                 keep_last_good: bool = False) -> None:
        self.root = Path(root)
        self.limits = limits or LoadLimits()
        self.keep_last_good = keep_last_good
        self._files: dict[Path, FileInfo] = {}
        self._root_problems: tuple[ManifestError, ...] = ()
        self._order: list[Path] | None = None  # sorted keys of _files, see _snapshot
        self._order_set: set[Path] = set()
        self.parses_total = 0  # files parsed since creation (a counter for metrics and tests)

    # -- public -----------------------------------------------------------------------------

    def refresh(self, changed_paths: Iterable[Path] | None = None) -> CatalogSnapshot:
        """Bring the catalog up to date and return a snapshot (None = rescan everything)."""
        with gc_paused():
            return self._refresh(changed_paths)

    def _refresh(self, changed_paths: Iterable[Path] | None) -> CatalogSnapshot:
        try:
            os.stat(self.root)
        except OSError as exc:
            self._files.clear()
            self._root_problems = ()
            reason = "does not exist" if isinstance(exc, FileNotFoundError) else \
                f"cannot be read: {exc.strerror or exc}"
            return CatalogSnapshot((), (), {}, f"manifest root {self.root} {reason}")
        if changed_paths is None or not self.root.is_dir():
            found = discover(self.root, self.limits)
            self._root_problems = tuple(_file_error(Path(p), m) for p, m in found.problems)
            wanted = set(found.files)
            for gone in [p for p in self._files if p not in wanted]:
                del self._files[gone]
            for path in found.files:
                self._update(path)
        else:
            for path in changed_paths:
                self._update_changed(Path(path))
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

    def _update_changed(self, path: Path) -> None:
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
            found = discover(mapped, self.limits)
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
        key = _stat_key(st)
        if previous is not None and previous.stat_key == key:
            return
        self.parses_total += 1
        objects, errors, rejected = self._load(path)
        self._store(path, key, previous, objects, errors, rejected)

    def _load(self, path: Path) -> tuple[list[KubeObject], list[ManifestError], bool]:
        limit = self.limits.max_file_bytes
        try:
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
        except OSError as exc:
            return [], [_file_error(path, f"cannot read: {exc.strerror or exc}")], True
        name = str(path)
        if len(data) > limit:
            return [], [_file_error(path, f"file is over the {limit}-byte limit")], True
        parsed = parse_bytes(data, name, self.limits)
        errors: list[ManifestError] = []
        objects: list[KubeObject] = []
        rejected = False
        for document, path_in_doc, message in parsed.errors:
            if document is None:
                rejected = True
            errors.append(ManifestError(name, document, None, None, None, path_in_doc, message))
        if rejected:
            return [], errors, True
        for document, body in parsed.documents:
            obj, problems = validate_document(name, document, body)
            if obj is not None:
                objects.append(obj)
            errors.extend(problems)
        errors.sort(key=_error_order)
        return objects, errors, False

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
        return CatalogSnapshot(objects, tuple(errors), files, None)


def _doc_order(document: str | None) -> tuple:
    if document is None:
        return ()
    return tuple(int(p) if p.isdigit() else -1 for p in document.split("/"))


def _error_order(err: ManifestError) -> tuple:
    return (_doc_order(err.document), err.path)

"""One manifest file from path to validated objects: read safely, parse like kubectl, validate.

`load_file` is the single place where that happens, run in-process by ``edgeproxy validate``
and in the parse worker process by the daemon (edgeproxy/manifests/worker.py), so both say
exactly the same about a file. Its result is a plain picklable value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgeproxy.model import KubeObject, LoadLimits, ManifestError

from .reader import ReadRefused, TrustContext, read_manifest
from .validation import validate_document
from .yaml_loader import parse_bytes

StatKey = tuple  # (st_dev, st_ino, st_size, st_mtime_ns)


@dataclass(frozen=True)
class LoadResult:
    """What loading one file gave: its stat key as read (None when unreadable), its objects
    and errors; ``rejected`` when the file failed as a whole, ``retry`` when it is probably
    still being written (read it again before believing the failure)."""

    stat_key: StatKey | None
    objects: tuple[KubeObject, ...]
    errors: tuple[ManifestError, ...]
    rejected: bool = False
    retry: bool = False


def file_error(path: Path | str, message: str) -> ManifestError:
    return ManifestError(str(path), None, None, None, None, "", message)


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def load_file(path: Path, context: TrustContext, limits: LoadLimits) -> LoadResult:
    name = str(path)
    try:
        data, st = read_manifest(path, context, limits.max_file_bytes)
    except OSError as exc:
        return LoadResult(None, (), (file_error(path, f"cannot read: {exc.strerror or exc}"),),
                          rejected=True)
    except ReadRefused as exc:
        return LoadResult(None, (), (file_error(path, str(exc)),), rejected=True,
                          retry=exc.retry)
    key = stat_key(st)
    parsed = parse_bytes(data, name, limits)
    errors: list[ManifestError] = []
    objects: list[KubeObject] = []
    rejected = False
    for document, path_in_doc, message in parsed.errors:
        if document is None:
            rejected = True
        errors.append(ManifestError(name, document, None, None, None, path_in_doc, message))
    if rejected:
        return LoadResult(key, (), tuple(errors), rejected=True)
    for document, body in parsed.documents:
        obj, problems = validate_document(name, document, body)
        if obj is not None:
            objects.append(obj)
        errors.extend(problems)
    errors.sort(key=_error_order)
    return LoadResult(key, tuple(objects), tuple(errors))


def _doc_order(document: str | None) -> tuple:
    if document is None:
        return ()
    return tuple(int(p) if p.isdigit() else -1 for p in document.split("/"))


def _error_order(err: ManifestError) -> tuple:
    return (_doc_order(err.document), err.path)

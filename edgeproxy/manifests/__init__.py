"""Manifest loading: files -> documents -> validated ``KubeObject``s (see docs/manifests.md).

``discovery`` picks the files, ``yaml_loader`` parses them like kubectl, ``validation`` checks
them against ``schemas/`` and the API server's rules, ``catalog`` keeps them incrementally.
``load_state`` is the one-shot path for commands: paths in, ``DesiredState`` out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from edgeproxy.model import DesiredState, FilterMode, KubeObject, LoadLimits, ManifestError


def load_objects(paths: Sequence[Path], limits: LoadLimits | None = None,
                 trusted_roots: Sequence[str | Path] = (),
                 ) -> tuple[list[KubeObject], list[ManifestError]]:
    """All objects and errors of the given files/directories, in path order. Symlinks may
    lead out of each path only into ``trusted_roots`` (the daemon's trustedManifestRoots)."""
    from .catalog import ManifestCatalog
    from .reader import TrustPolicy

    policy = TrustPolicy(trusted_roots=tuple(Path(r) for r in trusted_roots))
    objects: list[KubeObject] = []
    errors: list[ManifestError] = []
    for path in paths:
        snapshot = ManifestCatalog(Path(path), limits, policy=policy).refresh()
        if snapshot.root_error:
            errors.append(ManifestError(str(path), None, None, None, None, "",
                                        snapshot.root_error))
        objects.extend(snapshot.objects)
        errors.extend(snapshot.errors)
    return objects, errors


def load_state(paths: Sequence[Path], filter_mode: FilterMode = FilterMode.FILTER_IF_LABEL_EXISTS,
               limits: LoadLimits | None = None) -> DesiredState:
    """Load manifests from files or directories and build the desired state in one go."""
    from edgeproxy.state import build_state

    objects, errors = load_objects(paths, limits)
    return build_state(objects, filter_mode=filter_mode, errors=errors)

"""Manifest text to validated objects, for tests of what is built from them."""

from __future__ import annotations

import yaml

from edgeproxy.manifests.validation import validate_document
from edgeproxy.model import KubeObject


def objects(text: str, file: str = "f.yaml") -> list[KubeObject]:
    """Every document of ``text`` validated as the loader does; each must be valid."""
    out = []
    for i, body in enumerate(d for d in yaml.safe_load_all(text) if d):
        obj, errors = validate_document(file, str(i), body)
        assert errors == [], errors
        out.append(obj)
    return out

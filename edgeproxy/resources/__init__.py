"""Files that ship inside the package: the JSON Schemas, the example manifests, the example
configuration and the systemd unit.

The canonical copies live at the top of the repository (``schemas/``, ``config/examples/``,
``config/edgeproxy.yaml``, ``edgeproxy.service``), where users and reviewers look for them; the
entries of this directory are symlinks to them, so an editable checkout reads the same files
and setuptools copies their contents into the wheel (``package-data`` in pyproject.toml).
Everything at run time goes through ``importlib.resources`` here, never through the source
tree: an installed wheel has no repository around it.
"""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

_PACKAGE = __name__


def resource(*parts: str) -> Traversable:
    """A shipped file or directory, e.g. ``resource("schemas", "service.schema.json")``."""
    node = files(_PACKAGE)
    for part in parts:
        node = node.joinpath(part)
    return node


def schemas() -> Traversable:
    return resource("schemas")


def example_manifests() -> Traversable:
    return resource("examples")


def example_config() -> Traversable:
    return resource("edgeproxy.yaml")


def systemd_unit() -> Traversable:
    return resource("edgeproxy.service")

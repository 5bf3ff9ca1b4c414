"""Rule backends behind one interface (`base.Backend`), chosen by name or detected.

``legacy``/``nft``: iptables-restore of the matching flavour (iptables_restore.py);
``nftables``: a table of our own (nftables.py); ``auto``: detect.py.
"""

from __future__ import annotations

import logging

from edgeproxy.model import BACKEND_CHOICES
from edgeproxy.tools import Runner

from .base import Backend, BackendError, CleanupReport
from .iptables_restore import IptablesRestoreBackend
from .nftables import NftablesBackend

log = logging.getLogger(__name__)


__all__ = ["Backend", "BackendError", "CleanupReport", "IptablesRestoreBackend",
           "NftablesBackend", "select_backend", "make_backend"]


def make_backend(name: str, runner: Runner | None = None) -> Backend:
    if name in ("legacy", "nft"):
        return IptablesRestoreBackend(name, runner)
    if name == "nftables":
        return NftablesBackend(runner)
    raise ValueError(f"unknown iptables backend {name!r}; choose one of "
                     f"{', '.join(BACKEND_CHOICES)}")


def select_backend(name: str = "auto", runner: Runner | None = None) -> Backend:
    """The named backend; ``auto`` detects the node's like kube-proxy does and logs why."""
    if name == "auto":
        from .detect import detect
        name, reason = detect(runner)
        log.info("iptables backend %s: %s", name, reason)
    else:
        log.info("iptables backend %s (configured)", name)
    return make_backend(name, runner)

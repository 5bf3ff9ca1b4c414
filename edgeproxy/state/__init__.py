"""The desired state: filtering (``filtering``) and assembly (``builder``) of validated objects."""

from __future__ import annotations

from .builder import BuildCache, build_state

__all__ = ["BuildCache", "build_state"]

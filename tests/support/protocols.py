"""A runtime check that an object implements a `typing.Protocol`, stricter than ``isinstance``.

``isinstance`` against a ``runtime_checkable`` protocol only asks whether each member exists.
`mismatches` also checks each annotated attribute's value against its annotation (classes,
``X | None``, generic containers by their origin, nested protocols recursively) and each
method's parameter names, so a fake that drifts from the interface (a renamed counter, an
attribute of the wrong kind, a method with other arguments) fails a test, as kube-proxy's
``var _ = Interface(&fake{})`` fails its build. Pass a class to check its methods only.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from typing import Any


def _members(proto: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """(annotated attributes with their types, methods) of a protocol and its bases."""
    hints: dict[str, Any] = {}
    methods: dict[str, Any] = {}
    for base in reversed(proto.__mro__):
        if base is object or not getattr(base, "_is_protocol", False) or base is typing.Protocol:
            continue
        hints.update(typing.get_type_hints(base))
        methods.update({name: value for name, value in vars(base).items()
                        if callable(value) and not name.startswith("_")})
    return hints, methods


def _type_ok(value: Any, annotation: Any, where: str) -> list[str]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [_type_ok(value, a, where) for a in typing.get_args(annotation)]
        return [] if any(not o for o in options) else [
            f"{where}: {value!r:.60} is none of {annotation}"]
    if annotation is type(None):
        return [] if value is None else [f"{where}: {value!r:.60} is not None"]
    if annotation is Any:
        return []
    if getattr(annotation, "_is_protocol", False):
        return mismatches(value, annotation, where)
    cls = origin or annotation
    if cls is float:
        cls = (int, float)
    if cls is collections.abc.Callable or cls is typing.Callable:
        return [] if callable(value) else [f"{where}: not callable"]
    if isinstance(cls, (type, tuple)) and not isinstance(value, cls):
        return [f"{where}: {type(value).__name__} is not {annotation}"]
    return []


def _parameters(func: Any) -> list[str]:
    params = list(inspect.signature(func).parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def mismatches(obj: Any, proto: type, where: str = "") -> list[str]:
    """What ``obj`` lacks or gets wrong of ``proto`` (empty when it implements it)."""
    where = where or type(obj).__name__
    hints, methods = _members(proto)
    problems = []
    for name, func in methods.items():
        member = getattr(obj, name, None)
        if member is None or not callable(member):
            problems.append(f"{where}.{name}: method missing")
        elif _parameters(member) != _parameters(func):
            problems.append(f"{where}.{name}{inspect.signature(member)}: protocol has "
                            f"{name}{inspect.signature(func)}")
    if isinstance(obj, type):
        return problems  # a class: its instances' attributes are not known here
    for name, annotation in hints.items():
        if not hasattr(obj, name):
            problems.append(f"{where}.{name}: attribute missing")
        else:
            problems += _type_ok(getattr(obj, name), annotation, f"{where}.{name}")
    return problems


def assert_implements(obj: Any, proto: type) -> None:
    assert not (problems := mismatches(obj, proto)), "\n".join(problems)

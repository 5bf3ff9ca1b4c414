"""Validation of manifest documents: JSON Schemas from ``schemas/`` plus the checks a schema
cannot express, turning each valid document into a ``KubeObject``.

Owns: locating the schemas (``EDGEPROXY_SCHEMAS_DIR`` overrides the ones shipped in the package,
`edgeproxy.resources`),
the kind/apiVersion table, schema validation, semantic checks (those of the API server that
matter to a proxy) and the wording of every error.

Speed: each schema is compiled once with fastjsonschema (generated Python code, ~20x faster than
jsonschema's interpreter); only a document that fails the fast path is validated again by
jsonschema, whose error objects carry the field path and a readable message, and which reports
every error rather than the first. Both use the same ``ipv4``/``ipv6`` format functions
(``ipaddress``), so they cannot disagree on an address.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from edgeproxy.model import DEFAULT_NAMESPACE, KubeObject, ManifestError, SourceRef

SCHEMAS_ENV = "EDGEPROXY_SCHEMAS_DIR"

# kind -> (accepted apiVersions, schema file). Other kinds are ignored (and counted).
KNOWN_KINDS: dict[str, tuple[tuple[str, ...], str]] = {
    "Service": (("v1",), "service.schema.json"),
    "Endpoints": (("v1",), "endpoints.schema.json"),
    "EndpointSlice": (("discovery.k8s.io/v1",), "endpointslice.schema.json"),
    "DestinationRule": (("networking.istio.io/v1alpha3", "networking.istio.io/v1beta1",
                         "networking.istio.io/v1"), "destinationrule.schema.json"),
}


def schemas_dir() -> Path:
    """The directory holding the JSON Schemas (env override, else the package's own copy)."""
    override = os.environ.get(SCHEMAS_ENV)
    if override:
        return Path(override)
    from edgeproxy.resources import schemas

    # A wheel is always installed unpacked, so the shipped directory is a real one.
    return Path(str(schemas()))


def _is_ipv4(value: object) -> bool:
    if not isinstance(value, str):
        return True  # formats only constrain strings (JSON Schema rule)
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def _is_ipv6(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


_FORMATS: dict[str, Callable[[object], bool]] = {"ipv4": _is_ipv4, "ipv6": _is_ipv6}
_KINDS_BY_LOWER = {kind.lower(): kind for kind in KNOWN_KINDS}


@lru_cache(maxsize=None)
def _schema(schema_name: str, directory: str) -> dict:
    with open(Path(directory) / schema_name, encoding="utf-8") as handle:
        return json.load(handle)


@lru_cache(maxsize=None)
def _slow_validator(schema_name: str, directory: str):
    import jsonschema

    schema = _schema(schema_name, directory)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    checker = jsonschema.FormatChecker(formats=())
    for name, func in _FORMATS.items():
        checker.checks(name)(func)
    return cls(schema, format_checker=checker)


@lru_cache(maxsize=None)
def _fast_validator(schema_name: str, directory: str):
    import fastjsonschema

    return fastjsonschema.compile(_schema(schema_name, directory), formats=_FORMATS)


def _field_path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _yaml(value: Any, limit: int = 80) -> str:
    """A value as the user wrote it (YAML/JSON spelling: null, true, "text"), kept short."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


_JSON_TYPES = {"string": "a string", "integer": "an integer", "number": "a number",
               "boolean": "true or false", "object": "a mapping", "array": "a list",
               "null": "null"}
_PYTHON_LITERALS = re.compile(r"\b(None|True|False)\b")


def _message(error) -> tuple[str, str]:
    """(extra path, message) for a jsonschema error, worded in YAML/JSON terms: jsonschema's
    own messages are Python reprs (None, True, 'x')."""
    kind, expected, got = error.validator, error.validator_value, error.instance
    if kind == "type":
        wanted = [expected] if isinstance(expected, str) else list(expected)
        names = " or ".join(_JSON_TYPES.get(t, t) for t in wanted if t != "null")
        return "", f"must be {names}, got {_yaml(got)}"
    if kind == "required":
        missing = [name for name in expected if isinstance(got, dict) and name not in got]
        return (missing[0] if missing else ""), "required"
    if kind == "enum":
        return "", f"must be one of {', '.join(_yaml(v) for v in expected)}, got {_yaml(got)}"
    if kind == "const":
        return "", f"must be {_yaml(expected)}, got {_yaml(got)}"
    if kind == "minimum":
        return "", f"must be at least {expected}, got {_yaml(got)}"
    if kind == "maximum":
        return "", f"must be at most {expected}, got {_yaml(got)}"
    if kind == "pattern":
        return "", f"{_yaml(got)} is not valid (must match {expected})"
    if kind == "maxLength":
        return "", f"{_yaml(got)} is longer than {expected} characters"
    if kind == "minLength":
        return "", "must not be empty" if expected == 1 else \
            f"{_yaml(got)} is shorter than {expected} characters"
    if kind == "maxItems":
        return "", f"has {len(got)} items, at most {expected} are allowed"
    if kind == "minItems":
        return "", f"must have at least {expected} item{'s' if expected != 1 else ''}"
    if kind == "format":
        return "", f"{_yaml(got)} is not a valid {expected} address" \
            if expected in ("ipv4", "ipv6") else f"{_yaml(got)} is not a valid {expected}"
    if kind in ("anyOf", "oneOf") and "format" in json.dumps(expected):
        return "", f"{_yaml(got)} is not a valid IP address"
    message = _PYTHON_LITERALS.sub(lambda m: {"None": "null", "True": "true",
                                              "False": "false"}[m.group(1)], error.message)
    return "", message if len(message) <= 300 else message[:297] + "..."


# Maps of strings: the API server decodes a null value there as "" (a key with an empty
# value), elsewhere a null field is simply unset.
_STRING_MAPS = frozenset({"labels", "annotations", "selector", "nodeSelector"})


def drop_nulls(value: Any, key: str = "") -> Any:
    """The document as the API server's decoding sees it: a mapping field set to null is
    unset (Helm renders ``targetPort: null``, ``selector: null``, ``labels: null`` often), a
    null value in a map of strings is "". Lists keep their items (a null item is an error).
    Returns ``value`` itself when it holds no null (no copy for the common case)."""
    if isinstance(value, dict):
        changed = False
        out = {}
        string_map = key in _STRING_MAPS
        for k, v in value.items():
            if v is None:
                changed = True
                if string_map:
                    out[k] = ""
                continue
            cleaned = drop_nulls(v, k) if isinstance(v, (dict, list)) else v
            changed = changed or cleaned is not v
            out[k] = cleaned
        return out if changed else value
    if isinstance(value, list):
        cleaned_items = [drop_nulls(v) if isinstance(v, (dict, list)) else v for v in value]
        if any(a is not b for a, b in zip(cleaned_items, value)):
            return cleaned_items
        return value
    return value


def validate_instance(schema_name: str, instance: Any) -> list[tuple[str, str]]:
    """(field path, message) for every violation of ``schemas/<schema_name>``; [] when valid."""
    directory = str(schemas_dir())
    try:
        _fast_validator(schema_name, directory)(instance)
        return []
    except Exception as fast_error:  # noqa: BLE001 - JsonSchemaException, or odd types
        try:
            errors = sorted(_slow_validator(schema_name, directory).iter_errors(instance),
                            key=lambda e: [str(p) for p in e.absolute_path])
        except (RecursionError, TypeError, ValueError) as exc:  # non-string keys, deep nesting
            return [("", f"cannot be validated: {exc.__class__.__name__}: {exc}")]
        if errors:
            out = []
            for e in errors:
                extra, message = _message(e)
                path = _field_path(e.absolute_path)
                out.append((f"{path}.{extra}" if path and extra else path or extra, message))
            return out
        return [("", str(fast_error))]


# --- semantic checks: what the API server checks and a schema cannot say -------------------

def _ip(value: str):
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _special_ip(address) -> str | None:
    """The API server's ValidateNonSpecialIP: why an endpoint address is refused, or None."""
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.version == 4 and address in _LINK_LOCAL_MCAST_V4:
        return "link-local multicast"
    if address.version == 6 and address.is_multicast and (address.packed[1] & 0x0F) == 2:
        return "link-local multicast"
    return None


_LINK_LOCAL_MCAST_V4 = ipaddress.ip_network("224.0.0.0/24")


def _check_service(body: dict) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    spec = body.get("spec") or {}
    cluster_ip = spec.get("clusterIP")
    cluster_ips = spec.get("clusterIPs")
    if cluster_ips and cluster_ip not in (None, "") and cluster_ips[0] != cluster_ip:
        errors.append(("spec.clusterIPs[0]", f"must equal spec.clusterIP {cluster_ip!r}, "
                                             f"got {cluster_ips[0]!r}"))
    if cluster_ips and len(cluster_ips) == 2:
        a, b = (_ip(x) for x in cluster_ips)
        if a is not None and b is not None and a.version == b.version:
            errors.append(("spec.clusterIPs", "the two ClusterIPs must be of different families"))
    ports = spec.get("ports") or []
    if len(ports) > 1:
        names: dict[str, int] = {}
        pairs: dict[tuple[int, str], int] = {}
        for i, p in enumerate(ports):
            name = p.get("name") or ""
            if not name:
                errors.append((f"spec.ports[{i}].name", "required when the Service has more "
                                                         "than one port"))
            elif name in names:
                errors.append((f"spec.ports[{i}].name", f"duplicate port name {name!r} (also "
                                                         f"spec.ports[{names[name]}])"))
            else:
                names[name] = i
            pair = (p.get("port"), p.get("protocol") or "TCP")
            if pair in pairs:
                errors.append((f"spec.ports[{i}]", f"duplicate port {pair[0]}/{pair[1]} (also "
                                                    f"spec.ports[{pairs[pair]}])"))
            else:
                pairs[pair] = i
    return errors


def _check_address(address: str, path: str, family: int | None) -> list[tuple[str, str]]:
    ip = _ip(address)
    if ip is None:
        return [(path, f"{address!r} is not an IP address")]
    special = _special_ip(ip)
    if special:
        return [(path, f"{address} is a {special} address, which may not be an endpoint")]
    if family is not None and ip.version != family:
        return [(path, f"{address} is IPv{ip.version} but addressType is IPv{family}")]
    return []


def _check_endpoints(body: dict) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    for i, subset in enumerate(body.get("subsets") or []):
        if not subset.get("addresses") and not subset.get("notReadyAddresses"):
            errors.append((f"subsets[{i}]", "must specify addresses or notReadyAddresses"))
        for field in ("addresses", "notReadyAddresses"):
            for j, addr in enumerate(subset.get(field) or []):
                errors += _check_address(addr["ip"], f"subsets[{i}].{field}[{j}].ip", None)
        ports = subset.get("ports") or []
        if len(ports) > 1:
            for j, port in enumerate(ports):
                if not port.get("name"):
                    errors.append((f"subsets[{i}].ports[{j}].name",
                                   "required when the subset has more than one port"))
    return errors


def _check_endpointslice(body: dict) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    address_type = body.get("addressType")
    family = {"IPv4": 4, "IPv6": 6}.get(address_type)
    if family is None:  # FQDN slices are valid but carry no address edgeproxy can dial
        return errors
    for i, endpoint in enumerate(body.get("endpoints") or []):
        for j, address in enumerate(endpoint.get("addresses") or []):
            errors += _check_address(address, f"endpoints[{i}].addresses[{j}]", family)
        zones = [z.get("name") for z in ((endpoint.get("hints") or {}).get("forZones") or [])]
        for j, zone in enumerate(zones):
            if zone in zones[:j]:
                errors.append((f"endpoints[{i}].hints.forZones[{j}].name",
                               f"duplicate zone {_yaml(zone)}"))
    names: dict[str, int] = {}
    for i, port in enumerate(body.get("ports") or []):
        name = port.get("name") or ""
        if name in names:
            errors.append((f"ports[{i}].name", f"duplicate port name {_yaml(name)} (also "
                                               f"ports[{names[name]}])"))
        else:
            names[name] = i
    return errors


_SEMANTIC: dict[str, Callable[[dict], list[tuple[str, str]]]] = {
    "Service": _check_service,
    "Endpoints": _check_endpoints,
    "EndpointSlice": _check_endpointslice,
}


def validate_document(file: str, document: str, body: dict,
                      ) -> tuple[KubeObject | None, list[ManifestError]]:
    """Classify and validate one document: (object or None, errors).

    Objects of kinds edgeproxy does not use are returned unvalidated and without their body
    (they are only counted: a 1 MiB ConfigMap need not be walked, travel or stay). Fields of
    the kinds it uses that are set to null are unset first (`drop_nulls`), as the API server
    decodes them; kind, apiVersion, namespace and name read the same either way (null and
    missing both give no value).
    """
    kind = body.get("kind")
    api_version = body.get("apiVersion")
    metadata = body.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    raw_ns = metadata.get("namespace")
    name = metadata.get("name")
    ns_text = raw_ns if isinstance(raw_ns, str) and raw_ns else None
    name_text = name if isinstance(name, str) else None

    def error(path: str, message: str) -> ManifestError:
        return ManifestError(file, document, kind if isinstance(kind, str) else None,
                             ns_text or (DEFAULT_NAMESPACE if name_text else None), name_text,
                             path, message)

    if not isinstance(kind, str) or not kind:
        return None, [error("kind", "required: every manifest names its kind")]
    if not isinstance(api_version, str) or not api_version:
        return None, [error("apiVersion", "required: every manifest names its apiVersion")]
    known = KNOWN_KINDS.get(kind)
    source = SourceRef(file, document)
    if known is None:
        spelled = _KINDS_BY_LOWER.get(kind.lower())
        if spelled is not None:
            # kubectl and the API server would refuse it; ignoring it would lose a Service.
            return None, [error("kind", f"unknown kind {_yaml(kind)}: kinds are case-sensitive, "
                                        f"did you mean {spelled}?")]
        return KubeObject(kind, api_version, ns_text or DEFAULT_NAMESPACE, name_text or "",
                          source, {}), []
    try:
        body = drop_nulls(body)
    except RecursionError:
        pass  # nested too deeply: the schema check below says so
    versions, schema_name = known
    if api_version not in versions:
        return None, [error("apiVersion", f"{kind} must be apiVersion {' or '.join(versions)}, "
                                          f"got {_yaml(api_version)}")]
    problems = validate_instance(schema_name, body)
    if not problems:
        check = _SEMANTIC.get(kind)
        if check is not None:
            problems = check(body)
    if problems:
        return None, [error(path, message) for path, message in problems]
    return KubeObject(kind, api_version, ns_text or DEFAULT_NAMESPACE, name_text or "",
                      source, body), []

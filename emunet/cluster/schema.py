"""The registry's JSON schema rules: a typed field walker and the API server's checks.

:class:`FieldReader` walks one JSON/YAML object and names every field by its
path, so an error reads ``spec.ports[0].port: must be 1-65535, got 70000``
(:class:`~emunet.errors.ConfigError`); the ``check_*`` functions are the API
server's validation rules (DNS labels and subdomains, label keys and values,
ports, IANA port names, protocols); :func:`selector_matches` is the
equality-based label selector. Used by the objects
(:mod:`emunet.cluster.registry`) and the manifest reader
(:mod:`emunet.cluster.manifests`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import StrEnum
from ipaddress import AddressValueError, IPv4Address
from typing import Any

from emunet.errors import ConfigError

__all__ = [
    "PROTOCOLS",
    "FieldReader",
    "check_dns1035",
    "check_dns_label",
    "check_labels",
    "check_port",
    "check_port_name",
    "check_protocol",
    "check_subdomain",
    "clip",
    "dump_json",
    "enum_value",
    "host_port",
    "load_json",
    "object_meta",
    "require_ipv4",
    "selector_matches",
]

# --------------------------------------------------------------------------
# Field-path reader


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class FieldReader:
    """Walks one JSON/YAML object, naming each field by its path.

    Every accessor marks the key as known; :meth:`finish` appends
    ``"<path>: unknown field, ignored"`` to ``warnings`` for the others (when
    ``warnings`` is None, unknown fields are ignored silently: the stored form).
    """

    __slots__ = ("_children", "_seen", "data", "path", "warnings")

    def __init__(self, data: Any, path: str = "", warnings: list[str] | None = None) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path or '(document)'}: must be an object, got {_type_name(data)}")
        self.data: dict[str, Any] = data
        self.path = path
        self.warnings = warnings
        self._seen: set[str] = set()
        self._children: list[FieldReader] = []

    def _child(self, data: Any, path: str) -> FieldReader:
        child = FieldReader(data, path, self.warnings)
        self._children.append(child)
        return child

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        self._seen.add(key)
        return self.data.get(key) is not None

    def raw(self, key: str) -> Any:
        self._seen.add(key)
        return self.data.get(key)

    def ignore(self, *keys: str) -> None:
        """Accept these keys silently (known, but emunet has no use for them)."""
        self._seen.update(keys)

    def text(self, key: str, default: str | None = None) -> str:
        value = self.raw(key)
        if value is None:
            if default is None:
                raise ConfigError(f"{self.sub(key)}: required")
            return default
        if not isinstance(value, str):
            raise ConfigError(f"{self.sub(key)}: must be a string, got {_type_name(value)}")
        return value

    def integer(self, key: str, default: int | None = None) -> int:
        value = self.raw(key)
        if value is None:
            if default is None:
                raise ConfigError(f"{self.sub(key)}: required")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.sub(key)}: must be an integer, got {_type_name(value)}")
        return value

    def int_or_str(self, key: str) -> int | str | None:
        value = self.raw(key)
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        if isinstance(value, str):
            return int(value) if value.isdigit() else value
        raise ConfigError(
            f"{self.sub(key)}: must be an integer or a port name, got {_type_name(value)}"
        )

    def ipv4(self, key: str) -> IPv4Address | None:
        value = self.raw(key)
        if value in (None, "", "None"):
            return None
        try:
            return IPv4Address(value)
        except (AddressValueError, ValueError):
            raise ConfigError(f"{self.sub(key)}: {value!r} is not an IPv4 address") from None

    def obj(self, key: str) -> FieldReader:
        return self._child(self.raw(key), self.sub(key))

    def objs(self, key: str) -> list[FieldReader]:
        value = self.raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"{self.sub(key)}: must be a list, got {_type_name(value)}")
        return [self._child(item, f"{self.sub(key)}[{i}]") for i, item in enumerate(value)]

    def str_map(self, key: str) -> dict[str, str]:
        value = self.raw(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.sub(key)}: must be an object, got {_type_name(value)}")
        out: dict[str, str] = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                raise ConfigError(f"{self.sub(key)}.{k}: must be a string, got {_type_name(v)}")
            out[str(k)] = v if isinstance(v, str) else str(v)
        return out

    def any_map(self, key: str) -> dict[str, Any]:
        value = self.raw(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.sub(key)}: must be an object, got {_type_name(value)}")
        return {str(k): v for k, v in value.items()}

    def finish(self, note: str = "unknown field, ignored") -> None:
        """Record a warning for every key never asked for, here and in the
        objects read through this reader (depth first, in document order)."""
        if self.warnings is None:
            return
        for key in self.data:
            if key not in self._seen:
                self.warnings.append(f"{self.sub(str(key))}: {note}")
        for child in self._children:
            child.finish(note)
        self._children.clear()


def load_json(text: str | bytes, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: not valid JSON ({exc})") from None


def dump_json(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


# --------------------------------------------------------------------------
# Validation rules (the API server's)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PROTOCOLS = ("TCP", "UDP")


def check_dns_label(path: str, value: str) -> None:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise ConfigError(
            f"{path}: {value!r} must be a DNS label (lowercase letters, digits and '-', "
            "at most 63 characters, starting and ending with a letter or digit)"
        )


def check_dns1035(path: str, value: str) -> None:
    if len(value) > 63 or not _DNS1035.match(value):
        raise ConfigError(
            f"{path}: {value!r} must be a DNS-1035 label (lowercase letters, digits and '-', "
            "at most 63 characters, starting with a letter)"
        )


def check_subdomain(path: str, value: str) -> None:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ConfigError(
            f"{path}: {value!r} must be a DNS subdomain (lowercase letters, digits, '-' and '.')"
        )


def check_labels(path: str, labels: Mapping[str, str]) -> None:
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if (
            (prefix and not _DNS_SUBDOMAIN.match(prefix))
            or len(name) > 63
            or not (_LABEL_NAME.match(name))
        ):
            raise ConfigError(f"{path}: {clip(key)!r} is not a valid label key")
        if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
            why = f" ({len(value)} characters, at most 63)" if len(value) > 63 else ""
            raise ConfigError(
                f"{path}.{clip(key)}: {clip(value)!r} is not a valid label value{why}"
            )


def clip(text: str, limit: int = 70) -> str:
    """A value as an error message quotes it: never a whole megabyte."""
    return text if len(text) <= limit else text[:limit] + "..."


def check_port(path: str, port: int) -> None:
    if not 0 < port < 65536:
        raise ConfigError(f"{path}: must be 1-65535, got {port}")


def check_port_name(path: str, name: str) -> None:
    # IANA_SVC_NAME: at most 15 characters, at least one letter, no "--"
    if (
        len(name) > 15
        or not _PORT_NAME.match(name)
        or "--" in name
        or not any(c.isalpha() for c in name)
    ):
        raise ConfigError(
            f"{path}: {name!r} must be an IANA service name (at most 15 lowercase letters, "
            "digits and '-', with at least one letter)"
        )


def check_protocol(path: str, protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{path}: must be TCP or UDP, got {protocol!r}")


def enum_value(path: str, cls: type[StrEnum], value: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise ConfigError(f"{path}: must be one of {allowed}, got {value!r}") from None


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Equality-based selector: every pair present. An empty selector matches nothing
    here (a Service without a selector gets no automatic endpoints)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def object_meta(
    name: str, namespace: str, uid: str, created: str, labels: Mapping[str, str]
) -> dict[str, Any]:
    """A namespaced object's ``metadata``; empty fields are left out."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if uid:
        meta["uid"] = uid
    if created:
        meta["creationTimestamp"] = created
    if labels:
        meta["labels"] = dict(labels)
    return meta


def require_ipv4(value: IPv4Address | None, path: str) -> IPv4Address:
    if value is None:
        raise ConfigError(f"{path}: required")
    return value


def host_port(endpoint: str, what: str) -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``; ``what`` starts the error message."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{what} {endpoint!r} is not host:port")
    return host, int(port)

"""Kubernetes YAML manifests -> registry objects (``emunet apply -f``), pure.

:func:`parse_manifests` reads a multi-document YAML text (``---`` separated;
a ``kind: List`` with ``items`` works too) and returns the
:class:`~emunet.cluster.registry.Pod`, ``Deployment`` and ``Service`` objects
plus a list of warnings. ``apiVersion``/``kind`` are checked (``v1`` Pod,
``v1`` Service, ``apps/v1`` Deployment).

* A field emunet does not use is ignored with a warning naming its path, e.g.
  ``document 1 (Deployment web): spec.strategy: not used by emunet, ignored``.
  Bookkeeping fields (``metadata.annotations``, ``metadata.resourceVersion``,
  ``status``...) are accepted silently.
* An invalid field is refused with :class:`~emunet.errors.ConfigError` naming
  the document and the field path, e.g. ``document 2 (Service web):
  spec.ports[0].port: must be 1-65535, got 70000``.

Which emulated app a container runs
-----------------------------------
emunet runs built-in apps, not images. For each container, the first that
applies wins:

1. the annotation ``emunet.io/app`` (on the Pod, or the Deployment's pod
   template), e.g. ``emunet.io/app: echo``; a per-container form
   ``emunet.io/app.<container name>`` wins over it;
2. the label ``emunet.io/app`` on the same object;
3. the container ``image``: a name containing ``echo`` runs ``echo``,
   ``http``, ``whoami``, ``nginx`` or ``httpd`` runs ``http``, ``sink`` runs
   ``sink`` (e.g. ``traefik/whoami``, ``nginx:1.27``, ``hashicorp/http-echo``
   (``echo`` is checked first) ...). Anything else is refused with the path of
   the ``image`` field.

The app's ``args`` are ``{"port": <first containerPort>}`` when the container
declares ports, updated with the JSON object in the annotation
``emunet.io/args`` (e.g. ``'{"port": 8080, "message": "hi"}'``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from emunet.cluster.registry import (
    DEFAULT_NAMESPACE,
    Container,
    ContainerPort,
    Deployment,
    Pod,
    PodTemplate,
    Service,
)
from emunet.cluster.schema import FieldReader
from emunet.errors import ConfigError

__all__ = [
    "APP_ANNOTATION",
    "ARGS_ANNOTATION",
    "IMAGE_APPS",
    "Manifest",
    "ManifestObject",
    "app_for_image",
    "parse_manifests",
]

APP_ANNOTATION = "emunet.io/app"
ARGS_ANNOTATION = "emunet.io/args"

IMAGE_APPS: tuple[tuple[str, str], ...] = (
    ("echo", "echo"),
    ("sink", "sink"),
    ("whoami", "http"),
    ("nginx", "http"),
    ("httpd", "http"),
    ("http", "http"),
)
"""(substring of the image name, app), checked in order."""

_KINDS = {"Pod": "v1", "Service": "v1", "Deployment": "apps/v1"}

# Accepted silently: bookkeeping that has no meaning for the emulation.
_QUIET_METADATA = (
    "annotations",
    "creationTimestamp",
    "resourceVersion",
    "generation",
    "uid",
    "managedFields",
    "selfLink",
    "finalizers",
    "generateName",
    "ownerReferences",
)
_NOTE = "not used by emunet, ignored"

ManifestObject = Pod | Deployment | Service


@dataclass(slots=True)
class Manifest:
    objects: list[ManifestObject] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def app_for_image(image: str) -> str | None:
    """The built-in app an image name stands for (see the module doc), or None."""
    name = image.rsplit("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    repo = name.rsplit(":", 1)[0] if ":" in last else name
    lowered = repo.lower()
    for needle, app in IMAGE_APPS:
        if needle in lowered:
            return app
    return None


def _args(annotations: Mapping[str, str], path: str) -> dict[str, Any]:
    text = annotations.get(ARGS_ANNOTATION)
    if text is None:
        return {}
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ConfigError(
            f"{path}.annotations.{ARGS_ANNOTATION}: not a JSON object ({exc})"
        ) from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}.annotations.{ARGS_ANNOTATION}: must be a JSON object")
    return obj


def _containers(
    spec: FieldReader, meta_path: str, annotations: Mapping[str, str], labels: Mapping[str, str]
) -> tuple[Container, ...]:
    extra = _args(annotations, meta_path)
    out = []
    for c in spec.objs("containers"):
        name = c.text("name")
        image = c.text("image", "")
        ports = []
        for p in c.objs("ports"):
            ports.append(ContainerPort.read(p))
            p.ignore("hostPort", "hostIP")
        app = (
            annotations.get(f"{APP_ANNOTATION}.{name}")
            or annotations.get(APP_ANNOTATION)
            or labels.get(APP_ANNOTATION)
            or app_for_image(image)
        )
        if not app:
            what = f"image {image!r}" if image else "no image"
            raise ConfigError(
                f"{c.sub('image')}: cannot tell which emunet app runs {what}; use an image "
                f"name containing echo, http, whoami, nginx or sink, or set the annotation "
                f"{APP_ANNOTATION} (http, echo or sink)"
            )
        args: dict[str, Any] = {"port": ports[0].container_port} if ports else {}
        args.update(extra)
        out.append(Container(name, app, args, tuple(ports)))
    return tuple(out)


def _metadata(r: FieldReader, namespace: str | None) -> tuple[FieldReader, str, str]:
    meta = r.obj("metadata")
    meta.ignore(*_QUIET_METADATA)
    name = meta.text("name")
    ns = meta.text("namespace", "")
    if namespace is not None and ns and ns != namespace:
        raise ConfigError(
            f"metadata.namespace: {ns!r} does not match the namespace given ({namespace!r})"
        )
    return meta, name, ns or namespace or DEFAULT_NAMESPACE


def _pod(r: FieldReader, namespace: str | None) -> Pod:
    meta, name, ns = _metadata(r, namespace)
    labels = meta.str_map("labels")
    annotations = meta.str_map("annotations")
    spec = r.obj("spec")
    r.ignore("status")
    pod = Pod(
        name=name,
        namespace=ns,
        labels=labels,
        node_name=spec.text("nodeName", ""),
        containers=_containers(spec, "metadata", annotations, labels),
    )
    pod.validate()
    return pod


def _deployment(r: FieldReader, namespace: str | None) -> Deployment:
    meta, name, ns = _metadata(r, namespace)
    spec = r.obj("spec")
    r.ignore("status")
    selector = spec.obj("selector")
    if selector.has("matchExpressions"):
        raise ConfigError("spec.selector.matchExpressions: not supported by emunet (matchLabels)")
    template = spec.obj("template")
    tmeta = template.obj("metadata")
    tmeta.ignore(*_QUIET_METADATA)
    tlabels = tmeta.str_map("labels")
    tspec = template.obj("spec")
    dep = Deployment(
        name=name,
        namespace=ns,
        replicas=spec.integer("replicas", 1),
        selector=selector.str_map("matchLabels"),
        template=PodTemplate(
            tlabels,
            _containers(tspec, "spec.template.metadata", tmeta.str_map("annotations"), tlabels),
            tspec.text("nodeName", ""),
        ),
        labels=meta.str_map("labels"),
    )
    dep.validate()
    return dep


def _service(r: FieldReader, namespace: str | None) -> Service:
    meta, _name, ns = _metadata(r, namespace)
    meta.data = {**meta.data, "namespace": ns}
    spec = r.obj("spec")
    r.ignore("status")
    if spec.raw("clusterIP") == "None":
        raise ConfigError("spec.clusterIP: headless Services (None) are not supported by emunet")
    return Service.read_spec(meta, spec, FieldReader({}, "status"))


_PARSERS: dict[str, Callable[[FieldReader, str | None], ManifestObject]] = {
    "Pod": _pod,
    "Deployment": _deployment,
    "Service": _service,
}


def _document(doc: Any, where: str, namespace: str | None, out: Manifest) -> None:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: must be a mapping with apiVersion and kind")
    kind = doc.get("kind")
    api = doc.get("apiVersion")
    if kind == "List":
        items = doc.get("items") or []
        if not isinstance(items, list):
            raise ConfigError(f"{where}: items: must be a list")
        for i, item in enumerate(items):
            _document(item, f"{where} items[{i}]", namespace, out)
        return
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"{where}: kind: required")
    if kind not in _PARSERS:
        raise ConfigError(f"{where}: kind: {kind!r} is not supported (Pod, Deployment, Service)")
    if api != _KINDS[kind]:
        raise ConfigError(
            f"{where} ({kind}): apiVersion: must be {_KINDS[kind]!r} for a {kind}, got {api!r}"
        )
    meta = doc.get("metadata")
    label = f"{kind} {meta.get('name')}" if isinstance(meta, dict) and meta.get("name") else kind
    warnings: list[str] = []
    reader = FieldReader(doc, "", warnings)
    reader.ignore("apiVersion", "kind")
    try:
        obj = _PARSERS[kind](reader, namespace)
    except ConfigError as exc:
        raise ConfigError(f"{where} ({label}): {exc}") from None
    reader.finish(_NOTE)
    out.objects.append(obj)
    out.warnings.extend(f"{where} ({label}): {w}" for w in warnings)


MAX_MANIFEST_BYTES = 4 << 20
MAX_DOCUMENTS = 1000


def parse_manifests(text: str, namespace: str | None = None) -> Manifest:
    """Parse every document of ``text``; ``namespace`` is the default (``-n``).

    At most :data:`MAX_MANIFEST_BYTES` and :data:`MAX_DOCUMENTS`, refused before
    parsing (a 10 MB file of 33,000 documents took 36 s to refuse)."""
    if len(text) > MAX_MANIFEST_BYTES:
        raise ConfigError(
            f"{len(text)} bytes: a manifest may hold at most {MAX_MANIFEST_BYTES >> 20} MiB"
        )
    separators = text.count("\n---") + text.startswith("---")
    if separators >= MAX_DOCUMENTS:
        raise ConfigError(f"{separators + 1} documents: at most {MAX_DOCUMENTS} in one manifest")
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise ConfigError(f"{where}: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {str(exc).splitlines()[0]}") from None
    out = Manifest()
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        _document(doc, f"document {i + 1}", namespace, out)
    if not out.objects:
        raise ConfigError("no objects found (expected Pod, Deployment or Service documents)")
    return out

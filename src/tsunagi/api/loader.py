"""Load Istio resources from (multi-document) YAML into typed, validated objects."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .checks_common import Issue, Path, render_path
from .errors import FieldError, ValidationFailed
from .kinds import KIND_INFO, KindInfo
from .names import check_dns_label, check_dns_subdomain, check_label_key, check_label_value
from .pydantic_errors import describe, issues_from_validation_error
from .suggest import closest, unknown_field_reason

DEFAULT_NAMESPACE = "default"

_TOP_LEVEL_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")
# Fields Kubernetes adds to metadata (e.g. in `kubectl get -o yaml` output); we
# accept and ignore them so such output can be re-applied.
_METADATA_FIELDS = (
    "name",
    "namespace",
    "labels",
    "annotations",
    "generateName",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    "ownerReferences",
    "managedFields",
    "selfLink",
)


@dataclass(frozen=True)
class Resource:
    """One validated Istio resource."""

    api_version: str
    kind: str
    name: str
    namespace: str
    spec: BaseModel
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    document: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def key(self) -> tuple[str, str, str]:
        """``(kind, namespace, name)``: identity of the resource."""
        return (self.kind, self.namespace, self.name)

    @property
    def qualified_name(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"


class _DocErrors:
    """Collects errors for one document, tagging them with file/index/kind/name."""

    def __init__(self, filename: str, index: int) -> None:
        self.filename = filename
        self.index = index
        self.kind = ""
        self.name = ""
        self.errors: list[FieldError] = []

    def add(self, path: str, reason: str) -> None:
        self.errors.append(
            FieldError(self.filename, self.index, self.kind, self.name, path, reason)
        )

    def add_issue(self, prefix: Path, issue: Issue) -> None:
        self.add(render_path((*prefix, *issue.path)), issue.reason)


# --------------------------------------------------------------------------- YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable key; the constructor reports it below
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _yaml_error(filename: str, index: int, exc: yaml.YAMLError) -> FieldError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    text = f"{context}: {problem}" if context else str(problem)
    return FieldError(filename, index, "", "", "", f"invalid YAML: {where}{text}")


# --------------------------------------------------------------------------- documents


def _check_string_map(
    value: object, path: Path, errs: _DocErrors, *, labels: bool
) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        errs.add(render_path(path), f"must be a mapping, got {describe(value)}")
        return {}
    out: dict[str, str] = {}
    for k, v in value.items():
        kp = render_path((*path, str(k)))
        if not isinstance(k, str):
            errs.add(kp, f"key must be a string, got {describe(k)}")
            continue
        if not isinstance(v, str):
            hint = f' (quote it: "{v}")' if isinstance(v, int | float | bool) else ""
            errs.add(kp, f"value must be a string, got {describe(v)}{hint}")
            continue
        if labels:
            reason = check_label_key(k) or check_label_value(v)
            if reason:
                errs.add(kp, reason)
                continue
        out[k] = v
    return out


def _label_document(doc: Mapping[Any, Any], errs: _DocErrors) -> None:
    """Best-effort kind and namespace/name so every error can say which object it is."""
    kind = doc.get("kind")
    if isinstance(kind, str):
        errs.kind = kind
    meta = doc.get("metadata")
    if isinstance(meta, Mapping) and isinstance(meta.get("name"), str) and meta["name"]:
        namespace = meta.get("namespace")
        ns = namespace if isinstance(namespace, str) and namespace else DEFAULT_NAMESPACE
        errs.name = f"{ns}/{meta['name']}"


def _resolve_kind(doc: Mapping[Any, Any], errs: _DocErrors) -> KindInfo | None:
    kind = doc.get("kind")
    if kind is None:
        errs.add("kind", "required field is missing")
        return None
    if not isinstance(kind, str):
        errs.add("kind", f"must be a string, got {describe(kind)}")
        return None
    info = KIND_INFO.get(kind)
    if info is None:
        best = closest(kind, KIND_INFO)
        hint = f'; did you mean "{best}"?' if best else f"; supported kinds: {', '.join(KIND_INFO)}"
        errs.add("kind", f'unknown kind "{kind}"{hint}')
    return info


def _check_api_version(doc: Mapping[Any, Any], info: KindInfo | None, errs: _DocErrors) -> str:
    api = doc.get("apiVersion")
    if api is None:
        errs.add("apiVersion", "required field is missing")
        return ""
    if not isinstance(api, str):
        errs.add("apiVersion", f"must be a string, got {describe(api)}")
        return ""
    if info is not None and api not in info.api_versions:
        errs.add(
            "apiVersion",
            f'unsupported apiVersion "{api}" for {info.kind}; use one of: '
            + ", ".join(info.api_versions),
        )
    elif info is None and not any(api in i.api_versions for i in KIND_INFO.values()):
        errs.add("apiVersion", f'unknown apiVersion "{api}"')
    return api


def _parse_metadata(
    doc: Mapping[Any, Any], errs: _DocErrors
) -> tuple[str, str, dict[str, str], dict[str, str]]:
    meta = doc.get("metadata")
    if meta is None:
        errs.add("metadata.name", "required field is missing")
        return "", DEFAULT_NAMESPACE, {}, {}
    if not isinstance(meta, Mapping):
        errs.add("metadata", f"must be a mapping, got {describe(meta)}")
        return "", DEFAULT_NAMESPACE, {}, {}
    for key in meta:
        if key not in _METADATA_FIELDS:
            errs.add(f"metadata.{key}", unknown_field_reason(str(key), _METADATA_FIELDS[:4]))
    name = meta.get("name")
    if name is None:
        errs.add("metadata.name", "required field is missing")
        name = ""
    elif not isinstance(name, str):
        errs.add("metadata.name", f"must be a string, got {describe(name)}")
        name = ""
    else:
        reason = check_dns_subdomain(name, "name")
        if reason:
            errs.add("metadata.name", reason)
    namespace = meta.get("namespace", DEFAULT_NAMESPACE)
    if namespace is None:
        namespace = DEFAULT_NAMESPACE
    if not isinstance(namespace, str):
        errs.add("metadata.namespace", f"must be a string, got {describe(namespace)}")
        namespace = DEFAULT_NAMESPACE
    else:
        reason = check_dns_label(namespace, "namespace")
        if reason:
            errs.add("metadata.namespace", reason)
    labels = _check_string_map(meta.get("labels"), ("metadata", "labels"), errs, labels=True)
    annotations = _check_string_map(
        meta.get("annotations"), ("metadata", "annotations"), errs, labels=False
    )
    return name, namespace, labels, annotations


def _parse(doc: Any, filename: str, index: int) -> tuple[Resource | None, list[FieldError]]:
    errs = _DocErrors(filename, index)
    if not isinstance(doc, Mapping):
        errs.add(
            "",
            f"document must be a mapping (apiVersion, kind, metadata, spec), got {describe(doc)}",
        )
        return None, errs.errors
    _label_document(doc, errs)
    info = _resolve_kind(doc, errs)
    api_version = _check_api_version(doc, info, errs)
    name, namespace, labels, annotations = _parse_metadata(doc, errs)
    for key in doc:
        if key not in _TOP_LEVEL_FIELDS:
            errs.add(str(key), unknown_field_reason(str(key), _TOP_LEVEL_FIELDS[:4]))
    if info is None:
        return None, errs.errors

    raw_spec = doc.get("spec")
    if raw_spec is None:
        raw_spec = {}  # Istio treats a missing spec as empty (e.g. allow-nothing policies)
    spec: BaseModel | None = None
    if not isinstance(raw_spec, Mapping):
        errs.add("spec", f"must be a mapping, got {describe(raw_spec)}")
    else:
        try:
            spec = info.spec_model.model_validate(raw_spec, by_alias=True, by_name=False)
        except ValidationError as exc:
            for issue in issues_from_validation_error(exc, info.spec_model):
                errs.add_issue(("spec",), issue)
        else:
            for issue in info.check(spec):
                errs.add_issue(("spec",), issue)
    if errs.errors or spec is None:
        return None, errs.errors
    resource = Resource(
        api_version=api_version,
        kind=info.kind,
        name=name,
        namespace=namespace,
        spec=spec,
        labels=MappingProxyType(labels),
        annotations=MappingProxyType(annotations),
        document=copy.deepcopy(dict(doc)),
    )
    return resource, []


def parse_document(doc: Any, filename: str = "<stdin>", index: int = 1) -> Resource:
    """Validate one already-parsed YAML document and return it as a :class:`Resource`.

    Raises :class:`ValidationFailed` listing every problem found in the document.
    """
    resource, errors = _parse(doc, filename, index)
    if errors or resource is None:
        raise ValidationFailed(errors)
    return resource


def load_documents(text: str, filename: str = "<stdin>") -> list[Resource]:
    """Parse and validate every document of a (multi-document) YAML text.

    Empty documents are skipped (but still counted for document numbers).
    All-or-nothing: if any document is invalid, :class:`ValidationFailed` is
    raised with the errors of *every* document and nothing is returned.
    Duplicate ``(kind, namespace, name)`` within the text are errors too.
    """
    errors: list[FieldError] = []
    resources: list[Resource] = []
    first_seen: dict[tuple[str, str, str], int] = {}
    index = 0
    loader = _StrictLoader(text)
    try:
        while True:
            try:
                if not loader.check_data():  # type: ignore[no-untyped-call]
                    break
                doc = loader.get_data()
            except yaml.YAMLError as exc:
                # The stream cannot be resynchronised after a syntax error.
                errors.append(_yaml_error(filename, index + 1, exc))
                break
            index += 1
            if doc is None:
                continue
            resource, doc_errors = _parse(doc, filename, index)
            errors.extend(doc_errors)
            if resource is None:
                continue
            earlier = first_seen.setdefault(resource.key, index)
            if earlier != index:
                errors.append(
                    FieldError(
                        filename,
                        index,
                        resource.kind,
                        resource.qualified_name,
                        "metadata.name",
                        f"duplicate {resource.kind} {resource.qualified_name}"
                        f" (already defined in document {earlier})",
                    )
                )
            resources.append(resource)
    finally:
        loader.dispose()
    if errors:
        raise ValidationFailed(errors)
    return resources

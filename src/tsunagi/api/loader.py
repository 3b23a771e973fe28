"""Load Istio resources from (multi-document) YAML into typed, validated objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ValidationError

from .checks_common import Issue, Path, quote, render_path, shorten
from .errors import FieldError, ValidationFailed
from .kinds import KIND_INFO, KindInfo
from .names import check_dns_label, check_dns_subdomain, check_label_key, check_label_value
from .pydantic_errors import describe, issues_from_validation_error
from .suggest import closest, unknown_field_reason
from .yamlread import (
    MAX_BYTES,
    MAX_DEPTH,
    MAX_DOCUMENT_NODES,
    MAX_DOCUMENTS,
    MAX_TOTAL_NODES,
    plain_data,
    read_documents,
)

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
    # Not in repr: a Secret's document holds its keys, and kubectl's last-applied annotation
    # a copy of the whole document; a repr ends up in logs and tracebacks.
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    document: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False)

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
            FieldError(self.filename, self.index, self.kind, self.name, path, shorten(reason))
        )

    def add_issue(self, prefix: Path, issue: Issue) -> None:
        self.add(render_path((*prefix, *issue.path)), issue.reason)


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


def _display(text: str) -> str:
    """``text`` as is when it is short and plain, else quoted and escaped."""
    return text if len(text) <= 80 and text.isprintable() and " " not in text else quote(text)


def _label_document(doc: Mapping[Any, Any], errs: _DocErrors) -> None:
    """Best-effort kind and namespace/name so every error can say which object it is."""
    kind = doc.get("kind")
    if isinstance(kind, str):
        errs.kind = _display(kind)
    meta = doc.get("metadata")
    if isinstance(meta, Mapping) and isinstance(meta.get("name"), str) and meta["name"]:
        namespace = meta.get("namespace")
        ns = namespace if isinstance(namespace, str) and namespace else DEFAULT_NAMESPACE
        errs.name = f"{_display(ns)}/{_display(meta['name'])}"


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
        errs.add("kind", f"unknown kind {quote(kind)}{hint}")
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
            f"unsupported apiVersion {quote(api)} for {info.kind}; use one of: "
            + ", ".join(info.api_versions),
        )
    elif info is None and not any(api in i.api_versions for i in KIND_INFO.values()):
        errs.add("apiVersion", f"unknown apiVersion {quote(api)}")
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
            errs.add(
                render_path(("metadata", key)), unknown_field_reason(key, _METADATA_FIELDS[:4])
            )
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


def _parse(
    doc: Any, filename: str, index: int, max_depth: int = MAX_DEPTH
) -> tuple[Resource | None, list[FieldError]]:
    errs = _DocErrors(filename, index)
    if not isinstance(doc, Mapping):
        errs.add(
            "",
            f"document must be a mapping (apiVersion, kind, metadata, spec), got {describe(doc)}",
        )
        return None, errs.errors
    _label_document(doc, errs)
    # Validate exactly what the store will hold (JSON), so a stored document always
    # loads back to the same resource.
    doc, problems = plain_data(doc, max_depth)
    for path, reason in problems:
        errs.add(render_path(path), reason)
    if problems:
        return None, errs.errors
    info = _resolve_kind(doc, errs)
    api_version = _check_api_version(doc, info, errs)
    name, namespace, labels, annotations = _parse_metadata(doc, errs)
    known: tuple[str, ...] = _TOP_LEVEL_FIELDS
    shown: tuple[str, ...] = _TOP_LEVEL_FIELDS[:4]
    if info is not None and info.top_level:
        known = shown = (*_TOP_LEVEL_FIELDS[:3], *info.top_level)
    for key in doc:
        if key not in known:
            errs.add(render_path((key,)), unknown_field_reason(key, shown))
    if info is None:
        return None, errs.errors

    raw_spec = doc.get("spec")
    prefix: Path = ("spec",)
    if info.top_level:  # no spec (a Secret): its top-level fields are what is parsed
        raw_spec = {k: doc[k] for k in info.top_level if k in doc}
        prefix = ()
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
                errs.add_issue(prefix, issue)
        else:
            for issue in info.check(spec):
                errs.add_issue(prefix, issue)
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
        document=doc,
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


def load_documents(
    text: str,
    filename: str = "<stdin>",
    *,
    max_bytes: int = MAX_BYTES,
    max_documents: int = MAX_DOCUMENTS,
    max_depth: int = MAX_DEPTH,
    max_document_nodes: int = MAX_DOCUMENT_NODES,
    max_total_nodes: int = MAX_TOTAL_NODES,
) -> list[Resource]:
    """Parse and validate every document of a (multi-document) YAML text.

    Empty documents are skipped (but still counted for document numbers).
    All-or-nothing: if any document is invalid, :class:`ValidationFailed` is
    raised with the errors of *every* document and nothing is returned.
    Duplicate ``(kind, namespace, name)`` within the text are errors too, and so
    are duplicate keys within a YAML mapping.

    YAML is read safely (no tags that build Python objects) and within limits,
    each refused with an error that names it (defaults in :mod:`.yamlread`):

    * ``max_bytes``: size of ``text`` in UTF-8 bytes (8 MiB);
    * ``max_documents``: YAML documents, empty ones included (1,000);
    * ``max_depth``: nesting of mappings and lists (100 levels);
    * ``max_document_nodes``: YAML nodes in one document once aliases are expanded
      (100,000), checked while composing, before anything is expanded;
    * ``max_total_nodes``: the same, summed over all documents (1,000,000).

    No other exception than :class:`ValidationFailed` is raised for bad input.
    """
    errors: list[FieldError] = []
    resources: list[Resource] = []
    first_seen: dict[tuple[str, str, str], int] = {}
    documents = read_documents(
        text,
        filename,
        errors,
        max_bytes=max_bytes,
        max_documents=max_documents,
        max_depth=max_depth,
        max_document_nodes=max_document_nodes,
        max_total_nodes=max_total_nodes,
    )
    for index, doc in documents:
        resource, doc_errors = _parse(doc, filename, index, max_depth)
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
    if errors:
        raise ValidationFailed(errors)
    return resources

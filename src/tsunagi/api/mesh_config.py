"""MeshConfig, the mesh-wide settings Istio keeps in the ``istio`` ConfigMap's ``mesh`` key
(or IstioOperator's ``meshConfig``), as far as tsunagi honors them: ``extensionProviders``
of kinds ``envoyExtAuthzHttp`` and ``envoyExtAuthzGrpc``, the external authorizers that
AuthorizationPolicies with ``action: CUSTOM`` name.

``tsunagi up --mesh-config FILE`` reads one YAML document of that shape
(:func:`load_mesh_config`). Any other field or provider kind is refused at startup with
the file, the field path and "not supported yet", so a setting is never silently ignored.
Provider checks follow istiod's (``port`` in range, ``statusOnError`` an HTTP status
Envoy knows, ``pathPrefix`` starting with ``/``, no lone ``*`` header pattern).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Any

from envoy.type.v3 import http_status_pb2
from pydantic import BeforeValidator, ValidationError
from pydantic.alias_generators import to_camel

from .checks_common import Issue, Path, render_path
from .common import IstioModel, PortNumber, Seconds, StrictBool
from .errors import FieldError, ValidationFailed
from .names import check_dns_label, check_host
from .pydantic_errors import issues_from_validation_error
from .yamlread import read_documents

KIND = "MeshConfig"
SUPPORTED_FIELDS = ("extensionProviders",)
PROVIDER_KINDS = ("envoyExtAuthzHttp", "envoyExtAuthzGrpc")
# Istio's other provider kinds: named "not supported yet" rather than "unknown field".
OTHER_PROVIDER_KINDS = (
    "zipkin",
    "lightstep",
    "datadog",
    "stackdriver",
    "opencensus",
    "skywalking",
    "opentelemetry",
    "prometheus",
    "envoyFileAccessLog",
    "envoyHttpAls",
    "envoyTcpAls",
    "envoyOtelAls",
    "sds",
)
_STATUS_CODES = frozenset(c for c in http_status_pb2.StatusCode.values() if c)


def _pairs(value: object) -> object:
    """A YAML mapping of header names to values as sorted pairs; anything else is left for
    pydantic to refuse."""
    if isinstance(value, Mapping):
        return tuple(sorted(value.items()))
    if isinstance(value, tuple | list):
        raise ValueError("must be a mapping of header names to values")
    return value


HeaderPairs = Annotated[tuple[tuple[str, str], ...], BeforeValidator(_pairs)]


class RequestBody(IstioModel):
    """``includeRequestBodyInCheck``: buffer the request body and send it to the authorizer."""

    max_request_bytes: int = 0
    allow_partial_message: StrictBool = False
    pack_as_bytes: StrictBool = False


class EnvoyExtAuthzHttp(IstioModel):
    """``envoyExtAuthzHttp``: an HTTP authorizer; a 200 answer allows, any other denies and
    is passed on to the client."""

    service: str
    port: PortNumber
    timeout: Seconds | None = None
    path_prefix: str = ""
    fail_open: StrictBool = False
    status_on_error: str = ""
    include_request_headers_in_check: tuple[str, ...] = ()
    include_headers_in_check: tuple[str, ...] = ()
    """Deprecated by Istio for ``includeRequestHeadersInCheck``; used when that is empty."""
    include_additional_headers_in_check: HeaderPairs = ()
    """``(name, value)`` pairs, sorted by name (a mapping in YAML; a tuple keeps the
    settings hashable)."""
    include_request_body_in_check: RequestBody | None = None
    headers_to_upstream_on_allow: tuple[str, ...] = ()
    headers_to_downstream_on_deny: tuple[str, ...] = ()
    headers_to_downstream_on_allow: tuple[str, ...] = ()


class EnvoyExtAuthzGrpc(IstioModel):
    """``envoyExtAuthzGrpc``: an authorizer speaking Envoy's ``envoy.service.auth.v3``
    Authorization gRPC service; also used on TCP ports."""

    service: str
    port: PortNumber
    timeout: Seconds | None = None
    fail_open: StrictBool = False
    status_on_error: str = ""
    include_request_body_in_check: RequestBody | None = None


def service_host(service: str) -> tuple[str, str]:
    """A provider's ``service`` as ``(namespace, hostname)``; the namespace is empty when
    not given (Istio's ``NAMESPACE/HOSTNAME`` or ``HOSTNAME``)."""
    namespace, _, host = service.rpartition("/")
    return namespace, host


class ExtensionProvider(IstioModel):
    """One ``extensionProviders`` entry: a name and exactly one kind."""

    name: str
    envoy_ext_authz_http: EnvoyExtAuthzHttp | None = None
    envoy_ext_authz_grpc: EnvoyExtAuthzGrpc | None = None

    @property
    def config(self) -> EnvoyExtAuthzHttp | EnvoyExtAuthzGrpc:
        """The provider's one kind (validation makes sure there is exactly one)."""
        found = self.envoy_ext_authz_http or self.envoy_ext_authz_grpc
        assert found is not None
        return found


class MeshConfig(IstioModel):
    """The MeshConfig fields tsunagi honors."""

    extension_providers: tuple[ExtensionProvider, ...] = ()

    def provider(self, name: str) -> ExtensionProvider | None:
        """The provider called ``name``, if configured."""
        return next((p for p in self.extension_providers if p.name == name), None)


def _shape_issues(doc: Mapping[str, Any]) -> Iterator[Issue]:
    """Fields and provider kinds tsunagi does not honor yet (before pydantic's checks)."""
    for key in doc:
        if key not in SUPPORTED_FIELDS:
            yield Issue(
                (str(key),),
                f"not supported yet: tsunagi honors only {', '.join(SUPPORTED_FIELDS)}; "
                "remove this field from the file",
            )
    providers = doc.get("extensionProviders")
    if not isinstance(providers, list):
        return
    for i, entry in enumerate(providers):
        if not isinstance(entry, Mapping):
            continue
        for key in entry:
            if key in OTHER_PROVIDER_KINDS:
                yield Issue(
                    ("extensionProviders", i, str(key)),
                    f"provider kind {key} is not supported yet: only "
                    f"{' and '.join(PROVIDER_KINDS)} are; remove this provider",
                )


def _service(path: Path, service: str) -> Iterator[Issue]:
    """Istio's form: a hostname (no wildcard) or ``NAMESPACE/HOSTNAME``."""
    namespace, host = service_host(service)
    err = check_host(host, allow_wildcard=False, allow_ip=True) if host else "must not be empty"
    if "/" in service and not err:
        err = check_dns_label(namespace, "namespace")
    if err:
        yield Issue(
            path,
            f"{err}: give a mesh hostname (e.g. ext-authz.foo.svc.cluster.local) or "
            "NAMESPACE/HOSTNAME",
        )


def _headers(path: Path, values: tuple[str, ...]) -> Iterator[Issue]:
    for j, value in enumerate(values):
        if value == "*":
            yield Issue(
                (*path, j),
                'a lone "*" is not supported: use a prefix ("x-*") or suffix ("*-id") pattern',
            )
        elif not value:
            yield Issue((*path, j), "must not be empty")


def _provider_issues(i: int, p: ExtensionProvider, seen: set[str]) -> Iterator[Issue]:
    at: Path = ("extensionProviders", i)
    if not p.name:
        yield Issue((*at, "name"), "must not be empty")
    elif p.name in seen:
        yield Issue((*at, "name"), f"duplicate provider name {p.name!r}: names must be unique")
    seen.add(p.name)
    given = (p.envoy_ext_authz_http, p.envoy_ext_authz_grpc)
    kinds = [k for k, v in zip(PROVIDER_KINDS, given, strict=True) if v is not None]
    if len(kinds) != 1:
        yield Issue(at, f"needs exactly one of {' or '.join(PROVIDER_KINDS)}, found {len(kinds)}")
        return
    kind = kinds[0]
    config = p.config
    yield from _service((*at, kind, "service"), config.service)
    if config.status_on_error and (
        not config.status_on_error.isdigit() or int(config.status_on_error) not in _STATUS_CODES
    ):
        yield Issue(
            (*at, kind, "statusOnError"),
            f"{config.status_on_error!r} is not an HTTP status code Envoy knows (e.g. 403, 503)",
        )
    if config.timeout is not None and config.timeout <= 0:
        yield Issue((*at, kind, "timeout"), "must be greater than 0")
    body = config.include_request_body_in_check
    if body is not None and body.max_request_bytes < 0:
        yield Issue(
            (*at, kind, "includeRequestBodyInCheck", "maxRequestBytes"), "must not be negative"
        )
    if isinstance(config, EnvoyExtAuthzHttp):
        if config.path_prefix and not config.path_prefix.startswith("/"):
            yield Issue((*at, kind, "pathPrefix"), "must begin with '/'")
        for attr in (
            "include_request_headers_in_check",
            "include_headers_in_check",
            "headers_to_upstream_on_allow",
            "headers_to_downstream_on_deny",
            "headers_to_downstream_on_allow",
        ):
            yield from _headers((*at, kind, to_camel(attr)), getattr(config, attr))


def parse_mesh_config(doc: object, filename: str) -> MeshConfig:
    """The MeshConfig in one YAML document; raises :class:`ValidationFailed` naming the
    file, field path and reason of every problem."""

    def failed(issues: list[Issue]) -> ValidationFailed:
        return ValidationFailed(
            FieldError(filename, 0, KIND, "", render_path(i.path), i.reason) for i in issues
        )

    if doc is None:
        return MeshConfig()
    if not isinstance(doc, Mapping):
        raise failed([Issue((), "must be a mapping of MeshConfig fields (extensionProviders)")])
    issues = list(_shape_issues(doc))
    if issues:
        raise failed(issues)
    try:
        config = MeshConfig.model_validate(doc)
    except ValidationError as e:
        raise failed(list(issues_from_validation_error(e, MeshConfig))) from None
    seen: set[str] = set()
    issues = [
        issue
        for i, p in enumerate(config.extension_providers)
        for issue in _provider_issues(i, p, seen)
    ]
    if issues:
        raise failed(issues)
    return config


def load_mesh_config(text: str, filename: str) -> MeshConfig:
    """The MeshConfig in ``text`` (one YAML document, read from ``filename``)."""
    errors: list[FieldError] = []
    docs = [data for _, data in read_documents(text, filename, errors)]
    if errors:
        raise ValidationFailed(errors)
    if len(docs) > 1:
        raise ValidationFailed(
            [FieldError(filename, 0, KIND, "", "", "must hold one YAML document, not several")]
        )
    return parse_mesh_config(docs[0] if docs else None, filename)

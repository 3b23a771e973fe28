"""Shared model base class, field types and small models used by several kinds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Protocol, TypeVar

import re2
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
)
from pydantic.alias_generators import to_camel

from tsunagi.proxy_contract import RE2_MAX_PROGRAM_SIZE

from .durations import parse_duration


class IstioModel(BaseModel):
    """Base for every spec model: strict (unknown fields rejected), immutable.

    Python attributes are snake_case; YAML keys are Istio's camelCase aliases.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
    )


def _port_number(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"port number must be between 1 and 65535, got {value}")
    return value


def _compile_re2(value: str) -> str:
    options = re2.Options()
    options.log_errors = False  # otherwise RE2 writes every bad pattern to stderr
    try:
        compiled = re2.compile(value, options)
    except Exception as exc:  # re2 raises its own error type; any failure is a bad regex
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        # RE2 says "reason: fragment", the fragment raw (it may hold a newline)
        reason, _, fragment = str(detail).partition(": ")
        at = f" at {fragment!r}" if fragment else ""
        raise ValueError(f"invalid RE2 regular expression {value!r}: {reason}{at}") from None
    size = compiled.programsize
    if size > RE2_MAX_PROGRAM_SIZE:
        raise ValueError(
            f"RE2 regular expression {value[:60]!r}{'...' if len(value) > 60 else ''} is too "
            f"complex for Envoy: program size {size}, at most {RE2_MAX_PROGRAM_SIZE}"
        )
    return value


def _percent(value: float) -> float:
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"percentage must be between 0 and 100, got {value:g}")
    return value


StrictInt = Annotated[int, Strict()]
StrictBool = Annotated[bool, Strict()]
#: Istio declares these counts and weights int32/uint32; larger values would only fail
#: later, when translated for Envoy.
INT32_MAX = 2**31 - 1
NonNegativeInt = Annotated[int, Strict(), Field(ge=0, le=INT32_MAX)]
PortNumber = Annotated[int, Strict(), AfterValidator(_port_number)]
#: A Go-style duration string ("10s", "1h30m") parsed to float seconds.
Seconds = Annotated[float, BeforeValidator(parse_duration)]
#: A float percentage in [0, 100]; ints are accepted, strings are not.
PercentValue = Annotated[float, Strict(), AfterValidator(_percent)]
#: An integer percentage in [0, 100] (Istio's deprecated int percent fields).
IntPercent = Annotated[int, Strict(), Field(ge=0, le=100)]
#: A regular expression that must compile under RE2 (Envoy's regex engine).
RE2Regex = Annotated[str, AfterValidator(_compile_re2)]
Labels = Mapping[str, str]


class StringMatch(IstioModel):
    """Exactly one of ``exact``, ``prefix`` or ``regex``.

    An empty match (none set) is only meaningful as "present" in header and
    query-parameter matches; the semantic checks reject it elsewhere.
    """

    exact: str | None = None
    prefix: str | None = None
    regex: RE2Regex | None = None

    @property
    def is_empty(self) -> bool:
        """True when no match type is set (Istio: header/param is present)."""
        return self.exact is None and self.prefix is None and self.regex is None

    @property
    def set_fields(self) -> list[str]:
        """Names of the match types that are set."""
        return [n for n in ("exact", "prefix", "regex") if getattr(self, n) is not None]


class Percent(IstioModel):
    """Istio's ``Percent`` message: ``{value: 12.5}``."""

    value: PercentValue = 0.0


class PortSelector(IstioModel):
    """Selects a service port by number: ``port: {number: 9080}``."""

    number: PortNumber


class WorkloadSelector(IstioModel):
    """networking.istio.io selector: ``workloadSelector: {labels: {...}}``."""

    labels: Labels = Field(default_factory=dict)


class LabelSelector(IstioModel):
    """security.istio.io selector: ``selector: {matchLabels: {...}}``."""

    match_labels: Labels = Field(default_factory=dict)


class PolicyTargetReference(IstioModel):
    """A reference to a Gateway API object a policy attaches to."""

    group: str = ""
    kind: str
    name: str
    namespace: str = ""


SpecT_co = TypeVar("SpecT_co", bound=BaseModel, covariant=True)


class ResourceOf(Protocol[SpecT_co]):
    """A :class:`~tsunagi.api.Resource` whose spec is known to be a ``SpecT_co``.

    ``ResourceOf[VirtualServiceSpec]`` is how code past the loader (the World's indexes,
    translation) says which kind it holds, so a spec's fields are type-checked where they
    are read. A typing view only: the objects are plain ``Resource`` values, narrowed once
    by checking their spec's type (see ``mesh.world.of_spec``).
    """

    @property
    def api_version(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def spec(self) -> SpecT_co: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def annotations(self) -> Mapping[str, str]: ...
    @property
    def document(self) -> Mapping[str, Any]: ...
    @property
    def key(self) -> tuple[str, str, str]: ...
    @property
    def qualified_name(self) -> str: ...


def regex_error(value: str) -> str | None:
    """Return a reason if ``value`` is not a valid RE2 regex, else None."""
    try:
        _compile_re2(value)
    except ValueError as exc:
        return str(exc)
    return None


__all__ = [
    "IntPercent",
    "IstioModel",
    "LabelSelector",
    "Labels",
    "NonNegativeInt",
    "Percent",
    "PercentValue",
    "PolicyTargetReference",
    "PortNumber",
    "PortSelector",
    "RE2Regex",
    "ResourceOf",
    "Seconds",
    "StrictBool",
    "StrictInt",
    "StringMatch",
    "WorkloadSelector",
    "regex_error",
]

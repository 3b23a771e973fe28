"""CEL expressions as Envoy runs them (Telemetry ``accessLogging[].filter.expression``).

A malformed filter would pass ``apply`` and then make every selected proxy reject its
listeners (a NACK), so ``apply`` checks it first with Google's own CEL implementation
(``cel-expr-python``, the C++ library Envoy embeds): the same parser, hence the same syntax
errors. Past syntax, Envoy refuses at load time what it cannot resolve: an unknown function,
and comprehension macros (``all``, ``exists``, ``exists_one``, ``map``, ``filter``), which it
leaves disabled. The type checker finds those when Envoy's attribute roots are declared as
``dyn``; it also finds an unknown root, which Envoy would accept but never match (every
evaluation fails), so that is refused too. Type mismatches are left to Envoy: its attributes
are dynamic, and it compares mixed numbers (``size(x) > 2u``) at run time.
"""

from __future__ import annotations

from functools import cache
from typing import Any

ATTRIBUTE_ROOTS = (
    "request",
    "response",
    "connection",
    "upstream",
    "source",
    "destination",
    "metadata",
    "filter_state",
    "upstream_filter_state",
    "xds",
)
"""The top-level names of Envoy's attributes (Envoy's "Attributes" reference)."""

ENVOY_DISABLED_MACROS = ("all", "exists", "exists_one", "map", "filter")

_ENV_CONFIG = "stdlib:\n  exclude_macros: [" + ", ".join(ENVOY_DISABLED_MACROS) + "]\n"


@cache
def _env() -> Any:
    # Imported here: only the control plane and the CLI validate, never the sidecar agent.
    from cel_expr_python import cel  # type: ignore[import-untyped]

    return cel.NewEnv(
        config=cel.NewEnvConfigFromYaml(_ENV_CONFIG),
        variables=dict.fromkeys(ATTRIBUTE_ROOTS, cel.Type.DYN),
    )


def _errors(exc: Exception) -> list[str]:
    """The ``ERROR: <input>:L:C: message`` lines of a CEL status, without the excerpts."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    found = [ln.split("ERROR: ", 1)[1] for ln in lines if "ERROR: " in ln]
    out = []
    for e in found or [str(exc)]:
        e = e.replace("<input>:", "", 1)
        out.append(e.split(" [INVALID_ARGUMENT]", 1)[0].rstrip())
    return out


def check_expression(expression: str) -> str | None:
    """Why Envoy would refuse (or never match) ``expression``; ``None`` when it is fine."""
    env = _env()
    try:
        env.compile(expression, disable_check=True)
    except RuntimeError as exc:
        return "not valid CEL: " + "; ".join(_errors(exc))
    try:
        env.compile(expression)
    except RuntimeError as exc:
        unknown = [e for e in _errors(exc) if "undeclared reference" in e]
        if unknown:
            return (
                "; ".join(u.replace(" (in container '')", "") for u in unknown)
                + ": Envoy knows the attributes "
                + ", ".join(ATTRIBUTE_ROOTS)
                + " and CEL's standard functions, without the macros "
                + ", ".join(ENVOY_DISABLED_MACROS)
            )
    return None

"""Istio's traffic-management tasks on the demo: which rule files to apply, and what to see.

The files are in :data:`RULES` and keep Istio's names where Istio ships one
(``samples/bookinfo/networking``); ``tsunagi demo --tasks`` prints this walkthrough.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Where the demo's rule files are (installed with the package).
RULES = Path(__file__).parent / "rules"
#: The MeshConfig ``tsunagi demo`` starts the control plane with: the external authorizer
#: that the External Authorization task's CUSTOM policy names.
MESH_CONFIG = Path(__file__).parent / "mesh-config.yaml"


@dataclass(frozen=True)
class Task:
    """One of Istio's tasks: the files to apply, in order, and what the result looks like."""

    name: str
    files: tuple[str, ...]
    see: str


TASKS: tuple[Task, ...] = (
    Task(
        "Request routing",
        ("virtual-service-all-v1.yaml", "virtual-service-reviews-test-v2.yaml"),
        "no stars for everyone; sign in as jason: black stars (reviews v2)",
    ),
    Task(
        "Fault injection: delay",
        ("virtual-service-ratings-test-delay.yaml",),
        'as jason, after ~6 s: "Sorry, product reviews are currently unavailable for this book."',
    ),
    Task(
        "Fault injection: abort",
        ("virtual-service-ratings-test-abort.yaml",),
        'as jason: "Ratings service is currently unavailable"',
    ),
    Task(
        "Traffic shifting",
        (
            "virtual-service-all-v1.yaml",
            "virtual-service-reviews-50-v3.yaml",
            "virtual-service-reviews-v3.yaml",
        ),
        "no stars, then half red stars (v3), then red stars only",
    ),
    Task(
        "Request timeouts",
        (
            "virtual-service-reviews-v2.yaml",
            "virtual-service-ratings-delay-2s.yaml",
            "virtual-service-reviews-v2-timeout.yaml",
        ),
        "black stars 2 s late, then after ~1 s: reviews unavailable (HTTP 504)",
    ),
    Task(
        "Circuit breaking",
        ("destination-rule-ratings-circuit-breaking.yaml",),
        "concurrent calls to ratings beyond one get 503 with x-envoy-overloaded: true",
    ),
    Task(
        "Mirroring",
        ("virtual-service-reviews-mirror-v2.yaml",),
        "reviews v1 answers (no stars); reviews v2's GET /stats counts the copies",
    ),
    Task(
        "Outlier detection",
        ("destination-rule-ratings-outlier-detection.yaml",),
        "with a failing ratings instance (RATINGS_FAIL_PERCENT=100), it is ejected",
    ),
    Task(
        "Session affinity (consistent hash)",
        ("destination-rule-reviews-consistent-hash.yaml",),
        "after `tsunagi delete virtualservice reviews`: each user keeps one reviews version",
    ),
    Task(
        "CORS, header edits, rewrite",
        (
            "virtual-service-ratings-cors.yaml",
            "virtual-service-ratings-headers.yaml",
            "virtual-service-ratings-rewrite.yaml",
        ),
        "preflights answered by the caller's sidecar; edited headers; /v1/bookRatings/0",
    ),
    Task(
        "Mutual TLS migration (the sidecars already talk mTLS: PERMISSIVE by default)",
        ("peer-authentication-strict.yaml",),
        "the page through the gateway still works; the direct link (your browser has no "
        "sidecar) is refused",
    ),
    Task(
        "Authorization for HTTP traffic",
        (
            "authorization-allow-nothing.yaml",
            "authorization-productpage-viewer.yaml",
            "authorization-details-reviews-viewer.yaml",
            "authorization-ratings-viewer.yaml",
        ),
        '"RBAC: access denied", then the page without details and reviews, then with them '
        "(no stars), then with stars",
    ),
    Task(
        "External authorization (the demo's authorizer, ext-authz, is sample-ext-authz-http)",
        ("authorization-ext-authz.yaml",),
        "curl -H 'x-ext-authz: deny' http://127.0.0.1:8080/productpage: 403 \"denied by "
        'ext_authz for not found header `x-ext-authz: allow` in the request"; with '
        "-H 'x-ext-authz: allow': the page",
    ),
)


def walkthrough(rules: Path = RULES) -> str:
    """The tasks as a user runs them: one ``tsunagi apply`` per file, then what to look at."""
    lines = [
        f"Istio's traffic and security tasks (rule files in {rules}; they need"
        " destination-rule-all.yaml, which the demo applies):",
    ]
    for task in TASKS:
        lines.append(f"  {task.name}:")
        lines += [f"    tsunagi apply -f {rules / name} --wait" for name in task.files]
        lines.append(f"    -> {task.see}")
    lines.append(
        "  Undo a task: tsunagi delete -f FILE  (DestinationRules: apply destination-rule-all.yaml)"
    )
    return "\n".join(lines)

"""Durations, host short names, FieldError formatting, suggestions."""

from __future__ import annotations

import pytest

from tsunagi.api import (
    DurationError,
    FieldError,
    ValidationFailed,
    format_duration,
    fqdn,
    parse_duration,
    to_seconds_nanos,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("1.5s", 1.5),
        ("100ms", 0.1),
        ("1m", 60.0),
        ("1h30m", 5400.0),
        ("250us", 0.00025),
        ("0", 0.0),
        ("0s", 0.0),
        ("2h45m30.5s", 9930.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["10", "abc", "-1s", "", "1 s", "1d", 10, None, "s"])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(DurationError):
        parse_duration(bad)


def test_duration_helpers() -> None:
    assert to_seconds_nanos(1.5) == (1, 500_000_000)
    assert format_duration(1.5) == "1.5s"
    assert format_duration(10.0) == "10s"


@pytest.mark.parametrize(
    ("host", "namespace", "expected"),
    [
        ("reviews", "default", "reviews.default.svc.cluster.local"),
        ("Reviews", "prod", "reviews.prod.svc.cluster.local"),
        ("reviews.prod.svc.cluster.local", "default", "reviews.prod.svc.cluster.local"),
        ("reviews.prod", "default", "reviews.prod"),
        ("*.example.com", "default", "*.example.com"),
        ("*", "default", "*"),
        ("WWW.Example.COM", "default", "www.example.com"),
    ],
)
def test_fqdn_short_name_rule(host: str, namespace: str, expected: str) -> None:
    assert fqdn(host, namespace) == expected


def test_fqdn_custom_suffix() -> None:
    assert fqdn("ratings", "ns1", suffix="mesh.test") == "ratings.ns1.svc.mesh.test"


def test_field_error_str() -> None:
    err = FieldError(
        file="reviews.yaml",
        document=2,
        kind="VirtualService",
        name="default/reviews",
        path="spec.http[0].route[1].weight",
        reason="must be >= 0, got -10",
    )
    assert str(err) == (
        "reviews.yaml: document 2 (VirtualService default/reviews): "
        "spec.http[0].route[1].weight: must be >= 0, got -10"
    )
    unknown = FieldError("a.yaml", 1, "", "", "", "invalid YAML: boom")
    assert str(unknown) == "a.yaml: document 1: invalid YAML: boom"


def test_validation_failed_joins_lines() -> None:
    e1 = FieldError("f", 1, "K", "ns/a", "spec.x", "bad")
    e2 = FieldError("f", 2, "K", "ns/b", "spec.y", "worse")
    exc = ValidationFailed([e1, e2])
    assert exc.errors == [e1, e2]
    assert str(exc) == f"{e1}\n{e2}"

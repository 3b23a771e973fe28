"""Syntax checks for names, hosts, labels, addresses and header names.

Each ``check_*`` function returns ``None`` when the value is fine, otherwise a
user-facing reason string (so callers can attach it to a field path).
"""

from __future__ import annotations

import ipaddress
import re

DNS1123_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""A Kubernetes name label (RFC 1123): lower-case letters, digits and inner dashes."""
_DNS1123_LABEL = re.compile(DNS1123_LABEL_PATTERN)
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
# Hosts may carry upper case (DNS is case-insensitive) and, in Istio, underscores
# are not allowed; labels are otherwise DNS-1123.
_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
# RFC 7230 token characters; Envoy rejects anything else in a header name.
_HEADER_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def check_dns_label(value: str, what: str = "name") -> str | None:
    """RFC 1123 label: lowercase alphanumerics and '-', at most 63 characters."""
    if not value:
        return f"{what} must not be empty"
    if len(value) > 63:
        return f"{what} must be at most 63 characters, got {len(value)}"
    if not _DNS1123_LABEL.match(value):
        return (
            f"{what} {value!r} is not a valid DNS-1123 label (lowercase letters, digits"
            " and '-', starting and ending with a letter or digit)"
        )
    return None


def check_dns_subdomain(value: str, what: str = "name") -> str | None:
    """RFC 1123 subdomain: dot-separated labels, at most 253 characters."""
    if not value:
        return f"{what} must not be empty"
    if len(value) > 253:
        return f"{what} must be at most 253 characters, got {len(value)}"
    if not _DNS1123_SUBDOMAIN.match(value):
        return (
            f"{what} {value!r} is not a valid DNS-1123 subdomain (lowercase letters, digits,"
            " '-' and '.', starting and ending with a letter or digit)"
        )
    return None


def check_host(host: str, *, allow_wildcard: bool = True, allow_ip: bool = False) -> str | None:
    """A (possibly short, possibly ``*``-prefixed) DNS host name as Istio accepts it."""
    if not host:
        return "host must not be empty"
    if allow_ip and is_ip(host):
        return None
    if len(host) > 255:
        return f"host {host!r} is longer than 255 characters"
    rest = host
    if host == "*":
        return None if allow_wildcard else "wildcard host '*' is not allowed here"
    if host.startswith("*."):
        if not allow_wildcard:
            return f"wildcard host {host!r} is not allowed here"
        rest = host[2:]
    elif host.startswith("*"):
        # Istio allows a bare '*' prefix on the first label ("*bar.com").
        if not allow_wildcard:
            return f"wildcard host {host!r} is not allowed here"
        rest = host[1:]
    for label in rest.split("."):
        if "*" in label:
            return f"host {host!r}: a wildcard '*' is only allowed as the leftmost label"
        if not label or len(label) > 63 or not _HOST_LABEL.match(label):
            return f"host {host!r} is not a valid DNS name (label {label!r} is invalid)"
    return None


def check_fqdn(host: str) -> str | None:
    """A fully qualified DNS name: no wildcard, at least two labels."""
    err = check_host(host, allow_wildcard=False)
    if err:
        return err
    if "." not in host:
        return f"host {host!r} is not a fully qualified domain name"
    return None


def is_ip(value: str) -> bool:
    """True for a plain IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def check_ip_or_cidr(value: str) -> str | None:
    """An IP address or a CIDR block."""
    try:
        if "/" in value:
            ipaddress.ip_network(value, strict=False)
        else:
            ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not a valid IP address or CIDR block"
    return None


def check_header_name(name: str, *, lowercase: bool = False) -> str | None:
    """An HTTP header name (RFC 7230 token); optionally required to be lowercase."""
    if not name:
        return "header name must not be empty"
    if not _HEADER_TOKEN.match(name):
        return f"{name!r} is not a valid HTTP header name"
    if lowercase and name != name.lower():
        return f"header name {name!r} must be lowercase (use {name.lower()!r})"
    return None


def check_label_key(key: str) -> str | None:
    """A Kubernetes label key: optional DNS-subdomain prefix, '/', and a name."""
    prefix, _, name = key.rpartition("/")
    if "/" in key:
        err = check_dns_subdomain(prefix, "label key prefix")
        if err:
            return err
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return (
            f"label key {key!r} is invalid (name part must be at most 63 alphanumerics,"
            " '-', '_' or '.', starting and ending with an alphanumeric)"
        )
    return None


def check_label_value(value: str) -> str | None:
    """A Kubernetes label value: empty or a short alphanumeric-ish name."""
    if value == "":
        return None
    if len(value) > 63 or not _LABEL_NAME.match(value):
        return (
            f"label value {value!r} is invalid (at most 63 alphanumerics, '-', '_' or '.',"
            " starting and ending with an alphanumeric)"
        )
    return None

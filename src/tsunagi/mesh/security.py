"""What the security resources ask of one workload: mTLS modes (PeerAuthentication), the
AuthorizationPolicies and RequestAuthentications that select it.

The World resolves these per proxy (:meth:`tsunagi.mesh.World.security_for`) into a plain
value that :mod:`tsunagi.xds.translate` renders; a proxy's own listeners are re-made only
when that value changes. Each kind's rules live in its own module:
:mod:`.peer_authentication`, :mod:`.authorization`, :mod:`.request_authentication`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tsunagi.api import Resource
from tsunagi.api.mesh_config import MeshConfig
from tsunagi.spiffe import DEFAULT_TRUST_DOMAIN

if TYPE_CHECKING:
    from tsunagi.mesh.ext_authz import CustomAuthz

DEFAULT_ROOT_NAMESPACE = "istio-system"
"""Where mesh-wide PeerAuthentication and AuthorizationPolicy live (Istio's default)."""


@dataclass(frozen=True)
class MeshSecurity:
    """Mesh-wide security settings (``tsunagi up`` flags)."""

    trust_domain: str = DEFAULT_TRUST_DOMAIN
    """``--trust-domain``: the first part of every workload's SPIFFE ID."""
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    """``--root-namespace``: policies here apply to the whole mesh."""
    mesh_config: MeshConfig = field(default_factory=MeshConfig)
    """``--mesh-config``: the external authorizers CUSTOM policies name."""


@dataclass(frozen=True)
class WorkloadSecurity:
    """What security config applies to one workload's inbound side. Compared (not hashed)
    to decide whether a proxy's own listeners must be re-made."""

    mtls: tuple[tuple[int, str], ...] = ()
    """``(service port, mode)`` for each inbound port: ``STRICT``, ``PERMISSIVE`` or
    ``DISABLE`` after Istio's precedence (:mod:`.peer_authentication`); a port not listed
    is PERMISSIVE."""
    authorization: tuple[Resource, ...] = ()
    """The AuthorizationPolicies that select the workload, in evaluation order
    (:mod:`.authorization`)."""
    custom: CustomAuthz | None = None
    """The authorizer the CUSTOM ones among them use (:mod:`.ext_authz`); None without."""
    authentication: tuple[Resource, ...] = ()
    """The RequestAuthentications that select the workload (:mod:`.request_authentication`)."""
    jwks: tuple[tuple[str, str], ...] = ()
    """``(jwksUri, JWKS document)`` the control plane fetched for ``authentication``'s rules,
    so proxies need not reach the issuer (a rule without ``jwksUri`` is keyed by its
    issuer's OpenID discovery URL: :func:`.request_authentication.jwks_key`)."""

    def mtls_mode(self, port: int) -> str:
        """The mTLS mode of inbound service ``port``."""
        return dict(self.mtls).get(port, "PERMISSIVE")

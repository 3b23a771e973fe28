"""Make-before-break ordering: which type may be sent next, and what it should hold.

Types go out in :data:`PUSH_ORDER` (CDS, EDS, ECDS, LDS, RDS), one un-answered response per type;
no type is sent while an earlier one awaits its answer, except the dependent type of the one
outstanding (EDS while CDS waits, RDS while LDS waits: Envoy ACKs clusters and listeners only
once they warmed, which needs those). A later type also waits until Envoy subscribed to every
endpoint (route) name the clusters (listeners) it ACKed reference.

Removals go last: while anything else is to be sent, a resource gone from the snapshot stays
at the content the client last got (:meth:`_Ordering._plan`); once everything is answered
they go out in :data:`_BREAK_ORDER`, except what a rejected type could still reference.
"""

from __future__ import annotations

from collections.abc import Mapping

from tsunagi.xds.dependencies import DEPENDENT_TYPE, DependencyCache
from tsunagi.xds.protocol._state import _NO_NAMES, _TypeState
from tsunagi.xds.resources import (
    CLUSTER,
    ENDPOINT,
    EXTENSION_CONFIG,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    Resource,
    Snapshot,
    type_version,
)

# Removals, once everything else is in place, go listeners first: a listener that goes away
# stops taking traffic before the routes and clusters it may still use go too, and each
# parent goes before its dependents, which Envoy then simply unsubscribes from. Extension
# configs go right after the listeners whose filters load them.
_BREAK_ORDER = (LISTENER, EXTENSION_CONFIG, ROUTE, CLUSTER, ENDPOINT)

# What each type's resources can point at, directly or through another type: a listener
# loads route configs and extension configs and names clusters, routes and extension configs
# (a filter's config) name clusters, clusters load endpoints.
_REFERENCED_BY: dict[str, frozenset[str]] = {
    LISTENER: frozenset({EXTENSION_CONFIG, ROUTE, CLUSTER, ENDPOINT}),
    EXTENSION_CONFIG: frozenset({CLUSTER, ENDPOINT}),
    ROUTE: frozenset({CLUSTER, ENDPOINT}),
    CLUSTER: frozenset({ENDPOINT}),
}

# Dependent type -> the type whose resources reference its names (EDS <- CDS, RDS <- LDS).
_PARENT_TYPE = {child: parent for parent, child in DEPENDENT_TYPE.items()}

# SotW types whose responses carry only what changed. The xDS protocol ("Grouping Resources
# into Responses", envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol): "In the SotW
# protocol variants, all resource types except for Listener and Cluster are grouped into
# responses in the same way as in the incremental protocol variants", i.e. the server "does
# not need to resend the [...] resources that have not changed, and the client must not
# delete the unchanged resources"; for those types absence never means removal ("Deleting
# Resources": removal is implied by the parent no longer referencing the resource). Listener
# and Cluster responses "must include the complete state of the world". Newly requested
# names must be sent even if unchanged ("How the client specifies what resources to
# return"), so names dropped from the subscription are forgotten (see ``known``).
# ``version_info`` stays the version of the whole subscribed set, so ACKs mean the same.
# Extension configs are not among them: Envoy gives each ECDS name its own watch and a SotW
# update leaving a watched name out reaches that watch as "no resource", which its filter
# config subscription rejects (it wants exactly one); every subscribed one goes every time.
_PARTIAL_SOTW_TYPES = frozenset({ENDPOINT, ROUTE})


class _Ordering:
    """The ordering policy over a stream's per-type states (a mixin of the stream base).

    It reads the stream's ``_types``, ``_snapshot`` and ``_deps``; it never changes what was
    sent, held or ACKed (it only fills per-type caches, and swaps a held mapping for an
    identical shared one).
    """

    _types: dict[str, _TypeState]
    _snapshot: Snapshot | None
    _deps: DependencyCache

    def _plan(self, t: str, st: _TypeState, retain: bool) -> tuple[Mapping[str, Resource], str]:
        """What the client of ``t`` should hold now (``retain``: keep removed ones), and its
        version. Without anything to retain this is the snapshot's own (cached) view."""
        assert self._snapshot is not None
        view, version = self._snapshot.view(t, None if st.wildcard else st.names)
        known = st.known
        if known is view or not retain or not known:
            return view, version
        if st.known_version() == version:
            # The client holds exactly the view (versions hash names and contents): nothing
            # is retained, and the shared view can stand in for the per-stream copy.
            st.adopt(view, version)
            return view, version
        plan = st._plan
        if (
            plan is not None
            and plan[0] is view
            and plan[1] is known
            and plan[2] is st.names
            and plan[3] == st.wildcard
        ):
            return plan[4], plan[5]
        # Removals last: what the client holds but the snapshot dropped stays as it was.
        retained = {n: r for n, r in known.items() if n not in view and st.wants(n)}
        target: Mapping[str, Resource] = view
        target_version = version
        if retained:
            target = {**view, **retained}
            target_version = type_version(target.values())
        st._plan = (view, known, st.names, st.wildcard, target, target_version)
        return target, target_version

    def _wants_send(self, type_url: str, retain: bool) -> bool:
        st = self._types[type_url]
        if not st.subscribed:
            return False
        if st.force or st.unresolved:
            return True
        target, version = self._plan(type_url, st, retain)
        return target is not st.known and version != st.known_version()

    def _required(self, parent: str) -> frozenset[str]:
        """The names of the dependent type that ``parent``'s ACKed resources reference."""
        st = self._types.get(parent)
        if st is None:
            return _NO_NAMES
        cached = st._required
        if cached is None or cached[0] is not st.acked:
            cached = st._required = (st.acked, self._deps.required(parent, st.acked.values()))
        return cached[1]

    def _covers(self, child: str, required: frozenset[str]) -> bool:
        if not required:
            return True
        st = self._types.get(child)
        if st is None or not st.subscribed:
            return False
        if st.wildcard:
            return True
        cached = st._covers
        if cached is None or cached[0] is not required or cached[1] is not st.names:
            cached = st._covers = (required, st.names, required <= st.names)
        return cached[2]

    def _dependency_caught_up(self, child: str) -> bool:
        """Envoy subscribed to every ``child`` name its ACKed parent resources reference."""
        parent = _PARENT_TYPE[child]
        if parent not in self._types:
            return True
        return self._covers(child, self._required(parent))

    def _removals_allowed(self) -> bool:
        """Everything but pending removals is answered, so dropping resources breaks nothing.

        A NACKed type counts as answered here (Envoy keeps its last good config for it and
        nothing is re-sent until the snapshot changes); :meth:`_held_by_rejection` decides
        which removals it still holds back.
        """
        for t, st in self._types.items():
            if not st.subscribed:
                continue
            if st.outstanding or self._wants_send(t, retain=True):
                return False
        return all(self._dependency_caught_up(child) for child in _PARENT_TYPE)

    def _held_by_rejection(self, type_url: str) -> bool:
        """Whether a NACKed type may still reference resources of ``type_url``.

        Envoy runs its last good config of a rejected type, so what that config can point at
        stays: rejected routes (or listeners) keep clusters and endpoints, rejected clusters
        keep endpoints. A rejected type blocks nothing it does not reference — otherwise one
        bad endpoint set would hold every later cluster removal back forever.
        """
        return any(
            st.rejected and type_url in _REFERENCED_BY.get(t, ()) for t, st in self._types.items()
        )

    def _next_type(self) -> tuple[str, bool] | None:
        """The type to send next and whether removed resources are still retained."""
        if self._snapshot is None:
            return None
        if self._removals_allowed():
            for t in (*_BREAK_ORDER, *sorted(set(self._types) - set(_BREAK_ORDER))):
                st = self._types.get(t)
                if (
                    st is not None
                    and st.subscribed
                    and not self._held_by_rejection(t)
                    and self._wants_send(t, retain=False)
                ):
                    return t, False
            return None
        # Types outside PUSH_ORDER (e.g. SDS secrets, which warming clusters and listeners
        # wait for) neither wait for nor hold back the ordered ones.
        for t in sorted(set(self._types) - set(PUSH_ORDER)):
            if not self._types[t].outstanding and self._wants_send(t, retain=True):
                return t, True
        for t in PUSH_ORDER:
            st = self._types.get(t)
            if st is not None and st.subscribed:
                if st.outstanding:
                    # Envoy ACKs CDS (LDS) only once what it applied has warmed, which needs
                    # the endpoints (routes) it asks for meanwhile: those may go now, but
                    # nothing after them.
                    child = DEPENDENT_TYPE.get(t)
                    cst = self._types.get(child) if child is not None else None
                    if (
                        child is not None
                        and cst is not None
                        and not cst.outstanding
                        and self._wants_send(child, retain=True)
                    ):
                        return child, True
                    return None
                if self._wants_send(t, retain=True):
                    return t, True
            if t in _PARENT_TYPE and not self._dependency_caught_up(t):
                # Envoy has yet to ask for endpoints/routes of what it just applied.
                return None
        return None

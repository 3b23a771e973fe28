"""``apply`` warnings about the Secrets a DestinationRule's ``tls.credentialName`` names.

The proxy that uses the rule reads the Secret from its own namespace: a rule with a
``workloadSelector`` is used only in its own namespace; one without is used by gateways (in
each namespace where a running gateway sees it, else the rule's own is assumed). A proxy
that does not get a usable credential fails closed (its cluster trusts no server, see
``xds/translate/origination.py``): say so before a request finds out.
"""

from __future__ import annotations

from collections.abc import Iterable

from tsunagi.api import DestinationRuleSpec, Resource
from tsunagi.mesh.analysis import tls_parts
from tsunagi.mesh.visibility import exported_to
from tsunagi.mesh.world import World, of_spec


def rule_credential_problems(
    world: World, resources: Iterable[Resource], gateway_namespaces: Iterable[str] = ()
) -> list[str]:
    """Warnings for the DestinationRules in ``resources`` whose ``credentialName`` gives
    the proxies that use them nothing usable; ``gateway_namespaces``: where gateways run."""
    running = sorted(set(gateway_namespaces))
    out: list[str] = []
    for dr in of_spec(resources, DestinationRuleSpec):
        if dr.spec.workload_selector is not None:
            namespaces, assumed = [dr.namespace], False
        else:
            seen = [ns for ns in running if exported_to(dr.spec.export_to, dr.namespace, ns)]
            namespaces, assumed = (seen, False) if seen else ([dr.namespace], True)
        for at, tls in tls_parts(dr.spec):
            name = tls.credential_name
            if tls.mode not in ("SIMPLE", "MUTUAL") or not name:
                continue
            where = f"DestinationRule {dr.namespace}/{dr.name}: {at}.credentialName"
            if assumed:
                where += " (no running gateway sees this rule yet: its own namespace looked in)"
            for ns in namespaces:
                out += _warnings(world, where, name, ns, tls.mode, tls.insecure_skip_verify)
    return out


def _warnings(
    world: World, at: str, name: str, namespace: str, mode: str, skip_verify: bool | None
) -> list[str]:
    fails = "so its proxies there fail closed (503) to this host"
    cred = world.credentials.get((namespace, name))
    if cred is None:
        # SIMPLE reads only the CA: a client pair is not needed there.
        pair = "--from-file=tls.crt=CERT --from-file=tls.key=KEY " if mode == "MUTUAL" else ""
        return [
            f'{at}: [IST0101] Referenced credentialName not found: "{name}"; no Secret '
            f"{namespace}/{name}, {fails}. Create it with `tsunagi create secret generic "
            f"{name} -n {namespace} {pair}--from-file=ca.crt=CA`"
        ]
    out = []
    if mode == "MUTUAL" and not cred.has_certificate:
        out.append(
            f"{at}: Secret {namespace}/{name} holds no client certificate and key (Istio "
            f"reads tls.crt and tls.key, or cert and key), {fails}"
        )
    if not cred.ca and not skip_verify:
        out.append(
            f"{at}: Secret {namespace}/{name} holds no CA to verify the server with (ca.crt "
            f"or cacert, or a Secret {name}-cacert), {fails}"
        )
    return out

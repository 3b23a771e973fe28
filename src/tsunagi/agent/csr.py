"""``python -m tsunagi.agent.csr SPIFFE_ID``: a new ECDSA P-256 key and a CSR for it.

Run by the agent as a short-lived subprocess (:func:`tsunagi.agent.identity.new_key_and_csr`):
``cryptography`` costs 14 MB of private memory, more than the whole agent's budget allows,
and the agent needs it only for the moment a key is made. The subprocess prints one JSON
object on stdout, ``{"key": PKCS#8 PEM, "csr": PEM}``, and exits; the key goes nowhere but
the agent's pipe (then into the proxy's SDS file), never to the control plane.

The CSR asks for the SPIFFE ID as its only SAN, a URI SAN, with an empty subject: the CA
writes only that SAN anyway (Istio's workload CSRs look the same).
"""

from __future__ import annotations

import json
import sys


def key_and_csr(spiffe_id: str) -> tuple[bytes, bytes]:
    """A new private key (PKCS#8 PEM) and a CSR (PEM) for ``spiffe_id``, signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tsunagi.ca.issue import private_pem

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            # Critical, as RFC 5280 wants a SAN to be when the subject is empty.
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return private_pem(key), csr.public_bytes(serialization.Encoding.PEM)


def main(argv: list[str]) -> int:
    """Print the key and CSR for ``argv[0]`` as JSON; 2 on a wrong command line."""
    if len(argv) != 1 or not argv[0].startswith("spiffe://"):
        print("usage: python -m tsunagi.agent.csr spiffe://TD/ns/NS/sa/SA", file=sys.stderr)
        return 2
    key, csr = key_and_csr(argv[0])
    json.dump({"key": key.decode(), "csr": csr.decode()}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

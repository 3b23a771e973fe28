"""The control plane's CA: what it signs (checked with ``cryptography`` and ``openssl
verify``), what it refuses, and the CA files it makes or is given."""

from __future__ import annotations

import datetime
import ipaddress
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tsunagi.ca.authority import Authority, CsrRejected
from tsunagi.ca.keystore import CA_DIR, CERT_FILE, KEY_FILE, CaFileError, plugged_in, self_signed

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
TD = "cluster.local"
WEB = "spiffe://cluster.local/ns/default/sa/web"
HOUR = datetime.timedelta(hours=1)


# ----------------------------------------------------------------------------- helpers


def _csr(
    key: CertificateIssuerPrivateKeyTypes | None = None,
    sans: list[x509.GeneralName] | None = None,
    cn: str = "ignored",
) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def _ca_cert(
    name: str,
    key: CertificateIssuerPrivateKeyTypes,
    issuer: tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes] | None = None,
    *,
    ca: bool = True,
    key_cert_sign: bool = True,
    not_after: datetime.datetime | None = None,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(not_after or NOW + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=key_cert_sign,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return builder.sign(signer, hashes.SHA256())


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _openssl_verify(tmp_path: Path, root: bytes, chain: bytes) -> str:
    """``openssl verify`` of the chain's leaf, its intermediates untrusted, ``root`` trusted."""
    certs = x509.load_pem_x509_certificates(chain)
    leaf = _write(tmp_path / "leaf.pem", _pem(certs[0]))
    args = ["openssl", "verify", "-CAfile", str(_write(tmp_path / "root.pem", root))]
    if len(certs) > 1:
        args += ["-untrusted", str(_write(tmp_path / "inter.pem", _pem(*certs[1:])))]
    out = subprocess.run([*args, str(leaf)], capture_output=True, text=True, timeout=30)
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return self_signed(tmp_path_factory.mktemp("state"), TD, NOW)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Istio-style plug-in files: an intermediate (ca-cert, ca-key) under a root, and the
    chain file (the intermediate, then the root, as Istio's cert-chain.pem)."""
    d = tmp_path_factory.mktemp("cacerts")
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _ca_cert("operator root", root_key)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = _ca_cert("operator intermediate", inter_key, (root, root_key))
    return {
        "cert": _write(d / "ca-cert.pem", _pem(inter)),
        "key": _write(d / "ca-key.pem", _key_pem(inter_key)),
        "chain": _write(d / "cert-chain.pem", _pem(inter, root)),
        "root": _write(d / "root-cert.pem", _pem(root)),
        "root_only_chain": _write(d / "root-only.pem", _pem(root)),
    }


# ----------------------------------------------------------------------------- signing


def test_a_signed_workload_certificate_is_istios_shape(authority: Authority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signed = authority.sign_csr(_csr(key, [x509.UniformResourceIdentifier(WEB)]), WEB, HOUR, NOW)
    (leaf,) = x509.load_pem_x509_certificates(signed.chain)
    assert signed.spiffe_id == WEB and signed.serial == leaf.serial_number
    # The CSR's key, the CA's issuer, the subject it asked for ignored.
    assert leaf.public_key() == key.public_key()
    assert leaf.issuer == authority.cert.subject
    assert leaf.subject == x509.Name([])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and list(san.value) == [x509.UniformResourceIdentifier(WEB)]
    basic = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is False
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    # An hour from now, started a little before (clocks differ).
    assert leaf.not_valid_after_utc == NOW + HOUR == signed.not_after
    assert leaf.not_valid_before_utc < NOW and signed.not_before == leaf.not_valid_before_utc
    leaf.verify_directly_issued_by(authority.cert)
    assert signed.root == authority.root_pem == _pem(authority.cert)


def test_the_chain_verifies_with_openssl(authority: Authority, tmp_path: Path) -> None:
    signed = authority.sign_csr(_csr(), WEB, HOUR, NOW)
    assert _openssl_verify(tmp_path, signed.root, signed.chain).strip().endswith("OK")


def test_a_csr_without_sans_and_an_rsa_key_are_signed(authority: Authority) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signed = authority.sign_csr(_csr(rsa_key), WEB, HOUR, NOW)
    (leaf,) = x509.load_pem_x509_certificates(signed.chain)
    assert leaf.public_key() == rsa_key.public_key()
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (ec.generate_private_key(ec.SECP384R1()), "ECDSA on secp384r1; use P-256"),
        (rsa.generate_private_key(public_exponent=65537, key_size=1024), "RSA of 1024 bits"),
        (ed25519.Ed25519PrivateKey.generate(), "use ECDSA P-256"),
    ],
    ids=["P-384", "RSA-1024", "Ed25519"],
)
def test_keys_a_workload_may_not_have_are_refused(
    authority: Authority, key: CertificateIssuerPrivateKeyTypes, reason: str
) -> None:
    with pytest.raises(CsrRejected, match=reason):
        authority.sign_csr(_csr(key), WEB, HOUR, NOW)


def test_a_csr_whose_signature_does_not_verify_is_refused(authority: Authority) -> None:
    csr = x509.load_pem_x509_csr(_csr())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    # The signature is the last thing in the DER: flip a bit of its last byte.
    der[-1] ^= 0x01
    forged = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CsrRejected, match="signature does not verify"):
        authority.sign_csr(forged, WEB, HOUR, NOW)


@pytest.mark.parametrize(
    ("sans", "named"),
    [
        ([x509.UniformResourceIdentifier(WEB), x509.DNSName("web.default")], "DNS:web.default"),
        ([x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/db")], "URI:"),
        ([x509.IPAddress(ipaddress.ip_address("10.0.0.1"))], "IP:10.0.0.1"),
    ],
    ids=["extra DNS", "another identity", "IP"],
)
def test_a_csr_asking_for_another_san_is_refused(
    authority: Authority, sans: list[x509.GeneralName], named: str
) -> None:
    with pytest.raises(CsrRejected, match=named):
        authority.sign_csr(_csr(sans=sans), WEB, HOUR, NOW)


def test_garbage_is_refused(authority: Authority) -> None:
    with pytest.raises(CsrRejected, match="not a PEM certificate signing request"):
        authority.sign_csr(b"hello", WEB, HOUR, NOW)


def test_nothing_outlives_the_signing_certificate(plugin: dict[str, Path]) -> None:
    ca = plugged_in(plugin["cert"], plugin["key"], plugin["chain"], TD, NOW)
    signed = ca.sign_csr(_csr(), WEB, datetime.timedelta(days=3650), NOW)
    assert signed.not_after == ca.expires < NOW + datetime.timedelta(days=3650)


def test_a_serving_certificate_names_its_hosts_and_identity(
    authority: Authority, tmp_path: Path
) -> None:
    me = "spiffe://cluster.local/ns/istio-system/sa/tsunagi"
    issued = authority.issue_serving(me, ("127.0.0.1", "localhost"), HOUR, NOW)
    (leaf,) = x509.load_pem_x509_certificates(issued.cert)
    key = serialization.load_pem_private_key(issued.key, password=None)
    assert leaf.public_key() == key.public_key()
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [me]
    assert _openssl_verify(tmp_path, authority.root_pem, issued.cert).strip().endswith("OK")


# ----------------------------------------------------------------------------- the CA's files


def test_the_root_is_made_once_owner_only_and_kept(tmp_path: Path) -> None:
    first = self_signed(tmp_path, TD, NOW)
    folder = tmp_path / CA_DIR
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / KEY_FILE).stat().st_mode) == 0o600
    root = first.cert
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == TD
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(root.public_key())
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.not_valid_after_utc - NOW > datetime.timedelta(days=3649)
    # A restart: the same root, so certificates signed before still verify.
    again = self_signed(tmp_path, TD, NOW + HOUR)
    assert again.root_pem == first.root_pem
    leaf = x509.load_pem_x509_certificates(first.sign_csr(_csr(), WEB, HOUR, NOW).chain)[0]
    leaf.verify_directly_issued_by(again.cert)


def test_a_lone_key_left_by_a_crash_is_replaced_and_a_lone_cert_is_an_error(
    tmp_path: Path,
) -> None:
    folder = tmp_path / CA_DIR
    folder.mkdir()
    (folder / KEY_FILE).write_bytes(b"half-made")
    ca = self_signed(tmp_path, TD, NOW)
    assert (folder / CERT_FILE).read_bytes() == ca.root_pem
    (folder / KEY_FILE).unlink()
    with pytest.raises(CaFileError, match=f"{KEY_FILE} is missing.*restore the key"):
        self_signed(tmp_path, TD, NOW)


def test_a_plug_in_intermediate_signs_leaves_that_verify_to_its_root(
    plugin: dict[str, Path], tmp_path: Path
) -> None:
    ca = plugged_in(plugin["cert"], plugin["key"], plugin["chain"], TD, NOW)
    # The trust bundle is the chain's root; a leaf's chain carries the intermediate.
    assert ca.root_pem == plugin["root"].read_bytes()
    signed = ca.sign_csr(_csr(), WEB, HOUR, NOW)
    certs = x509.load_pem_x509_certificates(signed.chain)
    assert [c.subject.rfc4514_string() for c in certs[1:]] == ["CN=operator intermediate"]
    assert _openssl_verify(tmp_path, signed.root, signed.chain).strip().endswith("OK")
    # A chain file without the intermediate itself (only what is above it) works the same.
    same = plugged_in(plugin["cert"], plugin["key"], plugin["root_only_chain"], TD, NOW)
    assert same.root_pem == ca.root_pem


def test_plug_in_files_that_do_not_fit_are_named(plugin: dict[str, Path], tmp_path: Path) -> None:
    other_key = _write(
        tmp_path / "other-key.pem", _key_pem(ec.generate_private_key(ec.SECP256R1()))
    )
    cases: list[tuple[Path, Path, Path | None, str]] = [
        (plugin["cert"], other_key, plugin["chain"], f"{other_key} is not the key of"),
        (plugin["cert"], plugin["key"], None, "is not self-signed.*--ca-chain"),
        (plugin["cert"], plugin["key"], plugin["cert"], "holds only .* itself"),
        (tmp_path / "missing.pem", plugin["key"], None, "cannot read --ca-cert .*missing.pem"),
        (plugin["key"], plugin["key"], None, "--ca-cert .* holds no PEM certificate"),
        (plugin["cert"], plugin["cert"], None, "--ca-key .* holds no PEM private key"),
    ]
    for cert, key, chain, message in cases:
        with pytest.raises(CaFileError, match=message):
            plugged_in(cert, key, chain, TD, NOW)


def test_a_chain_that_does_not_reach_a_root_is_refused(tmp_path: Path) -> None:
    root_key, inter_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    root = _ca_cert("root", root_key)
    inter = _ca_cert("inter", inter_key, (root, root_key))
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = _ca_cert("stranger", stranger_key)
    cert = _write(tmp_path / "ca-cert.pem", _pem(inter))
    key = _write(tmp_path / "ca-key.pem", _key_pem(inter_key))
    with pytest.raises(CaFileError, match="is not signed by the next certificate"):
        plugged_in(cert, key, _write(tmp_path / "wrong.pem", _pem(stranger)), TD, NOW)
    # A chain ending in an intermediate: its root is missing.
    sub_key = ec.generate_private_key(ec.SECP256R1())
    sub = _ca_cert("sub", sub_key, (inter, inter_key))
    with pytest.raises(CaFileError, match=r"does not end with a root.*append the root"):
        plugged_in(
            _write(tmp_path / "sub.pem", _pem(sub)),
            _write(tmp_path / "sub-key.pem", _key_pem(sub_key)),
            _write(tmp_path / "short.pem", _pem(inter)),
            TD,
            NOW,
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ca": False}, "is not a CA certificate"),
        ({"key_cert_sign": False}, "lacks keyCertSign"),
        ({"not_after": NOW - datetime.timedelta(minutes=1)}, "expired at"),
    ],
    ids=["not a CA", "no keyCertSign", "expired"],
)
def test_a_certificate_that_may_not_sign_is_refused(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _ca_cert("self", key, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(CaFileError, match=message):
        plugged_in(
            _write(tmp_path / "c.pem", _pem(cert)), _write(tmp_path / "k.pem", _key_pem(key)),
            None, TD, NOW,
        )  # fmt: skip


def test_an_encrypted_key_is_refused_with_what_to_do(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _write(tmp_path / "c.pem", _pem(_ca_cert("self", key)))
    locked = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(CaFileError, match="is encrypted: give it unencrypted"):
        plugged_in(cert, _write(tmp_path / "k.pem", locked), None, TD, NOW)

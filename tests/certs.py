"""Throw-away certificates for the TLS tests: a CA, a server and a client certificate it signs,
and a second CA nobody trusts with a client certificate of its own."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Pki:
    """Where the PEM files are."""

    ca: Path
    server_crt: Path
    server_key: Path
    client_crt: Path
    client_key: Path
    rogue_ca: Path
    rogue_client_crt: Path
    rogue_client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    """A CA certificate (``issuer`` None: self-signed) or a leaf for ``usage`` signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(subject) if issuer is None else issuer[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + _DAY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is None:
        ca = x509.BasicConstraints(ca=True, path_length=0)
        builder = builder.add_extension(ca, critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        return builder.sign(key, hashes.SHA256())
    assert usage is not None
    leaf = x509.BasicConstraints(ca=False, path_length=None)
    builder = builder.add_extension(leaf, critical=True)
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False
    )
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer[1], hashes.SHA256())


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def write_pki(folder: Path) -> Pki:
    """Write every certificate and key of :class:`Pki` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for ca_name, client_name in (("ca", "client"), ("rogue_ca", "rogue_client")):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _certificate(f"telemeter test {ca_name}", ca_key, None)
        files[ca_name] = _write_cert(ca, folder / f"{ca_name}.pem")
        leaves = [(client_name, ExtendedKeyUsageOID.CLIENT_AUTH)]
        if ca_name == "ca":
            leaves.append(("server", ExtendedKeyUsageOID.SERVER_AUTH))
        for leaf, usage in leaves:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _certificate(f"telemeter test {leaf}", key, (ca, ca_key), usage=usage)
            files[f"{leaf}_crt"] = _write_cert(cert, folder / f"{leaf}.crt")
            files[f"{leaf}_key"] = _write_key(key, folder / f"{leaf}.key")
    return Pki(**files)

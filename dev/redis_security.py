"""TLS certificates and ACL users for a local Redis Cluster (:class:`dev.redis_cluster.
LocalRedisCluster` with ``security=``), the setup of docs/operations.md, "Redis over TLS and with
an ACL user".

:func:`make_certificates` writes a CA, one certificate for the nodes (``127.0.0.1`` and
``localhost``, for clients and for the cluster bus and replication links, which are TLS too) and
a client certificate, with the ``cryptography`` package. :class:`RedisSecurity` gives the
``redis.conf`` lines: TLS only (``port 0``), client certificates required, and an ``aclfile``
in which ``default`` is the administrator (the launcher forms the cluster with it, replicas
authenticate with it) and :data:`SERVER_USER` is the least-privilege user the server runs as.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_USER = "telemeter"
# The least-privilege ACL rule of the server (docs/operations.md quotes it; a test checks that
# the two agree and that the server needs every command of it and no other). ``<password>`` is
# where the password (or its SHA-256, ``#<hex>``) goes.
SERVER_ACL = (
    "user telemeter on <password> ~telemeter:* resetchannels -@all "
    "+ping +command +cluster|slots +eval +get +set +zadd +zrange +zrem +xadd +xlen +xrange +xdel "
    "+pttl +pexpire +expire +incr +time +info +hget +hset +hsetnx +hdel +hlen +hgetall"
)


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA, the nodes' certificate and key, a client certificate and key."""

    ca: Path
    node_crt: Path
    node_key: Path
    client_crt: Path
    client_key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    usages: list[x509.ObjectIdentifier],
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signer = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        usage = x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False,
        )  # fmt: skip
        builder = builder.add_extension(usage, critical=True)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


def make_certificates(directory: Path) -> Certificates:
    """Write a fresh CA, node certificate and client certificate (EC P-256) to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("telemeter test CA", ca_key, None, [])
    files = Certificates(
        ca=directory / "ca.crt",
        node_crt=directory / "redis.crt",
        node_key=directory / "redis.key",
        client_crt=directory / "client.crt",
        client_key=directory / "client.key",
    )
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]  # the bus dials too
    for crt, key_file, subject, usages in (
        (files.node_crt, files.node_key, "redis", both),
        (files.client_crt, files.client_key, "telemeter", [ExtendedKeyUsageOID.CLIENT_AUTH]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(subject, key, (ca.subject, ca_key), usages)
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(_key_pem(key))
        key_file.chmod(0o600)
    return files


@dataclass(frozen=True)
class RedisSecurity:
    """TLS and ACL settings of a local cluster: the certificates, the administrator's password
    (the ``default`` user), the server user's password and ACL rule (passwords are stored in
    the aclfile as their SHA-256)."""

    certs: Certificates
    admin_password: str
    server_password: str
    acl_rule: str = SERVER_ACL

    @classmethod
    def create(cls, directory: Path, *, admin_password: str, server_password: str) -> RedisSecurity:
        """Fresh certificates in ``directory`` and these passwords."""
        return cls(make_certificates(directory), admin_password, server_password)

    def conf_lines(self, port: int, aclfile: Path) -> list[str]:
        """The ``redis.conf`` lines of a node listening on TLS ``port`` only; writes its
        ``aclfile``."""
        c = self.certs
        admin = hashlib.sha256(self.admin_password.encode()).hexdigest()
        server = hashlib.sha256(self.server_password.encode()).hexdigest()
        aclfile.write_text(
            f"user default on #{admin} ~* &* +@all\n"
            + self.acl_rule.replace("<password>", f"#{server}")
            + "\n"
        )
        return [
            "port 0",
            f"tls-port {port}",
            f'tls-cert-file "{c.node_crt}"',
            f'tls-key-file "{c.node_key}"',
            f'tls-ca-cert-file "{c.ca}"',
            "tls-auth-clients yes",
            "tls-cluster yes",
            "tls-replication yes",
            f'aclfile "{aclfile}"',
            f'masterauth "{self.admin_password}"',
        ]

    def client_kwargs(self) -> dict[str, Any]:
        """redis-py arguments of an administrator's connection to one node."""
        return {
            "password": self.admin_password,
            "ssl": True,
            "ssl_ca_certs": str(self.certs.ca),
            "ssl_certfile": str(self.certs.client_crt),
            "ssl_keyfile": str(self.certs.client_key),
        }

    def server_args(self, password_file: Path) -> list[str]:
        """The server's flags for this cluster (it runs as :data:`SERVER_USER`); writes its
        password to ``password_file``."""
        password_file.write_text(self.server_password + "\n")
        password_file.chmod(0o600)
        c = self.certs
        return [
            "--redis-username", SERVER_USER,
            "--redis-password-file", str(password_file),
            "--redis-ca-file", str(c.ca),
            "--redis-client-crt", str(c.client_crt),
            "--redis-client-key", str(c.client_key),
        ]  # fmt: skip

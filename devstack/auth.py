"""The stack's own CA, broker certificate and per-principal passwords, made once per runtime dir.

Everything lands in ``<runtime>/auth`` (see ``qflare.localstack``, which clients
read): ``ca.pem`` (public), ``broker.pem`` (the broker's key and chain, a PEM
keystore Kafka reads directly) and ``secrets.json`` (0600). Files that exist
are kept, so a restart keeps the passwords the servers were set up with.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets as token
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from qflare import localstack

#: Names the broker certificate is valid for: loopback here, the service name in compose.
BROKER_NAMES = ("localhost", "kafka")
_VALIDITY = datetime.timedelta(days=825)


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "QFLARE dev stack"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Kafka's PEM keystore wants PKCS#8.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_certificates(directory: Path) -> None:
    """A CA and a broker certificate signed by it (SANs: 127.0.0.1 and ``BROKER_NAMES``)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("QFLARE dev CA"))
        .issuer_name(_name("QFLARE dev CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    sans += [x509.DNSName(name) for name in BROKER_NAMES]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("kafka"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    # The CA key is not kept: nothing else is ever signed with it.
    _write_private(directory / "broker.pem", _pem_key(key) + cert.public_bytes(pem) + ca.public_bytes(pem))


def _new_secrets() -> dict[str, dict[str, str]]:
    def pw() -> str:
        return token.token_urlsafe(24)

    return {
        # "controller" is the broker's own login on its loopback controller listener.
        "kafka": {user: pw() for user in (*localstack.KAFKA_PRINCIPALS, "controller")},
        "postgres": {user: pw() for user in ("qflare", *localstack.POSTGRES_ROLES)},
        "redis": {user: pw() for user in ("admin", *localstack.REDIS_USERS)},
        "elasticsearch": {"elastic": pw()},
    }


def ensure(runtime: Path) -> dict[str, dict[str, str]]:
    """Create what is missing under ``<runtime>/auth``; return the secrets."""
    directory = localstack.auth_dir(runtime)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    if not (directory / "ca.pem").is_file() or not (directory / "broker.pem").is_file():
        make_certificates(directory)
    found = localstack.secrets(runtime)
    if found is None:
        found = _new_secrets()
        _write_private(localstack.secrets_file(runtime), json.dumps(found, indent=2).encode())
    return found


def compose_env(found: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """The ``.env`` of docker-compose.yml: one variable per password (fresh ones by default)."""
    found = found or _new_secrets()
    env = {f"QFLARE_KAFKA_{user.upper()}_PASSWORD": pw for user, pw in found["kafka"].items()}
    env.update({f"QFLARE_PG_{user.upper()}_PASSWORD": pw for user, pw in found["postgres"].items()})
    env.update({f"QFLARE_REDIS_{user.upper()}_PASSWORD": pw for user, pw in found["redis"].items()})
    env["ELASTIC_PASSWORD"] = found["elasticsearch"]["elastic"]
    env["KIBANA_SYSTEM_PASSWORD"] = token.token_urlsafe(24)
    env["GRAFANA_ADMIN_PASSWORD"] = token.token_urlsafe(24)
    return env


def main(argv: list[str]) -> None:
    """``python -m devstack.auth env`` prints a compose .env; ``certs DIR`` writes the CA and broker PEMs."""
    if argv[:1] == ["env"]:
        for key, value in compose_env().items():
            print(f"{key}={value}")
    elif argv[:1] == ["certs"] and len(argv) == 2:
        directory = Path(argv[1])
        if not (directory / "broker.pem").is_file():
            make_certificates(directory)
    else:
        raise SystemExit("usage: python -m devstack.auth env | certs DIR")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])

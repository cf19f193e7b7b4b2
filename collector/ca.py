"""The fleet's own certificate authority: the CA, the broker's server certificate and client
certificates, made with the ``cryptography`` package (ECDSA P-256, SHA-256).

One directory (``outpost ca init --dir``, by default ``/etc/mosquitto/outpost``) holds
``ca.key`` (0600), ``ca.crt``, ``server.key`` (0640: mosquitto reads it through its group) and
``server.crt``. Agents trust ``ca.crt`` only; the broker presents ``server.crt``. Files are
written with :func:`write_atomic`, which enrolment uses too.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from outpost.errors import OutpostError

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "SERVER_CERT",
    "SERVER_KEY",
    "CaError",
    "FleetCa",
    "InitResult",
    "init_ca",
    "issue_client",
    "load_ca",
    "names_of",
    "parse_server_names",
    "write_atomic",
]

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
SERVER_KEY = "server.key"
SERVER_CERT = "server.crt"

# Unattended hosts keep poor time: a certificate that starts "now" by the collector's clock is
# refused by a host whose clock is a few hours behind. Back-date every certificate by a day.
BACKDATE = dt.timedelta(days=1)
# A server certificate closer than this to its end is issued again by `ca init`.
RENEW_BEFORE = dt.timedelta(days=30)
_DNS_NAME = re.compile(
    r"^(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z"
)


class CaError(OutpostError):
    """A CA directory that cannot be used, or a name that cannot go in a certificate."""


@dataclass(frozen=True)
class FleetCa:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


@dataclass(frozen=True)
class InitResult:
    created_ca: bool
    issued_server: bool
    server_names: list[str]
    not_after: dt.datetime


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` in one step (a temporary file renamed over it, synced),
    with exactly ``mode``. A file being replaced keeps its group, so a file an operator gave
    to the group ``mosquitto`` stays readable by the broker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        with contextlib.suppress(FileNotFoundError, PermissionError):
            os.fchown(fd, -1, path.stat().st_gid)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def parse_server_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """Host names (lower-cased) and IP addresses, as subjectAltName entries."""
    out: list[x509.GeneralName] = []
    for raw in names:
        name = raw.strip().lower()
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        if not _DNS_NAME.match(name):
            raise CaError(
                f"server name {raw!r}: expected a host name (letters, digits, '-' and '.') or "
                "an IP address"
            )
        out.append(x509.DNSName(name))
    if not out:
        raise CaError("give the broker's host names and/or IP addresses with --server-name")
    return out


def names_of(cert: x509.Certificate) -> list[str]:
    """The subjectAltName entries of ``cert``, as text, in order."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value).lower() for n in san if isinstance(n, x509.DNSName | x509.IPAddress)]


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Outpost fleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _create_ca(days: int, now: dt.datetime) -> FleetCa:
    key = _new_key()
    name = _name(f"Outpost fleet CA {now:%Y-%m-%d}")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return FleetCa(key, cert)


def _issue(
    ca: FleetCa,
    common_name: str,
    days: int,
    now: dt.datetime,
    *,
    usage: x509.ObjectIdentifier,
    names: list[x509.GeneralName] | None = None,
) -> tuple[bytes, bytes]:
    """A new key and a certificate for it signed by ``ca``: (key PEM, certificate PEM)."""
    key = _new_key()
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    not_after = min(now + dt.timedelta(days=days), ca.cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return _pem_key(key), _pem_cert(cert)


def load_ca(directory: Path) -> FleetCa:
    """The CA in ``directory``; :class:`CaError` when it is missing or does not match."""
    key_path, cert_path = directory / CA_KEY, directory / CA_CERT
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except FileNotFoundError as exc:
        raise CaError(
            f"no fleet CA in {directory} ({exc.filename} is missing): run `outpost ca init "
            f"--dir {directory} --server-name BROKER-NAME` first"
        ) from None
    except (OSError, ValueError) as exc:
        raise CaError(f"cannot read the fleet CA in {directory}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CaError(f"{key_path} is not the key of {cert_path}")
    return FleetCa(key, cert)


def init_ca(
    directory: Path,
    server_names: Sequence[str],
    now: dt.datetime,
    *,
    ca_days: int = 3650,
    server_days: int = 825,
) -> InitResult:
    """Create the fleet CA in ``directory`` unless one is there (an existing CA is never
    replaced: every agent trusts it), and issue the broker's server certificate unless the
    one there already names exactly ``server_names`` and is not about to end."""
    names = parse_server_names(server_names)
    texts = [str(n.value).lower() for n in names]
    have_key, have_cert = (directory / CA_KEY).exists(), (directory / CA_CERT).exists()
    if have_key != have_cert:
        raise CaError(
            f"{directory} holds only one of {CA_KEY} and {CA_CERT}: restore the other, or "
            "move both away to start a new CA (every agent must then get the new ca.crt)"
        )
    created = not have_key
    if created:
        ca = _create_ca(ca_days, now)
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / CA_KEY, _pem_key(ca.key), 0o600)
        write_atomic(directory / CA_CERT, _pem_cert(ca.cert), 0o644)
    else:
        ca = load_ca(directory)
    current = _current_server_cert(directory)
    if (
        current is not None
        and sorted(names_of(current)) == sorted(texts)
        and current.not_valid_after_utc - now > RENEW_BEFORE
        and current.issuer == ca.cert.subject
    ):
        return InitResult(created, False, texts, current.not_valid_after_utc)
    key_pem, cert_pem = _issue(
        ca, texts[0], server_days, now, usage=ExtendedKeyUsageOID.SERVER_AUTH, names=names
    )
    write_atomic(directory / SERVER_KEY, key_pem, 0o640)
    write_atomic(directory / SERVER_CERT, cert_pem, 0o644)
    issued = x509.load_pem_x509_certificate(cert_pem)
    return InitResult(created, True, texts, issued.not_valid_after_utc)


def _current_server_cert(directory: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate((directory / SERVER_CERT).read_bytes())
    except (OSError, ValueError):
        return None


def issue_client(ca: FleetCa, username: str, now: dt.datetime, days: int) -> tuple[bytes, bytes]:
    """A client key and certificate (CN = the broker user name): (key PEM, certificate PEM)."""
    return _issue(ca, username, days, now, usage=ExtendedKeyUsageOID.CLIENT_AUTH)

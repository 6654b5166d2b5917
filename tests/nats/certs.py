"""Throwaway TLS material for tests: a CA and certificates it signs, written as PEM files.

Made with the ``cryptography`` package when it is installed, else with the ``openssl`` command
(the test extra does not require either; a test that needs certificates skips when neither is
there). Everything is ECDSA P-256, valid for one day, and names 127.0.0.1 and ``localhost`` so
a loopback broker's certificate verifies by IP.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = ["Authority", "make_authority"]

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError:  # pragma: no cover - depends on what is installed
    x509 = None


@dataclass
class Authority:
    """A CA whose files live in ``folder``; :meth:`issue` signs certificates with it."""

    folder: Path
    name: str
    key: Any = None  # the cryptography key, when cryptography made it
    certificate: Any = None

    @property
    def ca_file(self) -> Path:
        return self.folder / f"{self.name}-ca.pem"

    @property
    def ca_key_file(self) -> Path:
        return self.folder / f"{self.name}-ca-key.pem"

    def issue(self, name: str, *, server: bool) -> tuple[Path, Path]:
        """A certificate for 127.0.0.1/localhost (server or client use); (cert, key) files."""
        cert_file, key_file = self.folder / f"{name}.pem", self.folder / f"{name}-key.pem"
        if self.key is None:
            _openssl_issue(self, name, server, cert_file, key_file)
            return cert_file, key_file
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
                ]),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_file)
        return cert_file, key_file


def make_authority(folder: Path, name: str = "test") -> Authority:
    """A fresh self-signed CA whose certificate is written to ``folder/NAME-ca.pem``. Skips the
    calling test when neither cryptography nor openssl is available."""
    folder.mkdir(parents=True, exist_ok=True)
    if x509 is None:
        authority = Authority(folder, name)
        _openssl_authority(authority)
        return authority
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{name} CA"))
        .issuer_name(_name(f"{name} CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    authority = Authority(folder, name, key, certificate)
    authority.ca_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return authority


# ------------------------------------------------------------------------------ cryptography


def _name(common: str) -> Any:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: Any, path: Path) -> None:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    path.chmod(0o600)


# ------------------------------------------------------------------------------ openssl


def _openssl(*args: str) -> None:
    found = shutil.which("openssl")
    if found is None:
        pytest.skip("neither the cryptography package nor the openssl command is available")
    subprocess.run([found, *args], check=True, capture_output=True, timeout=30)


def _openssl_authority(authority: Authority) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "1", "-subj", f"/CN={authority.name} CA",
        "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        "-keyout", str(authority.ca_key_file), "-out", str(authority.ca_file),
    )


def _openssl_issue(
    authority: Authority, name: str, server: bool, cert_file: Path, key_file: Path
) -> None:
    request = authority.folder / f"{name}.csr"
    extensions = authority.folder / f"{name}.ext"
    usage = "serverAuth" if server else "clientAuth"
    extensions.write_text(
        f"subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n"
    )
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-subj", f"/CN={name}", "-keyout", str(key_file), "-out", str(request),
    )
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(authority.ca_file),
        "-CAkey", str(authority.ca_key_file), "-CAcreateserial", "-days", "1",
        "-extfile", str(extensions), "-out", str(cert_file),
    )

"""C2PA test files made here: a throwaway CA and a manifest signed under it, offline.

Nothing is copied from elsewhere: the CA, the signer and the manifest are generated for each test
session, so that a test can show the difference between ``valid`` (no trust anchors) and
``trusted`` (``--c2pa-trust`` names the CA).
"""

from __future__ import annotations

import datetime as dt
import io
import json

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def make_ca_and_signer() -> tuple[str, str, str]:
    """(CA certificate PEM, signer chain PEM (signer then CA), signer private key PEM)."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "i2pscan test root"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "i2pscan tests")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "i2pscan test signer"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "i2pscan tests")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM).decode()  # noqa: E731
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return pem(ca), pem(cert) + pem(ca), key_pem


def sign_jpeg(jpeg: bytes, chain_pem: str, key_pem: str, source_type: str, agent: str | None = None,
              mime: str = "image/jpeg") -> bytes:
    """``jpeg`` (or another image of type ``mime``) with a C2PA manifest whose c2pa.created action
    declares ``source_type``."""
    import c2pa

    action = {"action": "c2pa.created",
              "digitalSourceType": f"http://cv.iptc.org/newscodes/digitalsourcetype/{source_type}"}
    if agent:
        action["softwareAgent"] = {"name": agent}
    manifest = {"claim_generator_info": [{"name": "i2pscan-tests", "version": "1"}], "title": "test",
                "format": mime,
                "assertions": [{"label": "c2pa.actions", "data": {"actions": [action]}}]}
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(b"es256", chain_pem.encode(), key_pem.encode(), None))
    builder = c2pa.Builder.from_json(json.dumps(manifest))
    out = io.BytesIO()
    builder.sign(signer, mime, io.BytesIO(jpeg), out)
    return out.getvalue()


def sign_edit_of(jpeg: bytes, ingredient: bytes, chain_pem: str, key_pem: str) -> bytes:
    """``jpeg`` signed as an edit (c2pa.opened + c2pa.edited, no source type of its own) of
    ``ingredient``, a signed file whose manifest becomes the ingredient's."""
    import c2pa

    manifest = {"claim_generator_info": [{"name": "i2pscan-tests-editor", "version": "1"}], "title": "edit.jpg",
                "format": "image/jpeg",
                "assertions": [{"label": "c2pa.actions", "data": {"actions": [{"action": "c2pa.opened", "parameters": {"ingredientIds": ["ing1"]}},
                                                                              {"action": "c2pa.edited"}]}}]}
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(b"es256", chain_pem.encode(), key_pem.encode(), None))
    builder = c2pa.Builder.from_json(json.dumps(manifest))
    builder.add_ingredient(json.dumps({"title": "made.jpg", "relationship": "parentOf", "label": "ing1"}), "image/jpeg",
                           io.BytesIO(ingredient))
    out = io.BytesIO()
    builder.sign(signer, "image/jpeg", io.BytesIO(jpeg), out)
    return out.getvalue()

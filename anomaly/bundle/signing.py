"""Signed bundles: the OpenSSF ``model-signing`` library over every file of a bundle.

``sign_bundle`` hashes every file of the bundle directory (``manifest.json`` included, so
the scaler, score normalisation and threshold history are covered, not only the weights)
into an in-toto statement, signs it with an elliptic-curve private key (PEM) and writes a
Sigstore bundle to ``BUNDLE/bundle.sig``, plus the signer's public key to
``BUNDLE/bundle.sig.pub``. Verification re-hashes the directory: an edited, added, removed
or renamed file is refused.

Which key to trust: verification with a pinned public key (``anomaly verify --public-key``,
``serve --public-key``) proves who signed; without one, the key shipped in the bundle is
used, which proves the bundle was not changed after signing (an edit of one number is
refused) but not who signed it, since a forger can replace both signature and key.

Threshold changes rewrite ``manifest.json``, so a signed bundle's history is re-signed on
every append (``anomaly threshold --sign-key``); an append without the key is refused rather
than leaving a bundle that no longer verifies. Keyless Sigstore signing (OIDC identity,
public transparency log) is ``model_signing sign sigstore`` on the same directory with
``--signature BUNDLE/bundle.sig``; it needs the network and is verified with
``model_signing verify sigstore`` (``anomaly`` verifies key-pair signatures).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from anomaly.errors import BundleError

SIGNATURE = "bundle.sig"
PUBLIC_KEY = "bundle.sig.pub"
_TMP = ".bundle.sig.tmp"
_NOT_SIGNED = (SIGNATURE, PUBLIC_KEY, _TMP)


def is_signed(path: str | Path) -> bool:
    """Whether the bundle directory carries a signature."""
    return (Path(path) / SIGNATURE).is_file()


def _hashing(path: Path) -> Any:
    from model_signing import hashing

    # model_signing matches ignored paths against absolute ones
    root = path.resolve()
    return hashing.Config().set_ignored_paths(paths=[root / name for name in _NOT_SIGNED])


def _public_pem(private_key: Path, password: str | None) -> bytes:
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(
            Path(private_key).read_bytes(), None if password is None else password.encode()
        )
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"{private_key}: not a usable PEM private key: {exc}") from None
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(public_pem: bytes) -> str:
    """A short, stable name for a public key (sha256 of its PEM)."""
    return hashlib.sha256(public_pem).hexdigest()[:16]


def private_key_id(private_key: str | Path, password: str | None = None) -> str:
    """The key id ``sign_bundle`` would sign with: to compare with the current signer's."""
    return key_id(_public_pem(Path(private_key), password))


def sign_bundle(path: str | Path, private_key: str | Path, password: str | None = None) -> str:
    """Sign every file of the bundle with an EC private key (PEM); returns the key id."""
    from model_signing import signing

    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise BundleError(f"{path}: not a model bundle (no manifest.json)")
    public = _public_pem(Path(private_key), password)
    tmp = path / _TMP
    try:
        signing.Config().use_elliptic_key_signer(
            private_key=str(private_key), password=password
        ).set_hashing_config(_hashing(path)).sign(path.resolve(), tmp)
        (path / PUBLIC_KEY).write_bytes(public)
        os.replace(tmp, path / SIGNATURE)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: signing failed: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return key_id(public)


def verify_bundle(path: str | Path, public_key: str | Path | None = None) -> str:
    """Check the bundle's signature; returns the signer's key id, raises ``BundleError``."""
    from model_signing import verifying

    path = Path(path)
    if not is_signed(path):
        raise BundleError(f"{path}: bundle is not signed (no {SIGNATURE})")
    key = Path(public_key) if public_key else path / PUBLIC_KEY
    if not key.is_file():
        raise BundleError(f"{path}: no public key to verify with: pass --public-key")
    try:
        pem = key.read_bytes()
        verifying.Config().use_elliptic_key_verifier(public_key=key).set_hashing_config(
            _hashing(path)
        ).verify(path.resolve(), path / SIGNATURE)
    except Exception as exc:  # model_signing raises ValueError and sigstore's own errors
        raise BundleError(
            f"{path}: signature check failed: {_reason(str(exc), public_key)}"
        ) from None
    return key_id(pem)


def check_signature(
    path: str | Path, public_key: str | Path | None = None, require: bool = False
) -> str | None:
    """Verify when signed (or when ``require``); None for an unsigned bundle not required."""
    if not is_signed(path):
        if require or public_key:
            raise BundleError(f"{path}: bundle is not signed and a signature is required")
        return None
    return verify_bundle(path, public_key)


def _reason(message: str, pinned: str | Path | None) -> str:
    """model_signing's multi-line, byte-dump messages as one line a person can act on."""
    # the messages come as the repr of a list, where quotes may be backslash-escaped
    changed = re.findall(r"Hash mismatch for \\?'([^'\\]+)\\?'", message)
    extra = re.findall(r"Extra files found in model \\?'[^']*\\?': ([^\"'\]\\]+)", message)
    missing = re.findall(r"Missing files in model \\?'[^']*\\?': ([^\"'\]\\]+)", message)
    parts = []
    if changed:
        parts.append(f"{', '.join(changed)} changed after signing")
    if extra:
        parts.append(f"not signed: {', '.join(e.strip() for e in extra)}")
    if missing:
        parts.append(f"signed but missing: {', '.join(m.strip() for m in missing)}")
    if parts:
        return "; ".join(parts) + " (edited, added, removed or renamed files are refused)"
    if pinned:
        return f"not signed by the key in {pinned} ({message.splitlines()[0][:200]})"
    return message.splitlines()[0][:200] if message else "invalid signature"

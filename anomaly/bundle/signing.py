"""Signed bundles: the OpenSSF ``model-signing`` library over every file of a bundle.

``sign_bundle`` hashes every file of the bundle directory (``manifest.json`` included, so
the scaler, score normalisation and threshold history are covered, not only the weights)
into an in-toto statement, signs it with an elliptic-curve private key (PEM) and writes a
Sigstore bundle to ``BUNDLE/bundle.sig``, plus the signer's public key to
``BUNDLE/bundle.sig.pub``. Verification re-hashes the directory: an edited, added, removed
or renamed file is refused. It is done here with ``cryptography`` (the DSSE envelope's
ECDSA signature, then the in-toto statement's file digests), following model_signing's
key-pair verifier rule for rule, because importing model_signing loads the Sigstore stack
(~0.8 s), which kept ``info``, ``verify`` and ``threshold --history`` over 1 s; signing
stays on model_signing, and checks its output with the same verifier before keeping it.

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

import base64
import hashlib
import itertools
import json
import os
from pathlib import Path, PurePosixPath
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
        # what model_signing wrote must pass our own verifier before it replaces anything
        _verify(path.resolve(), tmp, public, Path(private_key))
        (path / PUBLIC_KEY).write_bytes(public)
        os.replace(tmp, path / SIGNATURE)
    except _Refused as exc:
        raise BundleError(
            f"{path}: signing failed: the signature model_signing wrote does not verify "
            f"here ({exc}); is model-signing newer than this anomaly reads?"
        ) from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: signing failed: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return key_id(public)


def verify_bundle(path: str | Path, public_key: str | Path | None = None) -> str:
    """Check the bundle's signature; returns the signer's key id, raises ``BundleError``."""
    path = Path(path)
    if not is_signed(path):
        raise BundleError(f"{path}: bundle is not signed (no {SIGNATURE})")
    key = Path(public_key) if public_key else path / PUBLIC_KEY
    if not key.is_file():
        raise BundleError(f"{path}: no public key to verify with: pass --public-key")
    try:
        pem = key.read_bytes()
        _verify(path.resolve(), path / SIGNATURE, pem, key)
    except (_Refused, OSError) as exc:
        raise BundleError(f"{path}: signature check failed: {exc}") from None
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


# Key-pair verification, without importing model_signing: its package root imports the
# whole Sigstore stack (~0.8 s), and `info`, `verify` and `threshold --history` verify on
# every start. This mirrors model_signing 1.1's elliptic-key verifier
# (model_signing/_signing/sign_ec_key.py, sign_sigstore_pb.py, signing.py) and its file
# hashing (hashing.py, _serialization/file.py) with the hashing configuration
# ``_hashing`` gives, and refuses everything it refuses; tests/test_signing.py checks both
# side by side. It is stricter in what it accepts: only the format model_signing 1.x
# writes (no v0.2 compatibility encodings), one signature, SHA-256 file digests, no
# duplicate names, and no paths exempted from the check beyond ``_IGNORED``.
_BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
_PAYLOAD_TYPE = "application/vnd.in-toto+json"
_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
_PREDICATE_TYPE = "https://model_signing/signature/v1.0"
# what model_signing leaves out of the hashes: our signature files, and git's by default
_IGNORED = frozenset(_NOT_SIGNED + (".git", ".gitattributes", ".github", ".gitignore"))
_CURVE_HASH = {"secp256r1": "SHA256", "secp384r1": "SHA384", "secp521r1": "SHA512"}
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


class _Refused(Exception):
    """Why a signature is refused, as one line a person can act on."""


def _pae(payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding of the payload: what the signature is over."""
    header = f"DSSEv1 {len(_PAYLOAD_TYPE)} {_PAYLOAD_TYPE} {len(payload)}"
    return header.encode() + b" " + payload


def _verify(root: Path, signature: Path, pem: bytes, key: Path) -> None:
    """Check ``signature`` (a Sigstore bundle) with the public key ``pem`` and that it
    names exactly the files under ``root`` with their digests; raises ``_Refused``."""
    statement = _signed_statement(signature, _public_key(pem, key), key)
    expected = _signed_files(statement)
    actual = _hash_files(root)
    changed = sorted(n for n in expected.keys() & actual.keys() if expected[n] != actual[n])
    extra = sorted(actual.keys() - expected.keys())
    missing = sorted(expected.keys() - actual.keys())
    parts = []
    if changed:
        parts.append(f"{', '.join(changed)} changed after signing")
    if extra:
        parts.append(f"not signed: {', '.join(extra)}")
    if missing:
        parts.append(f"signed but missing: {', '.join(missing)}")
    if parts:
        raise _Refused("; ".join(parts) + " (edited, added, removed or renamed files are refused)")


def _public_key(pem: bytes, key: Path) -> Any:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        public = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise _Refused(f"{key}: not a PEM public key ({_what(exc)})") from None
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name not in _CURVE_HASH:
        raise _Refused(f"{key}: not an elliptic-curve P-256, P-384 or P-521 public key")
    return public


def _signed_statement(signature: Path, public: Any, key: Path) -> dict:
    """The in-toto statement of the DSSE envelope, once its signature checks out."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        bundle = json.loads(signature.read_bytes())
        media_type = bundle["mediaType"]
        hint = bundle["verificationMaterial"]["publicKey"].get("hint")
        envelope = bundle["dsseEnvelope"]
        payload_type = envelope["payloadType"]
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = envelope["signatures"]
        raw = [base64.b64decode(s["sig"], validate=True) for s in signatures]
    except _MALFORMED as exc:
        raise _Refused(f"{SIGNATURE} is not a key-pair Sigstore bundle ({_what(exc)})") from None
    if media_type != _BUNDLE_MEDIA_TYPE:
        raise _Refused(f"{SIGNATURE}: media type {media_type!r}, not {_BUNDLE_MEDIA_TYPE}")
    if len(raw) != 1:
        raise _Refused(f"{SIGNATURE} holds {len(raw)} signatures, not one")
    canonical = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # model_signing checks the hint when there is one (older signatures have none)
    if hint and hint != hashlib.sha256(canonical).hexdigest():
        raise _Refused(f"not signed by the key in {key} (the signature names another key)")
    algorithm = getattr(hashes, _CURVE_HASH[public.curve.name])()
    try:
        public.verify(raw[0], _pae(payload), ec.ECDSA(algorithm))
    except InvalidSignature:
        raise _Refused(
            f"not signed by the key in {key} (the signature does not match the signed "
            "statement: made with another key, or altered)"
        ) from None
    if payload_type != _PAYLOAD_TYPE:
        raise _Refused(f"{SIGNATURE}: payload type {payload_type!r}, not {_PAYLOAD_TYPE}")
    try:
        statement = json.loads(payload)
        kind = statement["_type"]
    except _MALFORMED as exc:
        raise _Refused(f"the signed statement is not in-toto JSON ({_what(exc)})") from None
    if kind != _STATEMENT_TYPE:
        raise _Refused(f"the signed statement is {kind!r}, not {_STATEMENT_TYPE}")
    return statement


def _signed_files(statement: dict) -> dict[str, bytes]:
    """Relative file name -> SHA-256 digest, as signed; refuses what cannot match."""
    try:
        predicate_type = statement["predicateType"]
        if predicate_type != _PREDICATE_TYPE:
            raise _Refused(
                f"the signed statement's predicate is {predicate_type!r}, not {_PREDICATE_TYPE}"
            )
        (subject,) = statement["subject"]
        root_digest = subject["digest"]["sha256"]
        predicate = statement["predicate"]
        serialization = predicate["serialization"]
        method, hash_type = serialization["method"], serialization["hash_type"]
        serialization["allow_symlinks"]  # noqa: B018 - required, as model_signing does
        if (method, hash_type) != ("files", "sha256"):
            raise _Refused(f"signed as {method}/{hash_type}, not as files/sha256 (anomaly sign)")
        exempt = {str(PurePosixPath(p)) for p in serialization.get("ignore_paths", [])}
        if exempt - _IGNORED:
            # model_signing would leave these out of the check: never from `anomaly sign`
            raise _Refused(f"the signature exempts {', '.join(sorted(exempt - _IGNORED))}")
        files: dict[str, bytes] = {}
        root = hashlib.sha256()
        for resource in predicate["resources"]:
            name = str(PurePosixPath(resource["name"]))
            digest = bytes.fromhex(resource["digest"])
            if resource["algorithm"] != "sha256" or name in files:
                raise _Refused(f"the signed statement lists {name} twice or not as sha256")
            files[name] = digest
            root.update(digest)
    except _MALFORMED as exc:
        raise _Refused(f"the signed statement is not model_signing's v1.0 ({_what(exc)})") from None
    if root.hexdigest() != root_digest:
        raise _Refused("the signed statement is inconsistent (its root digest does not match)")
    return files


def _hash_files(root: Path) -> dict[str, bytes]:
    """Relative file name -> SHA-256 digest of every file under ``root``, as model_signing
    walks it: refuses symbolic links and special files anywhere, ignored paths included."""
    ignored = [root / name for name in _IGNORED]
    files = {}
    for item in itertools.chain((root,), root.glob("**/*")):
        relative = item.relative_to(root).as_posix()
        if item.is_symlink():
            raise _Refused(f"{relative} is a symbolic link (a signed bundle holds none)")
        if not (item.is_file() or item.is_dir()):
            raise _Refused(f"{relative} is neither a file nor a directory")
        if item.is_file() and not any(item.is_relative_to(p) for p in ignored):
            digest = hashlib.sha256()
            with open(item, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            files[relative] = digest.digest()
    return files


def _what(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

"""The model bundle: one directory per trained model, described by ``manifest.json``.

Layout::

    BUNDLE/
      manifest.json      schema, preprocessing, score weights, runtime, sha256 per file,
                         threshold history (the last entry is the live threshold)
      model/*.keras      native Keras files, loaded in safe mode (no pickle, no lambdas)
      model/detector.json, model/latent.npz

Loading verifies every file's sha256 and that the schema fits the network, and, when the
bundle is signed (``anomaly.bundle.signing``), the signature over every file, the manifest
included. A threshold change rewrites only the manifest, atomically (write a temporary file,
then rename), and re-signs a signed bundle, so a running service can pick it up with
``refresh_threshold`` (which re-verifies a signed bundle before accepting it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from anomaly.bundle.decision import exceeds
from anomaly.bundle.preprocessing import TabularPreprocessor
from anomaly.bundle.schema import Schema
from anomaly.bundle.signing import (
    SIGNATURE,
    check_signature,
    is_signed,
    private_key_id,
    sign_bundle,
)
from anomaly.errors import BundleError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MODEL_DIR = "model"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(array: np.ndarray) -> str:
    """A short content hash of a data array, recorded with each threshold fit."""
    data = np.ascontiguousarray(array)
    digest = hashlib.sha256(str(data.shape).encode() + data.tobytes()).hexdigest()
    return f"sha256:{digest[:16]}:n={len(data)}"


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write-then-rename, so readers see the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _runtime() -> dict[str, str]:
    import keras

    return {
        "keras_backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
    }


def _safe_member(root: Path, relative: str) -> Path:
    """Resolve a manifest path, refusing anything that leaves the bundle directory."""
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise BundleError(f"manifest file entry {relative!r} points outside the bundle")
    resolved = (root / candidate).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise BundleError(f"manifest file entry {relative!r} points outside the bundle")
    return resolved


def require_new_bundle_dir(path: str | Path) -> None:
    """Refuse an existing non-empty directory: a bundle is never written over another."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise BundleError(f"{path}: exists and is not empty; choose a new --out")


class Bundle:
    """A trained detector with its schema, preprocessing and threshold history."""

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        detector: Any,
        schema: Schema,
        preprocessor: TabularPreprocessor | None,
        *,
        signer: str | None = None,
        public_key: Path | None = None,
    ) -> None:
        self.path = Path(path)
        self.signer = signer  # the signing key's id when the bundle was verified as signed
        self.public_key = public_key  # the pinned verification key, if any
        self.manifest = manifest
        self.detector = detector
        self.schema = schema
        self.preprocessor = preprocessor
        self._manifest_stamp = self._stamp()
        self._manifest_missing = False
        self._apply_threshold()

    # --- identity -------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def model_name(self) -> str:
        return str(self.manifest["model"]["name"])

    @property
    def model_version(self) -> str:
        return str(self.manifest["model"]["version"])

    @property
    def detector_name(self) -> str:
        return str(self.manifest["model"]["detector"])

    # --- thresholds -------------------------------------------------------------------------
    @property
    def threshold_history(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("thresholds", []))

    @property
    def threshold_entry(self) -> dict[str, Any]:
        history = self.threshold_history
        if not history:
            raise BundleError(f"{self.path}: bundle has no threshold")
        return history[-1]

    @property
    def threshold(self) -> float:
        return float(self.threshold_entry["value"])

    @property
    def threshold_version(self) -> int:
        return len(self.threshold_history)

    @property
    def expected_anomaly_rate(self) -> float | None:
        """The alert rate the live threshold implies on normal data (its target FPR)."""
        entry = self.threshold_entry
        rate = entry.get("params", {}).get("target_fpr", entry.get("implied", {}).get("fpr"))
        return None if rate is None else float(rate)

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """Which scores are anomalies under the live threshold (the one rule, ``decision``)."""
        return exceeds(scores, self.threshold)

    def _apply_threshold(self) -> None:
        if self.threshold_history and self.detector is not None:
            self.detector.threshold_ = self.threshold

    def append_threshold(
        self, entry: dict[str, Any], sign_key: Path | None = None, password: str | None = None
    ) -> dict[str, Any]:
        """Add a threshold to the history and make it live (atomic manifest rewrite).

        Append-only: the history on disk must still start with the one this bundle loaded
        (another writer's entries are kept; an edited or shortened history is refused). A
        signed bundle is verified first and re-signed after, so it needs ``sign_key``.
        """
        if is_signed(self.path):
            if sign_key is None:
                raise BundleError(
                    f"{self.path}: bundle is signed: pass --sign-key to re-sign the new "
                    "threshold (without it the bundle would stop verifying)"
                )
            signer = check_signature(self.path, self.public_key)
            new_signer = private_key_id(sign_key, password)
            if new_signer != signer:
                raise BundleError(
                    f"{self.path}: --sign-key {sign_key} (key {new_signer}) is not the key that "
                    f"signed this bundle (key {signer}): a serve pinned to that key would refuse "
                    "the change; use the original key, or re-sign the whole bundle on purpose "
                    "with `anomaly sign`"
                )
        current = json.loads(self.manifest_path.read_text())
        history = current.setdefault("thresholds", [])
        if history[: len(self.threshold_history)] != self.threshold_history:
            raise BundleError(
                f"{self.manifest_path}: the threshold history on disk no longer starts with "
                "the one loaded (edited or truncated); refusing to append to it"
            )
        entry = {"version": len(history) + 1, "timestamp": utc_now(), **entry}
        history.append(entry)
        write_json_atomic(self.manifest_path, current)
        if sign_key is not None:
            self.signer = sign_bundle(self.path, sign_key, password)
        self.manifest = current
        self._manifest_stamp = self._stamp()
        self._manifest_missing = False
        self._apply_threshold()
        return entry

    def rollback_threshold(
        self,
        version: int,
        note: str | None = None,
        sign_key: Path | None = None,
        password: str | None = None,
    ) -> dict[str, Any]:
        """Make an earlier threshold live again by appending a copy of it (history stays)."""
        history = self.threshold_history
        if not 1 <= version <= len(history):
            raise BundleError(
                f"{self.path}: no threshold v{version}; the history has v1..v{len(history)}"
            )
        old = history[version - 1]
        return self.append_threshold(
            {
                "value": old["value"],
                "method": "rollback",
                "params": {"to_version": version, **old.get("params", {})},
                "data_fingerprint": old.get("data_fingerprint"),
                "implied": old.get("implied", {}),
                "note": note or f"rollback to v{version} ({old['method']})",
            },
            sign_key,
            password,
        )

    def _stamp(self) -> tuple[int, ...]:
        """The manifest's (and signature's) stat: a change means re-read (and re-verify)."""
        st = self.manifest_path.stat()
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        signature = self.path / SIGNATURE
        if self.signer is not None and signature.exists():
            sig = signature.stat()
            stamp += (sig.st_mtime_ns, sig.st_size, sig.st_ino)
        return stamp

    def refresh_threshold(self) -> bool:
        """Re-read the manifest if it changed on disk; True when the live threshold changed.

        Cheap enough to call every few seconds: one ``stat`` unless the file changed. The
        path may be re-pointed under a reader (``anomaly promote`` moves a live directory into
        its releases, then links the path to the challenger): a manifest missing once is
        tried again at the next call (warned about when it stays away), and a manifest of
        another model at the path is not a threshold change of this one.
        """
        try:
            stamp = self._stamp()
        except OSError as exc:
            missing = isinstance(exc, FileNotFoundError)
            level = logging.DEBUG if missing and not self._manifest_missing else logging.WARNING
            log.log(level, "cannot stat %s: %s", self.manifest_path, exc)
            self._manifest_missing = missing
            return False
        self._manifest_missing = False
        if stamp == self._manifest_stamp:
            return False
        self._manifest_stamp = stamp
        try:
            fresh = json.loads(self.manifest_path.read_text())
            history = fresh["thresholds"]
            float(history[-1]["value"])
            version = str(fresh["model"]["version"])
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            log.warning("ignoring unreadable manifest update %s: %s", self.manifest_path, exc)
            return False
        if version != self.model_version:
            log.info(
                "%s now holds model %s, not %s: not a threshold change of this bundle",
                self.path,
                version,
                self.model_version,
            )
            return False
        if self.signer is not None:
            try:
                check_signature(self.path, self.public_key, require=True)
            except BundleError as exc:
                # a re-signed append writes the manifest, then the signature: the next
                # stamp change (the new signature) is checked again
                log.error("ignoring manifest update that does not verify: %s", exc)
                return False
        known = self.threshold_history
        if history[: len(known)] != known:
            log.error(
                "ignoring manifest update %s: its threshold history does not extend the "
                "loaded one (edited or truncated; the history is append-only)",
                self.manifest_path,
            )
            return False
        before = (self.threshold, self.threshold_version)
        self.manifest["thresholds"] = history
        self._apply_threshold()
        return (self.threshold, self.threshold_version) != before

    # --- scoring -------------------------------------------------------------------------------
    def transform(self, X_raw: np.ndarray) -> np.ndarray:
        """Original units -> model space, checking the shape against the schema."""
        X = np.asarray(X_raw, dtype=np.float64 if self.preprocessor else np.float32)
        expected = self.schema.input_shape
        if X.ndim != len(expected) + 1 or tuple(X.shape[1:]) != expected:
            raise BundleError(
                f"input of shape {tuple(X.shape[1:])} does not fit the bundle's schema {expected}"
            )
        if self.preprocessor is not None:
            return self.preprocessor.transform(X)
        return X.astype(np.float32, copy=False)

    def score_components(self, X_raw: np.ndarray) -> Any:
        """Score records in original units; returns ``detectors.ScoreComponents``."""
        return self.detector.score_components(self.transform(X_raw))

    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """Synthetic normal records (original units) or images ([0, 1]) from the generator."""
        generated = self.detector.sample(n, seed)
        if self.preprocessor is not None:
            return self.preprocessor.inverse_transform(generated)
        return np.clip(generated, 0.0, 1.0)

    # --- persistence ----------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        detector: Any,
        schema: Schema,
        preprocessing: dict[str, Any],
        name: str,
        training: dict[str, Any],
        preprocessor: TabularPreprocessor | None = None,
        drift_reference: dict[str, Any] | None = None,
    ) -> Bundle:
        """Write a new bundle directory (refuses to overwrite a non-empty one)."""
        path = Path(path)
        require_new_bundle_dir(path)
        model_dir = path / MODEL_DIR
        # the manifest's threshold history is the one source of truth: the detector file
        # keeps no copy of fit()'s validation threshold that could disagree with it
        fitted_threshold, detector.threshold_ = detector.threshold_, None
        try:
            files = detector.save(model_dir)
        finally:
            detector.threshold_ = fitted_threshold
        checksums = {
            str(f.relative_to(path)): sha256_file(f) for f in sorted(files, key=lambda p: p.name)
        }
        version = hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()[:12]
        manifest = {
            "format_version": FORMAT_VERSION,
            "model": {
                "name": name,
                "version": version,
                "detector": detector.name,
                "created_at": utc_now(),
                "params": detector.get_params(),
            },
            "schema": schema.to_dict(),
            "preprocessing": preprocessing,
            "score": {
                "components": detector.component_names(),
                "weights": detector.normaliser_.weights,
                "normalisation": detector.normaliser_.to_dict(),
                "formula": detector.score_formula,
            },
            "runtime": _runtime(),
            "training": training,
            "files": checksums,
            "thresholds": [],
        }
        if drift_reference is not None:
            manifest["drift_reference"] = drift_reference
        write_json_atomic(path / MANIFEST, manifest)
        return cls(path, manifest, detector, schema, preprocessor)

    @classmethod
    def load(
        cls,
        path: str | Path,
        verify: bool = True,
        *,
        public_key: str | Path | None = None,
        require_signature: bool = False,
        model: bool = True,
    ) -> Bundle:
        """Open a bundle, verifying checksums and schema; refuses anything that does not fit.

        A signed bundle's signature is checked (with ``public_key`` when pinned, else the
        key it ships); ``require_signature`` refuses an unsigned one. ``model=False`` checks
        the same but leaves the networks unloaded (``detector`` None): no Keras import, for
        commands that only read or append to the manifest.
        """
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{path}: not a model bundle (no {MANIFEST})")
        signer = None
        if verify or require_signature or public_key:
            signer = check_signature(path, public_key, require_signature)
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise BundleError(f"{manifest_path}: unreadable manifest: {exc}") from exc
        if manifest.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"{manifest_path}: bundle format {manifest.get('format_version')!r}, "
                f"this version reads {FORMAT_VERSION}"
            )
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise BundleError(f"{manifest_path}: manifest lists no files")
        for relative, expected in files.items():
            member = _safe_member(path, relative)
            if not member.is_file():
                raise BundleError(f"{path}: file {relative} listed in the manifest is missing")
            if verify and sha256_file(member) != expected:
                raise BundleError(
                    f"{path}: checksum mismatch for {relative}: the file was changed or "
                    "replaced after the bundle was written; refusing to load it"
                )
        schema = Schema.from_dict(manifest.get("schema", {}))
        detector = cls._load_detector(path, manifest, schema) if model else None
        preprocessor = None
        prep = manifest.get("preprocessing", {})
        if schema.kind == "tabular":
            try:
                preprocessor = TabularPreprocessor.from_dict(prep, schema.feature_names)
            except (KeyError, ValueError) as exc:
                raise BundleError(f"{manifest_path}: bad preprocessing: {exc}") from exc
        return cls(
            path,
            manifest,
            detector,
            schema,
            preprocessor,
            signer=signer,
            public_key=None if public_key is None else Path(public_key),
        )

    @staticmethod
    def _load_detector(path: Path, manifest: dict[str, Any], schema: Schema) -> Any:
        """The networks, in Keras safe mode, after checking they fit the manifest."""
        from detectors import DETECTORS

        files = manifest["files"]
        manifest_path = path / MANIFEST
        state_file = f"{MODEL_DIR}/detector.json"
        if state_file not in files:
            raise BundleError(f"{manifest_path}: manifest does not list {state_file}")
        state = json.loads((path / state_file).read_text())
        detector_cls = DETECTORS.get(state.get("detector"))
        if detector_cls is None or state.get("detector") != manifest["model"].get("detector"):
            raise BundleError(f"{path}: unknown or inconsistent detector {state.get('detector')!r}")
        if tuple(state["input_shape"]) != schema.input_shape:
            raise BundleError(
                f"{path}: schema {schema.input_shape} does not match the network's input "
                f"shape {tuple(state['input_shape'])}"
            )
        needed = {f"{MODEL_DIR}/{name}.keras" for name in detector_cls.subnet_names}
        missing = sorted(needed - set(files))
        if missing:
            raise BundleError(f"{manifest_path}: manifest does not list {', '.join(missing)}")
        try:
            return detector_cls.load(path / MODEL_DIR, state)
        except Exception as exc:
            raise BundleError(f"{path}: cannot load the model safely: {exc}") from exc

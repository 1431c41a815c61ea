"""Champion/challenger promotion: ``anomaly promote LIVE CHALLENGER`` and ``--rollback``.

The live path becomes a symbolic link into ``LIVE.releases/`` beside it; promotion copies
the challenger there (``<n>-<version>``), checks the copy, and re-points the link with one
``rename`` of a new link over the old one: atomic, so a reader sees the old bundle or the
new one, never a mix. A running ``serve`` notices the link's new target within its
``--threshold-refresh-s`` and switches between two batches (``anomaly.stream.bundle_reload``).
The first promotion moves a live directory into ``LIVE.releases/0-<version>`` and renames
the link, made beforehand, into its place: the path is missing between those two renames
only, and a running serve rides that out (``Bundle.refresh_threshold`` tries again at the
next refresh, and never reads the challenger's manifest as a threshold change of its own).
``LIVE.releases/promotions.json`` is the append-only history; ``--rollback`` re-points the
link at the champion the last promotion replaced, and records that too.

The guard judges the evidence ``serve --shadow-bundle`` wrote (``CHALLENGER.shadow.json``,
``anomaly.stream.shadow``): it must compare this very live bundle with this very challenger
at its current threshold, be recent, cover enough records, and show the alert rate within
``max_change``, the alerted records overlapping at least ``min_overlap`` (Jaccard) and the
challenger's own drift (score and every feature) at most ``max_drift``. ``--force`` overrides
the guard, never trust: a challenger must be signed by the pinned key (``--public-key``, or
the key that signed the live bundle) whenever the live bundle is signed or a key is pinned,
and must read the live bundle's features.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomaly.bundle.bundle import MANIFEST, Bundle, utc_now, write_json_atomic
from anomaly.bundle.signing import PUBLIC_KEY, check_signature, is_signed, key_id
from anomaly.errors import BundleError

HISTORY = "promotions.json"


@dataclass(frozen=True)
class Guard:
    """The bounds a shadow comparison must meet for a promotion."""

    max_change: float = 3.0
    min_overlap: float = 0.5
    max_drift: float = 0.25
    min_records: int = 1000
    max_age_s: float = 3600.0


def releases_dir(live: Path) -> Path:
    """Where the champions of ``live`` are kept: ``LIVE.releases`` beside it."""
    live = Path(live)
    return live.parent / f"{live.name}.releases"


def read_history(live: Path) -> list[dict[str, Any]]:
    """The promotions and rollbacks of ``live``, oldest first (empty before the first)."""
    path = releases_dir(live) / HISTORY
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text())["promotions"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: unreadable promotion history: {exc}") from None


def read_evidence(path: Path) -> dict[str, Any] | None:
    """The shadow report serve wrote, or None when there is none."""
    if not Path(path).is_file():
        return None
    try:
        evidence = json.loads(Path(path).read_text())
        evidence["shadow"]["version"], evidence["live"]["version"]  # noqa: B018
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: not a shadow report of serve --shadow-bundle: {exc}") from None
    return evidence


def judge(
    evidence: dict[str, Any] | None,
    evidence_path: Path,
    live: Bundle,
    challenger: Bundle,
    guard: Guard,
    now: float | None = None,
) -> list[str]:
    """Why the evidence does not support promoting ``challenger`` over ``live`` (empty: it
    does). Every reason is a short clause; the CLI joins them into one line."""
    if evidence is None:
        return [f"no shadow evidence at {evidence_path} (run serve --shadow-bundle first)"]
    now = time.time() if now is None else now
    reasons = []
    seen_live, seen_shadow = evidence["live"], evidence["shadow"]
    if seen_shadow["version"] != challenger.model_version:
        reasons.append(
            f"the evidence is about model {seen_shadow['version']}, "
            f"the challenger is {challenger.model_version}"
        )
    elif int(seen_shadow.get("threshold_version", 0)) != challenger.threshold_version:
        reasons.append(
            f"the challenger's threshold is v{challenger.threshold_version} now, the evidence "
            f"used v{seen_shadow.get('threshold_version')}"
        )
    if seen_live["version"] != live.model_version:
        reasons.append(
            f"the evidence compared with live model {seen_live['version']}, "
            f"the live bundle is {live.model_version}"
        )
    age = now - float(evidence.get("written_at_s", 0))
    if age > guard.max_age_s:
        reasons.append(f"the evidence is {_duration(age)} old, more than --max-age")
    records = int(evidence["window"]["records"])
    if records < guard.min_records:
        reasons.append(f"{records} records compared, fewer than --min-records {guard.min_records}")
        return reasons  # rates on too few records say nothing
    rates = evidence["alert_rate"]
    factor = (rates["shadow"] + 1 / records) / (rates["live"] + 1 / records)
    if factor > guard.max_change or factor < 1 / guard.max_change:
        way = f"rise {factor:.3g}x" if factor > 1 else f"fall {1 / factor:.3g}x"
        reasons.append(
            f"the alert rate would {way} ({rates['live']:.4%} -> {rates['shadow']:.4%}), "
            f"more than --max-change {guard.max_change:g}x"
        )
    overlap = evidence.get("alert_jaccard")
    if overlap is None or overlap < guard.min_overlap:
        shown = "none" if overlap is None else f"{overlap:.3f}"
        reasons.append(f"alert overlap (Jaccard) {shown} below --min-overlap {guard.min_overlap:g}")
    drift = evidence.get("drift")
    if drift is None:
        reasons.append("no drift reading for the challenger (a bundle without a drift reference)")
    else:
        worst = [("score", drift["score_psi"])]
        if drift.get("feature_max"):
            worst.append((f"feature {drift['feature_max']}", drift["feature_psi_max"]))
        for what, value in worst:
            if value > guard.max_drift:
                reasons.append(
                    f"drift alarm: the challenger's {what} PSI {value:.3f} on the live "
                    f"traffic is above --max-drift {guard.max_drift:g}"
                )
    return reasons


def comparison_table(evidence: dict[str, Any]) -> str:
    """The evidence in human form: what the guard judged."""
    live, shadow = evidence["live"], evidence["shadow"]
    rates = evidence["alert_rate"]
    window = evidence["window"]
    age = _duration(time.time() - float(evidence.get("written_at_s", 0)))
    lines = [
        f"shadow evidence: {window['records']} records (window {window['size']}) of "
        f"{evidence.get('input_topic')} compared by serve group {evidence.get('group')}, "
        f"written {age} ago",
        f"{'':<20} {'live ' + live['version']:>20} {'challenger ' + shadow['version']:>24}",
        f"{'threshold':<20} {_num(live['threshold']):>20} {_num(shadow['threshold']):>24}",
    ]
    if rates["live"] is not None:
        lines.append(f"{'alert rate':<20} {rates['live']:>20.4%} {rates['shadow']:>24.4%}")
    alerts = evidence["alerts"]
    lines.append(f"{'alerts':<20} {alerts['live']:>20} {alerts['shadow']:>24}")
    lines.append(f"{'alerted by both':<20} {alerts['both']:>20}")
    lines.append(f"{'overlap (Jaccard)':<20} {_num(evidence.get('alert_jaccard')):>20}")
    lines.append(f"{'rank correlation':<20} {_num(evidence.get('score_rank_correlation')):>20}")
    drift = evidence.get("drift")
    if drift:
        worst = f", feature {drift['feature_max']} {drift['feature_psi_max']:.4f}"
        lines.append(
            f"{'challenger drift':<20} score PSI {drift['score_psi']:.4f}"
            + (worst if drift.get("feature_max") else "")
        )
    seconds = evidence.get("scoring_seconds") or {}
    if seconds.get("live"):
        lines.append(
            f"{'scoring time':<20} shadow {seconds['shadow'] / seconds['live']:.2f}x the live's"
        )
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def trusted_key(live: Path, public_key: Path | None) -> tuple[Path | None, str | None]:
    """The pinned key (file, id): ``--public-key``, else the key the live bundle is signed
    with (after checking the live bundle with it), else none."""
    if public_key is not None:
        try:
            return Path(public_key), key_id(Path(public_key).read_bytes())
        except OSError as exc:
            raise BundleError(f"--public-key {public_key}: {exc.strerror}") from None
    if not is_signed(live):
        return None, None
    return Path(live) / PUBLIC_KEY, check_signature(live, None)


def check_trust(path: Path, key: Path | None, key_name: str | None, what: str) -> str | None:
    """Refuse ``path`` unless it is signed by the pinned key (when one is pinned); returns
    its signer's key id (None: unsigned, nothing pinned)."""
    if key is None:
        return check_signature(path, None) if is_signed(path) else None
    if not is_signed(path):
        raise BundleError(
            f"{what} {path} is not signed; the pinned key is {key_name}: sign it with that "
            "key (anomaly sign)"
        )
    signer = check_signature(path, None)
    if signer != key_name:
        raise BundleError(
            f"{what} {path} is signed by key {signer}, not by the pinned key {key_name}: "
            "refused (a serve pinned to that key would refuse it too)"
        )
    return check_signature(path, key, require=True)


def load_pair(
    live: Path, challenger: Path, public_key: Path | None
) -> tuple[Bundle, Bundle, str | None]:
    """Both bundles checked (manifest, checksums, signatures with the pinned key), and the
    challenger's signer; refuses a challenger that reads other features."""
    if not (Path(live) / MANIFEST).is_file():
        raise BundleError(f"{live}: not a model bundle (no {MANIFEST})")
    key, key_name = trusted_key(live, public_key)
    check_trust(Path(live), key, key_name, "the live bundle")
    signer = check_trust(Path(challenger), key, key_name, "challenger")
    live_bundle = Bundle.load(live, model=False, public_key=key)
    challenger_bundle = Bundle.load(challenger, model=False, public_key=key)
    if live_bundle.schema.kind != "tabular" or challenger_bundle.schema.kind != "tabular":
        raise BundleError("anomaly promote switches record bundles (serve scores records)")
    if list(challenger_bundle.schema.feature_names) != list(live_bundle.schema.feature_names):
        raise BundleError(
            f"challenger {challenger} reads other features than the live bundle {live}: "
            "serve decodes records with the live schema; refused"
        )
    if os.path.realpath(challenger) == os.path.realpath(live):
        raise BundleError(f"challenger {challenger} is the live bundle already")
    return live_bundle, challenger_bundle, signer


@contextlib.contextmanager
def _locked(releases: Path) -> Iterator[None]:
    """One promotion or rollback of a live path at a time."""
    releases.mkdir(exist_ok=True)
    with open(releases / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _new_link(live: Path, target: Path) -> Path:
    """A link to ``target`` beside ``live`` under a temporary name, to be renamed over it
    (relative, so the pair moves together)."""
    link = live.parent / f".{live.name}.link-{os.getpid()}"
    link.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, live.parent), link)
    return link


def promote(
    live: Path,
    challenger_dir: Path,
    live_bundle: Bundle,
    challenger: Bundle,
    *,
    key: Path | None,
    signer: str | None,
    evidence: dict[str, Any] | None,
    overridden: list[str],
) -> dict[str, Any]:
    """Copy the challenger into the releases, check the copy, switch the link, record it."""
    live = Path(live)
    releases = releases_dir(live)
    with _locked(releases):
        if os.path.realpath(live) != os.path.realpath(live_bundle.path):
            raise BundleError(f"{live} changed while promoting; run the promotion again")
        history = read_history(live)
        first = not live.is_symlink()  # the live directory joins the releases, as number 0
        numbered = [p for p in releases.iterdir() if p.name.split("-", 1)[0].isdigit()]
        if first and numbered:
            raise BundleError(
                f"{live} is a directory but {releases} already holds releases: move them "
                "away, or point LIVE at one of them"
            )
        target = releases / f"{len(numbered) + first}-{challenger.model_version}"
        staging = releases / f".{target.name}.copy"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(os.path.realpath(challenger_dir), staging, symlinks=False)
        copied = Bundle.load(staging, model=False, public_key=key, require_signature=bool(key))
        if copied.model_version != challenger.model_version:
            shutil.rmtree(staging, ignore_errors=True)
            raise BundleError(f"challenger {challenger_dir} changed while promoting; refused")
        os.rename(staging, target)
        link = _new_link(live, target)
        if first:  # the path is missing between these two renames only (serve rides it out)
            previous = releases / f"0-{live_bundle.model_version}"
            os.rename(live, previous)
        else:
            previous = Path(os.path.realpath(live))
        os.replace(link, live)
        entry = {
            "action": "promote",
            "at": utc_now(),
            "from": previous.name,
            "from_version": live_bundle.model_version,
            "to": target.name,
            "to_version": challenger.model_version,
            "challenger": str(challenger_dir),
            "signer": signer,
            "forced": bool(overridden),
            "overridden": overridden,
            "evidence": _evidence_summary(evidence),
        }
        write_json_atomic(releases / HISTORY, {"promotions": [*history, entry]})
    return entry


def rollback_target(live: Path) -> tuple[Path, dict[str, Any]]:
    """The champion the promotion of the current one replaced, and that promotion."""
    live = Path(live)
    releases = releases_dir(live)
    if not live.is_symlink():
        raise BundleError(
            f"{live}: nothing to roll back (never promoted: not a link into {releases})"
        )
    current = Path(os.path.realpath(live)).name
    for entry in reversed(read_history(live)):
        if entry["action"] == "promote" and entry["to"] == current:
            return releases / entry["from"], entry
    raise BundleError(
        f"{live}: nothing to roll back: the current champion {current} was not promoted here "
        "(it is the first one)"
    )


def rollback(live: Path, public_key: Path | None) -> dict[str, Any]:
    """Re-point ``live`` at the champion before the current one (checked first)."""
    live = Path(live)
    releases = releases_dir(live)
    with _locked(releases):
        target, promotion = rollback_target(live)
        key, key_name = trusted_key(live, public_key)
        signer = check_trust(target, key, key_name, "the previous champion")
        restored = Bundle.load(target, model=False, public_key=key)
        current = Path(os.path.realpath(live))
        os.replace(_new_link(live, target), live)
        entry = {
            "action": "rollback",
            "at": utc_now(),
            "from": current.name,
            "from_version": promotion["to_version"],
            "to": target.name,
            "to_version": restored.model_version,
            "signer": signer,
        }
        write_json_atomic(releases / HISTORY, {"promotions": [*read_history(live), entry]})
    return entry


def _evidence_summary(evidence: dict[str, Any] | None) -> dict[str, Any] | None:
    if evidence is None:
        return None
    keys = ("written_at", "window", "alert_rate", "alerts", "alert_jaccard")
    summary = {k: evidence.get(k) for k in keys}
    summary["score_rank_correlation"] = evidence.get("score_rank_correlation")
    summary["drift"] = evidence.get("drift")
    return summary


def history_table(history: list[dict[str, Any]]) -> str:
    """The promotions and rollbacks, oldest first."""
    lines = [f"{'at':<26} {'action':<9} {'from':<18} {'to':<18} note"]
    for entry in history:
        note = "forced: " + "; ".join(entry["overridden"]) if entry.get("forced") else ""
        lines.append(
            f"{entry['at']:<26} {entry['action']:<9} {entry['from']:<18} {entry['to']:<18} {note}"
        )
    return "\n".join(lines)

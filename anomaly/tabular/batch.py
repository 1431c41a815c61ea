"""Batch scoring of files: records -> scores -> CSV or JSONL rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from anomaly.errors import AnomalyError
from anomaly.model.bundle import Bundle
from anomaly.tabular.readers import Table

CHUNK = 4096


def top_features(
    contributions: np.ndarray, names: list[str], k: int
) -> list[list[tuple[str, float]]]:
    """The k largest per-feature contributions of each row, largest first."""
    k = min(k, contributions.shape[1])
    order = np.argsort(-contributions, axis=1)[:, :k]
    return [[(names[j], float(contributions[i, j])) for j in order[i]] for i in range(len(order))]


def score_table(bundle: Bundle, table: Table, top_k: int = 3) -> list[dict[str, Any]]:
    """One result row per record: id, score, every component, is_anomaly, top features."""
    if table.feature_names != bundle.schema.feature_names:
        raise AnomalyError(f"{table.path}: columns do not match the bundle's schema")
    rows: list[dict[str, Any]] = []
    threshold = bundle.threshold
    for start in range(0, len(table.X), CHUNK):
        comps = bundle.score(table.X[start : start + CHUNK])
        names = comps.component_names()
        tops = top_features(comps.contributions, bundle.schema.feature_names, top_k)
        for i in range(len(comps)):
            row: dict[str, Any] = {"id": table.ids[start + i], "score": float(comps.score[i])}
            for name in names:
                row[name] = float(comps.component(name)[i])
            row["is_anomaly"] = bool(comps.score[i] > threshold)
            row["top_features"] = tops[i]
            rows.append(row)
    return rows


def write_rows(rows: list[dict[str, Any]], out: str | Path) -> Path:
    """CSV (top features as ``name:value;...``) or JSONL, chosen by the file suffix."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in (".jsonl", ".ndjson"):
        with open(out, "w") as fh:
            for row in rows:
                record = dict(row)
                record["top_features"] = [
                    {"feature": n, "contribution": c} for n, c in row["top_features"]
                ]
                fh.write(json.dumps(record) + "\n")
        return out
    if out.suffix.lower() != ".csv":
        raise AnomalyError(f"{out}: output must end in .csv or .jsonl")
    fields = list(rows[0].keys()) if rows else ["id", "score", "is_anomaly", "top_features"]
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            record = dict(row)
            record["top_features"] = ";".join(f"{n}:{c:.4g}" for n, c in row["top_features"])
            writer.writerow(record)
    return out


def image_scores(
    bundle: Bundle, source: str | Path, batch_size: int = 256
) -> tuple[np.ndarray, str]:
    """Scores of every image under ``source``, one batch in memory at a time, and a
    fingerprint of the preprocessed pixels (for the threshold history).

    Thresholds are fitted on data an operator vouches for, so an unreadable file stops the
    fit with its reason instead of being skipped.
    """
    import hashlib

    from anomaly.imaging.readers import discover_files, iter_batches
    from anomaly.imaging.report import bundle_image_options

    files = discover_files(source)
    if not files:
        raise AnomalyError(f"{source}: no PNG/JPEG/TIFF/DICOM/IDX/NPZ files found")
    digest = hashlib.sha256()
    scores = []
    for batch in iter_batches(files, bundle_image_options(bundle), batch_size):
        if batch.errors:
            raise batch.errors[0]
        if batch.metas:
            digest.update(np.ascontiguousarray(batch.images).tobytes())
            scores.append(bundle.score(batch.images).score)
    values = np.concatenate(scores)
    return values, f"sha256:{digest.hexdigest()[:16]}:n={len(values)}"

"""Batch scoring of files: records -> scores -> CSV or JSONL rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from anomaly.bundle.bundle import Bundle
from anomaly.errors import AnomalyError, InputError
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
    for start in range(0, len(table.X), CHUNK):
        comps = bundle.score_components(table.X[start : start + CHUNK])
        names = comps.component_names()
        flags = bundle.decide(comps.score)
        tops = top_features(comps.contributions, bundle.schema.feature_names, top_k)
        for i in range(len(comps)):
            row: dict[str, Any] = {"id": table.ids[start + i], "score": float(comps.score[i])}
            for name in names:
                row[name] = float(comps.component(name)[i])
            row["is_anomaly"] = bool(flags[i])
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


def write_row_errors(errors: list[InputError], out: str | Path) -> Path:
    """The rows ``--skip-bad-rows`` left out, beside the scores: ``OUT.errors.csv`` with the
    data row number (1-based) and the problem."""
    path = Path(out).with_suffix(".errors.csv")
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["row", "problem"])
        writer.writerows([e.row, e.problem] for e in errors)
    return path

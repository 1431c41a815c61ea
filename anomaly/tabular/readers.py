"""Reading tabular records from CSV, JSONL and NPZ files with errors that name file and row."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anomaly.errors import NPZ_READ_ERRORS, InputError

LABEL_CANDIDATES = ("Class", "class", "label", "y", "is_anomaly")
ID_CANDIDATES = ("id", "ID", "record_id")


@dataclass
class Table:
    """Feature matrix in original units plus optional ids and labels."""

    path: Path
    feature_names: list[str]
    X: np.ndarray
    ids: list[str]
    labels: np.ndarray | None
    # rows left out by ``skip_bad_rows``: each one's InputError (file, row, problem)
    skipped: list[InputError] = field(default_factory=list)
    # the column ``ids`` come from (None: they are row numbers), and the labels' column
    id_column: str | None = None
    label_column: str | None = None


def read_table(
    path: str | Path,
    features: list[str] | None = None,
    exclude: list[str] | None = None,
    label_column: str | None = "auto",
    id_column: str | None = "auto",
    skip_bad_rows: bool = False,
) -> Table:
    """Read a CSV / JSONL / NPZ file.

    ``features`` selects columns (default: every column but the label, id and ``exclude``);
    ``label_column="auto"`` picks a column named like a label (Class, label, y, is_anomaly).
    ``skip_bad_rows``: a row that cannot be read (wrong field count, invalid JSON, a missing
    or non-numeric value) is left out and listed in ``Table.skipped`` instead of stopping the
    file; problems with the file as a whole (no header, unknown column) still stop it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "no such file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path, features, exclude, label_column)
    skipped: list[InputError] | None = [] if skip_bad_rows else None
    if suffix in (".jsonl", ".ndjson", ".json"):
        header, rows = _jsonl_rows(path, skipped)
    elif suffix in (".csv", ".txt"):
        header, rows = _csv_rows(path, skipped)
    else:
        raise InputError(str(path), f"unsupported file type {suffix!r} (use .csv, .jsonl or .npz)")
    label = _pick(header, label_column, LABEL_CANDIDATES, path, "label")
    id_col = _pick(header, id_column, ID_CANDIDATES, path, "id")
    names = _feature_names(header, features, exclude, {label, id_col} - {None}, path)
    X = np.empty((len(rows), len(names)), dtype=np.float64)
    labels = np.empty(len(rows), dtype=np.int8) if label else None
    ids: list[str] = []
    kept = 0
    for row_no, row in rows:
        try:
            X[kept] = [_number(row.get(name), path, row_no, name) for name in names]
            if labels is not None:
                value = _number(row.get(label), path, row_no, label)
                if value not in (0, 1):
                    raise InputError(
                        str(path), f"label {label!r} must be 0 or 1, got {value}", row_no
                    )
                labels[kept] = int(value)
        except InputError as error:
            if skipped is None:
                raise
            skipped.append(error)
            continue
        ids.append(str(row.get(id_col)) if id_col else str(row_no))
        kept += 1
    if not rows and not skipped:
        raise InputError(str(path), "no data rows")
    labels = None if labels is None else labels[:kept]
    skipped = sorted(skipped or [], key=lambda e: e.row or 0)  # file order, for the reader
    return Table(path, names, X[:kept], ids, labels, skipped, id_col, label)


def hold_out(path: str | Path, fraction: float, seed: int | None, out: str | Path) -> np.ndarray:
    """Write a seeded ``fraction`` of the file's rows (every class) to ``out``, unchanged.

    Returns the mask of the rows left for training, in ``read_table``'s row order: scoring,
    evaluating and thresholding on rows the model never saw is what makes them honest.
    """
    path, out = Path(path), Path(out)
    suffix = path.suffix.lower()
    if out.suffix.lower() != suffix or suffix not in (".csv", ".txt", ".jsonl", ".ndjson"):
        raise InputError(
            str(out), f"--holdout must be a file of the data's own type ({suffix}; CSV or JSONL)"
        )
    if out.resolve() == path.resolve():
        raise InputError(str(out), "--holdout would overwrite the training data")
    csv_file = suffix in (".csv", ".txt")
    header, numbered = _csv_rows(path) if csv_file else _jsonl_rows(path)
    rows = [row for _, row in numbered]
    n_held = int(round(len(rows) * fraction))
    if n_held < 1 or n_held >= len(rows):
        raise InputError(str(path), f"{len(rows)} rows are too few to hold out {fraction:g}")
    held = np.zeros(len(rows), dtype=bool)
    held[np.random.default_rng(seed).permutation(len(rows))[:n_held]] = True
    try:
        with open(out, "w", newline="") as fh:
            if csv_file:
                writer = csv.DictWriter(fh, fieldnames=header)
                writer.writeheader()
                writer.writerows(row for row, h in zip(rows, held, strict=True) if h)
            else:
                fh.writelines(
                    json.dumps(row) + "\n" for row, h in zip(rows, held, strict=True) if h
                )
    except OSError as exc:
        raise InputError(str(out), f"cannot write the held-out rows: {exc.strerror}") from None
    return ~held


def _pick(
    header: list[str], chosen: str | None, candidates: tuple[str, ...], path: Path, what: str
) -> str | None:
    if chosen is None:
        return None
    if chosen != "auto":
        if chosen not in header:
            raise InputError(str(path), f"{what} column {chosen!r} not found")
        return chosen
    return next((c for c in candidates if c in header), None)


def _feature_names(
    header: list[str],
    features: list[str] | None,
    exclude: list[str] | None,
    reserved: set[str],
    path: Path,
) -> list[str]:
    # a typo in --exclude would otherwise train on the column it meant to leave out
    unknown = [e for e in exclude or [] if e not in header]
    if unknown:
        raise InputError(
            str(path),
            f"--exclude column(s) {', '.join(unknown)} not found; the file has "
            f"{', '.join(header[:40])}",
        )
    if features:
        missing = [f for f in features if f not in header]
        if missing:
            raise InputError(
                str(path),
                f"missing column(s) {', '.join(missing)}; the file has {', '.join(header[:40])}",
            )
        return list(features)
    excluded = set(exclude or []) | reserved
    names = [h for h in header if h not in excluded]
    if not names:
        raise InputError(str(path), "no feature columns left")
    return names


def _number(value: object, path: Path, row: int, column: str) -> float:
    if value is None or value == "":
        raise InputError(str(path), f"column {column!r} is missing or empty", row)
    if isinstance(value, bool):
        raise InputError(str(path), f"column {column!r} is a boolean, expected a number", row)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(
            str(path), f"column {column!r} is not a number: {str(value)[:40]!r}", row
        ) from None
    if not math.isfinite(number):
        raise InputError(str(path), f"column {column!r} is {value!s} (NaN/inf not allowed)", row)
    return number


Rows = list[tuple[int, dict[str, object]]]  # (1-based data row number, values by column)


def _bad_row(error: InputError, skipped: list[InputError] | None) -> None:
    """Raise ``error``, or list it when bad rows are skipped."""
    if skipped is None:
        raise error
    skipped.append(error)


def _csv_rows(path: Path, skipped: list[InputError] | None = None) -> tuple[list[str], Rows]:
    try:
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header:
                raise InputError(str(path), "empty file (no header row)")
            header = [h.strip() for h in header]
            rows: Rows = []
            for i, values in enumerate(reader):
                if not values:
                    continue
                if len(values) != len(header):
                    problem = f"has {len(values)} fields, the header has {len(header)}"
                    _bad_row(InputError(str(path), problem, i + 1), skipped)
                    continue
                rows.append((i + 1, dict(zip(header, values, strict=True))))
    except UnicodeDecodeError as exc:
        raise InputError(str(path), f"not a text CSV file ({exc.reason})") from None
    return header, rows


def _jsonl_rows(path: Path, skipped: list[InputError] | None = None) -> tuple[list[str], Rows]:
    rows: Rows = []
    header: list[str] = []
    try:
        with open(path) as fh:
            for i, line in enumerate(fh):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    _bad_row(InputError(str(path), f"invalid JSON: {exc.msg}", i + 1), skipped)
                    continue
                if not isinstance(obj, dict):
                    problem = "each line must be a JSON object"
                    _bad_row(InputError(str(path), problem, i + 1), skipped)
                    continue
                for key in obj:
                    if key not in header:
                        header.append(key)
                rows.append((i + 1, obj))
    except UnicodeDecodeError as exc:
        raise InputError(str(path), f"not a UTF-8 text file ({exc.reason})") from None
    if not rows and not skipped:
        raise InputError(str(path), "no data rows")
    return header, rows


def _read_npz(
    path: Path, features: list[str] | None, exclude: list[str] | None, label_column: str | None
) -> Table:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "X" not in data:
                raise InputError(str(path), "NPZ file must hold an array named 'X'")
            X = np.asarray(data["X"], dtype=np.float64)
            if X.ndim != 2:
                raise InputError(
                    str(path), f"'X' must be 2-D (records x features), got shape {X.shape}"
                )
            y = data["y"] if "y" in data and label_column is not None else None
            names = (
                [str(n) for n in data["feature_names"]]
                if "feature_names" in data
                else [f"x{i}" for i in range(X.shape[1])]
            )
    except (*NPZ_READ_ERRORS, TypeError) as exc:  # TypeError: a non-numeric 'X'
        raise InputError(str(path), f"unreadable NPZ file: {exc}") from None
    selected = _feature_names(names, features, exclude, set(), path)
    X = X[:, [names.index(n) for n in selected]]
    bad = np.argwhere(~np.isfinite(X))
    if bad.size:
        row, col = bad[0]
        raise InputError(str(path), f"column {selected[col]!r} is NaN/inf", int(row) + 1)
    labels = None if y is None else np.asarray(y).astype(np.int8).ravel()
    ids = [str(i + 1) for i in range(len(X))]
    return Table(path, selected, X, ids, labels, label_column=None if y is None else "y")
